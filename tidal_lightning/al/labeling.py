"""The labeling workflow around the loop: a person labels what the run asked for.

With `oracle=file` the loop hands each query over (`stop_for_labels`: the to_label files and
the command that goes on) and the next run of the same command imports the answers
(`pending_import`, then `accept_labels`). A label is given for an image, not for a number:
the run pins the image folder's file list in its state (`pin_files`) and refuses to import,
train or query once the folder has changed (`check_files`), naming what changed.
"""

from __future__ import annotations

import logging
import math
import re
import shlex
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tidal_lightning.al.oracle import FileOracle, LabelRequest, query_scores
from tidal_lightning.al.scoring import model_pass, query_diagnostics
from tidal_lightning.al.state import RunState
from tidal_lightning.data.datamodules import ImageClassificationData
from tidal_lightning.data.manifest import Manifest
from tidal_lightning.errors import TidalError
from tidal_lightning.models.system import ActiveLearningSystem
from tidal_lightning.strategies.base import PoolOutputs, Strategy

log = logging.getLogger(__name__)

# Overrides the "continue" command leaves out: where the labels came from this time (the
# next stop asks for other images) and where the run lives (pinned separately).
_PER_IMPORT_KEYS = ("oracle.labels=", "hydra.run.dir=")
# A value Hydra's override grammar takes unquoted (and a shell leaves alone).
_HYDRA_PLAIN = re.compile(r"[A-Za-z0-9_./@%+-]+")


class ImageFolderChangedError(TidalError):
    """The image folder no longer holds the files the run's indices refer to."""


# ------------------------------------------------------------------------- the file list
def train_paths(datamodule: ImageClassificationData) -> list[str] | None:
    """The training images' paths relative to the dataset root (image folders), else None."""
    paths = getattr(datamodule, "train_paths", None)
    return list(paths) if paths is not None else None


def pin_files(datamodule: ImageClassificationData) -> dict[str, Any] | None:
    """The manifest a fresh run keeps in its state: each training image's path, size, mtime."""
    paths = train_paths(datamodule)
    if paths is None:
        return None
    return Manifest.scan(Path(datamodule.root), paths).to_state()


def check_files(state: RunState, datamodule: ImageClassificationData) -> None:
    """Refuses a resumed run whose image folder changed since the run pinned it.

    Labels, queries and checkpoints refer to images by position in the sorted file list, so
    one file added, removed or renamed would shift every later label onto another image.
    """
    paths = train_paths(datamodule)
    if state.manifest is None or paths is None:
        return
    pinned = Manifest.from_state(state.manifest)
    root = Path(datamodule.root)
    # Files the run no longer lists cannot be stat'ed; they show up as removed.
    now = Manifest.scan(root, [p for p in paths if (root / p).is_file()])
    changes = pinned.changes(now)
    if changes:
        raise ImageFolderChangedError(
            f"dataset.root={root} has changed since this run started ({len(pinned.paths)} "
            f"images pinned in its state.pt): {changes.describe()}. The run refers to images "
            "by their position in that file list, so a change would attach every later label "
            "to another image; nothing was imported, trained or written. Put the folder back "
            "as it was to go on, or start a new run (another hydra.run.dir) on the new folder."
        )


def request_paths(datamodule: ImageClassificationData, indices: Tensor) -> list[str]:
    paths = train_paths(datamodule)
    assert paths is not None, "a person labels image files"
    return [paths[i] for i in indices.tolist()]


# ---------------------------------------------------------------------------- requests
def cold_start_request(indices: Tensor, datamodule: ImageClassificationData) -> LabelRequest:
    """The initial set, asked for before any model exists (no guess, no score)."""
    return LabelRequest(
        round=0,
        indices=indices,
        paths=request_paths(datamodule, indices),
        predicted=torch.full((len(indices),), -1, dtype=torch.long),
        scores=torch.full((len(indices),), math.nan, dtype=torch.float64),
        score_kind="none",
    )


def query_request(
    round_: int,
    queried: Tensor,
    strategy: Strategy,
    outputs: PoolOutputs,
    positions: Tensor,
    system: ActiveLearningSystem,
    datamodule: ImageClassificationData,
    device: torch.device,
) -> LabelRequest:
    """What the person is shown for the `[B]` queried samples: the model's guess and the score.

    Only inference after the query: no random stream is drawn, so the run goes on exactly
    as with a simulated oracle.
    """
    if "probs" in outputs.outputs:
        probs = outputs["probs"][positions.to(outputs["probs"].device)]
    else:
        probs = model_pass(system, datamodule, queried, frozenset({"probs"}), device)["probs"]
    scores, kind = query_scores(strategy, outputs, positions)
    return LabelRequest(
        round=round_,
        indices=queried,
        paths=request_paths(datamodule, queried),
        predicted=probs.argmax(dim=1).cpu(),
        scores=scores,
        score_kind=kind,
    )


