"""Margin between the final model's two most probable classes (snapshot uncertainty)."""

from __future__ import annotations

from torch import Tensor

from tidal_lightning.strategies import scores
from tidal_lightning.strategies.base import PoolOutputs, Strategy


class Margin(Strategy):
    """Smallest top-1 minus top-2 probability first."""

    def score(self, pool: PoolOutputs) -> Tensor:
        return scores.negative_margin(pool["probs"])
