"""Where the labels of queried samples come from: the dataset itself, or a person.

`oracle=simulated` reveals the label the dataset stores (benchmarks). `oracle=file` asks a
person: each query is written to `to_label/cycle_<k>.csv` (and as Label Studio tasks), the run
stops, and the next run imports the filled CSV or a Label Studio JSON export. An import is
validated as a whole before anything is written, so a bad file changes nothing.

`cycle_<k>` is the queries.csv cycle of the samples: the first training that uses them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import torch
from torch import Tensor

from tidal_lightning.al.pool import draw_initial
from tidal_lightning.al.records import atomic_write_text, csv_text
from tidal_lightning.data.datamodules import ImageClassificationData
from tidal_lightning.errors import TidalError
from tidal_lightning.features.cold_start import (
    FEATURE_INITIAL_MODES,
    ColdStartFeatures,
    feature_initial_set,
)
from tidal_lightning.strategies.base import PoolOutputs, Strategy

TO_LABEL = "to_label"
LS_CONFIG_FILE = "label_studio_config.xml"
# Names in the Label Studio labeling config; an export's results refer to them.
LS_FROM_NAME, LS_TO_NAME = "label", "image"
MAX_LISTED = 10  # problems shown in one error; the rest are counted


class LabelFileError(TidalError):
    """An imported label file is unusable; the run folder was left as it was."""


@dataclass
class LabelRequest:
    """Samples waiting for labels from a person.

    Attributes:
        round: the queries.csv cycle of the samples (0 = the initial set).
        indices: `[B]` dataset indices, in query order.
        paths: their image paths relative to the dataset root.
        predicted: `[B]` int64 class the model predicts; -1 before any model exists.
        scores: `[B]` float64 strategy score (or rank, see `score_kind`); NaN without one.
        score_kind: `score` (higher = queried first), `rank` (1 = picked first, for
            set-selection strategies) or `none` (no model yet).
    """

    round: int
    indices: Tensor
    paths: list[str]
    predicted: Tensor
    scores: Tensor
    score_kind: str

    def to_state(self) -> dict[str, Any]:
        """The parts `state.pt` keeps (indices are its last label round; paths the dataset's)."""
        return {
            "round": self.round,
            "predicted": self.predicted,
            "scores": self.scores,
            "score_kind": self.score_kind,
        }

    @classmethod
    def from_state(cls, saved: dict[str, Any], indices: Tensor, paths: list[str]) -> LabelRequest:
        """The request `to_state` saved; `indices` `[B]` and their `paths` from the run."""
        return cls(
            round=int(saved["round"]),
            indices=indices,
            paths=paths,
            predicted=saved["predicted"],
            scores=saved["scores"],
            score_kind=str(saved["score_kind"]),
        )


def query_scores(strategy: Strategy, outputs: PoolOutputs, positions: Tensor) -> tuple[Tensor, str]:
    """What the export shows as `score` for the picked `positions` (`[B]` into the subset).

    Score-based strategies: their score (higher = more worth labeling). Set-selection
    strategies (those that override `select`) pick a set, not an order of scores: the rank
    in the selection, 1 = first picked.

    Returns:
        `[B]` float64 on the CPU and the kind, `score` or `rank`.
    """
    if type(strategy).select is not Strategy.select:
        return torch.arange(1, len(positions) + 1, dtype=torch.float64), "rank"
    scores = strategy.score(outputs)
    return scores[positions.to(scores.device)].double().cpu(), "score"


# ------------------------------------------------------------------------------ oracles
class Oracle:
    """Base class: where labels come from, and what the initial labeled set is."""

    reveals_labels: ClassVar[bool]

    def check(self, datamodule: ImageClassificationData) -> list[str]:
        """Problems with using this oracle on `datamodule`, each naming the fix; [] if none."""
        return []

    def draws_initial(self, datamodule: ImageClassificationData) -> bool:
        """Whether the initial set is drawn (`al.initial`, `al.initial_mode`) rather than given."""
        return True

    def initial_set(
        self,
        datamodule: ImageClassificationData,
        pool_indices: Tensor,
        size: int,
        mode: str,
        generator: torch.Generator,
        features: ColdStartFeatures | None = None,
    ) -> Tensor:
        """`[B0]` dataset indices of the initial labeled set, drawn as `al.initial` says.

        The feature-based modes (`typiclust`, `probcover`, `maxherding`) need `features`
        (`ColdStartFeatures.from_config(cfg)`); the others use the labels.
        """
        if mode in FEATURE_INITIAL_MODES:
            if features is None:
                raise ValueError(
                    f"al.initial_mode={mode} picks on features: pass "
                    "features=ColdStartFeatures.from_config(cfg)"
                )
            return feature_initial_set(datamodule, pool_indices, size, mode, generator, features)
        return draw_initial(
            datamodule.train_targets, pool_indices, size, datamodule.num_classes, mode, generator
        )


class SimulatedOracle(Oracle):
    """Reveals the label the dataset stores; every training label must therefore be known."""

    reveals_labels = True

    def check(self, datamodule: ImageClassificationData) -> list[str]:
        unknown = int((datamodule.train_targets < 0).sum())
        if unknown:
            return [
                f"oracle=simulated reveals the labels the dataset stores, but {unknown} of "
                f"{len(datamodule.train_targets)} training images have none (dataset.labels_csv "
                "must label every image); use oracle=file to label them as the run goes"
            ]
        return []


class FileOracle(Oracle):
    """Asks a person: exports each query for labeling and imports the labels on the next run.

    Args:
        labels: the labels to import: a CSV with `index` and/or `path` and a `label`
            column, or a Label Studio JSON export. None: the pending `to_label/cycle_<k>.csv`.
        document_root: Label Studio's `LOCAL_FILES_DOCUMENT_ROOT`; task image URLs are
            relative to it. None: the dataset root.
    """

    reveals_labels = False

    def __init__(self, labels: str | None = None, document_root: str | None = None) -> None:
        self.labels = labels
        self.document_root = document_root

    def check(self, datamodule: ImageClassificationData) -> list[str]:
        if not hasattr(datamodule, "train_paths"):
            return [
                "oracle=file needs a dataset of image files a person can look at "
                "(dataset=image_folder); the other datasets carry their labels, use "
                "oracle=simulated"
            ]
        root = self._document_root(datamodule)
        if os.path.relpath(datamodule.root.resolve(), root).startswith(".."):
            return [
                f"oracle.document_root={self.document_root} must contain dataset.root="
                f"{datamodule.root}: Label Studio serves images only from below it"
            ]
        return []

    def draws_initial(self, datamodule: ImageClassificationData) -> bool:
        return not len(self._known(datamodule))

    @staticmethod
    def _known(datamodule: ImageClassificationData) -> Tensor:
        return getattr(datamodule, "known_order", torch.empty(0, dtype=torch.long))

    def initial_set(
        self,
        datamodule: ImageClassificationData,
        pool_indices: Tensor,
        size: int,
        mode: str,
        generator: torch.Generator,
        features: ColdStartFeatures | None = None,
    ) -> Tensor:
        """The images `dataset.labels_csv` labels, in its order; with none, drawn as configured.

        A drawn initial set is then exported for labeling before any training (cold start).
        """
        known = self._known(datamodule)
        if len(known):
            return known.clone()
        return super().initial_set(datamodule, pool_indices, size, mode, generator, features)

    def _document_root(self, datamodule: ImageClassificationData) -> Path:
        return Path(self.document_root or datamodule.root).resolve()

    def csv_path(self, run_dir: Path, round_: int) -> Path:
        return run_dir / TO_LABEL / f"cycle_{round_}.csv"

    def tasks_path(self, run_dir: Path, round_: int) -> Path:
        return run_dir / TO_LABEL / f"cycle_{round_}_label_studio.json"

    def labels_path(self, run_dir: Path, round_: int) -> Path:
        """The file the next run imports: `oracle.labels`, else the pending to_label CSV."""
        return Path(self.labels) if self.labels else self.csv_path(run_dir, round_)

    def export(
        self,
        run_dir: Path,
        request: LabelRequest,
        datamodule: ImageClassificationData,
    ) -> None:
        """Writes `to_label/cycle_<k>.csv`, its Label Studio task file and labeling config."""
        classes = datamodule.classes
        folder = run_dir / TO_LABEL
        folder.mkdir(parents=True, exist_ok=True)
        predicted = [classes[p] if p >= 0 else "" for p in request.predicted.tolist()]
        scores = [_format_score(s, request.score_kind) for s in request.scores.tolist()]
        rows = [
            [index, path, guess, score, ""]
            for index, path, guess, score in zip(
                request.indices.tolist(), request.paths, predicted, scores, strict=True
            )
        ]
        header = ["index", "path", "predicted_label", "score", "label"]
        root = self._document_root(datamodule)
        tasks = []
        for index, path, guess, score in zip(
            request.indices.tolist(), request.paths, predicted, request.scores.tolist(), strict=True
        ):
            relative = Path(os.path.relpath((datamodule.root / path).resolve(), root)).as_posix()
            task: dict[str, Any] = {
                "data": {
                    "image": f"/data/local-files/?d={quote(relative)}",
                    "index": index,
                    "path": path,
                },
            }
            if guess:
                prediction: dict[str, Any] = {
                    "model_version": f"tidal_lightning cycle {request.round - 1}",
                    "result": [_choice_result(guess)],
                }
                if request.score_kind == "score" and math.isfinite(score):
                    prediction["score"] = score
                task["predictions"] = [prediction]
            tasks.append(task)
        atomic_write_text(self.csv_path(run_dir, request.round), csv_text(header, rows))
        atomic_write_text(
            self.tasks_path(run_dir, request.round), json.dumps(tasks, indent=2) + "\n"
        )
        atomic_write_text(folder / LS_CONFIG_FILE, label_studio_config(classes))

    def collect(self, run_dir: Path, request: LabelRequest, classes: list[str]) -> Tensor:
        """`[B]` validated labels for `request` from `labels_path`; raises `LabelFileError`."""
        return read_labels(self.labels_path(run_dir, request.round), request, classes)


def _format_score(score: float, kind: str) -> str:
    if kind == "none" or not math.isfinite(score):
        return ""
    return str(int(score)) if kind == "rank" else f"{score:.6g}"


def _choice_result(name: str) -> dict[str, Any]:
    return {
        "from_name": LS_FROM_NAME,
        "to_name": LS_TO_NAME,
        "type": "choices",
        "value": {"choices": [name]},
    }


def label_studio_config(classes: list[str]) -> str:
    """A Label Studio labeling config: the image and one single-choice class list."""
    choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in classes)
    return (
        "<View>\n"
        f'  <Image name="{LS_TO_NAME}" value="$image"/>\n'
        f'  <Choices name="{LS_FROM_NAME}" toName="{LS_TO_NAME}" choice="single" '
        'showInLine="true">\n'
        f"{choices}\n"
        "  </Choices>\n"
        "</View>\n"
    )


