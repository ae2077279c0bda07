"""CoreSet (Sener & Savarese, ICLR 2018) as the paper solves it: robust k-center by MIP.

The greedy k-center (`strategy=kcenter_greedy`) is a 2-approximation of the k-center radius
δ_g. The paper (Algorithm 2) then searches the radius by bisection between δ_g/2 and δ_g; at
each candidate δ a feasibility MIP decides whether `budget` new centers (the labeled set being
centers already) can cover every point within δ, up to Ξ outliers:

    Σ_j u_j = |s0| + b,   Σ_{i,j} ξ_ij ≤ Ξ,   Σ_j ω_ij = 1 ∀i,   ω_ij ≤ u_j ∀i,j,
    u_i = 1 ∀i ∈ s0,   ω_ij = ξ_ij ∀i,j with Δ(x_i, x_j) > δ,   u, ω, ξ ∈ {0, 1}.

On success the upper bound drops to the largest pairwise distance ≤ δ, on failure the lower
bound rises to the smallest one > δ (the paper writes ≥, which can repeat a failed δ forever),
until they meet: the optimum radius among the pairwise distances.

Solved here with `scipy.optimize.milp` (HiGHS) in an equivalent, smaller form:

- a point within δ of a labeled point is covered whatever the picks: it gets no constraint;
- only pairs (i, j) of pool points with Δ ≤ δ_g can ever be within δ, so only they get an
  assignment variable ω_ij, found in row blocks of `chunk_size` (memory O(N · chunk) plus the
  pairs; the authors' code also keeps only the pairs within the greedy radius as variables);
- a point either takes an assignment within δ or is an outlier: one ξ_i per point replaces the
  ξ_ij of the far pairs (an outlier can always be assigned to some center, so the counts agree);
- ω is continuous in [0, 1]: with u binary, Σ_j ω_ij = 1 - ξ_i and ω_ij ≤ u_j still force a
  center within δ for every non-outlier;
- Σ u_j ≤ b over the candidate centers: a cover with fewer centers stays one with more. Picks
  left over are filled by greedy k-center from the labeled set and the MIP's centers.

With Ξ > 0 the greedy bound δ_g/2 no longer holds (outliers can make the robust optimum far
smaller), so the search starts at 0 then. Ξ = ⌊outlier_fraction · (pool + labeled)⌋; the
authors' released solver (`coreset/full_solver_gurobi.py`) fixes the outlier variables to 0.

Large pools: the authors' code has no fallback (it builds the whole MIP for 50 000 images, with
Gurobi); it starts from the greedy solution and keeps the last feasible one whenever a step
fails. Here too: above `max_points` pool samples or `max_pairs` candidate pairs no MIP is
built and the greedy picks stand; a solve that stops at `node_limit` (or `time_limit`)
without a solution counts as a failed step, so the result is the best cover found. Which path
ran, the radius, the outliers and the number of solves go into the query diagnostics and the
log. `node_limit` keeps the picks deterministic; `time_limit` (off by default) does not.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from omegaconf import DictConfig
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp
from torch import Tensor

from tidal_lightning.strategies.base import PoolOutputs, Strategy
from tidal_lightning.strategies.geometry import kcenter_greedy, min_sq_distances

log = logging.getLogger(__name__)


@dataclass
class KCenterSolution:
    """What `robust_kcenter` found.

    Attributes:
        picks: `[budget]` positions into the points (CPU int64): the MIP's centers, then the
            greedy fill; or the greedy picks alone.
        radius: the robust radius of `picks` with the labeled centers: the largest distance
            from a point to its nearest center once the `max_outliers` farthest are set aside.
        greedy_radius: δ_g, the greedy k-center radius (no outliers set aside).
        outliers: points farther than `radius` from every center (≤ `max_outliers`).
        solves: MIPs solved; 0 when the MIP was not attempted.
        inconclusive: solves stopped by a limit before finding a cover (counted as failures).
        pairs: candidate pairs (assignment variables), 0 when not counted.
        path: `mip`, or `greedy (<why>)`.
    """

    picks: Tensor
    radius: float
    greedy_radius: float
    outliers: int
    solves: int
    inconclusive: int
    pairs: int
    path: str


def robust_kcenter(
    points: Tensor,
    centers: Tensor,
    budget: int,
    max_outliers: int = 0,
    chunk_size: int = 1024,
    max_points: int = 50_000,
    max_pairs: int = 1_000_000,
    max_solves: int = 64,
    node_limit: int | None = 1000,
    time_limit: float | None = None,
) -> KCenterSolution:
    """Sener & Savarese's Algorithm 2: greedy start, then bisection on δ with a feasibility MIP.

    Args:
        points: `[N, D]` pool embeddings.
        centers: `[L, D]` labeled embeddings (fixed centers).
        budget: new centers to pick (<= N).
        max_outliers: Ξ.
        chunk_size: rows per distance block (memory O(N · chunk_size)).
        max_points, max_pairs: above these the MIP is not built; the greedy picks stand.
        max_solves: at most this many MIPs; the best cover so far stands after.
        node_limit, time_limit: HiGHS limits per solve.
    """
    num_points = len(points)
    greedy = kcenter_greedy(points, centers, budget, chunk_size)
    to_labeled = min_sq_distances(points, centers, chunk_size).sqrt()
    to_greedy = torch.minimum(
        to_labeled, min_sq_distances(points, points[greedy], chunk_size).sqrt()
    )
    greedy_radius = float(to_greedy.max()) if num_points else 0.0

    def finish(
        picks: Tensor, path: str, solves: int = 0, inconclusive: int = 0, pairs: int = 0
    ) -> KCenterSolution:
        radius, outliers = _robust_radius(points, to_labeled, picks, max_outliers, chunk_size)
        return KCenterSolution(
            picks.cpu(), radius, greedy_radius, outliers, solves, inconclusive, pairs, path
        )

    if num_points > max_points:
        return finish(greedy, f"greedy (pool of {num_points} > max_points={max_points})")
    if greedy_radius == 0.0:
        return finish(greedy, "greedy (every point is a center)")
    lower = greedy_radius / 2 if max_outliers == 0 else 0.0
    upper = greedy_radius
    found = _candidate_pairs(points, to_labeled, lower, upper, chunk_size, max_pairs)
    if found is None:
        return finish(greedy, f"greedy (more than max_pairs={max_pairs} pairs within δ_g)")
    rows, cols, distances = found
    labeled_np = to_labeled.double().cpu().numpy()
    values = np.unique(np.concatenate([[0.0], distances, labeled_np[labeled_np <= upper]]))
    best = greedy
    solves = inconclusive = 0
    while lower < upper and solves < max_solves:
        middle = (lower + upper) / 2
        cover, stopped = _feasible_cover(
            rows, cols, distances, labeled_np, middle, budget, max_outliers, node_limit, time_limit
        )
        solves += 1
        if cover is not None:
            best = torch.as_tensor(cover, dtype=torch.long, device=points.device)
            upper = float(values[values <= middle].max())
        else:
            inconclusive += stopped
            above = values[values > middle]
            lower = float(above.min()) if len(above) else upper
    picks = _fill_greedily(points, centers, best, budget, chunk_size)
    path = (
        "mip" if lower >= upper else f"mip (stopped at max_solves={max_solves}, not proven optimal)"
    )
    return finish(picks, path, solves, inconclusive, len(rows))


def _candidate_pairs(
    points: Tensor,
    to_labeled: Tensor,
    lower: float,
    upper: float,
    chunk_size: int,
    max_pairs: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Pairs (i, j) of pool points with Δ(i, j) <= `upper`, for the points i that a labeled
    center may leave uncovered (Δ to the labeled set > `lower`); None past `max_pairs`.

    Row blocks of `chunk_size` against all N points: the largest temporary is `[chunk, N]`.
    The bound gets a relative slack of 1e-6: a distance computed in another block shape can
    differ in its last bits, and an extra pair only adds a variable.
    """
    needy = torch.nonzero(to_labeled > lower).squeeze(1)
    limit = upper * (1 + 1e-6)
    rows, cols, distances = [], [], []
    count = 0
    for start in range(0, len(needy), chunk_size):
        block = needy[start : start + chunk_size]
        within = torch.cdist(points[block], points) <= limit
        row, col = torch.nonzero(within, as_tuple=True)
        count += len(row)
        if count > max_pairs:
            return None
        rows.append(block[row])
        cols.append(col)
        distances.append((points[block[row]] - points[col]).norm(dim=1))
    if not rows:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, np.empty(0)
    return (
        torch.cat(rows).cpu().numpy(),
        torch.cat(cols).cpu().numpy(),
        torch.cat(distances).double().cpu().numpy(),
    )


