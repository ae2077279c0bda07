"""Entropy of the *actual* training dynamics of the pool: what TiDAL-H approximates."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from tidal_lightning.strategies import scores
from tidal_lightning.strategies.base import PoolOutputs, Strategy


class TDEntropyOracle(Strategy):
    """Highest entropy of the pool sample's recorded mean softmax first.

    The recorder predicts the pool subset after every `record_every`-th epoch; its mean
    softmax is the TD that TiDAL's module predicts from one final forward pass. The model
    trains exactly as for TiDAL-H (the TD module included), so the two runs differ only
    in the quantity the query reads, and the loop logs how far the module's prediction is
    from the recorded TD (`td_pool_kl`).

    Args:
        record_every: record every this many epochs.
    """

    needs: ClassVar[frozenset[str]] = frozenset({"td_probs", "pool_td"})

    def __init__(self, record_every: int = 1) -> None:
        self.record_every = record_every

    def score(self, pool: PoolOutputs) -> Tensor:
        return scores.entropy(pool["pool_td"])
