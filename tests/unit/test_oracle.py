"""The file oracle's export and import: hand-written label files, every way they can be wrong."""

from __future__ import annotations

import csv
import io
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from tidal_lightning.al.oracle import (
    FileOracle,
    LabelFileError,
    LabelRequest,
    label_studio_config,
    query_scores,
    read_labels,
)
from tidal_lightning.strategies.base import PoolOutputs
from tidal_lightning.strategies.margin import Margin
from tidal_lightning.strategies.random import RandomSampling

CLASSES = ["cat", "dog", "a&b"]


@pytest.fixture
def request_() -> LabelRequest:
    """Three images asked for in cycle 2, in query order."""
    return LabelRequest(
        round=2,
        indices=torch.tensor([5, 2, 9]),
        paths=["a/x.png", "b/y.png", "a/z w.png"],
        predicted=torch.tensor([0, 1, 0]),
        scores=torch.tensor([-0.1, -0.25, -0.5], dtype=torch.float64),
        score_kind="score",
    )


def write(tmp_path: Path, text: str, name: str = "labels.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_by_index_in_any_order(tmp_path: Path, request_: LabelRequest) -> None:
    text = "index,path,predicted_label,score,label\n9,a/z w.png,cat,-0.5,a&b\n5,a/x.png,cat,,dog\n"
    text += "2,b/y.png,dog,,cat\n,,,,\n"  # a trailing empty spreadsheet row is ignored
    labels = read_labels(write(tmp_path, text), request_, CLASSES)
    assert labels.tolist() == [1, 0, 2]  # in request order: index 5, 2, 9


def test_csv_by_path_alone_with_a_byte_order_mark(tmp_path: Path, request_: LabelRequest) -> None:
    text = "\ufeffpath,label\nb/y.png,dog\na/z w.png, cat \na/x.png,cat\n"
    assert read_labels(write(tmp_path, text), request_, CLASSES).tolist() == [0, 1, 0]


GOOD_ROWS = ["5,a/x.png,dog", "2,b/y.png,cat", "9,a/z w.png,cat"]


def csv_text(rows: list[str]) -> str:
    return "index,path,label\n" + "".join(r + "\n" for r in rows)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (["77,a/x.png,dog", *GOOD_ROWS[1:]], "line 2: index 77 was not asked for in cycle 2"),
        (["five,a/x.png,dog", *GOOD_ROWS[1:]], "line 2: index 'five' is not a whole number"),
        ([",a/q.png,dog", *GOOD_ROWS[1:]], "line 2: path 'a/q.png' was not asked for"),
        (["5,b/y.png,dog", *GOOD_ROWS[1:]], "line 2: index 5 is a/x.png, not b/y.png"),
        ([",,dog", *GOOD_ROWS[1:]], "line 2: neither an index nor a path"),
        (["5,a/x.png,cow", *GOOD_ROWS[1:]], "line 2: label 'cow' is not a class"),
        (["5,a/x.png,", *GOOD_ROWS[1:]], "line 2: the label is blank"),
        (
            [*GOOD_ROWS, "5,a/x.png,cat"],
            "line 5: index 5 (a/x.png) is labeled again (first at line 2)",
        ),
        (GOOD_ROWS[:2], "no label for 1 of the 3 images asked for: index 9 (a/z w.png)"),
        ([], "the file has a header but no label rows"),
    ],
)
def test_csv_problems_name_the_line(
    tmp_path: Path, request_: LabelRequest, rows: list[str], message: str
) -> None:
    with pytest.raises(LabelFileError) as caught:
        read_labels(write(tmp_path, csv_text(rows)), request_, CLASSES)
    assert message in str(caught.value)
    assert "cannot import the labels for cycle 2" in str(caught.value)
    assert "nothing was changed" in str(caught.value)


def test_every_problem_is_reported_at_once(tmp_path: Path, request_: LabelRequest) -> None:
    rows = ["5,a/x.png,cow", "2,b/y.png,", "9,a/z w.png,cat"]
    with pytest.raises(LabelFileError) as caught:
        read_labels(write(tmp_path, csv_text(rows)), request_, CLASSES)
    assert "line 2: label 'cow'" in str(caught.value)
    assert "line 3: the label is blank" in str(caught.value)
    assert "no label for" not in str(caught.value)  # a bad row is not also "missing"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the file is empty"),
        (" \n\n", "the file is empty"),
        ("index,path,guess\n5,a/x.png,dog\n", "needs a `label` column and an `index` or `path`"),
        ('[{"data": ', "not valid JSON (line 1, column"),
        ('{"tasks": []}', "expected a list of tasks"),
        ("[]", "the export holds no tasks"),
    ],
)
def test_unusable_files(tmp_path: Path, request_: LabelRequest, text: str, message: str) -> None:
    with pytest.raises(LabelFileError, match=re.escape(message)):
        read_labels(write(tmp_path, text), request_, CLASSES)


def test_a_missing_file_is_named(tmp_path: Path, request_: LabelRequest) -> None:
    with pytest.raises(
        LabelFileError, match=re.escape("nope.csv; nothing was changed:\n  no such")
    ):
        read_labels(tmp_path / "nope.csv", request_, CLASSES)


def annotation(choices: list[str], when: str, cancelled: bool = False) -> dict[str, Any]:
    """One annotation as Label Studio's JSON export writes it."""
    return {
        "id": 11,
        "completed_by": 1,
        "result": [
            {
                "value": {"choices": choices},
                "id": "x1",
                "from_name": "label",
                "to_name": "image",
                "type": "choices",
                "origin": "manual",
            }
        ],
        "was_cancelled": cancelled,
        "ground_truth": False,
        "created_at": when,
        "updated_at": when,
        "lead_time": 1.2,
        "task": 1,
    }


