"""The analyses' numbers against hand-computed values and independent references."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from tidal_lightning.analysis.common import AnalysisError, Request, parse_options
from tidal_lightning.analysis.informativeness import Options as InformativenessOptions
from tidal_lightning.analysis.metrics import (
    accuracy_at_top,
    auroc,
    density_curve,
    minority_classes,
    top_sizes,
)
from tidal_lightning.analysis.td_prediction import read_query_rows
from tidal_lightning.analysis.td_separation import Options as SeparationOptions
from tidal_lightning.analysis.td_separation import SnapshotTracker, uncertainty_scores
from tidal_lightning.data.longtail import long_tail_counts
from tidal_lightning.strategies.badge import BADGE
from tidal_lightning.strategies.base import PoolOutputs, Strategy
from tidal_lightning.strategies.kcenter_greedy import KCenterGreedy
from tidal_lightning.strategies.random import RandomSampling

T, F = True, False


# ---------------------------------------------------------------------------------- AUROC
def test_auroc_by_hand() -> None:
    # positives 0.35, 0.8 vs negatives 0.1, 0.4: of the 4 pairs, 0.35 < 0.4 is the one
    # the positive loses, so 3/4
    assert auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([F, F, T, T])) == 0.75


def test_auroc_ties_count_one_half() -> None:
    # pairs (0.5 vs 0.5) = 1/2 and (0.5 vs 0.9) = 0 -> 0.5 / 2
    assert auroc(torch.tensor([0.5, 0.5, 0.9]), torch.tensor([T, F, F])) == 0.25
    assert auroc(torch.tensor([1.0, 1.0]), torch.tensor([T, F])) == 0.5


def test_auroc_perfect_and_reversed() -> None:
    scores = torch.tensor([3.0, -1.0, 2.0, 0.0])
    assert auroc(scores, torch.tensor([T, F, T, F])) == 1.0
    assert auroc(scores, torch.tensor([F, T, F, T])) == 0.0


def test_auroc_matches_torchmetrics_on_random_scores() -> None:
    generator = torch.Generator().manual_seed(0)
    scores = torch.rand(500, generator=generator)
    positive = torch.rand(500, generator=generator) < scores  # informative, not perfect
    expected = float(binary_auroc(scores, positive.long()))
    assert auroc(scores, positive) == pytest.approx(expected, abs=1e-6)
    assert 0.6 < expected < 0.95


def test_auroc_needs_both_groups() -> None:
    with pytest.raises(ValueError, match="both groups"):
        auroc(torch.tensor([0.1, 0.2]), torch.tensor([T, T]))


# ------------------------------------------------------------------------- minority split
def test_minority_is_the_smaller_half_by_count() -> None:
    # by count: 0 (100), 2 (50) | 3 (10), 1 (5)
    assert minority_classes(torch.tensor([100, 5, 50, 10])).tolist() == [F, T, F, T]


def test_minority_with_an_odd_number_of_classes_and_ties() -> None:
    # 5 classes: the 2 smallest are minority, the larger 3 majority
    assert minority_classes(torch.tensor([5, 4, 3, 2, 1])).tolist() == [F, F, F, T, T]
    # equal counts: the higher class indices go to the minority
    assert minority_classes(torch.tensor([7, 7, 7, 7])).tolist() == [F, F, T, T]


def test_minority_of_a_long_tailed_ten_class_pool() -> None:
    counts = torch.tensor(long_tail_counts(6000, 10, 100.0))
    assert minority_classes(counts).tolist() == [F] * 5 + [T] * 5


# -------------------------------------------------------------------- top x % and accuracy
def test_top_sizes_round_up_and_never_reach_zero() -> None:
    assert top_sizes(80, [1, 10, 50]) == [1, 8, 40]  # 0.8 -> 1
    assert top_sizes(150, [1, 3]) == [2, 5]  # 1.5 -> 2, 4.5 -> 5
    assert top_sizes(5000, [1, 5, 10, 25, 50]) == [50, 250, 500, 1250, 2500]
    assert top_sizes(1, [1, 50]) == [1, 1]


def test_accuracy_at_top_by_hand() -> None:
    correct = torch.tensor([T, F, F, T, T])
    order = torch.tensor([1, 2, 0, 3, 4])  # wrong, wrong, right, right, right
    assert accuracy_at_top(order, correct, [1, 2, 3, 5]) == pytest.approx([0, 0, 1 / 3, 3 / 5])


def test_accuracy_at_top_refuses_a_short_ranking() -> None:
    with pytest.raises(ValueError, match="fewer than 3"):
        accuracy_at_top(torch.tensor([0, 1]), torch.tensor([T, F, T]), [1, 3])


def test_density_curve_has_unit_area() -> None:
    values = np.random.default_rng(0).normal(size=400)
    grid = np.linspace(-8, 8, 2001)
    assert np.trapezoid(density_curve(values, grid), grid) == pytest.approx(1.0, abs=1e-3)
    # one distinct value: a spike of area 1 instead of a singular-matrix error
    spike = density_curve(np.array([0.3, 0.3]), grid)
    assert np.count_nonzero(spike) == 1
    assert spike.sum() * (grid[1] - grid[0]) == pytest.approx(1.0)


# --------------------------------------------------------------------- td_separation parts
def test_uncertainty_scores_by_hand() -> None:
    snapshot = torch.tensor([[0.7, 0.2, 0.1], [0.0, 1.0, 0.0]])
    dynamics = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.5, 0.3]])
    got = uncertainty_scores(snapshot, dynamics)
    # 0.7 ln(1/0.7) + 0.2 ln(1/0.2) + 0.1 ln(1/0.1) = 0.8018186
    torch.testing.assert_close(got["snapshot_entropy"], torch.tensor([0.8018186, 0.0]))
    torch.testing.assert_close(got["snapshot_margin"], torch.tensor([-0.5, -1.0]))
    expected_td_entropy = [
        math.log(2),
        -(0.2 * math.log(0.2) + 0.5 * math.log(0.5) + 0.3 * math.log(0.3)),
    ]
    torch.testing.assert_close(got["td_entropy"], torch.tensor(expected_td_entropy))
    torch.testing.assert_close(got["td_margin"], torch.tensor([0.0, -0.2]))


def test_snapshot_tracker_keeps_the_last_epoch_next_to_the_mean() -> None:
    tracker = SnapshotTracker(num_samples=3, num_classes=2)
    epochs = [
        {"indices": torch.tensor([2, 0]), "probs": torch.tensor([[0.2, 0.8], [0.6, 0.4]])},
        {"indices": torch.tensor([0, 2]), "probs": torch.tensor([[1.0, 0.0], [0.4, 0.6]])},
    ]
    for outputs in epochs:  # outside a fit each call counts as one epoch of its samples
        tracker.on_train_batch_end(None, None, outputs, None, 0)  # type: ignore[arg-type]
    seen = torch.tensor([0, 2])
    torch.testing.assert_close(tracker.last_probs[seen], torch.tensor([[1.0, 0.0], [0.4, 0.6]]))
    torch.testing.assert_close(tracker.mean_probs(seen), torch.tensor([[0.8, 0.2], [0.3, 0.7]]))
    assert tracker.last_probs[1].tolist() == [0.0, 0.0]  # never trained on


# -------------------------------------------------------------------- set strategies' order
def _pool(n: int, seed: int) -> PoolOutputs:
    generator = torch.Generator().manual_seed(seed)
    return PoolOutputs(
        torch.arange(n),
        {
            "embeddings": torch.randn(n, 6, generator=generator),
            "labeled_embeddings": torch.randn(5, 6, generator=generator),
            "probs": torch.randn(n, 4, generator=generator).softmax(dim=1),
        },
    )


SET_STRATEGIES = [KCenterGreedy(), BADGE(), RandomSampling()]


@pytest.mark.parametrize("strategy", SET_STRATEGIES, ids=lambda s: type(s).__name__)
def test_set_strategies_pick_in_order_so_prefixes_are_smaller_selections(
    strategy: Strategy,
) -> None:
    # informativeness cuts one 50 % selection at every x: that is the selection of size k
    # only when the k-pick selection is the first k of the larger one.
    pool = _pool(60, seed=1)
    large = strategy.select(pool, 30, torch.Generator().manual_seed(7))
    for k in (1, 6, 17):
        small = strategy.select(pool, k, torch.Generator().manual_seed(7))
        assert small.tolist() == large[:k].tolist()
    assert len(set(large.tolist())) == 30


# --------------------------------------------------------------------------- command line
def test_request_splits_settings_from_overrides_and_names_the_folder() -> None:
    request = Request.parse(
        "td_separation",
        ["seed=1", "+experiment=smoke", "analysis.train_size=50", "paths.output_dir=/tmp/x"],
    )
    assert request.hydra_overrides == ["seed=1", "+experiment=smoke", "paths.output_dir=/tmp/x"]
    assert request.knobs == ["train_size=50"]
    assert request.folder_name() == "experiment-smoke__analysis.train_size-50__seed-1"
    assert request.sets("paths.output_dir") and not request.sets("strategy")
    assert Request.parse("x", []).folder_name() == "defaults"
    # what Hydra leaves out of run-folder names is left out here too
    quiet = Request.parse("x", ["trainer.enable_progress_bar=false", "logger=none", "seed=2"])
    assert quiet.folder_name(["logger", "trainer.enable_progress_bar"]) == "seed-2"


def test_settings_are_typed_and_checked() -> None:
    options = parse_options(SeparationOptions, ["train_size=50"], "td_separation")
    assert options.train_size == 50 and options.default_imbalance_ratio == 100.0
    chosen = parse_options(InformativenessOptions, ["strategies=[entropy,margin]"], "x")
    assert chosen.strategies == ["entropy", "margin"]
    with pytest.raises(AnalysisError, match=r"analysis\.train_size, analysis\.default_imbal"):
        parse_options(SeparationOptions, ["train_sise=50"], "td_separation")
    with pytest.raises(AnalysisError, match="train_size"):
        parse_options(SeparationOptions, ["train_size=many"], "td_separation")


def test_read_query_rows_keeps_cycles_with_a_query(tmp_path: Path) -> None:
    csv_path = tmp_path / "results.csv"
    csv_path.write_text(
        "cycle,num_labeled,test_acc,td_pool_kl,td_pool_spearman\n"
        "0,24,0.5,0.1,0.9\n"
        "1,40,0.6,0.2,0.8\n"
        "2,56,0.7,,\n"
    )
    rows, columns = read_query_rows(csv_path)
    assert columns == ["td_pool_kl", "td_pool_spearman"]
    assert rows == [
        {
            "cycle": 0,
            "num_labeled": 24,
            "test_acc": 0.5,
            "td_pool_kl": 0.1,
            "td_pool_spearman": 0.9,
        },
        {
            "cycle": 1,
            "num_labeled": 40,
            "test_acc": 0.6,
            "td_pool_kl": 0.2,
            "td_pool_spearman": 0.8,
        },
    ]
