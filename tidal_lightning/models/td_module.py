"""TiDAL's training-dynamics prediction module (Kye et al., ICCV 2023, Appendix C)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TDModule(nn.Module):
    """Predicts a sample's training dynamics (running-mean softmax) from the stage maps.

    Each stage map goes through global average pooling, `Linear(C_s -> hidden)` and ReLU;
    the pieces are concatenated and a final `Linear` gives class logits.

    Args:
        stage_channels: channels of each backbone stage map.
        num_classes: K.
        hidden: width of each per-stage projection (128 in the paper).
    """

    def __init__(
        self, stage_channels: tuple[int, ...], num_classes: int, hidden: int = 128
    ) -> None:
        super().__init__()
        self.projections = nn.ModuleList(nn.Linear(c, hidden) for c in stage_channels)
        self.head = nn.Linear(hidden * len(stage_channels), num_classes)

    def forward(self, features: list[Tensor]) -> Tensor:
        """`features`: stage maps `[B, C_s, H_s, W_s]` -> TD logits `[B, K]`."""
        pooled = [
            F.relu(project(F.adaptive_avg_pool2d(f, 1).flatten(1)))
            for project, f in zip(self.projections, features, strict=True)
        ]
        return self.head(torch.cat(pooled, dim=1))
