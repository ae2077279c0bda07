"""Uncertainty scores against values computed by hand."""

import math

import pytest
import torch

from tidal_lightning.strategies.base import PoolOutputs
from tidal_lightning.strategies.entropy import Entropy
from tidal_lightning.strategies.least_confidence import LeastConfidence
from tidal_lightning.strategies.margin import Margin
from tidal_lightning.strategies.random import RandomSampling
from tidal_lightning.strategies.tidal_entropy import TiDALEntropy
from tidal_lightning.strategies.tidal_margin import TiDALMargin

PROBS = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.7, 0.2, 0.1]])


def pool(**outputs: torch.Tensor) -> PoolOutputs:
    n = len(next(iter(outputs.values())))
    return PoolOutputs(torch.arange(100, 100 + n), outputs)


def test_entropy_by_hand() -> None:
    # 0.7 ln(1/0.7) + 0.2 ln(1/0.2) + 0.1 ln(1/0.1) = 0.24967 + 0.32189 + 0.23026
    expected = torch.tensor([math.log(2), 0.0, 0.8018186])
    torch.testing.assert_close(Entropy().score(pool(probs=PROBS)), expected, atol=1e-6, rtol=0)


def test_margin_by_hand() -> None:
    # top-1 minus top-2: 0.0, 1.0, 0.5; the score is the negative (small margin first)
    expected = torch.tensor([0.0, -1.0, -0.5])
    torch.testing.assert_close(Margin().score(pool(probs=PROBS)), expected)


def test_least_confidence_by_hand() -> None:
    expected = torch.tensor([0.5, 0.0, 0.3])
    torch.testing.assert_close(LeastConfidence().score(pool(probs=PROBS)), expected)


def test_tidal_margin_measures_from_the_classifier_class() -> None:
    classifier = torch.tensor([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1]])
    td = torch.tensor([[0.3, 0.5, 0.2], [0.2, 0.6, 0.2]])
    # row 0: classifier says class 0; TD margin 0.3 - 0.5 = -0.2 -> score +0.2
    # row 1: classifier says class 1; TD margin 0.6 - 0.2 = 0.4 -> score -0.4
    scores = TiDALMargin().score(pool(probs=classifier, td_probs=td))
    torch.testing.assert_close(scores, torch.tensor([0.2, -0.4]))


def test_tidal_entropy_reads_the_td_module_output() -> None:
    classifier = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    td = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    scores = TiDALEntropy().score(pool(probs=classifier, td_probs=td))
    torch.testing.assert_close(scores, torch.tensor([math.log(2), 0.0]))


def test_select_takes_highest_scores_and_breaks_ties_by_position() -> None:
    probs = torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.6, 0.4], [0.5, 0.5], [0.99, 0.01]])
    chosen = Margin().select(pool(probs=probs), 3, torch.Generator().manual_seed(0))
    assert chosen.tolist() == [1, 3, 2]


def test_strategies_declare_what_they_need() -> None:
    assert RandomSampling().needs == frozenset()
    assert not Entropy().requires_td_module
    assert TiDALEntropy().requires_td_module and TiDALMargin().requires_td_module


@pytest.mark.parametrize("seed", [0, 1])
def test_random_selection_is_distinct_and_seeded(seed: int) -> None:
    p = PoolOutputs(torch.arange(50))
    a = RandomSampling().select(p, 10, torch.Generator().manual_seed(seed))
    b = RandomSampling().select(p, 10, torch.Generator().manual_seed(seed))
    assert len(set(a.tolist())) == 10 and a.tolist() == b.tolist()
