"""The strategy interface every query method implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor


@dataclass
class PoolOutputs:
    """What one pass over the scored pool subset produced.

    Attributes:
        indices: `[N]` dataset indices of the scored pool samples (CPU).
        outputs: named tensors from the pass, each `[N, ...]` on the scoring device;
            e.g. `"probs"` `[N, K]` (classifier softmax), `"td_probs"` `[N, K]` (TD module).
    """

    indices: Tensor
    outputs: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, name: str) -> Tensor:
        return self.outputs[name]


class Strategy:
    """Base class of query strategies.

    A strategy declares in `needs` which pool outputs it reads; the AL loop computes
    exactly those in one batched pass and trains a TD module only if `"td_probs"` is
    needed. Score-based strategies implement `score` (higher = more worth labeling);
    set-selection strategies override `select`.
    """

    needs: ClassVar[frozenset[str]] = frozenset({"probs"})

    @property
    def requires_td_module(self) -> bool:
        return "td_probs" in self.needs

    def score(self, pool: PoolOutputs) -> Tensor:
        """`[N]` float scores; higher = query first."""
        raise NotImplementedError(f"{type(self).__name__} must implement score() or select()")

    def select(self, pool: PoolOutputs, budget: int, generator: torch.Generator) -> Tensor:
        """Positions (into `pool.indices`) of the `budget` samples to label, `[budget]` int64.

        Ties are broken by position (a stable sort), so selection is deterministic.
        """
        scores = self.score(pool)
        order = torch.sort(scores, descending=True, stable=True).indices
        return order[:budget].cpu()
