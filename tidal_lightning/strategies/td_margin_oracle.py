"""Margin of the *actual* training dynamics of the pool: what TiDAL-M approximates."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from tidal_lightning.strategies import scores
from tidal_lightning.strategies.base import PoolOutputs, Strategy


class TDMarginOracle(Strategy):
    """Smallest margin of the pool sample's recorded mean softmax first.

    Same formula as TiDAL-M (margin measured from the classifier's predicted class) with
    the recorded TD in place of the TD module's prediction; trains exactly as TiDAL-M.

    Args:
        record_every: record every this many epochs.
    """

    needs: ClassVar[frozenset[str]] = frozenset({"probs", "td_probs", "pool_td"})

    def __init__(self, record_every: int = 1) -> None:
        self.record_every = record_every

    def score(self, pool: PoolOutputs) -> Tensor:
        return scores.negative_margin(pool["pool_td"], pool["probs"].argmax(dim=1))