def task(task_id: int, data: dict[str, Any], annotations: list[dict[str, Any]]) -> dict:
    return {"id": task_id, "annotations": annotations, "drafts": [], "data": data, "project": 1}


def test_label_studio_export_takes_the_latest_kept_annotation(
    tmp_path: Path, request_: LabelRequest
) -> None:
    export = [
        # corrected later; the list order is not the time order
        task(
            1,
            {"index": 5, "path": "a/x.png"},
            [
                annotation(["dog"], "2026-01-02T00:00:00.000000Z"),
                annotation(["cat"], "2026-01-01T00:00:00.000000Z"),
            ],
        ),
        # the later annotation was skipped: it does not count
        task(
            2,
            {"path": "b/y.png"},
            [
                annotation(["a&b"], "2026-01-01T00:00:00Z"),
                annotation(["cat"], "2026-01-05T00:00:00Z", cancelled=True),
            ],
        ),
        task(3, {"index": "9"}, [annotation(["cat"], "2026-01-01T00:00:00+00:00")]),
    ]
    path = write(tmp_path, json.dumps(export), "export.json")
    assert read_labels(path, request_, CLASSES).tolist() == [1, 2, 0]


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        (
            [task(7, {"index": 5}, [annotation(["dog"], "2026", cancelled=True)])],
            "task 7 (index 5, a/x.png): no annotation that was not skipped",
        ),
        (
            [task(7, {"index": 5}, [annotation(["dog", "cat"], "2026")])],
            "task 7 (index 5, a/x.png): its latest annotation has 2 class choices",
        ),
        ([task(7, {"index": 4}, [annotation(["dog"], "2026")])], "task 7: index 4 was not asked"),
        ([task(7, {"index": 5}, [annotation(["cow"], "2026")])], "task 7: label 'cow' is not"),
        (
            [
                task(7, {"index": 5}, [annotation(["dog"], "2026")]),
                task(8, {"path": "a/x.png"}, [annotation(["cat"], "2026")]),
            ],
            "task 8: index 5 (a/x.png) is labeled again (first at task 7)",
        ),
        ([{"id": 3}], "task #1: not a task with a `data` object"),
    ],
)
def test_label_studio_problems_name_the_task(
    tmp_path: Path, request_: LabelRequest, tasks: list[dict], message: str
) -> None:
    with pytest.raises(LabelFileError) as caught:
        read_labels(write(tmp_path, json.dumps(tasks), "export.json"), request_, CLASSES)
    assert message in str(caught.value)


def test_export_writes_the_csv_tasks_and_config_and_reads_back(
    tmp_path: Path, request_: LabelRequest
) -> None:
    root = tmp_path / "images"
    datamodule: Any = SimpleNamespace(classes=CLASSES, root=root)
    oracle = FileOracle(document_root=str(tmp_path))
    oracle.export(tmp_path / "run", request_, datamodule)
    folder = tmp_path / "run" / "to_label"
    rows = list(csv.DictReader(io.StringIO((folder / "cycle_2.csv").read_text())))
    assert [
        (r["index"], r["path"], r["predicted_label"], r["score"], r["label"]) for r in rows
    ] == [
        ("5", "a/x.png", "cat", "-0.1", ""),
        ("2", "b/y.png", "dog", "-0.25", ""),
        ("9", "a/z w.png", "cat", "-0.5", ""),
    ]
    tasks = json.loads((folder / "cycle_2_label_studio.json").read_text())
    # relative to the document root, URL-quoted
    assert tasks[2]["data"] == {
        "image": "/data/local-files/?d=images/a/z%20w.png",
        "index": 9,
        "path": "a/z w.png",
    }
    assert tasks[1]["predictions"][0]["result"][0]["value"] == {"choices": ["dog"]}
    assert tasks[1]["predictions"][0]["score"] == -0.25
    # a person fills the CSV: it imports as what they wrote
    for row, name in zip(rows, ["dog", "a&b", "cat"], strict=True):
        row["label"] = name
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    (folder / "cycle_2.csv").write_text(buffer.getvalue())
    assert oracle.collect(tmp_path / "run", request_, CLASSES).tolist() == [1, 2, 0]


def test_label_studio_config_is_xml_with_every_class() -> None:
    view = ET.fromstring(label_studio_config(['say "hi"', "a&b", "<x>"]))
    (image,) = view.iter("Image")
    (choices,) = view.iter("Choices")
    assert image.get("value") == "$image" and choices.get("toName") == image.get("name")
    assert [c.get("value") for c in choices.iter("Choice")] == ['say "hi"', "a&b", "<x>"]


def test_query_scores_are_the_strategy_score_or_the_selection_rank() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.9, 0.05, 0.05], [0.4, 0.4, 0.2]])
    outputs = PoolOutputs(torch.arange(3), {"probs": probs})
    positions = torch.tensor([2, 0])
    scores, kind = query_scores(Margin(), outputs, positions)
    # minus (top-1 - top-2): rows 2 and 0
    assert kind == "score" and scores.tolist() == pytest.approx([0.0, -0.2])
    ranks, kind = query_scores(RandomSampling(), outputs, positions)
    assert kind == "rank" and ranks.tolist() == [1.0, 2.0]
