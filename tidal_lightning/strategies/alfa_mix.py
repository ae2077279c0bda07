"""ALFA-Mix (Parvaneh, Abbasnejad, Teney, Haffari, van den Hengel & Shi, CVPR 2022): active
learning by feature mixing."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor

from tidal_lightning.strategies.base import PoolOutputs, Strategy
from tidal_lightning.strategies.geometry import kmeans

# Elements in the largest per-block temporary (2^24 floats: 64 MB in float32).
BLOCK_ELEMENTS = 2**24


def class_anchors(labeled_embeddings: Tensor, labeled_targets: Tensor, num_classes: int) -> Tensor:
    """`[K, D]` mean labeled embedding of each class; the mean of all for a class with none."""
    sums = labeled_embeddings.new_zeros(num_classes, labeled_embeddings.shape[1])
    sums.index_add_(0, labeled_targets, labeled_embeddings)
    counts = torch.bincount(labeled_targets, minlength=num_classes)
    overall = labeled_embeddings.mean(dim=0, keepdim=True)
    return torch.where(
        counts[:, None] > 0, sums / counts.clamp(min=1)[:, None].to(sums.dtype), overall
    )


def flip_candidates(
    embeddings: Tensor,
    anchors: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    budget: int,
    cap_step: float = 0.2,
) -> Tensor:
    """Pool samples whose predicted label flips when mixed towards some class anchor.

    The closed-form mix of the paper (Section 3.3; the authors' `alpha_closed_form_approx`):
    for the cap ε = cap / √D, `α* = ε ‖a - z‖ / ‖g‖ · g / (a - z)` elementwise, g the gradient
    of the cross-entropy of the predicted label with respect to z, so the mix
    `(1 - α*) z + α* a` is `z + ε ‖a - z‖ g / ‖g‖`. For a linear head W, `g = Wᵀ(p - e_ŷ)`
    and the mixed logits are `W z + b + ε ‖a - z‖ W g / ‖g‖`: O(K²) per sample, no mixed
    embedding is formed; pool samples go `BLOCK_ELEMENTS // K²` at a time. The cap grows
    by `cap_step` up to 1 until more than `budget` samples flip (the authors' loop over
    `alpha_cap`).

    Args:
        embeddings: `[N, D]` pool embeddings z.
        anchors: `[K, D]` class anchors a.
        weight, bias: the classifier head, `[K, D]` and `[K]` (or None).
        budget: stop growing the cap once more samples than this flip.
        cap_step: the cap's step (0.2, the authors' README for the closed form).

    Returns:
        `[N]` bool: the candidate set.
    """
    num_classes, dim = anchors.shape
    base = F.linear(embeddings, weight, bias)  # [N, K]
    label = base.argmax(dim=1)
    residual = base.softmax(dim=1) - F.one_hot(label, num_classes).to(base.dtype)
    gradient = residual @ weight  # [N, D]
    norm = gradient.norm(dim=1, keepdim=True)
    # a sample whose gradient is exactly zero has no direction to move in
    direction = (gradient @ weight.T) / norm.clamp(min=torch.finfo(norm.dtype).tiny)  # [N, K]
    distance = torch.cat(  # [N, K anchors]
        [torch.cdist(embeddings[i : i + 4096], anchors) for i in range(0, len(embeddings), 4096)]
    )
    block = max(1, BLOCK_ELEMENTS // (num_classes * num_classes))
    candidates = torch.zeros(len(embeddings), dtype=torch.bool, device=embeddings.device)
    cap = 0.0
    while cap < 1.0:
        cap += cap_step
        step = cap / dim**0.5
        for start in range(0, len(embeddings), block):
            stop = start + block
            # [n, anchors, classes]: the logits of z mixed towards each anchor
            mixed = base[start:stop, None, :] + step * (
                distance[start:stop, :, None] * direction[start:stop, None, :]
            )
            flips = (mixed.argmax(dim=2) != label[start:stop, None]).any(dim=1)
            candidates[start:stop] |= flips
        if int(candidates.sum()) > budget:
            break
    return candidates


def cluster_representatives(features: Tensor, clusters: int, generator: torch.Generator) -> Tensor:
    """k-means on `features` `[C, D]`; the member nearest to each center, in center order.

    Returns:
        `[<= clusters]` distinct positions into `features` (a cluster left empty gives none).
    """
    centers, assignment = kmeans(features, clusters, generator)
    distance = (features - centers[assignment]).square().sum(dim=1)
    # the nearest member of each cluster: sort by (cluster, distance, position)
    order = torch.sort(distance, stable=True).indices
    order = order[torch.sort(assignment[order], stable=True).indices]
    first = torch.ones_like(order, dtype=torch.bool)
    first[1:] = assignment[order][1:] != assignment[order][:-1]
    return order[first]


class ALFAMix(Strategy):
    """Unlabeled samples whose prediction flips when their embedding is mixed a little towards
    the labeled samples of another class: near a decision boundary in a direction the labeled
    set shows to matter. The candidates are clustered (k-means on L2-normalised embeddings,
    k = budget) and the one nearest each center is queried, for diversity; too few candidates
    are topped up with a uniform draw from the rest of the pool, as in the authors' code.

    The head is the trained classifier (`context.system.backbone.linear`); anchors are the
    labeled embeddings' class means (true labels, `labeled_targets`).

    Memory: O(N·K) logits and distances, `[block, K, K]` mixed logits, `[chunk, k]`
    k-means distances.

    Args:
        cap_step: step of the mixing cap ε (0.2; ε = cap / √D in the closed form).
    """

    needs: ClassVar[frozenset[str]] = frozenset({"embeddings", "labeled_embeddings"})

    def __init__(self, cap_step: float = 0.2) -> None:
        self.cap_step = cap_step

    def check_config(self, cfg: DictConfig) -> list[str]:
        problems = super().check_config(cfg)
        if isinstance(self.cap_step, bool) or not (
            isinstance(self.cap_step, int | float) and 0 < self.cap_step <= 1
        ):
            problems.append(f"strategy.cap_step={self.cap_step!r}: must be in (0, 1]")
        return problems

    def select(self, pool: PoolOutputs, budget: int, generator: torch.Generator) -> Tensor:
        if pool.context is None or pool.labeled_targets is None:
            raise RuntimeError("ALFA-Mix needs the trained head (pool.context) and the labels")
        linear = pool.context.system.backbone.linear
        embeddings = pool["embeddings"]
        with torch.no_grad():
            weight = linear.weight.detach().to(embeddings.dtype)
            bias = None if linear.bias is None else linear.bias.detach().to(embeddings.dtype)
        anchors = class_anchors(
            pool["labeled_embeddings"], pool.labeled_targets, linear.out_features
        )
        return alfa_mix_select(embeddings, anchors, weight, bias, budget, generator, self.cap_step)


def alfa_mix_select(
    embeddings: Tensor,
    anchors: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    budget: int,
    generator: torch.Generator,
    cap_step: float = 0.2,
) -> Tensor:
    """ALFA-Mix's selection: flip candidates, clustered; `[budget]` positions (CPU)."""
    candidates = flip_candidates(embeddings, anchors, weight, bias, budget, cap_step)
    positions = candidates.nonzero().squeeze(1)
    picked = positions[:0]
    if len(positions):
        features = F.normalize(embeddings[positions], dim=1)
        clusters = min(budget, len(positions))
        picked = positions[cluster_representatives(features, clusters, generator)]
    if len(picked) < budget:
        rest = torch.ones(len(embeddings), dtype=torch.bool, device=embeddings.device)
        rest[picked] = False
        others = rest.nonzero().squeeze(1)
        draw = torch.randperm(len(others), generator=generator, device=generator.device)
        picked = torch.cat([picked, others[draw[: budget - len(picked)].to(others.device)]])
    return picked.cpu()
