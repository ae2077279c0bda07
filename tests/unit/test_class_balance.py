"""Class-balanced selection (`strategy.class_balance=true`): quotas and picks by hand."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import CONF_DIR
from tidal_lightning.strategies.balance import class_balanced_selection, class_quotas
from tidal_lightning.strategies.base import PoolOutputs, build_strategy


def one_at_a_time(labeled: list[int], available: list[int], budget: int) -> list[int]:
    """The rule by its definition: each pick to the open class with the fewest, lowest first."""
    counts, room, quotas = list(labeled), list(available), [0] * len(labeled)
    for _ in range(min(budget, sum(available))):
        c = min((k for k in range(len(counts)) if room[k] > 0), key=lambda k: (counts[k], k))
        counts[c] += 1
        room[c] -= 1
        quotas[c] += 1
    return quotas


def test_quotas_serve_the_rarest_labeled_classes_first() -> None:
    # labeled 10 / 2 / 5, plenty predicted of each, budget 9: class 1 is raised to 5 (3
    # picks), then classes 1 and 2 share the next 6 picks up to 8 each
    assert class_quotas(torch.tensor([10, 2, 5]), torch.tensor([50, 50, 50]), 9).tolist() == [
        0,
        6,
        3,
    ]
    # a tie at the lowest count goes to the lowest class index first: 7 picks over 3 equal
    # classes -> 3, 2, 2
    assert class_quotas(torch.tensor([4, 4, 4]), torch.tensor([9, 9, 9]), 7).tolist() == [3, 2, 2]
    # a class with few predicted samples gives what it has; the others take the rest
    assert class_quotas(torch.tensor([0, 0, 9]), torch.tensor([1, 30, 30]), 8).tolist() == [1, 7, 0]


def test_quotas_equal_the_one_at_a_time_rule_on_random_cases() -> None:
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        k = int(torch.randint(1, 6, (1,), generator=generator))
        labeled = torch.randint(0, 8, (k,), generator=generator)
        available = torch.randint(0, 6, (k,), generator=generator)
        budget = int(torch.randint(0, 25, (1,), generator=generator))
        got = class_quotas(labeled, available, budget).tolist()
        assert got == one_at_a_time(labeled.tolist(), available.tolist(), budget)


def test_selection_takes_each_class_quota_of_its_best_scores() -> None:
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.5, 0.1, 0.95])
    predicted = torch.tensor([0, 0, 0, 1, 1, 1, 2, 0])
    # labeled 1 / 0 / 3, budget 4: picks go to class 1, then 0 (tie at 1, lower index),
    # 1, 0 -> quotas 2, 2, 0: class 0 its best two (7 at 0.95, 0 at 0.9), class 1 its best
    # two (3 at 0.6, then the tie 4 vs 5 at 0.5 goes to the lower position, 4)
    assert class_quotas(torch.tensor([1, 0, 3]), torch.tensor([4, 3, 1]), 4).tolist() == [2, 2, 0]
    picked = class_balanced_selection(scores, predicted, torch.tensor([1, 0, 3]), 4)
    assert picked.tolist() == [7, 0, 3, 4]  # in score order


@pytest.mark.parametrize("name", ["entropy", "tidal_margin", "lloss"])
def test_class_balance_works_for_score_strategies_and_adds_probs(name: str) -> None:
    config = OmegaConf.load(CONF_DIR / "strategy" / f"{name}.yaml")
    config.class_balance = True
    strategy = build_strategy(config)
    assert strategy.class_balance is True and "probs" in strategy.needs
    plain = build_strategy(OmegaConf.load(CONF_DIR / "strategy" / f"{name}.yaml"))
    assert plain.class_balance is False and plain.needs == type(plain).needs


def test_class_balance_changes_the_picks_of_entropy() -> None:
    strategy = build_strategy(
        OmegaConf.create(
            {"_target_": "tidal_lightning.strategies.entropy.Entropy", "class_balance": True}
        )
    )
    # the three most uncertain samples are all predicted class 0; class 1 has no labels
    probs = torch.tensor([[0.5, 0.5], [0.55, 0.45], [0.6, 0.4], [0.1, 0.9], [0.05, 0.95]])
    pool = PoolOutputs(
        torch.arange(5), {"probs": probs}, labeled_targets=torch.tensor([0, 0, 0, 1])
    )
    # labeled 3 / 1, budget 2: both picks go to class 1 (its two samples, best entropy first)
    assert strategy.select(pool, 2, torch.Generator()).tolist() == [3, 4]
    strategy.class_balance = False
    assert strategy.select(pool, 2, torch.Generator()).tolist() == [0, 1]


def test_class_balance_is_refused_for_set_selection_strategies() -> None:
    cfg = OmegaConf.create({"trainer": {"max_epochs": 3}})
    config = OmegaConf.load(CONF_DIR / "strategy" / "coreset.yaml")
    config.class_balance = True
    problems = build_strategy(config).check_config(cfg)
    assert any("strategy.class_balance=true" in p and "CoreSet" in p for p in problems)
    config = OmegaConf.load(CONF_DIR / "strategy" / "margin.yaml")
    config.class_balance = "yes"
    assert any("must be true or false" in p for p in build_strategy(config).check_config(cfg))
