"""`EpochProfiler`: per-epoch wall time and step count of every `trainer.fit`, with no change
to the loop, and optionally CUDA's sync check inside the epochs.

Any run records its epochs with two overrides (the AL loop builds every cycle's Trainer from
`cfg.trainer`, so each cycle's fit gets a fresh profiler, all appending to one file):

    python -m tidal_lightning ... \
        +trainer.profiler._target_=tidal_lightning.profiling.EpochProfiler \
        +trainer.profiler.path=epochs.jsonl

`+trainer.profiler.sync_debug=error` makes every operation that waits for the GPU inside an
epoch's batch loop (after the first epoch, whose warm-up may) raise, with the place in its
traceback (`torch.cuda.set_sync_debug_mode`); `warn` only warns.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.profilers import Profiler

EPOCH_ACTION = "run_training_epoch"  # Lightning's name for one epoch's batch loop
BATCH_ACTION = "run_training_batch"  # ... and for one training step (forward to optimizer step)
SYNC_DEBUG_MODES = ("warn", "error")

_fit_ids = itertools.count()


def synchronize() -> None:
    """Waits for the GPU's queue, so a host clock read after it includes the queued work."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class EpochProfiler(Profiler):
    """Writes one JSON line per event to `path`:

    - `{"event": "fit", "fit": f, "time": t}` when fit `f` starts (`t`: Unix seconds);
    - `{"event": "epoch", "fit": f, "epoch": e, "steps": n, "seconds": s, "last": b}` per epoch.

    An epoch runs from the start of its batch loop to the start of the next epoch's, so its
    epoch-end and epoch-start hooks (logging included) count. The last epoch of a fit has no
    next start: it ends with its batch loop, and may have been cut short (`max_time`), so it is
    marked `last: true`. The device is synchronised at every mark; `steps` counts the training
    steps Lightning ran in the epoch. Lines are appended as they happen, so a killed run keeps
    the epochs it finished.

    Args:
        path: the JSON-lines file (appended to; its folder is created).
        sync_debug: `None`, `"warn"` or `"error"`: CUDA's sync check during the batch loops of
            every epoch but a fit's first (nothing to check where CUDA is not in use).
    """

    def __init__(self, path: str, sync_debug: str | None = None) -> None:
        super().__init__()
        if sync_debug is not None and sync_debug not in SYNC_DEBUG_MODES:
            raise ValueError(
                f"EpochProfiler sync_debug={sync_debug!r}: use one of {SYNC_DEBUG_MODES} or null"
            )
        self.path = Path(path)
        self.sync_debug = sync_debug
        self.fit = -1
        self.epoch = -1
        self.steps = 0
        self.epoch_started: float | None = None
        self.epoch_stopped: float | None = None
        self.sync_mode_before: int | None = None

    def _write(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def _close_epoch(self, until: float, last: bool) -> None:
        if self.epoch_started is None:
            return
        self._write(
            {
                "event": "epoch",
                "fit": self.fit,
                "epoch": self.epoch,
                "steps": self.steps,
                "seconds": until - self.epoch_started,
                "last": last,
            }
        )
        self.epoch_started = None

    def setup(self, stage: str, local_rank: int | None = None, log_dir: str | None = None) -> None:
        super().setup(stage, local_rank, log_dir)
        if stage == "fit":
            self.fit = next(_fit_ids)
            self.epoch = -1
            self.epoch_started = self.epoch_stopped = None
            self._write({"event": "fit", "fit": self.fit, "time": time.time()})

    def start(self, action_name: str) -> None:
        if action_name == BATCH_ACTION:
            self.steps += 1
        elif action_name == EPOCH_ACTION:
            synchronize()
            now = time.perf_counter()
            self._close_epoch(now, last=False)
            self.epoch += 1
            self.steps = 0
            self.epoch_started = now
            if self.sync_debug is not None and self.epoch > 0 and torch.cuda.is_initialized():
                self.sync_mode_before = torch.cuda.get_sync_debug_mode()
                torch.cuda.set_sync_debug_mode(self.sync_debug)

    def stop(self, action_name: str) -> None:
        if action_name != EPOCH_ACTION:
            return
        if self.sync_mode_before is not None:
            torch.cuda.set_sync_debug_mode(self.sync_mode_before)
            self.sync_mode_before = None
        synchronize()
        self.epoch_stopped = time.perf_counter()

    def teardown(self, stage: str | None) -> None:
        if stage == "fit" and self.epoch_stopped is not None:
            self._close_epoch(self.epoch_stopped, last=True)
        super().teardown(stage)
