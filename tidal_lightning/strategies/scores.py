"""Uncertainty formulas shared by the snapshot and TiDAL strategies. Higher = more uncertain."""

from __future__ import annotations

import torch
from torch import Tensor


def entropy(probs: Tensor) -> Tensor:
    """Shannon entropy in nats, `[N, K] -> [N]`; 0·log 0 counts as 0."""
    return torch.special.entr(probs).sum(dim=1)


def negative_margin(probs: Tensor, reference_class: Tensor | None = None) -> Tensor:
    """Minus the margin `p[ref] - max_{k != ref} p[k]`, `[N, K] -> [N]`.

    Args:
        probs: `[N, K]` probabilities.
        reference_class: `[N]` class whose probability the margin is measured from;
            None uses each row's own argmax (the usual top-1 minus top-2 margin).
    """
    if reference_class is None:
        reference_class = probs.argmax(dim=1)
    reference = probs.gather(1, reference_class[:, None])
    others = probs.scatter(1, reference_class[:, None], float("-inf"))
    return -(reference.squeeze(1) - others.max(dim=1).values)


def least_confidence(probs: Tensor) -> Tensor:
    """`1 - max_k p[k]`, `[N, K] -> [N]`."""
    return 1.0 - probs.max(dim=1).values
