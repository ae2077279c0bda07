"""Label dispersion (Bengar et al., "When Deep Learners Change Their Mind", 2021)."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from tidal_lightning.strategies import scores
from tidal_lightning.strategies.base import PoolOutputs, Strategy


class Dispersion(Strategy):
    """Highest `1 - f_x / T` first: pool samples whose predicted label kept changing.

    The per-epoch recorder predicts the label of every pool-subset sample after every
    `record_every`-th epoch of the cycle's training; f_x counts the epochs that predicted
    the sample's most frequent label, T the recorded epochs.

    Args:
        record_every: record every this many epochs (1 in the paper).
    """

    needs: ClassVar[frozenset[str]] = frozenset({"label_counts"})

    def __init__(self, record_every: int = 1) -> None:
        self.record_every = record_every

    def score(self, pool: PoolOutputs) -> Tensor:
        return scores.dispersion(pool["label_counts"])
