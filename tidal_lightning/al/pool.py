"""The one place that owns which training samples are labeled, in the pool, or neither."""

from __future__ import annotations

import torch
from torch import Tensor


class LabelPool:
    """Labeled/unlabeled bookkeeping over the dataset's training split.

    Samples outside `pool_indices` (e.g. dropped by long-tail subsampling) are never
    labeled nor scored. Every labeling goes through `label`, which refuses an index
    outside the pool or already labeled, so the two sets stay disjoint by construction.

    Args:
        num_samples: N, size of the training split.
        pool_indices: `[M]` dataset indices that form the AL pool.
    """

    def __init__(self, num_samples: int, pool_indices: Tensor) -> None:
        self.in_pool = torch.zeros(num_samples, dtype=torch.bool)
        self.in_pool[pool_indices] = True
        self.labeled = torch.zeros(num_samples, dtype=torch.bool)
        self.label_order: list[Tensor] = []  # one tensor per labeling round, in order

    @property
    def num_labeled(self) -> int:
        return int(self.labeled.sum())

    @property
    def num_unlabeled(self) -> int:
        return int((self.in_pool & ~self.labeled).sum())

    @property
    def labeled_indices(self) -> Tensor:
        """`[L]` sorted dataset indices of the labeled set."""
        return torch.nonzero(self.labeled).flatten()

    @property
    def unlabeled_indices(self) -> Tensor:
        """`[U]` sorted dataset indices of the pool samples not yet labeled."""
        return torch.nonzero(self.in_pool & ~self.labeled).flatten()

    def label(self, indices: Tensor) -> None:
        """Moves `indices` (`[B]` dataset indices) from the pool to the labeled set."""
        indices = indices.cpu().long()
        if len(torch.unique(indices)) != len(indices):
            raise ValueError("an index appears twice in one labeling round")
        if not bool(self.in_pool[indices].all()):
            raise ValueError("asked to label samples that are not in the pool")
        if bool(self.labeled[indices].any()):
            raise ValueError("asked to label samples that are already labeled")
        self.labeled[indices] = True
        self.label_order.append(indices)


def draw_initial(
    targets: Tensor,
    pool_indices: Tensor,
    size: int,
    num_classes: int,
    mode: str,
    generator: torch.Generator,
) -> Tensor:
    """The initial labeled set, `[size]` dataset indices.

    Args:
        targets: `[N]` labels of the training split.
        pool_indices: `[M]` indices to draw from.
        size: number of samples to draw (<= M).
        num_classes: K.
        mode: `random` (uniform over the pool), `one_per_class` (one sample of every class
            present, then the rest uniformly from the remaining pool: the official TiDAL
            code's default `--init_dist random`, so no class starts unlabeled; with
            `size < K`, `size` randomly chosen classes get one) or `class_balanced`
            (`size // K` per class, the remainder to randomly chosen classes; a class with
            too few samples gives all it has and the shortfall is drawn uniformly from the
            rest of the pool).
        generator: CPU generator.
    """
    if mode == "random":
        return pool_indices[torch.randperm(len(pool_indices), generator=generator)[:size]]
    if mode == "one_per_class":
        present = torch.unique(targets[pool_indices])
        quota = torch.zeros(num_classes, dtype=torch.long)
        quota[present[torch.randperm(len(present), generator=generator)[:size]]] = 1
    elif mode == "class_balanced":
        quota = torch.full((num_classes,), size // num_classes)
        quota[torch.randperm(num_classes, generator=generator)[: size % num_classes]] += 1
    else:
        raise ValueError(f"unknown initial mode {mode!r}")
    pool_targets = targets[pool_indices]
    chosen = []
    for c in range(num_classes):
        members = pool_indices[pool_targets == c]
        order = torch.randperm(len(members), generator=generator)
        chosen.append(members[order[: int(quota[c])]])
    picked = torch.cat(chosen)
    shortfall = size - len(picked)
    if shortfall > 0:
        rest = pool_indices[~torch.isin(pool_indices, picked)]
        picked = torch.cat(
            [picked, rest[torch.randperm(len(rest), generator=generator)[:shortfall]]]
        )
    return picked
