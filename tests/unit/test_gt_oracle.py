"""The ground-truth oracle: picks against sets worked out by hand; refused without stored labels."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import compose_config
from tidal_lightning.al.scoring import pool_pass
from tidal_lightning.strategies.base import PoolOutputs
from tidal_lightning.strategies.gt_oracle import GroundTruthOracle

# 8 pool samples, 3 classes; the model predicts argmax of `logits`
PREDICTED = [0, 1, 2, 0, 1, 2, 0, 1]
TARGETS = [0, 2, 2, 1, 1, 0, 0, 1]
MISCLASSIFIED = {1, 3, 5}  # worked out by hand: predicted != target


def pool() -> PoolOutputs:
    probs = F.one_hot(torch.tensor(PREDICTED), 3).float() * 0.6 + 0.4 / 3
    return PoolOutputs(torch.arange(8), {"probs": probs, "pool_targets": torch.tensor(TARGETS)})


def picks(budget: int, seed: int = 0) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return GroundTruthOracle().select(pool(), budget, generator).tolist()


def test_exactly_the_misclassified_samples_when_they_fill_the_budget() -> None:
    assert set(picks(3)) == MISCLASSIFIED and len(picks(3)) == 3


def test_more_mistakes_than_budget_a_seeded_draw_among_them() -> None:
    draws = {tuple(picks(2, seed)) for seed in range(20)}
    assert all(set(d) < MISCLASSIFIED and len(set(d)) == 2 for d in draws)
    assert len(draws) > 1  # which mistakes is up to the generator ...
    assert picks(2, seed=7) == picks(2, seed=7)  # ... and only to it


def test_fewer_mistakes_than_budget_all_of_them_then_correct_ones() -> None:
    chosen = picks(5)
    assert len(set(chosen)) == 5
    assert set(chosen[:3]) == MISCLASSIFIED  # the mistakes come first
    assert set(chosen[3:]) <= set(range(8)) - MISCLASSIFIED


def test_unknown_labels_are_an_error_not_a_guess() -> None:
    outputs = pool()
    outputs.outputs["pool_targets"][2] = -1
    with pytest.raises(ValueError, match="1 of 8 are unknown"):
        GroundTruthOracle().select(outputs, 2, torch.Generator())


def test_the_pool_pass_hands_over_the_stored_labels_only_when_asked() -> None:
    data = SimpleNamespace(train_targets=torch.tensor([5, 6, 7, 8, 9]), eval_batch_size=4)
    indices, labeled = torch.tensor([4, 1, 3]), torch.tensor([0])
    asked = pool_pass(
        None, data, indices, labeled, frozenset({"pool_targets"}), torch.device("cpu")
    )  # type: ignore[arg-type]
    assert asked["pool_targets"].tolist() == [9, 6, 8]
    not_asked = pool_pass(None, data, indices, labeled, frozenset(), torch.device("cpu"))  # type: ignore[arg-type]
    assert "pool_targets" not in not_asked.outputs


def test_refused_when_a_person_labels(tmp_path: Path) -> None:
    cfg = compose_config(["+experiment=smoke", "strategy=gt_oracle", "oracle=file"], tmp_path)
    (problem,) = GroundTruthOracle().check_config(cfg)
    assert "strategy=gt_oracle with oracle=FileOracle" in problem
    assert "use oracle=simulated" in problem
    simulated = compose_config(["+experiment=smoke", "strategy=gt_oracle"], tmp_path)
    assert GroundTruthOracle().check_config(simulated) == []