# ------------------------------------------------------------------------------ import
class _Matcher:
    """Collects (where, sample position, label) from a label file and checks them all."""

    def __init__(self, request: LabelRequest, classes: list[str]) -> None:
        self.request = request
        self.classes = classes
        self.class_index = {name: c for c, name in enumerate(classes)}
        self.by_index = {i: p for p, i in enumerate(request.indices.tolist())}
        self.by_path = {path: p for p, path in enumerate(request.paths)}
        self.labels: dict[int, int] = {}  # sample position -> class
        self.first_seen: dict[int, str] = {}  # sample position -> where it was labeled
        self.problems: list[str] = []

    def sample(self, where: str, index: Any, path: Any) -> int | None:
        """The request position `index` / `path` name, or None (a problem is recorded)."""
        position_from_index = position_from_path = None
        index = "" if index is None else str(index).strip()
        path = "" if path is None else str(path).strip()
        if index:
            try:
                number = int(index)
            except ValueError:
                self.problems.append(f"{where}: index {index!r} is not a whole number")
                return None
            position_from_index = self.by_index.get(number)
            if position_from_index is None:
                self.problems.append(
                    f"{where}: index {number} was not asked for in cycle {self.request.round}"
                )
                return None
        if path:
            position_from_path = self.by_path.get(path)
            if position_from_path is None:
                self.problems.append(
                    f"{where}: path {path!r} was not asked for in cycle {self.request.round}"
                )
                return None
        if position_from_index is None and position_from_path is None:
            self.problems.append(f"{where}: neither an index nor a path says which image it is")
            return None
        if None not in (position_from_index, position_from_path) and (
            position_from_index != position_from_path
        ):
            self.problems.append(
                f"{where}: index {index} is {self.request.paths[position_from_index]}, "  # type: ignore[index]
                f"not {path}"
            )
            return None
        return position_from_index if position_from_index is not None else position_from_path

    def add(self, where: str, position: int, label: str) -> None:
        label = label.strip()
        if not label:
            self.problems.append(f"{where}: the label is blank; write one of {self.classes}")
        elif label not in self.class_index:
            self.problems.append(
                f"{where}: label {label!r} is not a class; the classes are {self.classes}"
            )
        elif position in self.labels:
            self.problems.append(
                f"{where}: index {self.request.indices[position].item()} "
                f"({self.request.paths[position]}) is labeled again (first at "
                f"{self.first_seen[position]})"
            )
        else:
            self.labels[position] = self.class_index[label]
            self.first_seen[position] = where
            return
        # a problem row still names its sample: it is not reported missing on top
        self.labels.setdefault(position, -1)
        self.first_seen.setdefault(position, where)

    def result(self, source: Path) -> Tensor:
        missing = [
            f"index {i} ({path})"
            for p, (i, path) in enumerate(
                zip(self.request.indices.tolist(), self.request.paths, strict=True)
            )
            if p not in self.labels
        ]
        if missing:
            self.problems.append(
                f"no label for {len(missing)} of the {len(self.request.paths)} images asked "
                f"for: {', '.join(missing[:MAX_LISTED])}"
                + (", ..." if len(missing) > MAX_LISTED else "")
            )
        if self.problems:
            raise _import_error(source, self.request, self.problems)
        return torch.tensor([self.labels[p] for p in range(len(self.request.paths))])


