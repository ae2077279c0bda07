"""A logger wrapper that keeps steps increasing across AL cycles."""

from __future__ import annotations

from argparse import Namespace
from collections.abc import Mapping
from typing import Any

from pytorch_lightning.loggers import Logger, WandbLogger


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
    """

    def __init__(self, inner: Logger, offset: int = 0) -> None:
        super().__init__()
        self.inner = inner
        self.offset = offset
        self.cycle = 0

    def start_cycle(self, cycle: int) -> None:
        self.cycle = cycle

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
