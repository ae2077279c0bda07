"""Class-balanced selection for any score-based strategy (`strategy.class_balance=true`).

The rule: the budget is spread over the classes the classifier predicts for the pool, so
that the labeled set's class counts after the query are as even as the pool allows, the
rarest labeled classes served first; inside each class the highest scores go first.

That is the balancing target of Bengar et al., "Class-Balanced Active Learning for Image
Classification" (WACV 2022, §3: every class is filled towards (|L| + B) / K, the
shortfall of class c being Ω_c), met greedily by water-filling on predicted classes
instead of by their linear program; on a balanced labeled set it reduces to the per-class
quota B / K of ALScope's EntropyCB / CoreSetCB.
"""

from __future__ import annotations

import torch
from torch import Tensor


def class_quotas(labeled_counts: Tensor, available: Tensor, budget: int) -> Tensor:
    """How many of the `budget` picks each class gets, `[K]` int64 (sum <= budget).

    Water-filling, one pick at a time: the next pick goes to the class whose count
    (labeled + picks so far) is smallest among the classes that still have predicted
    pool samples left; ties go to the lowest class index. Done in closed form per
    level, so the cost is O(K²), not O(budget · K).

    Args:
        labeled_counts: `[K]` labeled samples per class.
        available: `[K]` pool samples predicted as each class (a class cannot get more).
        budget: B.

    Returns:
        `[K]` quotas; they sum to `min(budget, available.sum())`.
    """
    counts = labeled_counts.cpu().long().clone()
    room = available.cpu().long().clone()
    quotas = torch.zeros_like(counts)
    left = min(budget, int(room.sum()))
    while left > 0:
        open_ = room > 0
        level = int(counts[open_].min())
        lowest = torch.nonzero(open_ & (counts == level)).flatten()  # ascending class index
        higher = counts[open_ & (counts > level)]
        # raise every class at the lowest level by one step (or to the next level up),
        # within its room and within the budget, lowest class index first
        step = int(higher.min()) - level if len(higher) else left
        step = max(1, min(step, int(room[lowest].min())))
        if step * len(lowest) > left:
            step, extra = divmod(left, len(lowest))
            give = torch.full((len(lowest),), step)
            give[:extra] += 1
        else:
            give = torch.full((len(lowest),), step)
        counts[lowest] += give
        room[lowest] -= give
        quotas[lowest] += give
        left -= int(give.sum())
    return quotas


def class_balanced_selection(
    scores: Tensor, predicted: Tensor, labeled_counts: Tensor, budget: int
) -> Tensor:
    """Positions of `budget` pool samples: each class's quota of its highest scores.

    Args:
        scores: `[N]` higher = query first.
        predicted: `[N]` the classifier's predicted class of each pool sample.
        labeled_counts: `[K]` labeled samples per class.
        budget: B (<= N).

    Returns:
        `[B]` int64 positions on the CPU, in score order (ties by position). The quotas
        always add up to B (B <= N), so no pick is left for a second, unbalanced pass.
    """
    scores, predicted = scores.cpu(), predicted.cpu()
    num_classes = len(labeled_counts)
    available = torch.bincount(predicted, minlength=num_classes)
    quotas = class_quotas(labeled_counts, available, budget)
    order = torch.sort(scores, descending=True, stable=True).indices
    # rank of each sample within its predicted class, in score order: group the score
    # order by class (a stable sort keeps it inside each group) and count from each start
    ranked_classes = predicted[order]
    grouped = torch.sort(ranked_classes, stable=True).indices
    starts = torch.cumsum(available, 0) - available
    rank = torch.empty_like(grouped)
    rank[grouped] = torch.arange(len(grouped)) - starts[ranked_classes[grouped]]
    return order[rank < quotas[ranked_classes]]
