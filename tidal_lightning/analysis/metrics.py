"""The analyses' numbers, as pure functions: AUROC, the minority split, accuracy on the top x%."""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats
from torch import Tensor


def auroc(scores: Tensor, positive: Tensor) -> float:
    """Area under the ROC curve of `scores` at telling `positive` samples from the rest.

    The Mann–Whitney form: the probability that a random positive scores higher than a
    random negative, ties counting one half (average ranks). 1 = every positive above every
    negative, 0.5 = no separation, 0 = every positive below.

    Args:
        scores: `[N]` float, higher = "more likely positive".
        positive: `[N]` bool.

    Raises:
        ValueError: one of the two groups is empty (the AUROC is undefined).
    """
    values = scores.detach().double().cpu().numpy()
    is_positive = positive.detach().bool().cpu().numpy()
    n_pos = int(is_positive.sum())
    n_neg = len(is_positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUROC needs both groups: {n_pos} positives, {n_neg} negatives")
    ranks = stats.rankdata(values, method="average")
    rank_sum = float(ranks[is_positive].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def minority_classes(class_counts: Tensor) -> Tensor:
    """Which classes count as minority: the `⌊K/2⌋` classes with the fewest samples.

    The rest (`⌈K/2⌉` classes, the larger half) are the majority. Equal counts are broken by
    class index, the lower index going to the majority, so the split is always the same.

    Args:
        class_counts: `[K]` samples per class (of the training pool).

    Returns:
        `[K]` bool, True for a minority class.
    """
    num_classes = len(class_counts)
    order = torch.sort(class_counts.cpu(), descending=True, stable=True).indices
    minority = torch.zeros(num_classes, dtype=torch.bool)
    minority[order[(num_classes + 1) // 2 :]] = True
    return minority


def top_sizes(num_samples: int, percents: list[int]) -> list[int]:
    """`ceil(x · N / 100)` for each x, at least 1: how many samples make up the top x%."""
    return [max(1, -(-x * num_samples // 100)) for x in percents]


def accuracy_at_top(order: Tensor, correct: Tensor, sizes: list[int]) -> list[float]:
    """The model's accuracy on the first `k` samples of `order`, for each `k` in `sizes`.

    Args:
        order: `[M]` positions into `correct`, most worth querying first (M >= max(sizes)).
        correct: `[N]` bool, the model's prediction is the true label.
        sizes: the prefix lengths k.

    Returns:
        One accuracy in [0, 1] per size.
    """
    if max(sizes) > len(order):
        raise ValueError(f"the order ranks {len(order)} samples, fewer than {max(sizes)}")
    hits = correct[order.to(correct.device)].double().cumsum(0)
    # one transfer for the whole table
    at = hits[torch.tensor(sizes, device=hits.device) - 1].cpu()
    return [float(h) / k for h, k in zip(at.tolist(), sizes, strict=True)]


def density_curve(values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """A Gaussian KDE (Scott's bandwidth) of `values` evaluated on `grid`.

    A group with fewer than two distinct values has no bandwidth; it gets a histogram-like
    spike of unit area at its value(s) instead of an error, so a tiny group still plots.
    """
    if len(np.unique(values)) < 2:
        density = np.zeros_like(grid)
        if len(values):
            spacing = float(grid[1] - grid[0]) if len(grid) > 1 else 1.0
            density[np.abs(grid - values[0]).argmin()] = 1.0 / spacing
        return density
    return stats.gaussian_kde(values)(grid)
