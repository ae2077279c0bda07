"""Labeling your own images: the file oracle's stop/import loop, Label Studio, checkpoints, predict.

A tiny generated image folder (3 colour classes, 16x16 PNGs in two subfolders, a held-out
test folder beside it) runs through the CLI as a user runs it; the file oracle, filled from
the ground truth, must reproduce the simulated oracle's run exactly.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from tests.conftest import REPO, compose_config, run_cli
from tidal_lightning.al.loop import run
from tidal_lightning.al.oracle import LabelFileError
from tidal_lightning.errors import TidalError

pytestmark = pytest.mark.slow
CLASSES = ["red", "green", "blue"]
TIMING = {"train_seconds", "query_seconds", "query_peak_mem_mb", "record_seconds"}
TIMING |= {"record_overhead"}


def tiny(root: Path, *extra: str) -> list[str]:
    """Overrides of a seconds-long run on the generated folder (smoke-sized model)."""
    return [
        "dataset=image_folder",
        f"dataset.root={root}",
        "dataset.image_size=[16,16]",
        f"dataset.classes=[{','.join(CLASSES)}]",
        "dataset.batch_size=16",
        "dataset.pad=2",
        "logger=none",
        "strategy=margin",
        "model.backbone.width=8",
        "model.optimizer.lr=0.05",
        "model.scheduler.milestones=[8]",
        "trainer.max_epochs=6",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        "al.initial=12",
        "al.budget=9",
        "al.cycles=3",
        "al.pool_subset=60",
        *extra,
    ]


def write_png(path: Path, label: int, rng: np.random.Generator) -> None:
    """A 16x16 image whose dominant channel is its class, plus noise and a random stripe."""
    pixels = rng.integers(0, 90, size=(16, 16, 3))
    pixels[..., label] += 150
    pixels[rng.integers(0, 16), :, :] = 255  # a stripe, so images are not just colours
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path)


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def read_rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """images/ (120 training PNGs in two subfolders), test/ (30), and their label CSVs."""
    base = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    truth = {}
    for n in range(120):
        label = int(rng.integers(0, 3))  # shuffled: sorted paths are not grouped by class
        relative = f"{'ab'[n % 2]}/img_{n:03d}.png"
        write_png(base / "images" / relative, label, rng)
        truth[relative] = label
    test_rows = []
    for n in range(30):
        write_png(base / "test" / f"t{n:02d}.png", n % 3, rng)
        test_rows.append([f"../test/t{n:02d}.png", CLASSES[n % 3]])
    write_csv(base / "test.csv", ["path", "label"], test_rows)
    write_csv(base / "all.csv", ["path", "label"], [[p, CLASSES[c]] for p, c in truth.items()])
    # the documented index order: sorted relative paths
    return {"base": base, "root": base / "images", "truth": truth, "paths": sorted(truth)}


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, cwd=cwd)


@pytest.fixture(scope="module")
def simulated(data: dict) -> Path:
    out = data["base"] / "simulated"
    done = cli(
        *tiny(data["root"], f"dataset.labels_csv={data['base'] / 'all.csv'}"),
        f"dataset.test_csv={data['base'] / 'test.csv'}",
        f"hydra.run.dir={out}",
        cwd=data["base"],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def file_args(data: dict, run_dir: Path, *extra: str) -> list[str]:
    return [
        *tiny(data["root"], "oracle=file", f"dataset.labels_csv={data['base'] / 'initial.csv'}"),
        f"dataset.test_csv={data['base'] / 'test.csv'}",
        *extra,
        f"hydra.run.dir={run_dir}",
    ]


@pytest.fixture(scope="module")
def pending(data: dict, simulated: Path) -> Path:
    """A file-oracle run stopped after cycle 0, its initial set the simulated run's."""
    initial = [r for r in read_rows(simulated / "queries.csv") if r["cycle"] == "0"]
    write_csv(
        data["base"] / "initial.csv",
        ["path", "label"],
        [[data["paths"][int(r["index"])], CLASSES[int(r["label"])]] for r in initial],
    )
    out = data["base"] / "pending"
    done = cli(*file_args(data, out), cwd=data["base"])
    assert done.returncode == 0, done.stderr[-3000:]
    said = done.stdout + done.stderr
    assert (
        "cycle 1 (as results.csv and queries.csv count; the next training) needs labels: " in said
    )
    assert f"9 images wait in {out / 'to_label' / 'cycle_1.csv'}" in said
    assert "Fill its `label` column with one of: red, green, blue" in said
    assert f"hydra.run.dir={out}" in said and 'oracle.labels="<file>"' in said
    return out


