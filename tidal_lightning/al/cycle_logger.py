"""A logger wrapper that keeps steps increasing across AL cycles."""

from __future__ import annotations

import csv
import io
import math
import os
from argparse import Namespace
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from lightning_fabric.loggers.csv_logs import _ExperimentWriter
from omegaconf import DictConfig
from pytorch_lightning.loggers import CSVLogger, Logger, WandbLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from tidal_lightning.al.records import atomic_write_text


class CycleStepLogger(Logger):
    """Delegates to `inner`, adding `offset` to every step Lightning logs.

    Each cycle has a fresh Trainer whose global step restarts at 0; W&B drops steps that do
    not increase, and CSV/W&B charts would overlay the cycles. With the offset the per-epoch
    curves of successive cycles follow each other on one axis, and `train/cycle` tells them
    apart. (Not `al/cycle`: W&B charts `al/*` against `al/num_labeled` and would fill that
    step metric into every per-epoch row.)

    Args:
        inner: the configured Lightning logger.
        offset: the step the first cycle run by this process starts at (non-zero on resume).
        keep_below: a resumed CSV log keeps the rows of the steps below this (the committed
            cycles'); default `offset`.
    """

    def __init__(self, inner: Logger, offset: int = 0, keep_below: int | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.offset = offset
        self.cycle = 0
        if isinstance(inner, ResumableCSVLogger):
            inner.keep_steps_below(offset if keep_below is None else keep_below)

    def start_cycle(self, cycle: int) -> None:
        self.cycle = cycle

    def flush(self) -> None:
        """Makes everything logged so far durable before the cycle is committed.

        W&B writes its files from a service process, which a killed run's last records may
        never reach; so its run is finished here (that waits for the files) and resumed,
        under the same id, at the next log call. The CSV writer saves on every epoch.
        """
        if isinstance(self.inner, WandbLogger) and self.inner._experiment is not None:
            self.inner._experiment.finish()
            self.inner._experiment = None
        else:
            self.inner.save()

    def define_metrics(self) -> None:
        """W&B: chart `al/*` against `al/num_labeled` (Lightning's loggers use steps)."""
        experiment = self.experiment
        define_metric = getattr(experiment, "define_metric", None)
        if callable(define_metric) and getattr(self, "_defined_for", None) is not experiment:
            define_metric("al/num_labeled")
            define_metric("al/*", step_metric="al/num_labeled")
            self._defined_for = experiment

    def end_cycle(self, global_step: int) -> None:
        """Moves the offset past the steps of the cycle that just ended."""
        self.offset += global_step + 1

    @property
    def name(self) -> str | None:
        return self.inner.name

    @property
    def version(self) -> int | str | None:
        return self.inner.version

    @property
    def save_dir(self) -> str | None:
        return self.inner.save_dir

    @property
    def root_dir(self) -> str | None:
        return self.inner.root_dir

    @property
    def log_dir(self) -> str | None:
        return self.inner.log_dir

    @property
    def experiment(self) -> Any:
        return getattr(self.inner, "experiment", None)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.define_metrics()  # again after `flush` resumed a W&B run
        if step is None:  # per-cycle `al/*` values, charted against al/num_labeled
            self.inner.log_metrics(dict(metrics))
            return
        self.inner.log_metrics({**metrics, "train/cycle": self.cycle}, step + self.offset)

    def log_class_histogram(self, key: str, counts: list[int]) -> None:
        """A per-class count histogram, for loggers that chart one (W&B); others have the
        counts as `al/queried_class_<k>` scalars already."""
        experiment = self.experiment
        if isinstance(self.inner, WandbLogger) and experiment is not None:
            import numpy as np
            import wandb

            edges = np.arange(len(counts) + 1) - 0.5  # one bin per class index
            experiment.log({key: wandb.Histogram(np_histogram=(np.asarray(counts), edges))})

    def log_learning_curve(self, rows: list[dict[str, Any]]) -> None:
        """The run's learning curve as one table (W&B); CSV loggers have it row by row."""
        if isinstance(self.inner, WandbLogger):
            columns = ["cycle", "num_labeled", "test_acc"]
            self.inner.log_table(
                "al/learning_curve", columns, [[r[c] for c in columns] for r in rows]
            )

    def log_hyperparams(
        self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any
    ) -> None:
        self.inner.log_hyperparams(params, *args, **kwargs)

    def save(self) -> None:
        self.inner.save()

    def finalize(self, status: str) -> None:
        self.inner.finalize(status)


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, but an existing `metrics.csv` is continued, not deleted.

    Lightning's writer deletes the file it finds (it assumes a new experiment), so every
    resumed run would lose the curves of the cycles before it. This one keeps the rows of
    the committed steps (`step < keep_below`) and drops those a killed attempt logged
    beyond them, which the resumed run logs again.
    """

    def __init__(self, log_dir: str, keep_below: int) -> None:
        self.keep_below = keep_below
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        reader = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"), newline=""))
        header = list(reader.fieldnames or [])
        kept = [row for row in reader if _step(row) < self.keep_below]
        self.metrics_keys = sorted(header)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.metrics_keys, lineterminator="\n")
        writer.writeheader()
        writer.writerows(kept)
        atomic_write_text(path, buffer.getvalue())


def _step(row: dict[str, str]) -> float:
    try:
        return float(row.get("step") or "nan")
    except ValueError:
        return math.nan


class ResumableCSVLogger(CSVLogger):
    """Lightning's `CSVLogger` whose `metrics.csv` survives any number of resumes.

    `CycleStepLogger` tells it where the committed cycles' steps end (`keep_steps_below`)
    before anything is logged; rows from there on (a killed cycle's) are dropped and the
    rest is continued.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._keep_below = 0

    def keep_steps_below(self, step: int) -> None:
        self._keep_below = step

    @property
    def experiment(self) -> _ExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(self.log_dir, self._keep_below)
        return self._experiment


def upper_bound_steps(max_epochs: int, num_labeled: int, batch_size: int) -> int:
    """At most how many optimiser steps one cycle takes: a killed cycle logged no further."""
    return max_epochs * math.ceil(num_labeled / batch_size) + 1


def make_logger(
    cfg: DictConfig,
    summary: dict[str, Any],
    logger_id: str,
    config: dict[str, Any],
    offset: int = 0,
    keep_below: int | None = None,
) -> CycleStepLogger | None:
    """The configured logger wrapped so steps keep increasing across cycles, or None.

    Keys the logger config leaves null are filled in from the run: for W&B the run `id`
    (kept in the state, so a resumed run logs into the same W&B run rather than a new
    one), a `name` and `tags` from strategy, dataset, imbalance ratio and seed.

    Args:
        summary: the run summary (strategy, dataset, imbalance ratio, seed).
        logger_id: the run's logger id.
        config: the resolved config, logged as the hyperparameters.
        offset, keep_below: see `CycleStepLogger`.
    """
    if not cfg.get("logger"):
        return None
    filled = {
        "id": logger_id,
        "name": f"{summary['strategy_name']}-{summary['dataset']}"
        f"-ir{summary['imbalance_ratio']:g}-seed{summary['seed']}",
        "tags": [
            str(summary["dataset"]),
            f"imbalance_ratio={summary['imbalance_ratio']:g}",
            str(summary["strategy_name"]),
            f"seed={summary['seed']}",
        ],
    }
    extra = {k: v for k, v in filled.items() if k in cfg.logger and cfg.logger[k] is None}
    logger = CycleStepLogger(instantiate(cfg.logger, **extra), offset, keep_below)
    logger.log_hyperparams(config)
    logger.define_metrics()
    return logger


def log_cycle(logger: CycleStepLogger | None, row: dict[str, Any]) -> None:
    """Logs the row's numeric per-cycle values as `al/<column>`; blanks and inf are skipped."""
    if logger is None:
        return
    metrics = {
        f"al/{name}": float(value)
        for name, value in row.items()
        if name != "cycle" and isinstance(value, int | float) and math.isfinite(value)
    }
    logger.log_metrics({**metrics, "al/cycle": row["cycle"]})


def close_logger(logger: CycleStepLogger | None, status: str = "success") -> None:
    """Finalises the logger; W&B's run is finished so its files are complete on return."""
    if logger is None:
        return
    logger.finalize(status)
    # Lightning leaves W&B runs open until interpreter exit; close it so the run's files
    # (summary included) are complete when `run` returns, e.g. between sweep jobs.
    finish = getattr(logger.experiment, "finish", None)
    if callable(finish):
        finish()