def _import_error(source: Path, request: LabelRequest, problems: list[str]) -> LabelFileError:
    shown = problems[:MAX_LISTED]
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return LabelFileError(
        f"cannot import the labels for cycle {request.round} from {source}; nothing was "
        "changed:\n  " + "\n  ".join(shown) + more + "\nFix the file and run the same command "
        "again (oracle.labels=<file> reads another one)."
    )


def read_labels(source: Path, request: LabelRequest, classes: list[str]) -> Tensor:
    """`[B]` class indices for `request.indices`, from a filled CSV or a Label Studio export.

    The format is told from the content: JSON starts with `[` or `{`. Every problem in the
    file is collected before raising `LabelFileError`, so one run reports them all.
    """
    if not source.is_file():
        raise _import_error(source, request, ["no such file"])
    try:
        text = source.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise _import_error(source, request, [f"cannot be read as UTF-8 text ({error})"]) from error
    if not text.strip():
        raise _import_error(source, request, ["the file is empty"])
    matcher = _Matcher(request, classes)
    if text.lstrip()[0] in "[{":
        _read_label_studio(text, source, request, matcher)
    else:
        _read_csv(text, source, request, matcher)
    return matcher.result(source)


def _read_csv(text: str, source: Path, request: LabelRequest, matcher: _Matcher) -> None:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = reader.fieldnames or []
        if "label" not in header or not {"index", "path"} & set(header):
            raise _import_error(
                source,
                request,
                [
                    f"line 1: the header {header} needs a `label` column and an `index` or "
                    "`path` column (as in the to_label CSV)"
                ],
            )
        rows = 0
        for row in reader:
            values = [v for k, v in row.items() if k is not None and v]
            if not any(v.strip() for v in values):
                continue  # an empty spreadsheet row
            rows += 1
            where = f"line {reader.line_num}"
            position = matcher.sample(where, row.get("index"), row.get("path"))
            if position is not None:
                matcher.add(where, position, row.get("label") or "")
    except csv.Error as error:
        raise _import_error(source, request, [f"not a readable CSV ({error})"]) from error
    if rows == 0:
        raise _import_error(source, request, ["the file has a header but no label rows"])


