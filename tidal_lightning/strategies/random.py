"""Random sampling: the baseline every AL method is measured against."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from tidal_lightning.strategies.base import PoolOutputs, Strategy


class RandomSampling(Strategy):
    """Labels `budget` pool samples drawn uniformly; needs no model outputs."""

    needs: ClassVar[frozenset[str]] = frozenset()

    def select(self, pool: PoolOutputs, budget: int, generator: torch.Generator) -> Tensor:
        return torch.randperm(len(pool), generator=generator, device=generator.device)[:budget]
