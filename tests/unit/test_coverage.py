"""TypiClust, ProbCover and (U)Herding against hand-made cases and brute-force references."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from tidal_lightning.strategies.base import PoolOutputs, build_strategy
from tidal_lightning.strategies.geometry import (
    kmeans,
    knn_mean_distance,
    nearest_other_label_distance,
    sq_distances,
)
from tidal_lightning.strategies.maxherding import MaxHerding, herding_gains, herding_select
from tidal_lightning.strategies.probcover import ProbCover, probcover_select, purity_radius
from tidal_lightning.strategies.typiclust import TypiClust, typicality, typiclust_select
from tidal_lightning.strategies.uherding import UHerding, min_pairwise_distance, uncertainty


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------- geometry helpers
def test_kmeans_recovers_well_separated_clusters_and_is_seeded() -> None:
    blobs = torch.tensor([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0]])
    points = blobs.repeat_interleave(30, dim=0) + 0.5 * torch.randn(90, 2, generator=gen(1))
    centers, labels = kmeans(points, 3, gen(2), chunk_size=7)
    truth = torch.arange(3).repeat_interleave(30)
    # the same partition up to renaming: every true cluster maps to one k-means cluster
    for c in range(3):
        assert len(labels[truth == c].unique()) == 1
    assert len(labels.unique()) == 3
    for k in range(3):  # each center is the mean of its members
        torch.testing.assert_close(centers[k], points[labels == k].mean(dim=0))
    _, again = kmeans(points, 3, gen(2), chunk_size=90)
    assert torch.equal(labels, again)  # chunking and re-running change nothing


def test_sq_distances_and_knn_mean_distance_match_brute_force() -> None:
    points = torch.randn(13, 4, generator=gen(3))
    brute = torch.tensor([[float(((a - b) ** 2).sum()) for b in points] for a in points])
    torch.testing.assert_close(sq_distances(points, points), brute, atol=1e-5, rtol=1e-5)
    k = 3
    expected = []
    for i in range(13):
        others = sorted(math.sqrt(brute[i, j]) for j in range(13) if j != i)
        expected.append(sum(others[:k]) / k)
    torch.testing.assert_close(
        knn_mean_distance(points, k, chunk_size=4), torch.tensor(expected), atol=1e-5, rtol=1e-5
    )


# ------------------------------------------------------------------------------ TypiClust
def test_typicality_is_the_inverse_mean_distance_to_the_k_nearest() -> None:
    # a centre with four points at distance 1 around it, and one point far out
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [5.0, 0]])
    values = typicality(points, 2)
    assert float(values[0]) == pytest.approx(1 / (1.0 + 1e-5))  # two neighbours at 1
    # (1, 0): nearest are the centre (1) and (0, ±1) (√2)
    assert float(values[1]) == pytest.approx(1 / ((1 + math.sqrt(2)) / 2 + 1e-5))
    assert int(values.argmax()) == 0


def brute_typical(pool: torch.Tensor, members: list[int]) -> int:
    """The member with the smallest mean distance to its k = min(20, m // 2) nearest others."""
    k = max(1, min(20, len(members) // 2))

    def mean_distance(i: int) -> float:
        others = sorted(float((pool[i] - pool[j]).norm()) for j in members if j != i)
        return sum(others[:k]) / k

    return min(members, key=lambda i: (mean_distance(i), i))


def test_typiclust_picks_the_typical_point_of_the_largest_uncovered_clusters() -> None:
    generator = gen(30)
    a = torch.randn(13, 2, generator=generator)
    b = torch.randn(9, 2, generator=generator) + torch.tensor([30.0, 0.0])
    c = torch.randn(7, 2, generator=generator) + torch.tensor([0.0, 30.0])
    labeled = a[:1]
    pool = torch.cat([a[1:], b, c])  # positions: A 0-11, B 12-20, C 21-27
    in_b, in_c = list(range(12, 21)), list(range(21, 28))
    # L + B = 1 + 2 = 3 clusters; B and C hold no labels and B is larger: B first, then C
    picked, diagnostics = typiclust_select(pool, labeled, 2, gen(0), min_cluster_size=5)
    assert picked.tolist() == [brute_typical(pool, in_b), brute_typical(pool, in_c)]
    assert diagnostics["typiclust_clusters"] == 3
    assert diagnostics["typiclust_uncovered_clusters"] == 2
    # with 3 clusters and 4 picks the fixed order comes round again: B, C, A, then B's
    # most typical point among those left (typicality recomputed without the first pick)
    picked, _ = typiclust_select(pool, labeled, 4, gen(0), max_clusters=3, min_cluster_size=5)
    first = brute_typical(pool, in_b)
    assert picked.tolist() == [
        first,
        brute_typical(pool, in_c),
        brute_typical(pool, list(range(12))),
        brute_typical(pool, [i for i in in_b if i != first]),
    ]


def test_typiclust_small_clusters_come_last_and_tiny_pools_still_fill_the_budget() -> None:
    points = torch.randn(12, 3, generator=gen(4))
    # 12 points into 1 + 6 clusters: all of size <= 5, the code's rule would keep none
    picked, _ = typiclust_select(points[1:], points[:1], 6, gen(5))
    assert len(picked) == len(set(picked.tolist())) == 6


def test_typiclust_strategy_reads_model_embeddings_and_is_deterministic() -> None:
    strategy = TypiClust(features="model")
    assert strategy.needs == {"embeddings", "labeled_embeddings"}
    assert TypiClust(features="simclr").needs == frozenset()
    embeddings = torch.randn(40, 5, generator=gen(6))
    pool = PoolOutputs(
        torch.arange(40),
        {"embeddings": embeddings, "labeled_embeddings": torch.randn(4, 5, generator=gen(7))},
    )
    first = strategy.select(pool, 6, gen(8))
    assert torch.equal(first, strategy.select(pool, 6, gen(8)))
    assert len(set(first.tolist())) == 6


# ------------------------------------------------------------------------------ ProbCover
def reference_greedy(
    out: dict[int, set[int]], covered: set[int], candidates: list[int], budget: int
) -> list[tuple[int, int]]:
    """Greedy max coverage on an explicit graph: (pick, its new coverage) per step."""
    covered = set(covered)
    steps: list[tuple[int, int]] = []
    for _ in range(budget):
        taken = [c for c, _ in steps]
        best = max(
            (c for c in candidates if c not in taken), key=lambda c: (len(out[c] - covered), -c)
        )
        steps.append((best, len(out[best] - covered)))
        covered |= out[best]
    return steps


def test_probcover_greedy_matches_greedy_on_the_explicit_delta_graph() -> None:
    generator = gen(9)
    for trial in range(6):
        points = torch.rand(12, 2, generator=generator) * 3
        delta = 0.9
        # the δ-graph by its definition: x -> y iff |x - y| < δ (self-loops included)
        out = {
            i: {j for j in range(12) if float((points[i] - points[j]).norm()) < delta}
            for i in range(12)
        }
        labeled, pool = points[:2], points[2:]
        picked, info = probcover_select(pool, labeled, 4, gen(trial), 3, delta=delta)
        steps = reference_greedy(out, out[0] | out[1], list(range(2, 12)), 4)
        useful = [c - 2 for c, gain in steps if gain > 0]  # after full coverage: random draws
        assert picked.tolist()[: len(useful)] == useful
        assert len(set(picked.tolist())) == 4
        covered = out[0] | out[1]
        assert info["probcover_coverage_before"] == pytest.approx(len(covered) / 12)
        final = covered.union(*(out[c + 2] for c in picked.tolist()))
        assert info["probcover_coverage_after"] == pytest.approx(len(final) / 12)
        best = max(
            len(covered.union(*(out[c] for c in combo)))
            for combo in itertools.combinations(range(2, 12), 4)
        )
        # greedy is within (1 - 1/e) of the best 4 balls (Nemhauser et al.)
        assert len(final) >= (1 - 1 / math.e) * best


def test_probcover_greedy_is_optimal_on_a_graph_built_for_it() -> None:
    # three groups on a line, ball radius 1.5: the middle of each group covers it (3 points
    # per ball, ties to the lowest position), and the brute-force optimum of 3 balls is all 9
    points = torch.tensor([[x, 0.0] for x in (0, 1, 2, 10, 11, 12, 20, 21, 22)])
    picked, info = probcover_select(points, points[:0], 3, gen(0), 3, delta=1.5)
    assert picked.tolist() == [1, 4, 7]
    assert info["probcover_coverage_before"] == 0 and info["probcover_coverage_after"] == 1
    # a fourth pick covers nothing new: drawn uniformly from the rest, never a repeat
    picked, _ = probcover_select(points, points[:0], 5, gen(0), 3, delta=1.5)
    assert picked.tolist()[:3] == [1, 4, 7] and len(set(picked.tolist())) == 5


def test_purity_rule_is_the_largest_delta_with_enough_pure_balls() -> None:
    points = torch.tensor([[x, 0.0] for x in (0.0, 1.0, 2.0, 10.0, 10.5, 13.0)])
    _, labels = kmeans(points, 2, gen(0))
    assert labels[:3].unique().numel() == 1 and labels[3:].unique().numel() == 1
    d = nearest_other_label_distance(points, labels)
    torch.testing.assert_close(d, torch.tensor([10.0, 9.0, 8.0, 8.0, 8.5, 11.0]))

    def purity(delta: float) -> float:  # by the definition: balls with |x - y| < delta
        pure = [
            all(labels[j] == labels[i] for j in range(6) if (points[i] - points[j]).norm() < delta)
            for i in range(6)
        ]
        return sum(pure) / 6

    for alpha, expected in ((0.95, 8.0), (0.5, 9.0), (0.2, 10.0)):
        delta, pi = purity_radius(points, 2, gen(0), alpha)
        assert delta == pytest.approx(expected)
        assert pi == pytest.approx(purity(delta)) and pi >= alpha
        assert purity(delta + 1e-3) < alpha  # any larger radius breaks the rule


def test_probcover_strategy_reports_its_delta_and_picks_distinct_pool_samples() -> None:
    strategy = ProbCover(features="model", purity_clusters=3)
    embeddings = torch.cat(
        [torch.randn(20, 4, generator=gen(10)) + 8 * torch.eye(4)[k] for k in range(3)]
    )
    pool = PoolOutputs(
        torch.arange(60),
        {"embeddings": embeddings, "labeled_embeddings": embeddings[:2] + 0.01},
    )
    picked = strategy.select(pool, 5, gen(11))
    assert len(set(picked.tolist())) == 5 and int(picked.max()) < 60
    diagnostics = strategy.query_diagnostics()
    assert diagnostics["probcover_delta"] > 0 and diagnostics["probcover_purity"] >= 0.95
    assert diagnostics["probcover_coverage_after"] >= diagnostics["probcover_coverage_before"]
    _, info = probcover_select(embeddings, embeddings[:0], 3, gen(0), 3, delta=0.5)
    assert info["probcover_delta"] == 0.5 and math.isnan(info["probcover_purity"])


# -------------------------------------------------------------------------------- herding
def brute_force_herding(
    pool: torch.Tensor, labeled: torch.Tensor, weights: torch.Tensor, budget: int, h: float
) -> list[int]:
    """Greedy on the objective itself: Σ_i w_i max_{s ∈ L ∪ S ∪ {c}} exp(-|x_i - s|² / h²)."""

    def k(a: torch.Tensor, b: torch.Tensor) -> float:
        return math.exp(-float(((a - b) ** 2).sum()) / h**2)

    chosen: list[int] = []
    for _ in range(budget):
        best, best_value = -1, -math.inf
        for c in range(len(pool)):
            if c in chosen:
                continue
            centres = [*labeled, *(pool[s] for s in chosen), pool[c]]
            value = sum(
                float(weights[i]) * max(k(pool[i], s) for s in centres) for i in range(len(pool))
            )
            if value > best_value + 1e-12:  # strictly better: ties keep the lower position
                best, best_value = c, value
        chosen.append(best)
    return chosen


@pytest.mark.parametrize("num_labeled", [0, 3])
def test_herding_matches_a_brute_force_kernel_herding(num_labeled: int) -> None:
    generator = gen(12 + num_labeled)
    pool = torch.randn(15, 3, generator=generator, dtype=torch.float64)
    labeled = torch.randn(num_labeled, 3, generator=generator, dtype=torch.float64)
    weights = torch.rand(15, generator=generator, dtype=torch.float64)
    for h in (0.7, 2.0):
        expected = brute_force_herding(pool, labeled, weights, 6, h)
        assert herding_select(pool, labeled, 6, h, weights, chunk_size=4).tolist() == expected
        ones = torch.ones(15, dtype=torch.float64)
        expected = brute_force_herding(pool, labeled, ones, 6, h)
        assert herding_select(pool, labeled, 6, h, None, chunk_size=4).tolist() == expected


def test_herding_gains_formula_and_tie_break() -> None:
    pool = torch.tensor([[0.0], [1.0], [3.0]])
    covered = torch.tensor([0.5, 0.0, 0.0])
    gains = herding_gains(pool, torch.ones(3), covered, pool, 1.0)
    e = math.exp
    expected = [
        (1 - 0.5) + e(-1) + e(-9),
        max(e(-1) - 0.5, 0) + 1 + e(-4),
        max(e(-9) - 0.5, 0) + e(-4) + 1,
    ]
    torch.testing.assert_close(gains, torch.tensor(expected))
    # two identical points: the first of the tie is picked
    twins = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    assert herding_select(twins, twins[:0], 1, 1.0).tolist() == [0]


def test_uherding_weights_and_adaptive_bandwidth() -> None:
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.4, 0.2]])
    torch.testing.assert_close(uncertainty(probs, "margin", 1.0), torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(
        uncertainty(probs, "least_confidence", 1.0), torch.tensor([0.3, 0.6])
    )
    # temperature T: the softmax of log p / T (= logits / T); p ∝ (0.7, 0.2, 0.1)^(1/2)
    root = torch.tensor([0.7, 0.2, 0.1]).sqrt()
    scaled = root / root.sum()
    assert float(uncertainty(probs[:1], "margin", 2.0)) == pytest.approx(
        float(1 - (scaled[0] - scaled[1])), rel=1e-5
    )
    labeled = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0], [0.0, 1.0]])
    assert min_pairwise_distance(labeled, chunk_size=2) == pytest.approx(1.0)  # 0 is skipped
    strategy = UHerding(features="model")
    assert strategy.needs == {"embeddings", "labeled_embeddings", "probs"}
    assert UHerding(features="simclr").needs == {"probs"}
    assert strategy.kernel_bandwidth(labeled) == pytest.approx(1.0)
    assert strategy.kernel_bandwidth(labeled[:1]) == 1.0  # one labeled sample: `bandwidth`
    assert MaxHerding(features="model", bandwidth=0.3).kernel_bandwidth(labeled) == 0.3


