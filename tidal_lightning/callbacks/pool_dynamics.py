"""Per-epoch predictions on the cycle's pool subset: label dispersion and the actual pool TD."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import pytorch_lightning as pl
import torch
from torch import Tensor

from tidal_lightning import distributed
from tidal_lightning.data.streaming import prefetched

if TYPE_CHECKING:
    from tidal_lightning.models.system import ActiveLearningSystem


@dataclass(frozen=True)
class IndexedImages:
    """`[N, C, H, W]` uint8 images read on demand: row `p` is training sample `indices[p]`.

    Attributes:
        gather: `gather(dataset indices [B], device) -> [B, C, H, W]` uint8 on `device` (the
            datamodule's `gather`: an index op on its device copy, or a read from its cache).
        indices: `[N]` dataset indices, in row order.
    """

    gather: Callable[[Tensor, torch.device], Tensor]
    indices: Tensor

    def __len__(self) -> int:
        return len(self.indices)

    def rows(self, positions: Tensor, device: torch.device) -> Tensor:
        """`[B, C, H, W]` images of rows `positions` (`[B]`), on `device`."""
        return self.gather(self.indices[positions.cpu()], device)


class PoolDynamicsRecorder(pl.Callback):
    """Runs the model over the scored pool subset at the end of every `every_n_epochs` epoch.

    Keeps, on the module's device, the per-sample count of each predicted label (label
    dispersion, Bengar et al. 2021) and, optionally, the sum of the softmax (the pool
    samples' actual training dynamics, which TiDAL's module approximates). The pass runs
    in eval mode and draws no random numbers, so recording does not change training.

    Under DDP each rank predicts its strided shard of the subset (with rank 0's BatchNorm
    statistics, so the shards agree with one process) and the epoch's counts and softmax
    sums are summed over the ranks (one `all_reduce` each per recorded epoch): every rank
    holds the full buffers, each sample counted once per recorded epoch.

    Memory: the `[N, K]` buffers on the device, plus the images: with `images` a tensor,
    this rank's shard of it, moved to the device once per fit; with `IndexedImages` (pools
    too large for that, or a datamodule that streams from disk) two chunks of
    `batch_size` images per pass, read through `gather` (the next while one is predicted).

    Args:
        images: the pool subset in scoring order: `[N, C, H, W]` uint8, or `IndexedImages`.
        normalize: the datamodule's `normalize` (uint8 batch -> float batch on its device).
        num_classes: K.
        batch_size: batch size of the pass.
        every_n_epochs: record after epochs `k-1, 2k-1, ...` (0-based), i.e. every k-th.
        record_probs: also sum the softmax (for `pool_td`).
    """

    def __init__(
        self,
        images: Tensor | IndexedImages,
        normalize: Callable[[Tensor], Tensor],
        num_classes: int,
        batch_size: int = 1024,
        every_n_epochs: int = 1,
        record_probs: bool = False,
    ) -> None:
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs={every_n_epochs}: must be >= 1")
        self.images = images
        self.normalize = normalize
        self.batch_size = batch_size
        self.every_n_epochs = every_n_epochs
        self.record_probs = record_probs
        n = len(images)
        self.label_counts = torch.zeros(n, num_classes, dtype=torch.int32)  # [N, K]
        self.prob_sums = torch.zeros(n, num_classes) if record_probs else None  # [N, K]
        self.recorded_epochs = 0
        self.seconds = 0.0  # wall time spent in the pool passes, summed over epochs
        self._positions = torch.arange(n)  # [N_r] this rank's rows of the subset (device)
        self._host_positions = self._positions  # the same on the CPU, to index `images` with
        # [N_r, C, H, W] their images on the device during fit (a tensor `images` only)
        self._shard_images: Tensor | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        device = pl_module.device
        positions = distributed.shard(len(self.images))  # [N_r]
        self._positions = positions.to(device)
        self._host_positions = positions
        self._shard_images = None
        if isinstance(self.images, Tensor):
            # Moved once per cycle (this rank's shard only): the per-epoch pass then reads
            # images already on the device.
            shard = self.images
            if distributed.is_distributed():
                shard = self.images[positions.to(self.images.device)]
            self._shard_images = shard.to(device)
        self.label_counts = self.label_counts.to(device)
        if self.prob_sums is not None:
            self.prob_sums = self.prob_sums.to(device)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self._synchronize(pl_module.device)
        started = time.perf_counter()
        system = cast("ActiveLearningSystem", pl_module)
        distributed.broadcast_buffers_(system)
        was_training = system.training
        system.eval()
        counts = torch.zeros_like(self.label_counts)  # this epoch's, [N, K]
        prob_sums = torch.zeros_like(self.prob_sums) if self.prob_sums is not None else None
        for start, images in self._chunks(pl_module.device):
            probs = system.predict_batch(self.normalize(images))["probs"]
            rows = self._positions[start : start + self.batch_size]
            predicted = probs.argmax(dim=1)
            counts[rows, predicted] = 1  # rows are distinct: one label per sample
            if prob_sums is not None:
                prob_sums[rows] = probs
        system.train(was_training)
        self.label_counts += distributed.all_reduce_sum_(counts)
        if self.prob_sums is not None and prob_sums is not None:
            self.prob_sums += distributed.all_reduce_sum_(prob_sums)
        self.recorded_epochs += 1
        # One synchronisation per epoch (not per batch) so the reported cost is real on a GPU.
        self._synchronize(pl_module.device)
        self.seconds += time.perf_counter() - started

    def _chunks(self, device: torch.device) -> Iterator[tuple[int, Tensor]]:
        """`(first row, [B, C, H, W] uint8 on device)` for this rank's rows, in order."""
        starts = range(0, len(self._positions), self.batch_size)
        if self._shard_images is not None:
            shard = self._shard_images
            yield from ((start, shard[start : start + self.batch_size]) for start in starts)
            return
        source = cast("IndexedImages", self.images)
        positions = self._host_positions

        def read(start: int) -> Tensor:
            return source.rows(positions[start : start + self.batch_size], device)

        yield from zip(starts, prefetched(read, starts, depth=1), strict=True)

    @staticmethod
    def _synchronize(device: torch.device) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def outputs(self) -> dict[str, Tensor]:
        """`label_counts` `[N, K]` int32 and, if recorded, `pool_td` `[N, K]` (mean softmax)."""
        if self.recorded_epochs == 0:
            raise RuntimeError("no epoch was recorded: every_n_epochs exceeds the epochs trained")
        outputs = {"label_counts": self.label_counts}
        if self.prob_sums is not None:
            outputs["pool_td"] = self.prob_sums / self.recorded_epochs
        return outputs

    def state_dict(self) -> dict[str, Any]:
        return {
            "label_counts": self.label_counts,
            "prob_sums": self.prob_sums,
            "recorded_epochs": self.recorded_epochs,
            "seconds": self.seconds,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.label_counts = state_dict["label_counts"].to(self.label_counts.device)
        if state_dict["prob_sums"] is not None and self.prob_sums is not None:
            self.prob_sums = state_dict["prob_sums"].to(self.prob_sums.device)
        self.recorded_epochs = int(state_dict["recorded_epochs"])
        self.seconds = float(state_dict["seconds"])
