"""Per-sample training dynamics (running mean of the softmax over epochs), kept on device."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from tidal_lightning import distributed


class TrainingDynamicsTracker(pl.Callback):
    """Owns `S` (per-sample sum of softmax over the epochs so far) and the epoch counts.

    The LightningModule asks it for TiDAL's target `(S[i] + p_t[i]) / (n[i] + 1)` inside
    `training_step`; the training step then returns `{"probs", "indices"}` and
    `on_train_batch_end` collects them. All buffers live on the module's device: no
    per-batch host transfer.

    Inside a Lightning fit, a batch's probabilities go to per-epoch buffers (`index_add_`
    of the softmax and of a 1 per view); at the end of the epoch they are summed over the
    DDP ranks (one `all_reduce` per epoch, none in one process) and every sample seen in the
    epoch adds the mean of its views to `S` and 1 to `n`. So a sample counts exactly once
    per epoch even when a padding `DistributedSampler` shows it twice, on one rank or on
    two, and `S`, `n` never include the current epoch while it runs. A sample seen once adds
    `(0 + p) / 1`, i.e. exactly `p`: one process gives bit-identical sums to adding `p` at
    once. Called outside a fit (no epoch started), `on_train_batch_end` adds to `S`, `n`
    directly, each call counting as one epoch of its samples.

    Counting epochs per sample (rather than using the trainer's epoch) keeps the mean right
    when a sample is not seen in some epoch.

    Args:
        num_samples: N, the size of the training split (buffers are indexed by dataset index).
        num_classes: K.
    """

    def __init__(self, num_samples: int, num_classes: int) -> None:
        super().__init__()
        self.num_samples = num_samples
        self.num_classes = num_classes
        self.prob_sums = torch.zeros(num_samples, num_classes)  # S, [N, K] float32
        self.epoch_counts = torch.zeros(num_samples, dtype=torch.long)  # n, [N]
        # this epoch's softmax sums and views per sample, [N, K] and [N], kept between epochs
        # (zeroing in place is far cheaper than fresh pages on a CPU)
        self._epoch_probs = torch.zeros(num_samples, num_classes)
        self._epoch_views = torch.zeros(num_samples, dtype=torch.long)
        self._in_epoch = False

    def reset(self) -> None:
        """Forgets all recorded dynamics (a new cycle starts from scratch)."""
        self.prob_sums.zero_()
        self.epoch_counts.zero_()
        self._in_epoch = False

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.prob_sums = self.prob_sums.to(pl_module.device)
        self.epoch_counts = self.epoch_counts.to(pl_module.device)
        self._epoch_probs = self._epoch_probs.to(pl_module.device)
        self._epoch_views = self._epoch_views.to(pl_module.device)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_probs.zero_()
        self._epoch_views.zero_()
        self._in_epoch = True

    def running_mean_target(self, indices: Tensor, probs: Tensor) -> Tensor:
        """TiDAL's TD target for a batch, including the current epoch.

        Args:
            indices: `[B]` dataset indices.
            probs: `[B, K]` this epoch's (detached) softmax for those samples.

        Returns:
            `[B, K]` float32 running mean `(S[i] + p_t[i]) / (n[i] + 1)`.
        """
        sums = self.prob_sums[indices] + probs.float()
        return sums / (self.epoch_counts[indices] + 1).unsqueeze(1)

    def mean_probs(self, indices: Tensor) -> Tensor:
        """`[B, K]` mean softmax over the recorded epochs (zeros for unseen samples)."""
        counts = self.epoch_counts[indices].clamp(min=1).unsqueeze(1)
        return self.prob_sums[indices] / counts

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        indices = outputs["indices"]
        sums, counts = (
            (self._epoch_probs, self._epoch_views)
            if self._in_epoch
            else (self.prob_sums, self.epoch_counts)
        )
        sums.index_add_(0, indices, outputs["probs"].float())
        counts.index_add_(0, indices, torch.ones_like(indices))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._in_epoch:
            return
        self._in_epoch = False
        epoch_probs = distributed.all_reduce_sum_(self._epoch_probs)
        views = distributed.all_reduce_sum_(self._epoch_views)
        # unseen rows add 0 / 1; a row seen once adds exactly its p (a float divisor keeps the
        # division in place and cheap)
        self.prob_sums += epoch_probs.div_(views.clamp(min=1).to(epoch_probs.dtype).unsqueeze(1))
        self.epoch_counts += (views > 0).long()

    def state_dict(self) -> dict[str, Any]:
        return {"prob_sums": self.prob_sums, "epoch_counts": self.epoch_counts}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.prob_sums = state_dict["prob_sums"].to(self.prob_sums.device)
        self.epoch_counts = state_dict["epoch_counts"].to(self.epoch_counts.device)