def test_uherding_equals_weighted_herding_on_normalised_features() -> None:
    embeddings = torch.randn(12, 3, generator=gen(20))
    labeled = torch.randn(3, 3, generator=gen(21))
    probs = torch.softmax(torch.randn(12, 4, generator=gen(22)), dim=1)
    pool = PoolOutputs(
        torch.arange(12), {"embeddings": embeddings, "labeled_embeddings": labeled, "probs": probs}
    )
    picked = UHerding(features="model").select(pool, 4, gen(0))
    unit = torch.nn.functional.normalize
    h = min_pairwise_distance(unit(labeled, dim=1))
    expected = brute_force_herding(
        unit(embeddings, dim=1).double(),
        unit(labeled, dim=1).double(),
        uncertainty(probs, "margin", 1.0).double(),
        4,
        h,
    )
    assert picked.tolist() == expected


def test_coverage_strategies_refuse_bad_settings() -> None:
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"trainer": {"max_epochs": 3, "devices": 1}})
    assert any(
        "strategy.features='pixels'" in p for p in TypiClust(features="pixels").check_config(cfg)
    )
    assert any("strategy.delta" in p for p in ProbCover(delta=-1.0).check_config(cfg))
    assert any("strategy.bandwidth" in p for p in MaxHerding(bandwidth=0.0).check_config(cfg))
    assert any("strategy.uncertainty" in p for p in UHerding(uncertainty="x").check_config(cfg))
    strategy = build_strategy(
        OmegaConf.create(
            {
                "_target_": "tidal_lightning.strategies.typiclust.TypiClust",
                "_recursive_": False,
                "features": "model",
                "feature_settings": {"simclr": {"encoder": {"_target_": "nowhere.Model"}}},
            }
        )
    )
    assert strategy.feature_settings.simclr.encoder == {"_target_": "nowhere.Model"}