def _feasible_cover(
    rows: np.ndarray,
    cols: np.ndarray,
    distances: np.ndarray,
    to_labeled: np.ndarray,
    radius: float,
    budget: int,
    max_outliers: int,
    node_limit: int | None,
    time_limit: float | None,
) -> tuple[np.ndarray | None, bool]:
    """Feasible(b, s0, δ, Ξ): a set of <= `budget` pool centers that covers every point within
    `radius` (the labeled ones count as centers), bar <= `max_outliers`.

    Returns:
        The centers (positions into the pool) or None, and whether a solver limit stopped
        the solve without an answer.
    """
    need = np.unique(rows[to_labeled[rows] > radius])
    if len(need) == 0:
        return np.empty(0, dtype=np.int64), False
    keep = (distances <= radius) & (to_labeled[rows] > radius)
    pair_rows, pair_cols = rows[keep], cols[keep]
    candidates, center_of_pair = np.unique(pair_cols, return_inverse=True)
    point_of_pair = np.searchsorted(need, pair_rows)
    num_u, num_w, num_x = len(candidates), len(pair_rows), len(need)
    # A bound first, which rejects most radii far below the optimum without a solve (HiGHS
    # needs minutes for some of these at 10k points): b centers cover at most the points in
    # the b largest neighbourhoods.
    reach = np.sort(np.bincount(center_of_pair, minlength=num_u))[::-1][:budget].sum()
    if reach < num_x - max_outliers:
        return None, False
    # variables: [u (candidate centers) | ω (pairs) | ξ (points that need a cover)]
    w0, x0 = num_u, num_u + num_w
    pair_ids = np.arange(num_w)
    assign = sparse.coo_matrix(  # Σ_j ω_ij + ξ_i = 1
        (
            np.ones(num_w + num_x),
            (
                np.concatenate([point_of_pair, np.arange(num_x)]),
                np.concatenate([w0 + pair_ids, x0 + np.arange(num_x)]),
            ),
        ),
        shape=(num_x, x0 + num_x),
    )
    open_center = sparse.coo_matrix(  # ω_ij - u_j <= 0
        (
            np.concatenate([np.ones(num_w), -np.ones(num_w)]),
            (np.concatenate([pair_ids, pair_ids]), np.concatenate([w0 + pair_ids, center_of_pair])),
        ),
        shape=(num_w, x0 + num_x),
    )
    totals = sparse.coo_matrix(  # Σ u_j <= b; Σ ξ_i <= Ξ
        (
            np.ones(num_u + num_x),
            (
                np.concatenate([np.zeros(num_u), np.ones(num_x)]).astype(np.int64),
                np.concatenate([np.arange(num_u), x0 + np.arange(num_x)]),
            ),
        ),
        shape=(2, x0 + num_x),
    )
    matrix = sparse.vstack([assign, open_center, totals]).tocsr()
    low = np.concatenate([np.ones(num_x), np.full(num_w, -np.inf), [-np.inf, -np.inf]])
    high = np.concatenate([np.ones(num_x), np.zeros(num_w), [budget, max_outliers]])
    integrality = np.concatenate([np.ones(num_u), np.zeros(num_w), np.ones(num_x)])
    options: dict[str, float | int] = {}
    if node_limit is not None:
        options["node_limit"] = node_limit
    if time_limit is not None:
        options["time_limit"] = time_limit
    result = milp(
        np.zeros(x0 + num_x),
        integrality=integrality,
        bounds=Bounds(0, 1),
        constraints=LinearConstraint(matrix, low, high),
        options=options,
    )
    if result.x is None:
        return None, result.status == 1
    return candidates[result.x[:num_u] > 0.5], False