def pending_request(state: RunState, datamodule: ImageClassificationData) -> LabelRequest:
    """The request the run stopped for; its samples are the last label round."""
    assert state.pending is not None
    indices = state.label_rounds[-1]
    return LabelRequest.from_state(state.pending, indices, request_paths(datamodule, indices))


def pending_import(
    run_dir: Path, state: RunState, oracle: FileOracle, datamodule: ImageClassificationData
) -> tuple[LabelRequest, Tensor | None]:
    """The pending request and its validated labels, or None when its files were never written.

    Validated as a whole before anything is written: a bad file raises `LabelFileError`
    and changes nothing.
    """
    request = pending_request(state, datamodule)
    if oracle.labels is None and not oracle.labels_path(run_dir, request.round).exists():
        return request, None  # the stop was killed before its files were written
    return request, oracle.collect(run_dir, request, datamodule.classes)


def accept_labels(
    state: RunState, request: LabelRequest, labels: Tensor, targets: Tensor, num_classes: int
) -> None:
    """Records validated `labels` (`[B]`) for the pending request in the state and the targets."""
    targets[request.indices] = labels
    state.round_labels.append(labels.clone())
    state.pending = None
    state.status = state.summary["status"] = "running"
    if request.round > 0:  # the query after cycle `round - 1`: its class histogram
        state.results[request.round - 1].update(query_diagnostics(labels, num_classes))


# ------------------------------------------------------------------------ handing over
def stop_for_labels(
    run_dir: Path,
    oracle: FileOracle,
    request: LabelRequest,
    datamodule: ImageClassificationData,
) -> None:
    """Writes the to_label files (the state is committed already) and says how to go on."""
    oracle.export(run_dir, request, datamodule)
    same, other = continue_commands(run_dir)
    document_root = oracle.document_root or Path(datamodule.root).resolve()
    log.warning(
        "cycle %d (as results.csv and queries.csv count; the next training) needs labels: "
        "%d images wait in %s\n"
        "  Fill its `label` column with one of: %s\n"
        "  (or label %s in Label Studio with the labeling config %s, serving the images with "
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=%s, "
        "and export the project as JSON).\n"
        "Then continue with:\n  %s\n"
        "or, to import another file (e.g. the Label Studio export), put its path in place of "
        "<file>:\n  %s",
        request.round,
        len(request.indices),
        oracle.csv_path(run_dir, request.round),
        ", ".join(datamodule.classes),
        oracle.tasks_path(run_dir, request.round),
        run_dir / "to_label" / "label_studio_config.xml",
        shlex.quote(str(document_root)),
        same,
        other,
    )


def hydra_value(value: str) -> str:
    """`value` as Hydra's override grammar reads it back: as is, or in quotes."""
    if _HYDRA_PLAIN.fullmatch(value):
        return value
    # Hydra's quoted strings: a quote is escaped, and so are the backslashes right before a
    # quote (or the closing one); any other backslash is itself.
    escaped = re.sub(r"(\\+)(?='|$)", lambda run: run.group(1) * 2, value).replace("'", "\\'")
    return f"'{escaped}'"


def continue_commands(run_dir: Path) -> tuple[str, str]:
    """The command that continues the run, and the same importing `oracle.labels=<file>`.

    Both are meant to be pasted into a shell as printed: every argument is shell-quoted,
    and the run folder is quoted for Hydra where its path needs it. They pin
    `hydra.run.dir`, so the folder is found whatever the overrides name it; they drop an
    earlier `oracle.labels=`, which named the last stop's answers, not the next one's.
    """
    overrides: list[str] | None = None
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            overrides = list(HydraConfig.get().overrides.task)
    except (ImportError, ValueError):
        overrides = None
    command = "python -m tidal_lightning"
    if overrides is None:
        return f"{command} <the overrides you ran with>", f"{command} <...> 'oracle.labels=<file>'"
    kept = [o for o in overrides if not o.startswith(_PER_IMPORT_KEYS)]
    pinned = f"hydra.run.dir={hydra_value(str(run_dir.resolve()))}"
    same = " ".join([command, *map(shlex.quote, [*kept, pinned])])
    # in Hydra's quotes, so any file name put in place of <file> (spaces, commas) reads as one
    placeholder = 'oracle.labels="<file>"'
    other = " ".join([command, *map(shlex.quote, [*kept, placeholder, pinned])])
    return same, other
