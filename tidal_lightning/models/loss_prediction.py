"""Learning Loss (Yoo & Kweon, CVPR 2019): a module that predicts the target loss of a sample."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tidal_lightning.models.td_module import TDModule


class LossPredictionModule(TDModule):
    """Predicts a sample's cross-entropy loss from the four stage maps.

    The paper's architecture is the same as TiDAL's TD module (per stage: global average
    pooling, `Linear(C_s -> hidden)`, ReLU; concatenate; `Linear`), with one output.

    Args:
        stage_channels: channels of each backbone stage map.
        hidden: width of each per-stage projection (128 in the paper).
    """

    def __init__(self, stage_channels: tuple[int, ...], hidden: int = 128) -> None:
        super().__init__(stage_channels, num_classes=1, hidden=hidden)

    def forward(self, features: list[Tensor]) -> Tensor:
        """`features`: stage maps `[B, C_s, H_s, W_s]` -> predicted loss `[B]`."""
        return super().forward(features).squeeze(1)


def ranking_loss(predicted: Tensor, target: Tensor, margin: float = 1.0) -> Tensor:
    """The paper's pairwise margin ranking loss on the pairs `(i, B-1-i)` of a batch.

    For each pair the target sign is +1 when sample i's true loss is larger, else -1;
    the loss is `max(0, margin - sign * (pred_i - pred_j))`, averaged over the `B // 2`
    pairs (the middle sample of an odd batch has no partner).

    Args:
        predicted: `[B]` predicted losses.
        target: `[B]` true per-sample losses (detached).
        margin: ξ, 1.0 in the paper.

    Returns:
        Scalar loss (0 for a batch with fewer than 2 samples).
    """
    half = len(predicted) // 2
    if half == 0:
        return predicted.sum() * 0.0
    predicted_diff = (predicted - predicted.flip(0))[:half]
    target_diff = (target - target.flip(0))[:half]
    sign = torch.where(target_diff > 0, 1.0, -1.0)
    return F.relu(margin - sign * predicted_diff).mean()


def pairwise_bce_ranking_loss(predicted: Tensor, target: Tensor, margin: float = 1.0) -> Tensor:
    """TA-VAAL's relaxation of the ranking loss, on the same pairs `(i, B-1-i)`.

    The predicted difference goes through a sigmoid and is scored with binary cross-entropy
    against "sample i's true loss is larger": `-[t log σ(Δ) + (1 - t) log(1 - σ(Δ))]` with
    `Δ = pred_i - pred_j`, `t = 1[loss_i > loss_j]`, averaged over the `B // 2` pairs (as
    `LossPredLoss` in the TA-VAAL authors' `train_test.py`). `margin` is accepted for the
    same signature as `ranking_loss` and unused, as there.

    Returns:
        Scalar loss (0 for a batch with fewer than 2 samples).
    """
    half = len(predicted) // 2
    if half == 0:
        return predicted.sum() * 0.0
    predicted_diff = (predicted - predicted.flip(0))[:half]
    target_larger = ((target - target.flip(0))[:half] > 0).to(predicted_diff.dtype)
    return F.binary_cross_entropy_with_logits(predicted_diff, target_larger)


# `loss_ranking` of the system / `strategy.ranking` of Learning Loss -> the loss it names.
RANKING_LOSSES = {"margin": ranking_loss, "bce": pairwise_bce_ranking_loss}