def fill(to_label: Path, data: dict) -> None:
    """Fills the `label` column from the ground truth, as a person would."""
    rows = read_rows(to_label)
    for row in rows:
        row["label"] = CLASSES[data["truth"][row["path"]]]
    write_csv(to_label, list(rows[0]), [list(r.values()) for r in rows])


def copy_run(source: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(source, target)
    return target


def without_timings(path: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_rows(path)]


def test_to_label_files_list_the_query(data: dict, pending: Path, simulated: Path) -> None:
    rows = read_rows(pending / "to_label" / "cycle_1.csv")
    assert list(rows[0]) == ["index", "path", "predicted_label", "score", "label"]
    sim_round = [r for r in read_rows(simulated / "queries.csv") if r["cycle"] == "1"]
    assert [int(r["index"]) for r in rows] == [int(r["index"]) for r in sim_round]
    assert all(data["paths"][int(r["index"])] == r["path"] for r in rows)
    assert all(r["predicted_label"] in CLASSES and r["label"] == "" for r in rows)
    # margin's score is minus the top-two probability gap: in (-1, 0], best first
    scores = [float(r["score"]) for r in rows]
    assert all(-1 <= s <= 0 for s in scores) and scores == sorted(scores, reverse=True)
    tasks = json.loads((pending / "to_label" / "cycle_1_label_studio.json").read_text())
    assert [t["data"]["index"] for t in tasks] == [int(r["index"]) for r in rows]
    assert tasks[0]["data"]["image"] == f"/data/local-files/?d={rows[0]['path']}"
    first_guess = tasks[0]["predictions"][0]["result"][0]
    assert first_guess["value"]["choices"] == [rows[0]["predicted_label"]]
    assert first_guess["from_name"] == "label" and first_guess["to_name"] == "image"
    config = (pending / "to_label" / "label_studio_config.xml").read_text()
    assert all(f'<Choice value="{c}"/>' in config for c in CLASSES)
    # the awaited labels are blank, the rest is the simulated run's
    queries = read_rows(pending / "queries.csv")
    assert [q["label"] for q in queries if q["cycle"] == "1"] == [""] * 9
    summary = json.loads((pending / "run_summary.json").read_text())
    assert summary["status"] == "awaiting_labels"
    results = read_rows(pending / "results.csv")
    assert len(results) == 1 and results[0]["queried_class_0"] == ""


def test_file_oracle_filled_from_truth_equals_the_simulated_run(
    data: dict, pending: Path, simulated: Path, tmp_path: Path
) -> None:
    out = copy_run(pending, tmp_path)
    fill(out / "to_label" / "cycle_1.csv", data)
    second = cli(*file_args(data, out), cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "imported 9 labels for cycle 1" in second.stdout + second.stderr
    assert "cycle 2 (as results.csv" in second.stdout + second.stderr
    fill(out / "to_label" / "cycle_2.csv", data)
    third = cli(*file_args(data, out), cwd=tmp_path)
    assert third.returncode == 0, third.stderr[-3000:]
    assert (out / "queries.csv").read_bytes() == (simulated / "queries.csv").read_bytes()
    ours, theirs = without_timings(out / "results.csv"), without_timings(simulated / "results.csv")
    assert [r["test_acc"] for r in ours] == [r["test_acc"] for r in theirs]
    assert ours == theirs  # per-class accuracy and class histograms too
    assert json.loads((out / "run_summary.json").read_text())["status"] == "finished"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        f"cycle_{k}.pt" for k in range(3)
    ]


def test_label_studio_export_is_imported(
    data: dict, pending: Path, simulated: Path, tmp_path: Path
) -> None:
    out = copy_run(pending, tmp_path)
    tasks = json.loads((out / "to_label" / "cycle_1_label_studio.json").read_text())

    def annotation(name: str, when: str, cancelled: bool = False) -> dict:
        return {
            "id": 1,
            "completed_by": 1,
            "result": [
                {
                    "value": {"choices": [name]},
                    "id": "aB3dE",
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
            "lead_time": 2.5,
            "task": 1,
        }

    export = []
    for number, task in enumerate(reversed(tasks), start=1):  # any task order
        right = CLASSES[data["truth"][task["data"]["path"]]]
        wrong = CLASSES[(data["truth"][task["data"]["path"]] + 1) % 3]
        annotations = [annotation(right, "2026-05-02T10:00:00.000000Z")]
        if number % 2:  # an earlier wrong answer, corrected later
            annotations.insert(0, annotation(wrong, "2026-05-01T10:00:00.000000Z"))
        if number % 3 == 0:  # a later skip does not count
            annotations.append(annotation(wrong, "2026-05-03T10:00:00.000000Z", cancelled=True))
        data_ = dict(task["data"])
        if number == 1:
            del data_["index"]  # matched by path alone
        export.append(
            {
                "id": 100 + number,
                "annotations": annotations,
                "drafts": [],
                "predictions": [7],
                "data": data_,
                "meta": {},
                "created_at": "2026-05-01T09:00:00.000000Z",
                "updated_at": "2026-05-03T10:00:00.000000Z",
                "inner_id": number,
                "total_annotations": len(annotations),
                "cancelled_annotations": int(number % 3 == 0),
                "project": 3,
            }
        )
    exported = tmp_path / "project-3-at-2026-05-03.json"
    exported.write_text(json.dumps(export, indent=1))
    done = cli(*file_args(data, out, f"oracle.labels={exported}"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "imported 9 labels for cycle 1" in done.stdout + done.stderr
    queries = read_rows(out / "queries.csv")
    reference = read_rows(simulated / "queries.csv")
    assert [q for q in queries if q["cycle"] != "2"] == [r for r in reference if r["cycle"] != "2"]
    # it went on to cycle 1 and queried what the simulated run queried
    assert [q["index"] for q in queries if q["cycle"] == "2"] == [
        r["index"] for r in reference if r["cycle"] == "2"
    ]
    ours, theirs = without_timings(out / "results.csv"), without_timings(simulated / "results.csv")
    assert ours[0] == theirs[0]
    # cycle 1's query waits for its labels: the class histogram columns are still blank
    awaited = {k for k in theirs[1] if k.startswith("queried_class_")} | {"query_distinct_classes"}
    assert {k: v for k, v in ours[1].items() if k not in awaited} == {
        k: v for k, v in theirs[1].items() if k not in awaited
    }
    assert {ours[1][k] for k in awaited} == {""}


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def edit_first_rows(rows: list[dict[str, str]], **changes: str) -> list[dict[str, str]]:
    return [{**rows[0], **changes}, *rows[1:]]


BAD_LABELS = {
    "unknown_index": (lambda rows: edit_first_rows(rows, index="99999"), "line 2: index 99999"),
    "unknown_path": (
        lambda rows: edit_first_rows(rows, index="", path="a/nope.png"),
        "line 2: path 'a/nope.png' was not asked for",
    ),
    "unknown_class": (
        lambda rows: edit_first_rows(rows, label="purple"),
        "line 2: label 'purple' is not a class",
    ),
    "duplicate": (lambda rows: [*rows, rows[0]], "line 11: index"),
    "missing_row": (lambda rows: rows[:-1], "no label for 1 of the 9 images"),
    "blank_label": (lambda rows: edit_first_rows(rows, label=""), "line 2: the label is blank"),
    "empty_file": (None, "the file is empty"),
}


def write_bad(to_label: Path, case: str, data: dict) -> str:
    """Fills `to_label` from the truth, then spoils it as `case` says; returns the message."""
    fill(to_label, data)
    edit, message = BAD_LABELS[case]
    if edit is None:
        to_label.write_text("")
    else:
        rows = edit(read_rows(to_label))
        write_csv(to_label, list(rows[0]), [list(r.values()) for r in rows])
    return message


@pytest.mark.parametrize("case", sorted(BAD_LABELS))
def test_bad_labels_are_refused_and_change_nothing(
    data: dict, pending: Path, tmp_path: Path, case: str
) -> None:
    out = copy_run(pending, tmp_path)
    message = write_bad(out / "to_label" / "cycle_1.csv", case, data)
    before = tree_digest(out)
    cfg = compose_config(file_args(data, out)[:-1], out)  # in-process: seconds, not a CLI
    with pytest.raises(LabelFileError) as caught:
        run(cfg)
    assert "cannot import the labels for cycle 1" in str(caught.value)
    assert message in str(caught.value)
    assert tree_digest(out) == before  # state, records, to_label files: all unchanged


def test_a_bad_file_exits_non_zero_and_a_fixed_one_goes_on(
    data: dict, pending: Path, tmp_path: Path
) -> None:
    # In the pending run's own folder, with the command that made it: Hydra then rewrites its
    # .hydra/ files identically, and the whole tree can be compared byte for byte.
    to_label = pending / "to_label" / "cycle_1.csv"
    exported = to_label.read_bytes()
    try:
        message = write_bad(to_label, "missing_row", data)
        before = tree_digest(pending)
        done = cli(*file_args(data, pending), cwd=data["base"])
        assert done.returncode != 0
        assert "error: cannot import the labels for cycle 1" in done.stderr
        assert message in done.stderr and "Traceback" not in done.stderr
        assert tree_digest(pending) == before  # the log and Hydra's files too
        out = copy_run(pending, tmp_path)
    finally:
        to_label.write_bytes(exported)
    # the fixed file: every row, labeled from the truth
    (out / "to_label" / "cycle_1.csv").write_bytes(exported)
    fill(out / "to_label" / "cycle_1.csv", data)
    fixed = cli(*file_args(data, out), cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert "imported 9 labels for cycle 1" in fixed.stdout + fixed.stderr


def test_checkpoint_loads_weights_only_and_predict_runs(
    data: dict, simulated: Path, tmp_path: Path
) -> None:
    checkpoint = torch.load(simulated / "checkpoints" / "cycle_2.pt", weights_only=True)
    assert checkpoint["classes"] == CLASSES and checkpoint["image_size"] == [16, 16]
    assert checkpoint["cycle"] == 2 and checkpoint["num_labeled"] == 12 + 2 * 9
    assert checkpoint["backbone"]["_target_"].endswith("SmallCNN")
    out = tmp_path / "predictions.csv"
    done = run_cli(
        f"checkpoint={simulated / 'checkpoints' / 'cycle_2.pt'}",
        f"images={data['root']}",
        f"out={out}",
        "batch_size=50",  # three batches, the last one short
        cwd=tmp_path,
        entry=("-m", "tidal_lightning.predict"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_rows(out)
    assert list(rows[0]) == [
        "path",
        "predicted_label",
        "confidence",
        *(f"prob_{c}" for c in CLASSES),
    ]
    assert [r["path"] for r in rows] == data["paths"]
    probs = torch.tensor([[float(r[f"prob_{c}"]) for c in CLASSES] for r in rows])
    assert torch.allclose(probs.sum(dim=1), torch.ones(len(rows)), atol=1e-5)
    # the same model, rebuilt here by hand from the file, on the PNGs read here
    backbone = instantiate(checkpoint["backbone"], num_classes=3, in_channels=3)
    backbone.load_state_dict(
        {
            k.removeprefix("backbone."): v
            for k, v in checkpoint["state_dict"].items()
            if k.startswith("backbone.")
        }
    )
    pixels = np.stack([np.asarray(Image.open(data["root"] / p)) for p in data["paths"]])
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0
    logits, _ = backbone.eval()((images - 0.5) / 0.5)
    own = logits.argmax(dim=1).tolist()
    assert [CLASSES.index(r["predicted_label"]) for r in rows] == own
    truth = [data["truth"][p] for p in data["paths"]]
    accuracy = sum(a == b for a, b in zip(own, truth, strict=True)) / len(truth)
    assert accuracy > 0.8  # colour classes: a trained model gets them


def test_cold_start_without_labels_or_test_split(data: dict, tmp_path: Path) -> None:
    """No labels_csv: the initial set is exported before any training; no test_csv: no test."""
    common = tiny(data["root"], "strategy=coreset", "al.cycles=2")
    cfg = compose_config([*common, "oracle=file"], tmp_path / "file")
    out = tmp_path / "file"
    assert run(cfg) == []
    to_label = out / "to_label" / "cycle_0.csv"
    rows = read_rows(to_label)
    assert len(rows) == 12 and {r["predicted_label"] for r in rows} == {""}
    assert {r["score"] for r in rows} == {""} and not (out / "checkpoints").exists()
    # a stop killed before its files were written: the next run writes them, and stops again
    exported = to_label.read_bytes()
    to_label.unlink()
    assert run(cfg) == [] and to_label.read_bytes() == exported
    fill(to_label, data)
    assert len(run(cfg)) == 1
    rows = read_rows(out / "to_label" / "cycle_1.csv")
    assert [r["score"] for r in rows] == [str(k) for k in range(1, 10)]  # coreset: the rank
    fill(out / "to_label" / "cycle_1.csv", data)
    results = run(cfg)
    assert [r["test_acc"] for r in results] == ["", ""]
    reference = compose_config(
        [*common, f"dataset.labels_csv={data['base'] / 'all.csv'}", "al.checkpoints=last"],
        tmp_path / "simulated",
    )
    assert [r["num_labeled"] for r in run(reference)] == [12, 21]
    assert [p.name for p in (tmp_path / "simulated" / "checkpoints").iterdir()] == ["cycle_1.pt"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["cycle_0.pt", "cycle_1.pt"]
    assert (out / "queries.csv").read_bytes() == (
        tmp_path / "simulated" / "queries.csv"
    ).read_bytes()
    assert without_timings(out / "results.csv") == without_timings(
        tmp_path / "simulated" / "results.csv"
    )


# ------------------------------------------------------------------ the pinned file list
def own_folder(data: dict, tmp_path: Path) -> Path:
    """A copy of the images a test may change (the module's folder stays as it is)."""
    root = tmp_path / "images"
    shutil.copytree(data["root"], root)
    shutil.copytree(data["base"] / "test", tmp_path / "test")  # test.csv's ../test/ paths
    return root


def args_on(data: dict, root: Path, *extra: str) -> list[str]:
    """`file_args`, but on the image folder `root`."""
    return [
        *tiny(root, "oracle=file", f"dataset.labels_csv={data['base'] / 'initial.csv'}"),
        f"dataset.test_csv={data['base'] / 'test.csv'}",
        *extra,
    ]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("added", "1 added: b/aaa_new.png"),
        ("removed", "1 removed: a/img_000.png"),
        ("rewritten", "1 rewritten (size or mtime): a/img_000.png"),
    ],
)
def test_a_changed_image_folder_is_refused_before_anything_is_imported(
    data: dict, pending: Path, tmp_path: Path, change: str, named: str
) -> None:
    root = own_folder(data, tmp_path)
    out = tmp_path / "run"
    cfg = compose_config(args_on(data, root), out)
    assert len(run(cfg)) == 1  # stopped for cycle 1's labels
    queries = read_rows(out / "queries.csv")
    # queries.csv names the file of every label, not just its number
    assert list(queries[0]) == ["cycle", "index", "path", "label"]
    assert all(data["paths"][int(q["index"])] == q["path"] for q in queries)
    to_label = out / "to_label" / "cycle_1.csv"
    fill(to_label, data)
    rows = read_rows(to_label)  # an `index,label` file: accepted when nothing has changed
    write_csv(to_label, ["index", "label"], [[r["index"], r["label"]] for r in rows])
    if change == "added":  # sorts before every other image of b/: every later index shifts
        shutil.copy(root / "a" / "img_000.png", root / "b" / "aaa_new.png")
    elif change == "removed":
        (root / "a" / "img_000.png").unlink()
    else:
        write_png(root / "a" / "img_000.png", 0, np.random.default_rng(7))
    before = tree_digest(out)
    with pytest.raises(TidalError) as caught:
        run(compose_config(args_on(data, root), out))
    message = str(caught.value)
    assert f"dataset.root={root} has changed since this run started" in message
    assert named in message and "nothing was imported, trained or written" in message
    assert tree_digest(out) == before


# ----------------------------------------------------------- commands as a person pastes them
def printed_commands(said: str) -> tuple[str, str]:
    """The two commands a stop prints: go on, and go on importing another file."""
    same = said.split("Then continue with:\n  ", 1)[1].splitlines()[0]
    other = said.split("in place of <file>:\n  ", 1)[1].splitlines()[0]
    return same, other


def paste(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`command` run by bash exactly as printed, `python` being this environment's (as in an
    activated virtual environment)."""
    bin_dir = Path(sys.executable).parent
    return subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(REPO)},
    )


def test_the_printed_commands_run_as_printed(data: dict, pending: Path, tmp_path: Path) -> None:
    """Stop, continue as printed; stop, import another file as printed; the next stop's
    command no longer names that file; all from other folders than the first run's."""
    start = tmp_path / "start"
    start.mkdir()
    # no hydra.run.dir: the folder is named from the overrides, lists and paths included
    first = run_cli(*args_on(data, data["root"], "al.cycles=4", "trainer.max_epochs=2"), cwd=start)
    assert first.returncode == 0, first.stderr[-3000:]
    (run_dir,) = (start / "outputs" / "runs").iterdir()
    assert re.fullmatch(r"[A-Za-z0-9._+@%-]+", run_dir.name), run_dir.name
    same, _ = printed_commands(first.stdout + first.stderr)
    fill(run_dir / "to_label" / "cycle_1.csv", data)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    second = paste(same, elsewhere)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "imported 9 labels for cycle 1" in second.stdout + second.stderr
    _, other = printed_commands(second.stdout + second.stderr)
    answers = tmp_path / "answers, final.csv"  # a name a shell and Hydra both need quoted
    shutil.copy(run_dir / "to_label" / "cycle_2.csv", answers)
    fill(answers, data)
    third = paste(other.replace("<file>", str(answers)), elsewhere)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "imported 9 labels for cycle 2" in third.stdout + third.stderr
    same, _ = printed_commands(third.stdout + third.stderr)
    assert "oracle.labels" not in same  # the last stop's answers are not imported again
    fill(run_dir / "to_label" / "cycle_3.csv", data)
    fourth = paste(same, tmp_path)
    assert fourth.returncode == 0, fourth.stderr[-3000:]
    assert json.loads((run_dir / "run_summary.json").read_text())["status"] == "finished"


def test_a_refused_import_through_another_file_changes_no_byte(
    data: dict, pending: Path, tmp_path: Path
) -> None:
    """Even `.hydra/`: a refused run with other overrides (`oracle.labels=`) records nothing."""
    out = copy_run(pending, tmp_path)
    bad = tmp_path / "bad.csv"
    shutil.copy(out / "to_label" / "cycle_1.csv", bad)
    write_bad(bad, "unknown_class", data)
    before = tree_digest(out)
    done = cli(*file_args(data, out, f"oracle.labels={bad}"), cwd=tmp_path)
    assert done.returncode != 0 and "label 'purple' is not a class" in done.stderr
    assert tree_digest(out) == before