def _fill_greedily(
    points: Tensor, centers: Tensor, chosen: Tensor, budget: int, chunk_size: int
) -> Tensor:
    """`chosen` followed by greedy k-center picks from the rest, `[budget]` positions."""
    missing = budget - len(chosen)
    if missing <= 0:
        return chosen[:budget]
    rest = torch.ones(len(points), dtype=torch.bool, device=points.device)
    rest[chosen] = False
    others = torch.nonzero(rest).squeeze(1)
    fill = kcenter_greedy(points[others], torch.cat([centers, points[chosen]]), missing, chunk_size)
    return torch.cat([chosen, others[fill]])


def _robust_radius(
    points: Tensor, to_labeled: Tensor, picks: Tensor, max_outliers: int, chunk_size: int
) -> tuple[float, int]:
    """The radius with the `max_outliers` farthest points set aside, and how many lie beyond."""
    nearest = torch.minimum(to_labeled, min_sq_distances(points, points[picks], chunk_size).sqrt())
    if len(nearest) == 0:
        return 0.0, 0
    ordered = torch.sort(nearest, descending=True).values
    radius = float(ordered[min(max_outliers, len(ordered) - 1)])
    return radius, int((nearest > radius).sum())


class CoreSetMIP(Strategy):
    """The paper's CoreSet: robust k-center on the penultimate embedding (see the module doc).

    Args:
        outlier_fraction: Ξ = ⌊outlier_fraction · (pool + labeled)⌋.
        chunk_size: rows / centers per distance block (memory O(N · chunk_size)).
        max_points, max_pairs: above these the greedy picks stand (announced).
        max_solves: bisection steps at most.
        node_limit: HiGHS branch-and-bound nodes per solve (deterministic); null = none.
        time_limit: seconds per solve; null = none (a time limit makes picks machine-dependent).
    """

    needs: ClassVar[frozenset[str]] = frozenset({"embeddings", "labeled_embeddings"})
    single_device: ClassVar[bool] = True

    def __init__(
        self,
        outlier_fraction: float = 1e-4,
        chunk_size: int = 1024,
        max_points: int = 50_000,
        max_pairs: int = 1_000_000,
        max_solves: int = 64,
        node_limit: int | None = 1000,
        time_limit: float | None = None,
    ) -> None:
        self.outlier_fraction = outlier_fraction
        self.chunk_size = chunk_size
        self.max_points = max_points
        self.max_pairs = max_pairs
        self.max_solves = max_solves
        self.node_limit = node_limit
        self.time_limit = time_limit

    def check_config(self, cfg: DictConfig) -> list[str]:
        problems = super().check_config(cfg)
        if not 0 <= self.outlier_fraction < 1:
            problems.append(f"strategy.outlier_fraction={self.outlier_fraction}: must be in [0, 1)")
        for key in ("chunk_size", "max_points", "max_pairs", "max_solves"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                problems.append(f"strategy.{key}={value!r}: must be an integer >= 1")
        if self.node_limit is not None and self.node_limit < 1:
            problems.append(f"strategy.node_limit={self.node_limit}: must be >= 1 or null")
        if self.time_limit is not None and not self.time_limit > 0:
            problems.append(f"strategy.time_limit={self.time_limit}: must be > 0 or null")
        return problems

    def select(self, pool: PoolOutputs, budget: int, generator: torch.Generator) -> Tensor:
        points, centers = pool["embeddings"], pool["labeled_embeddings"]
        max_outliers = int(self.outlier_fraction * (len(points) + len(centers)))
        solution = robust_kcenter(
            points,
            centers,
            budget,
            max_outliers,
            self.chunk_size,
            self.max_points,
            self.max_pairs,
            self.max_solves,
            self.node_limit,
            self.time_limit,
        )
        pool.diagnostics.update(
            coreset_mip=int(solution.path == "mip"),
            coreset_radius=round(solution.radius, 6),
            coreset_greedy_radius=round(solution.greedy_radius, 6),
            coreset_outliers=solution.outliers,
            coreset_mip_solves=solution.solves,
            coreset_mip_pairs=solution.pairs,
        )
        log.info(
            "coreset_mip: %s; radius %.4f (greedy %.4f), %d outliers (Ξ = %d), %d MIP solves "
            "(%d stopped by a limit), %d candidate pairs",
            solution.path,
            solution.radius,
            solution.greedy_radius,
            solution.outliers,
            max_outliers,
            solution.solves,
            solution.inconclusive,
            solution.pairs,
        )
        return solution.picks