def _timestamp(annotation: dict[str, Any]) -> datetime:
    for key in ("updated_at", "created_at"):
        value = annotation.get(key)
        if isinstance(value, str):
            try:
                moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    return datetime.min.replace(tzinfo=timezone.utc)


def _read_label_studio(text: str, source: Path, request: LabelRequest, matcher: _Matcher) -> None:
    """Label Studio's JSON export: a list of tasks, each with `data` and `annotations`.

    A task's label is the single `choices` value of its latest annotation (by `updated_at`,
    then position) that was not cancelled ("skipped").
    """
    try:
        tasks = json.loads(text)
    except json.JSONDecodeError as error:
        raise _import_error(
            source,
            request,
            [f"not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})"],
        ) from error
    if not isinstance(tasks, list):
        raise _import_error(
            source,
            request,
            ["expected a list of tasks: export the Label Studio project as JSON (not JSON-MIN)"],
        )
    if not tasks:
        raise _import_error(source, request, ["the export holds no tasks"])
    for number, task in enumerate(tasks, start=1):
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            matcher.problems.append(f"task #{number}: not a task with a `data` object")
            continue
        data = task["data"]
        where = f"task {task['id']}" if "id" in task else f"task #{number}"
        position = matcher.sample(where, data.get("index"), data.get("path"))
        if position is None:
            continue
        sample = f"index {request.indices[position].item()}, {request.paths[position]}"
        annotations = task.get("annotations") or []
        kept = [
            (n, a)
            for n, a in enumerate(annotations)
            if isinstance(a, dict) and not a.get("was_cancelled", False)
        ]
        if not kept:
            matcher.problems.append(
                f"{where} ({sample}): no annotation that was not skipped; label it in Label "
                "Studio and export again"
            )
            matcher.labels.setdefault(position, -1)
            continue
        _, latest = max(kept, key=lambda item: (_timestamp(item[1]), item[0]))
        chosen = [
            choice
            for result in latest.get("result") or []
            if isinstance(result, dict) and result.get("type") == "choices"
            for choice in (result.get("value") or {}).get("choices") or []
        ]
        if len(chosen) != 1:
            matcher.problems.append(
                f"{where} ({sample}): its latest annotation has {len(chosen)} class choices "
                f"{chosen}; it needs exactly one"
            )
            matcher.labels.setdefault(position, -1)
            continue
        matcher.add(where, position, str(chosen[0]))
