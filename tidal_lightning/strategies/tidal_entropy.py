"""TiDAL-H (Kye et al., ICCV 2023): entropy of the TD module's predicted training dynamics."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from tidal_lightning.strategies import scores
from tidal_lightning.strategies.base import PoolOutputs, Strategy


class TiDALEntropy(Strategy):
    """Highest entropy of the TD module's softmax first."""

    needs: ClassVar[frozenset[str]] = frozenset({"td_probs"})

    def score(self, pool: PoolOutputs) -> Tensor:
        return scores.entropy(pool["td_probs"])
