"""Long-tailed (class-imbalanced) training pools, as in the TiDAL paper's CIFAR-LT protocol."""

from __future__ import annotations

import torch
from torch import Tensor


def long_tail_counts(n_max: int, num_classes: int, imbalance_ratio: float) -> list[int]:
    """Samples kept per class under the exponential profile.

    Class `c` keeps `int(n_max * ratio ** (-c / (C - 1)))`: class 0 keeps `n_max`, the last
    class keeps `n_max / ratio`. A ratio of 1 keeps every class at `n_max`.
    """
    if imbalance_ratio < 1:
        raise ValueError(f"imbalance_ratio must be >= 1, got {imbalance_ratio}")
    if num_classes == 1:
        return [n_max]
    return [int(n_max * imbalance_ratio ** (-c / (num_classes - 1))) for c in range(num_classes)]


def long_tail_indices(
    targets: Tensor, num_classes: int, imbalance_ratio: float, generator: torch.Generator
) -> Tensor:
    """Indices of the training samples that form the (long-tailed) pool.

    Args:
        targets: `[N]` int64 class labels of the full training split.
        num_classes: C.
        imbalance_ratio: n_max / n_min; 1 keeps the split as it is.
        generator: CPU generator that picks which samples of each class survive.

    Returns:
        `[M]` int64 sorted dataset indices, M = sum of the per-class counts.
    """
    targets = targets.cpu()
    if imbalance_ratio == 1:
        return torch.arange(len(targets))
    per_class = torch.bincount(targets, minlength=num_classes)
    counts = long_tail_counts(int(per_class.max()), num_classes, imbalance_ratio)
    kept = []
    for c, count in enumerate(counts):
        members = torch.nonzero(targets == c).flatten()
        order = torch.randperm(len(members), generator=generator)
        kept.append(members[order[: min(count, len(members))]])
    return torch.sort(torch.cat(kept)).values
