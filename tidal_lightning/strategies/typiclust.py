"""TypiClust (Hacohen, Dekel & Weinshall, ICML 2022): the most typical point of each
uncovered cluster."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tidal_lightning.strategies.base import PoolOutputs
from tidal_lightning.strategies.coverage import CoverageStrategy
from tidal_lightning.strategies.geometry import kmeans, knn_mean_distance


def typicality(points: Tensor, neighbours: int, chunk_size: int = 1024) -> Tensor:
    """TypiClust's typicality, `[M, D] -> [M]`: the inverse mean Euclidean distance to the
    `neighbours` nearest other points (the paper's Eq. 4, +1e-5 as in the authors' code).

    The authors' code averages *squared* distances (faiss's L2 index returns them); this
    follows the paper's definition. With a single point there is no neighbour: +inf.
    """
    if len(points) < 2:
        return torch.full((len(points),), float("inf"), device=points.device)
    return 1.0 / (knn_mean_distance(points, neighbours, chunk_size) + 1e-5)


def typiclust_select(
    pool_features: Tensor,
    labeled_features: Tensor,
    budget: int,
    generator: torch.Generator,
    neighbours: int = 20,
    max_clusters: int = 500,
    min_cluster_size: int = 5,
    chunk_size: int = 1024,
) -> tuple[Tensor, dict[str, float]]:
    """TypiClust's selection, as in the authors' `typiclust.py`.

    1. k-means (`geometry.kmeans`, seeded from `generator`) of the labeled and pool
       features together into `min(L + B, max_clusters)` clusters.
    2. Clusters larger than `min_cluster_size` are ordered by how many labeled samples
       they hold (fewest first), then by size (largest first), then by id.
    3. Pick i goes to the (i mod C)-th cluster of that order: its most typical unlabeled,
       not yet picked point, typicality computed among exactly those points with
       k = min(`neighbours`, m // 2) (the code's rule for small clusters).

    Where the code would fail, this goes on: a cluster with no unlabeled point left is
    skipped, and when no cluster is larger than `min_cluster_size` (tiny pools) or every
    kept one is used up, the other clusters follow in the same order.

    Args:
        pool_features: `[N, D]` candidates; `labeled_features` `[L, D]`.
        budget: B (<= N).
        generator: on the features' device.

    Returns:
        `[B]` positions into `pool_features` (in pick order) and diagnostics.
    """
    num_pool = len(pool_features)
    points = torch.cat([labeled_features, pool_features])
    num_clusters = min(len(labeled_features) + budget, max_clusters, len(points))
    _, clusters = kmeans(points, num_clusters, generator, chunk_size=chunk_size)
    clusters = clusters.cpu()
    sizes = torch.bincount(clusters, minlength=num_clusters)
    labeled_per_cluster = torch.bincount(clusters[: len(labeled_features)], minlength=num_clusters)
    ids = torch.arange(num_clusters)
    # lexicographic order (labeled count ascending, size descending, id ascending) via
    # stable sorts from the last key to the first
    order = ids
    order = order[torch.sort(-sizes[order], stable=True).indices]
    order = order[torch.sort(labeled_per_cluster[order], stable=True).indices]
    kept = order[sizes[order] > min_cluster_size]
    order = torch.cat([kept, order[sizes[order] <= min_cluster_size]])
    pool_clusters = clusters[len(labeled_features) :]
    available = torch.ones(num_pool, dtype=torch.bool)
    picked: list[int] = []
    turn, rounds_without_pick = 0, 0
    cycle = kept if len(kept) else order
    while len(picked) < budget:
        if rounds_without_pick >= len(cycle):
            cycle = order  # every kept cluster is used up: the small ones follow
            rounds_without_pick = 0
        cluster = int(cycle[turn % len(cycle)])
        turn += 1
        members = torch.nonzero(available & (pool_clusters == cluster)).flatten()
        if len(members) == 0:
            rounds_without_pick += 1
            continue
        rounds_without_pick = 0
        k = max(1, min(neighbours, len(members) // 2))
        scores = typicality(pool_features[members.to(pool_features.device)], k, chunk_size)
        choice = int(members[int(scores.argmax())])
        picked.append(choice)
        available[choice] = False
    diagnostics = {
        "typiclust_clusters": float(num_clusters),
        "typiclust_uncovered_clusters": float(int((labeled_per_cluster[kept] == 0).sum())),
    }
    return torch.tensor(picked, dtype=torch.long), diagnostics


class TypiClust(CoverageStrategy):
    """Labels the most typical sample of each of the largest clusters without labels.

    Defaults of the paper and the authors' code: k = 20 neighbours for typicality, at most
    500 clusters (`max_clusters`; the code's MiniBatchKMeans cap for large budgets),
    clusters of 5 or fewer points skipped.

    Args:
        neighbours: k of the typicality.
        max_clusters: cap on the number of k-means clusters.
        min_cluster_size: clusters of at most this many points are used only when the
            others are exhausted.
        **kwargs: `features`, `feature_settings`, `chunk_size` (see `CoverageStrategy`).
    """

    def __init__(
        self,
        neighbours: int = 20,
        max_clusters: int = 500,
        min_cluster_size: int = 5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.neighbours = neighbours
        self.max_clusters = max_clusters
        self.min_cluster_size = min_cluster_size

    def select(self, pool: PoolOutputs, budget: int, generator: torch.Generator) -> Tensor:
        pool_features, labeled_features = self.feature_pair(pool)
        picked, self._diagnostics = typiclust_select(
            pool_features,
            labeled_features,
            budget,
            generator,
            self.neighbours,
            self.max_clusters,
            self.min_cluster_size,
            self.chunk_size,
        )
        return picked
