"""ProbCover (Yehuda, Dekel, Hacohen & Weinshall, NeurIPS 2022): greedy maximum coverage of
δ-balls around the labeled and chosen samples."""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor

from tidal_lightning.strategies.base import PoolOutputs
from tidal_lightning.strategies.coverage import CoverageStrategy
from tidal_lightning.strategies.geometry import (
    kmeans,
    min_sq_distances,
    nearest_other_label_distance,
)
from tidal_lightning.strategies.maxherding import herding_select

log = logging.getLogger(__name__)


def purity_radius(
    points: Tensor,
    num_clusters: int,
    generator: torch.Generator,
    alpha: float = 0.95,
    chunk_size: int = 1024,
) -> tuple[float, float]:
    """The paper's rule for δ: the largest δ whose balls are pure for a fraction ≥ α of
    the points, the labels being k-means pseudo-labels with K = number of classes.

    The ball `B_δ(x) = {y : ‖x − y‖ < δ}` is pure when every point in it has x's
    pseudo-label, i.e. when δ <= d(x), the distance from x to the nearest point of another
    cluster. So the purity is `π(δ) = #{x : d(x) >= δ} / N` and its largest δ with
    π(δ) >= α is an order statistic of d: the (N − ⌈αN⌉ + 1)-th smallest. Exact, with no
    grid of candidate δ; one chunked pass, memory O(chunk · N).

    Args:
        points: `[N, D]`.
        num_clusters: K of the pseudo-labels.
        generator: for k-means, on the points' device.

    Returns:
        (δ, π(δ)).
    """
    _, labels = kmeans(points, num_clusters, generator, chunk_size=chunk_size)
    nearest_other = nearest_other_label_distance(points, labels, chunk_size).cpu()
    ranked = torch.sort(nearest_other).values
    needed = math.ceil(alpha * len(points))
    delta = float(ranked[len(points) - needed])
    purity = float((nearest_other >= delta).double().mean())
    return delta, purity


def probcover_select(
    pool_features: Tensor,
    labeled_features: Tensor,
    budget: int,
    generator: torch.Generator,
    num_classes: int,
    delta: float | None = None,
    alpha: float = 0.95,
    chunk_size: int = 1024,
) -> tuple[Tensor, dict[str, float]]:
    """ProbCover's greedy maximum coverage of δ-balls (`x` covers `y` iff `‖x − y‖ < δ`).

    The labeled samples' balls count as chosen; each pick is the pool sample whose ball
    holds the most uncovered pool samples (ties: the lowest position); once everything is
    covered the rest is drawn uniformly from the unpicked samples with `generator` (the
    authors' code would take node 0 again). That is herding with the tophat kernel
    (`maxherding.herding_select`, the MaxHerding paper's special case), which keeps each
    ball's count of uncovered points exact by updating it through the newly covered
    points: the same picks as the authors' greedy on the δ-graph, without storing the graph
    (its edge list grows with N × the mean ball size; on a pool of 100k with wide balls it
    outgrows the memory). Memory: `[chunk, N]` blocks.

    Args:
        pool_features: `[N, D]` candidates; `labeled_features` `[L, D]`.
        budget: B (<= N).
        generator: on the features' device (k-means of the purity rule, the draws after
            full coverage).
        num_classes: K of the purity rule's k-means.
        delta: the ball radius; None: the purity rule with `alpha` on the labeled and pool
            features together (as the authors' code builds its graph on both).

    Returns:
        `[B]` positions into `pool_features` and diagnostics: `probcover_delta`,
        `probcover_purity` (π(δ), NaN when δ was given), `probcover_coverage_before` /
        `_after` (fraction of the labeled and pool samples within δ of a chosen one).
    """
    points = torch.cat([labeled_features, pool_features])
    purity = math.nan
    if delta is None:
        delta, purity = purity_radius(points, num_classes, generator, alpha, chunk_size)
    picked = herding_select(
        pool_features,
        labeled_features,
        budget,
        delta,
        chunk_size=chunk_size,
        kernel="tophat",
        generator=generator,
    )

    def coverage(centers: Tensor) -> float:
        return float((min_sq_distances(points, centers, chunk_size) < delta**2).double().mean())

    chosen = pool_features[picked.to(pool_features.device)]
    diagnostics = {
        "probcover_delta": delta,
        "probcover_purity": purity,
        "probcover_coverage_before": coverage(labeled_features),
        "probcover_coverage_after": coverage(torch.cat([labeled_features, chosen])),
    }
    return picked, diagnostics


class ProbCover(CoverageStrategy):
    """Greedy maximum coverage of δ-balls; δ by the paper's purity rule unless given.

    Defaults of the paper: α = 0.95, pseudo-labels from k-means with K = the number of
    classes. The chosen δ, its purity and the coverage before and after the query are in
    `query_diagnostics()` and the log. Memory: `[chunk, N]` blocks (no stored graph).

    Args:
        delta: fixed radius on the unit sphere (the authors' CIFAR-10 runs use 0.75 with
            SimCLR features); null: the purity rule.
        alpha: the purity threshold.
        purity_clusters: K of the purity rule; null: the dataset's number of classes.
        **kwargs: `features`, `feature_settings`, `chunk_size` (see `CoverageStrategy`).
    """

    def __init__(
        self,
        delta: float | None = None,
        alpha: float = 0.95,
        purity_clusters: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.delta = delta
        self.alpha = alpha
        self.purity_clusters = purity_clusters

    def check_config(self, cfg: DictConfig) -> list[str]:
        problems = super().check_config(cfg)
        if self.delta is not None and not self.delta > 0:
            problems.append(
                f"strategy.delta={self.delta}: must be > 0, or null for the purity rule"
            )
        if not 0 < self.alpha <= 1:
            problems.append(f"strategy.alpha={self.alpha}: must be in (0, 1]")
        if self.purity_clusters is not None and self.purity_clusters < 2:
            problems.append(
                f"strategy.purity_clusters={self.purity_clusters}: must be >= 2, or null for "
                "the number of classes"
            )
        return problems

    def select(self, pool: PoolOutputs, budget: int, generator: torch.Generator) -> Tensor:
        pool_features, labeled_features = self.feature_pair(pool)
        num_classes = self.purity_clusters
        if num_classes is None:
            if pool.context is None:
                raise ValueError("ProbCover needs purity_clusters or PoolOutputs.context")
            num_classes = pool.context.datamodule.num_classes
        picked, self._diagnostics = probcover_select(
            pool_features,
            labeled_features,
            budget,
            generator,
            num_classes,
            self.delta,
            self.alpha,
            self.chunk_size,
        )
        log.info(
            "ProbCover: δ=%.4f (purity %.3f), coverage %.3f -> %.3f",
            self._diagnostics["probcover_delta"],
            self._diagnostics["probcover_purity"],
            self._diagnostics["probcover_coverage_before"],
            self._diagnostics["probcover_coverage_after"],
        )
        return picked
