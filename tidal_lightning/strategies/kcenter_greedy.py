"""KCenterGreedy (Sener & Savarese, ICLR 2018): greedy k-center on the penultimate embedding.

`strategy=kcenter_greedy`, and `strategy=coreset` as the TiDAL code names it. The label-dispersion
paper calls this method KCenterGreedy and keeps "CoreSet" for the paper's robust k-center MIP,
which is `strategy=coreset_mip` (`strategies/coreset_mip.py`).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from tidal_lightning.strategies.base import PoolOutputs, Strategy
from tidal_lightning.strategies.geometry import kcenter_greedy


class KCenterGreedy(Strategy):
    """Picks, one at a time, the pool sample farthest from the labeled set and the picks so far.

    Args:
        chunk_size: centers per distance block; memory is O(N · chunk_size).
    """

    needs: ClassVar[frozenset[str]] = frozenset({"embeddings", "labeled_embeddings"})

    def __init__(self, chunk_size: int = 1024) -> None:
        self.chunk_size = chunk_size

    def select(self, pool: PoolOutputs, budget: int, generator: torch.Generator) -> Tensor:
        picked = kcenter_greedy(
            pool["embeddings"], pool["labeled_embeddings"], budget, self.chunk_size
        )
        return picked.cpu()
