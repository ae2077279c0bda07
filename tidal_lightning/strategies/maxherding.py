"""MaxHerding (Bae, Noh & Sutherland, ECCV 2024): greedy maximisation of the generalised
(kernel) coverage; its uncertainty-weighted form is UHerding (`uherding.py`)."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor

from tidal_lightning.strategies.base import PoolOutputs
from tidal_lightning.strategies.coverage import CoverageStrategy
from tidal_lightning.strategies.geometry import min_sq_distances, sq_distances


def kernel_of(sq: Tensor, bandwidth: float, kernel: str = "gaussian") -> Tensor:
    """Kernel values from squared distances: `gaussian` `exp(−‖x − c‖² / h²)` (the authors'
    RBF) or `tophat` `1[‖x − c‖ < h]` (ProbCover's δ-ball: herding with it is ProbCover's
    greedy maximum coverage, the MaxHerding paper's special case)."""
    if kernel == "tophat":
        return (sq < bandwidth**2).to(sq.dtype)
    return torch.exp(-sq / bandwidth**2)


def kernel_matrix(
    points: Tensor, centers: Tensor, bandwidth: float, kernel: str = "gaussian"
) -> Tensor:
    """`[P, D], [T, D] -> [P, T]` kernel values (see `kernel_of`)."""
    return kernel_of(sq_distances(points, centers), bandwidth, kernel)


def herding_gains(
    points: Tensor,
    weights: Tensor,
    covered: Tensor,
    candidates: Tensor,
    bandwidth: float,
    chunk_size: int = 1024,
    kernel: str = "gaussian",
) -> Tensor:
    """Coverage each candidate would add, `[T]`: `Σ_i w_i · max(k(x_i, c) − m_i, 0)`.

    Args:
        points: `[N, D]` the points to cover; `weights` `[N]` their weights (1 for
            MaxHerding, the uncertainty for UHerding); `covered` `[N]` m_i, the largest
            kernel value to any chosen point so far.
        candidates: `[T, D]`.

    Memory: blocks of `[chunk, chunk]` kernel values.
    """
    gains = torch.zeros(len(candidates), device=points.device, dtype=points.dtype)
    for c_start in range(0, len(candidates), chunk_size):
        block = candidates[c_start : c_start + chunk_size]
        total = torch.zeros(len(block), device=points.device, dtype=points.dtype)
        for p_start in range(0, len(points), chunk_size):
            values = kernel_matrix(points[p_start : p_start + chunk_size], block, bandwidth, kernel)
            gain = (values - covered[p_start : p_start + chunk_size, None]).clamp(min=0)
            total += weights[p_start : p_start + chunk_size] @ gain
        gains[c_start : c_start + len(block)] = total
    return gains


def herding_select(
    pool_features: Tensor,
    labeled_features: Tensor,
    budget: int,
    bandwidth: float,
    weights: Tensor | None = None,
    chunk_size: int = 1024,
    kernel: str = "gaussian",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Greedy kernel-herding coverage: each pick maximises `Σ_i w_i max_{s∈S} k(x_i, s)`.

    Exact greedy without an N x N kernel matrix. The gains of all candidates are computed
    once (`[chunk, chunk]` blocks), then kept exact by updating them after each pick s
    through the points whose coverage m_i it raised: those closer to s than to any chosen
    point (the kernel falls with distance), s's Voronoi cell, about N / (L + t) points at
    step t. A pick costs O(|cell| · N · D) instead of O(N² · D); the gains accumulate in
    float64 so the updates do not drift from a fresh computation. Memory: `[chunk, chunk]`
    blocks for the first gains, `[chunk, N]` for the updates.

    The sum runs over the pool points (the labeled ones have m_i = 1 and add nothing), as
    in the authors' code up to a constant factor. Ties go to the lowest position. When no
    candidate adds anything (all covered: possible with the tophat kernel), the remaining
    picks are drawn uniformly from the open candidates with `generator`.

    Args:
        pool_features: `[N, D]` points and candidates; `labeled_features` `[L, D]`.
        budget: B (<= N).
        bandwidth: h of the kernel (δ for `tophat`).
        weights: `[N]` non-negative weights (None: ones, MaxHerding).
        kernel: `gaussian` or `tophat` (see `kernel_of`).
        generator: on the features' device, for the draws after full coverage (None: the
            lowest open position instead).

    Returns:
        `[B]` positions into `pool_features`, in pick order (on the CPU).
    """
    device = pool_features.device
    num_pool = len(pool_features)
    if weights is None:
        weights = torch.ones(num_pool, device=device)
    weights = weights.to(device=device, dtype=pool_features.dtype)
    distances = min_sq_distances(pool_features, labeled_features, chunk_size)
    covered = kernel_of(distances, bandwidth, kernel).to(pool_features.dtype)
    gains = herding_gains(
        pool_features, weights, covered, pool_features, bandwidth, chunk_size, kernel
    ).double()
    sq_norms = pool_features.square().sum(dim=1)

    def kernel_rows(rows: Tensor) -> Tensor:
        """`[R, N]` kernel values between the points at `rows` and every pool point."""
        inner = pool_features[rows] @ pool_features.T
        sq = (sq_norms[rows, None] + sq_norms[None, :] - 2.0 * inner).clamp(min=0.0)
        return kernel_of(sq, bandwidth, kernel)

    open_ = torch.ones(num_pool, dtype=torch.bool, device=device)
    picked = []
    for _ in range(budget):
        best = torch.where(open_, gains, -torch.inf)
        choice = int(best.argmax())  # the first maximum
        if generator is not None and not bool(best[choice] > 0):
            left = torch.nonzero(open_).flatten()
            draw = torch.randint(len(left), (1,), device=left.device, generator=generator)
            choice = int(left[draw])
        picked.append(choice)
        open_[choice] = False
        reach = kernel_rows(torch.tensor([choice], device=device))[0]
        cell = torch.nonzero(reach > covered).flatten()
        # `[chunk, N]` blocks: the rows of the cell against every candidate at once
        for start in range(0, len(cell), chunk_size):
            rows = cell[start : start + chunk_size]
            values = kernel_rows(rows)
            old, new = covered[rows, None], reach[rows, None]
            lost = (values - old).clamp(min=0) - (values - new).clamp(min=0)
            gains -= (weights[rows] @ lost).double()
        covered[cell] = reach[cell]
    return torch.tensor(picked, dtype=torch.long)


class MaxHerding(CoverageStrategy):
    """Greedy generalised coverage with a Gaussian kernel (kernel herding).

    Defaults of the authors' code (`herding.py`, `run_budget.sh`): the RBF kernel
    `exp(−(‖x − y‖ / h)²)` on L2-normalised features with h = 1.0 (`bandwidth`).

    Args:
        bandwidth: h.
        **kwargs: `features`, `feature_settings`, `chunk_size` (see `CoverageStrategy`).
    """

    def __init__(self, bandwidth: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bandwidth = bandwidth

    def check_config(self, cfg: DictConfig) -> list[str]:
        problems = super().check_config(cfg)
        if not self.bandwidth > 0:
            problems.append(f"strategy.bandwidth={self.bandwidth}: must be > 0")
        return problems

    def weights(self, pool: PoolOutputs, labeled_features: Tensor) -> Tensor | None:
        """Per-point weights of the coverage; None: all ones."""
        return None

    def kernel_bandwidth(self, labeled_features: Tensor) -> float:
        return float(self.bandwidth)

    def select(self, pool: PoolOutputs, budget: int, generator: torch.Generator) -> Tensor:
        pool_features, labeled_features = self.feature_pair(pool)
        bandwidth = self.kernel_bandwidth(labeled_features)
        self._diagnostics = {"herding_bandwidth": bandwidth}
        return herding_select(
            pool_features,
            labeled_features,
            budget,
            bandwidth,
            self.weights(pool, labeled_features),
            self.chunk_size,
        )
