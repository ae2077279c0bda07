"""The run folder's files: results.csv, queries.csv and run_summary.json, written atomically."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from torch import Tensor

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


def atomic_write_text(path: Path, text: str) -> None:
    """Writes `text` to a temp file beside `path`, then renames: a kill never leaves half a file."""
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def _csv_text(header: list[str], rows: list[list[Any]]) -> str:
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
    """Writes a run folder's records; every write replaces the whole file atomically.

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
        self.results: list[dict[str, Any]] = []
        self.queries: list[list[int]] = []

    @staticmethod
    def check_fresh(run_dir: Path) -> None:
        """Refuses to start in a folder that already holds a run's results."""
        taken = [p.name for p in (run_dir / "results.csv", run_dir / "queries.csv") if p.exists()]
        if taken:
            raise RunFolderError(
                f"{run_dir} already holds {', '.join(taken)} from an earlier run; "
                "pick another hydra.run.dir (or move those files away) so they are not overwritten."
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
            *(f"labeled_class_{c}" for c in k),
            *(f"queried_class_{c}" for c in k),
        ]

    def add_queries(self, cycle: int, indices: Tensor, labels: Tensor) -> None:
        """Records one labeling round: `[B]` dataset indices and their `[B]` labels."""
        pairs = zip(indices.tolist(), labels.tolist(), strict=True)
        self.queries.extend([cycle, index, label] for index, label in pairs)
        atomic_write_text(self.queries_path, _csv_text(["cycle", "index", "label"], self.queries))

    def add_result(self, row: dict[str, Any]) -> None:
        """Appends one cycle's row (keys = `result_columns`) and rewrites results.csv."""
        missing = set(self.result_columns) - set(row)
        if missing:
            raise KeyError(f"result row lacks {sorted(missing)}")
        self.results.append(row)
        body = [[r[c] for c in self.result_columns] for r in self.results]
        atomic_write_text(self.results_path, _csv_text(self.result_columns, body))

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.summary_path, json.dumps(summary, indent=2) + "\n")
