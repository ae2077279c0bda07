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
from tidal_lightning.strategies.geometry import kmeans, nearest_other_label_distance, radius_graph

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
    labels, _ = kmeans(points, num_clusters, generator, chunk_size=chunk_size)
    nearest_other = nearest_other_label_distance(points, labels, chunk_size).cpu()
    ranked = torch.sort(nearest_other).values
    needed = math.ceil(alpha * len(points))
    delta = float(ranked[len(points) - needed])
    purity = float((nearest_other >= delta).double().mean())
    return delta, purity


def csr_gather(pointers: Tensor, values: Tensor, rows: Tensor) -> Tensor:
    """The concatenated `values[pointers[r] : pointers[r + 1]]` of every `r` in `rows`."""
    starts, ends = pointers[rows], pointers[rows + 1]
    lengths = ends - starts
    total = int(lengths.sum())
    if total == 0:
        return values[:0]
    offsets = torch.repeat_interleave(starts - (torch.cumsum(lengths, 0) - lengths), lengths)
    return values[offsets + torch.arange(total, device=values.device)]


def max_coverage_greedy(
    sources: Tensor,
    targets: Tensor,
    num_nodes: int,
    covered_by: Tensor,
    candidates: Tensor,
    budget: int,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """ProbCover's greedy max coverage on the δ-graph (`x -> y` iff `‖x − y‖ < δ`).

    The nodes `covered_by` (the labeled set) cover their out-neighbours first; then each
    step picks the candidate with the most uncovered out-neighbours (ties: the lowest
    node) and covers them. Out-degrees are kept up to date incrementally through the
    edges into each newly covered node, so the whole greedy touches each edge a constant
    number of times. Once everything reachable is covered (no candidate adds coverage),
    the remaining picks are drawn uniformly from the unpicked candidates with `generator`
    (the authors' code would take node 0 again).

    Args:
        sources, targets: `[E]` edges, sorted by source (as `radius_graph` returns them).
        num_nodes: N.
        covered_by: `[L]` nodes whose balls count as chosen already.
        candidates: `[N]` bool, which nodes may be picked.
        budget: B (<= number of candidates).
        generator: for the draws after full coverage (CPU).

    Returns:
        `[B]` picked nodes in order, and the `[N]` bool covered mask after the picks.
    """
    sources, targets = sources.cpu(), targets.cpu()
    out_pointers = torch.zeros(num_nodes + 1, dtype=torch.long)
    out_pointers[1:] = torch.cumsum(torch.bincount(sources, minlength=num_nodes), 0)
    by_target = torch.sort(targets, stable=True).indices
    in_sources = sources[by_target]
    in_pointers = torch.zeros(num_nodes + 1, dtype=torch.long)
    in_pointers[1:] = torch.cumsum(torch.bincount(targets, minlength=num_nodes), 0)
    degree = torch.bincount(sources, minlength=num_nodes)
    covered = torch.zeros(num_nodes, dtype=torch.bool)

    def cover(nodes: Tensor) -> None:
        nodes = nodes[~covered[nodes]].unique()
        covered[nodes] = True
        # every edge into a newly covered node stops counting for its source
        degree.sub_(torch.bincount(csr_gather(in_pointers, in_sources, nodes), minlength=num_nodes))

    cover(csr_gather(out_pointers, targets, covered_by.cpu()))
    open_ = candidates.cpu().clone()
    picked = []
    for _ in range(budget):
        gain = torch.where(open_, degree, -1)
        choice = int(gain.argmax())  # the first maximum: ties go to the lowest node
        if int(gain[choice]) <= 0:
            left = torch.nonzero(open_).flatten()
            choice = int(left[torch.randint(len(left), (1,), generator=generator)])
        picked.append(choice)
        open_[choice] = False
        cover(csr_gather(out_pointers, targets, torch.tensor([choice])))
    return torch.tensor(picked, dtype=torch.long), covered


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
    """ProbCover on the labeled and pool features together (as the authors' code, which
    builds the graph on the labeled and unlabeled sets).

    Args:
        pool_features: `[N, D]` candidates; `labeled_features` `[L, D]`.
        budget: B (<= N).
        generator: on the features' device (k-means); the post-coverage draws use a CPU
            generator seeded from it.
        num_classes: K of the purity rule's k-means.
        delta: the ball radius; None: the purity rule with `alpha`.

    Returns:
        `[B]` positions into `pool_features` and diagnostics: `probcover_delta`,
        `probcover_purity` (π(δ), NaN when δ was given), `probcover_edges`,
        `probcover_coverage_before` / `_after` (fraction of points covered).
    """
    points = torch.cat([labeled_features, pool_features])
    num_labeled = len(labeled_features)
    purity = math.nan
    if delta is None:
        delta, purity = purity_radius(points, num_classes, generator, alpha, chunk_size)
    sources, targets = radius_graph(points, delta, chunk_size)
    candidates = torch.zeros(len(points), dtype=torch.bool)
    candidates[num_labeled:] = True
    seed = torch.randint(2**62, (1,), device=points.device, generator=generator)
    cpu_generator = torch.Generator().manual_seed(int(seed))
    labeled_nodes = torch.arange(num_labeled)
    # coverage before the picks: what the labeled balls reach
    before = torch.zeros(len(points), dtype=torch.bool)
    before[targets[torch.isin(sources, labeled_nodes.to(sources.device))].cpu()] = True
    picked, covered = max_coverage_greedy(
        sources, targets, len(points), labeled_nodes, candidates, budget, cpu_generator
    )
    diagnostics = {
        "probcover_delta": delta,
        "probcover_purity": purity,
        "probcover_edges": float(len(sources)),
        "probcover_coverage_before": float(before.double().mean()),
        "probcover_coverage_after": float(covered.double().mean()),
    }
    return picked - num_labeled, diagnostics


class ProbCover(CoverageStrategy):
    """Greedy maximum coverage of δ-balls; δ by the paper's purity rule unless given.

    Defaults of the paper: α = 0.95, pseudo-labels from k-means with K = the number of
    classes. The chosen δ, its purity, the graph's edge count and the coverage before and
    after the query are in `query_diagnostics()` and the log.

    Memory: the δ-graph is an edge list built in chunks (dense temporaries `[chunk, N]`);
    the list itself grows with the average ball size (E ≈ N · mean degree).

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
            "ProbCover: δ=%.4f (purity %.3f), %d edges, coverage %.3f -> %.3f",
            self._diagnostics["probcover_delta"],
            self._diagnostics["probcover_purity"],
            int(self._diagnostics["probcover_edges"]),
            self._diagnostics["probcover_coverage_before"],
            self._diagnostics["probcover_coverage_after"],
        )
        return picked
