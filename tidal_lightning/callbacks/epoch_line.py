"""One plain line per epoch, for logs that are not a terminal (no progress bar there)."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytorch_lightning as pl

log = logging.getLogger("tidal_lightning.train")


class EpochLine(pl.Callback):
    """Logs `cycle c epoch e/E | train/loss x | s` at the end of every training epoch.

    A progress bar written to a file is a stream of carriage returns (one update per step);
    this is what stays readable. The loss is read once per epoch, from what the system
    summed on the device, so no step waits on it.

    Args:
        cycle: the AL cycle, for the line's prefix.
    """

    def __init__(self, cycle: int) -> None:
        self.cycle = cycle
        self._started = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_rank != 0:
            return
        # callbacks run before the module's own epoch end, so this epoch is not logged yet
        means: dict[str, Any] = getattr(pl_module, "epoch_loss_means", dict)()
        loss = means.get("train/loss")
        log.info(
            "cycle %d epoch %d/%d | train/loss %s | %.1fs",
            self.cycle,
            trainer.current_epoch + 1,
            trainer.max_epochs,
            f"{float(loss):.4f}" if loss is not None else "-",
            time.perf_counter() - self._started,
        )
