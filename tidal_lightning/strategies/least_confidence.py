"""Least confidence of the final model (snapshot uncertainty)."""

from __future__ import annotations

from torch import Tensor

from tidal_lightning.strategies import scores
from tidal_lightning.strategies.base import PoolOutputs, Strategy


class LeastConfidence(Strategy):
    """Lowest top-1 probability first."""

    def score(self, pool: PoolOutputs) -> Tensor:
        return scores.least_confidence(pool["probs"])
