"""CoreSet as the paper's robust k-center MIP, against a brute-force optimum."""

from __future__ import annotations

import itertools
import logging

import pytest
import torch
from omegaconf import OmegaConf
from torch import Tensor

from tidal_lightning.strategies.base import PoolOutputs
from tidal_lightning.strategies.coreset_mip import CoreSetMIP, robust_kcenter
from tidal_lightning.strategies.geometry import kcenter_greedy


def robust_radius(points: Tensor, centers: Tensor, outliers: int) -> float:
    """Largest point-to-nearest-center distance once the `outliers` farthest are set aside."""
    nearest = torch.cdist(points.double(), centers.double()).min(dim=1).values
    return float(nearest.sort(descending=True).values[outliers])


def brute_force_radius(points: Tensor, labeled: Tensor, budget: int, outliers: int) -> float:
    """The optimum over every set of `budget` pool centers (labeled points are centers too)."""
    return min(
        robust_radius(points, torch.cat([labeled, points[list(chosen)]]), outliers)
        for chosen in itertools.combinations(range(len(points)), budget)
    )


def instance(seed: int, labeled: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(12, 2, generator=generator), torch.randn(labeled, 2, generator=generator)


@pytest.mark.parametrize(
    ("seed", "labeled", "budget", "outliers"),
    [(0, 1, 2, 0), (1, 2, 3, 0), (2, 0, 2, 1), (5, 1, 3, 2)],
)
def test_the_radius_is_the_brute_force_optimum(
    seed: int, labeled: int, budget: int, outliers: int
) -> None:
    points, centers = instance(seed, labeled)
    solution = robust_kcenter(points, centers, budget, outliers)
    optimum = brute_force_radius(points, centers, budget, outliers)
    assert solution.path == "mip" and solution.solves > 0
    assert solution.radius == pytest.approx(optimum, abs=1e-5)
    # the picks achieve it, and the greedy start was no better
    assert robust_radius(points, torch.cat([centers, points[solution.picks]]), outliers) == (
        pytest.approx(optimum, abs=1e-5)
    )
    assert solution.greedy_radius >= optimum - 1e-6
    assert len(set(solution.picks.tolist())) == budget and solution.outliers <= outliers


def test_an_outlier_budget_sets_the_farthest_points_aside() -> None:
    # a tight cluster, one center's worth, and two lone points far away
    points = torch.tensor(
        [[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [0.1, 0.1], [10.0, 0.0], [0.0, -9.0]]
    )
    without = robust_kcenter(points, torch.empty(0, 2), 1, 0)
    with_two = robust_kcenter(points, torch.empty(0, 2), 1, 2)
    assert with_two.radius == pytest.approx(brute_force_radius(points, torch.empty(0, 2), 1, 2))
    assert with_two.radius < 0.2 < without.radius and with_two.outliers == 2


@pytest.mark.parametrize("flip", [False, True])
def test_with_outliers_the_search_goes_below_half_the_greedy_radius(flip: bool) -> None:
    """δ_g/2 bounds the optimum only without outliers: here one center covers a tight cluster
    within 0.1 once the three points of a wide cluster 20 away are set aside; a search kept
    above δ_g/2 ≈ 11 accepts the first cover it finds (centered in the wide cluster, ≥ 2)."""
    tight = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1]])
    wide = torch.tensor([[20.0, 0.0], [22.0, 0.0], [20.0, 2.0]])
    points = torch.cat([tight, wide]).flip(0) if flip else torch.cat([tight, wide])
    solution = robust_kcenter(points, torch.empty(0, 2), 1, 3)
    assert solution.greedy_radius > 20
    assert (
        solution.radius == pytest.approx(0.1) == brute_force_radius(points, torch.empty(0, 2), 1, 3)
    )


def test_unused_budget_is_filled_by_greedy_k_center() -> None:
    # three well separated pairs: two centers cover two pairs within 0.1, the third pair is
    # covered by the labeled point; the MIP may use fewer than the 4 picks
    points = torch.tensor(
        [[0.0, 0.0], [0.1, 0.0], [5.0, 0.0], [5.1, 0.0], [0.0, 5.0], [0.1, 5.0], [2.5, 2.5]]
    )
    labeled = torch.tensor([[0.05, 5.0]])
    solution = robust_kcenter(points, labeled, 4, 0)
    assert len(set(solution.picks.tolist())) == 4
    assert solution.radius == pytest.approx(brute_force_radius(points, labeled, 4, 0), abs=1e-6)


def test_pools_past_the_limits_keep_the_greedy_picks_and_say_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    points, centers = instance(3, 1)
    pool = PoolOutputs(torch.arange(12), {"embeddings": points, "labeled_embeddings": centers})
    with caplog.at_level(logging.INFO, logger="tidal_lightning.strategies.coreset_mip"):
        picks = CoreSetMIP(max_points=10).select(pool, 3, torch.Generator())
    assert picks.tolist() == kcenter_greedy(points, centers, 3).tolist()
    assert pool.diagnostics["coreset_mip"] == 0 and pool.diagnostics["coreset_mip_solves"] == 0
    assert "greedy (pool of 12 > max_points=10)" in caplog.text
    assert pool.diagnostics["coreset_radius"] == pytest.approx(
        robust_radius(points, torch.cat([centers, points[picks]]), 0), abs=1e-5
    )
    few_pairs = robust_kcenter(points, centers, 3, 0, max_pairs=5)
    assert few_pairs.path.startswith("greedy (more than max_pairs=5")
    assert few_pairs.picks.tolist() == picks.tolist()


def test_the_mip_path_is_announced_and_deterministic(caplog: pytest.LogCaptureFixture) -> None:
    points, centers = instance(4, 2)
    runs = []
    for _ in range(2):
        pool = PoolOutputs(torch.arange(12), {"embeddings": points, "labeled_embeddings": centers})
        with caplog.at_level(logging.INFO, logger="tidal_lightning.strategies.coreset_mip"):
            runs.append(CoreSetMIP(outlier_fraction=0).select(pool, 3, torch.Generator()).tolist())
        assert pool.diagnostics["coreset_mip"] == 1 and pool.diagnostics["coreset_outliers"] == 0
        assert pool.diagnostics["coreset_radius"] <= pool.diagnostics["coreset_greedy_radius"]
    assert runs[0] == runs[1]
    assert "coreset_mip: mip; radius" in caplog.text


def test_settings_are_checked() -> None:
    cfg = OmegaConf.create({"trainer": {"max_epochs": 5, "devices": 2}})
    text = "\n".join(CoreSetMIP(outlier_fraction=1.5, max_pairs=0).check_config(cfg))
    assert "trainer.devices=2" in text and "strategy.outlier_fraction=1.5" in text
    assert "strategy.max_pairs=0" in text
    cfg.trainer.devices = 1
    assert CoreSetMIP().check_config(cfg) == []
