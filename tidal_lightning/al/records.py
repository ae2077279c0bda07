"""The run folder's files: results.csv, queries.csv and run_summary.json, written atomically."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import Tensor

from tidal_lightning import distributed
from tidal_lightning.errors import RunFolderError

_PACKAGES = (
    "tidal_lightning",
    "torch",
    "torchvision",
    "pytorch-lightning",
    "hydra-core",
    "omegaconf",
    "torchmetrics",
    "wandb",
)


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Runs `write` on a temp file beside `path`, fsyncs and renames it into place.

    A kill at any point leaves either the old file or the new one, never half a file.
    """
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def atomic_write_text(path: Path, text: str) -> None:
    """`text` (UTF-8) into `path` with `atomic_write`."""
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def atomic_torch_save(path: Path, obj: object) -> None:
    """`torch.save(obj)` into `path` with `atomic_write`."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


def csv_text(header: list[str], rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def git_commit() -> str:
    """The commit the package was run from (`+dirty` with local changes), or `unknown`."""
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


class RunRecords:
    """Writes a run folder's human-readable records; every write replaces the file atomically.

    They are derived from the run's `RunState` (see `al/state.py`) and rewritten from it after
    each cycle, and again when a run resumes.

    Args:
        run_dir: the run folder (Hydra's output dir).
        num_classes: K, for the per-class columns.
    """

    def __init__(self, run_dir: Path, num_classes: int) -> None:
        self.run_dir = run_dir
        self.num_classes = num_classes
        self.results_path = run_dir / "results.csv"
        self.queries_path = run_dir / "queries.csv"
        self.summary_path = run_dir / "run_summary.json"

    @staticmethod
    def check_fresh(run_dir: Path) -> None:
        """Refuses to start in a folder that holds another run's results but no state to resume."""
        taken = [p.name for p in (run_dir / "results.csv", run_dir / "queries.csv") if p.exists()]
        if taken:
            raise RunFolderError(
                f"{run_dir} already holds {', '.join(taken)} from an earlier run that left no "
                "state.pt to resume from; pick another hydra.run.dir (or move those files away) "
                "so they are not overwritten."
            )

    @property
    def result_columns(self) -> list[str]:
        k = range(self.num_classes)
        return [
            "cycle",
            "num_labeled",
            "test_acc",
            *(f"acc_class_{c}" for c in k),
            "train_seconds",
            "query_seconds",
            "query_peak_mem_mb",
            "query_distinct_classes",
            "labeled_imbalance_ratio",
            "record_seconds",
            "record_overhead",
            "td_pool_kl",
            "td_pool_spearman",
            "td_pool_margin_spearman",
            *(f"labeled_class_{c}" for c in k),
            *(f"queried_class_{c}" for c in k),
        ]

    def write(
        self,
        results: list[dict[str, Any]],
        label_rounds: list[Tensor],
        targets: Tensor,
        summary: dict[str, Any],
    ) -> None:
        """Rewrites results.csv, queries.csv and run_summary.json.

        Args:
            results: one row per completed cycle (keys = `result_columns`).
            label_rounds: `[B_r]` dataset indices labeled in round r (round 0 = initial set).
            targets: `[N]` labels of the training split (-1: not known yet).
            summary: the run_summary.json object.

        Only the main process writes (under DDP every rank holds the same rows).
        """
        if not distributed.is_main_process():
            return
        for row in results:
            missing = set(self.result_columns) - set(row)
            if missing:
                raise KeyError(f"result row lacks {sorted(missing)}")
        body = [[r[c] for c in self.result_columns] for r in results]
        queries = [
            # a label still awaited from a person (oracle=file) is blank
            [cycle, index, label if label >= 0 else ""]
            for cycle, indices in enumerate(label_rounds)
            for index, label in zip(indices.tolist(), targets[indices].tolist(), strict=True)
        ]
        atomic_write_text(self.queries_path, csv_text(["cycle", "index", "label"], queries))
        atomic_write_text(self.results_path, csv_text(self.result_columns, body))
        atomic_write_text(self.summary_path, json.dumps(summary, indent=2) + "\n")
