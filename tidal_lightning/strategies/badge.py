"""BADGE (Ash et al., ICLR 2020): diverse, uncertain gradient embeddings via k-means++."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from tidal_lightning.strategies.base import PoolOutputs, Strategy
from tidal_lightning.strategies.geometry import kmeans_pp_gradient


class BADGE(Strategy):
    """k-means++ seeding on the last layer's gradient embeddings with the predicted label.

    Uncertain samples have long gradient embeddings (D² sampling favours them), and
    samples far from the chosen ones are favoured too, so the batch is diverse.
    """

    needs: ClassVar[frozenset[str]] = frozenset({"probs", "embeddings"})

    def select(self, pool: PoolOutputs, budget: int, generator: torch.Generator) -> Tensor:
        return kmeans_pp_gradient(pool["probs"], pool["embeddings"], budget, generator).cpu()
