"""Per-sample training dynamics (running mean of the softmax over epochs), kept on device."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor


class TrainingDynamicsTracker(pl.Callback):
    """Owns `S` (per-sample sum of softmax over the epochs so far) and the epoch counts.

    The LightningModule asks it for TiDAL's target `(S[i] + p_t[i]) / (n[i] + 1)` inside
    `training_step`, before this epoch's probabilities are added; the training step then
    returns `{"probs", "indices"}` and `on_train_batch_end` adds them with `index_add_`.
    Both buffers live on the module's device: no per-batch host transfer.

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

    def reset(self) -> None:
        """Forgets all recorded dynamics (a new cycle starts from scratch)."""
        self.prob_sums.zero_()
        self.epoch_counts.zero_()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.prob_sums = self.prob_sums.to(pl_module.device)
        self.epoch_counts = self.epoch_counts.to(pl_module.device)

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
        self.prob_sums.index_add_(0, indices, outputs["probs"].float())
        self.epoch_counts.index_add_(0, indices, torch.ones_like(indices))

    def state_dict(self) -> dict[str, Any]:
        return {"prob_sums": self.prob_sums, "epoch_counts": self.epoch_counts}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.prob_sums = state_dict["prob_sums"].to(self.prob_sums.device)
        self.epoch_counts = state_dict["epoch_counts"].to(self.epoch_counts.device)
