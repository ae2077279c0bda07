"""Entropy of the final model's softmax (snapshot uncertainty)."""

from __future__ import annotations

from torch import Tensor

from tidal_lightning.strategies import scores
from tidal_lightning.strategies.base import PoolOutputs, Strategy


class Entropy(Strategy):
    """Highest predictive entropy first."""

    def score(self, pool: PoolOutputs) -> Tensor:
        return scores.entropy(pool["probs"])
