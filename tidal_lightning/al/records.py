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
from typing import TYPE_CHECKING, Any, BinaryIO

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from tidal_lightning import distributed
from tidal_lightning.al.scoring import imbalance_ratio

if TYPE_CHECKING:
    from tidal_lightning.al.oracle import Oracle
    from tidal_lightning.callbacks.pool_dynamics import PoolDynamicsRecorder
    from tidal_lightning.data.datamodules import ImageClassificationData
    from tidal_lightning.strategies.base import Strategy

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


# results.csv columns a query fills in; blank in a cycle without one
QUERY_COLUMNS = (
    "query_seconds",
    "query_peak_mem_mb",
    "query_distinct_classes",
    "record_seconds",
    "record_overhead",
    "td_pool_kl",
    "td_pool_spearman",
    "td_pool_margin_spearman",
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
        paths: list[str] | None = None,
    ) -> None:
        """Rewrites results.csv, queries.csv and run_summary.json.

        Args:
            results: one row per completed cycle (keys: `result_columns`, then any a
                strategy reported about its query, e.g. `probcover_delta`).
            label_rounds: `[B_r]` dataset indices labeled in round r (round 0 = initial set).
            targets: `[N]` labels of the training split (-1: not known yet).
            summary: the run_summary.json object.
            paths: `[N]` the training images' file paths (image folders): queries.csv then
                names the file each label belongs to.

        Only the main process writes (under DDP every rank holds the same rows).
        """
        if not distributed.is_main_process():
            return
        for row in results:
            missing = set(self.result_columns) - set(row)
            if missing:
                raise KeyError(f"result row lacks {sorted(missing)}")
        # then the columns some strategies report about their queries, blank where absent
        columns = list(self.result_columns)
        columns += list(dict.fromkeys(k for r in results for k in r if k not in columns))
        body = [[r.get(c, "") for c in columns] for r in results]
        queries = [
            # a label still awaited from a person (oracle=file) is blank
            [
                cycle,
                index,
                *([paths[index]] if paths is not None else []),
                label if label >= 0 else "",
            ]
            for cycle, indices in enumerate(label_rounds)
            for index, label in zip(indices.tolist(), targets[indices].tolist(), strict=True)
        ]
        header = ["cycle", "index", *(["path"] if paths is not None else []), "label"]
        atomic_write_text(self.queries_path, csv_text(header, queries))
        atomic_write_text(self.results_path, csv_text(columns, body))
        atomic_write_text(self.summary_path, json.dumps(summary, indent=2) + "\n")


def initial_summary(
    cfg: DictConfig,
    datamodule: ImageClassificationData,
    strategy: Strategy,
    oracle: Oracle,
    pool_indices: Tensor,
) -> dict[str, Any]:
    """run_summary.json before the first cycle; the loop updates progress and accuracy."""
    pool_targets = datamodule.train_targets[pool_indices]
    # counts of the labels known at the start (all of them, unless a person labels as it goes)
    known = pool_targets[pool_targets >= 0]
    return {
        "status": "running",
        "dataset": datamodule.dataset_name,
        "num_classes": datamodule.num_classes,
        "classes": datamodule.classes,
        "imbalance_ratio": datamodule.imbalance_ratio,
        "train_split_size": len(datamodule.train_targets),
        "train_pool_class_counts": torch.bincount(known, minlength=datamodule.num_classes).tolist(),
        "train_pool_unlabeled": len(pool_targets) - len(known),
        "test_size": len(datamodule.test_targets),
        "strategy": type(strategy).__name__,
        # the strategy's config name (e.g. `tidal_margin`): what sweeps and reports use
        "strategy_name": strategy_name(cfg),
        "oracle": type(oracle).__name__,
        "seed": int(cfg.seed),
        "cycles_completed": 0,
        "final_test_acc": None,
        "git_commit": git_commit(),
        "package_versions": package_versions(),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


def strategy_name(cfg: DictConfig) -> str:
    """The `strategy=<name>` the config was composed with (the class's module name otherwise),
    with `+class_balance` when that shared key is on: the report groups runs by this name, so
    a sweep over `strategy.class_balance=false,true` must not read as duplicate seeds."""
    name = str(cfg.strategy._target_).rsplit(".", 2)[-2]
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            name = str(HydraConfig.get().runtime.choices["strategy"])
    except (ImportError, KeyError, ValueError):
        pass
    return name + ("+class_balance" if cfg.strategy.get("class_balance") is True else "")


def result_row(
    cycle: int,
    labeled: Tensor,
    targets: Tensor,
    num_classes: int,
    test_acc: float | None,
    per_class: Tensor | None,
    train_seconds: float,
    recorder: PoolDynamicsRecorder | None,
) -> dict[str, Any]:
    """One results.csv row; the query columns stay blank until (unless) a query runs.

    Without a test split `test_acc` and `per_class` are None and their columns blank.
    """
    counts = torch.bincount(targets[labeled], minlength=num_classes)
    accuracies = per_class.tolist() if per_class is not None else [None] * num_classes
    row: dict[str, Any] = {
        "cycle": cycle,
        "num_labeled": len(labeled),
        "test_acc": round(test_acc, 6) if test_acc is not None else "",
        **{
            f"acc_class_{c}": round(a, 6) if a is not None else "" for c, a in enumerate(accuracies)
        },
        "train_seconds": round(train_seconds, 3),
        "labeled_imbalance_ratio": round(imbalance_ratio(counts), 4),
        **{f"labeled_class_{c}": int(n) for c, n in enumerate(counts.tolist())},
        **dict.fromkeys(QUERY_COLUMNS, ""),
        **{f"queried_class_{c}": "" for c in range(num_classes)},
    }
    if recorder is not None:
        # The recorder runs inside fit, so train_seconds includes it; its overhead is
        # relative to the training it was added to.
        row["record_seconds"] = round(recorder.seconds, 3)
        row["record_overhead"] = round(recorder.seconds / (train_seconds - recorder.seconds), 4)
    return row


def format_table(rows: list[dict[str, Any]]) -> str:
    """The per-cycle table the run prints: cycle, labeled, test accuracy, seconds."""
    lines = [f"{'cycle':>5} {'labeled':>8} {'test_acc':>9} {'train_s':>8} {'query_s':>8}"]
    for r in rows:
        query = f"{r['query_seconds']:8.1f}" if r["query_seconds"] != "" else f"{'-':>8}"
        # blank without a test split (an image folder without dataset.test_csv)
        test_acc = f"{r['test_acc']:>9.4f}" if r["test_acc"] != "" else f"{'-':>9}"
        lines.append(
            f"{r['cycle']:>5} {r['num_labeled']:>8} {test_acc} {r['train_seconds']:>8.1f} {query}"
        )
    return "\n".join(lines)
