"""The shared `class_balance` key through the whole loop (smoke experiment)."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig
from torch import Tensor

from tidal_lightning.al.loop import run
from tidal_lightning.errors import ConfigError
from tidal_lightning.strategies import base

pytestmark = pytest.mark.slow


def queried(cfg: DictConfig) -> list[str]:
    with open(Path(cfg.paths.output_dir) / "queries.csv") as handle:
        return [row["index"] for row in csv.DictReader(handle) if row["cycle"] == "1"]


def test_class_balance_runs_for_a_score_strategy_with_the_labeled_counts(
    smoke_config: Callable[..., DictConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[list[int], int, int]] = []
    select = base.class_balanced_selection

    def spy(scores: Tensor, predicted: Tensor, counts: Tensor, budget: int) -> Tensor:
        calls.append((counts.tolist(), budget, len(scores)))
        return select(scores, predicted, counts, budget)

    monkeypatch.setattr(base, "class_balanced_selection", spy)
    cfg = smoke_config("strategy=tidal_entropy", "strategy.class_balance=true", "al.cycles=2")
    run(cfg)
    picks = queried(cfg)
    assert len(picks) == len(set(picks)) == 16
    with open(Path(cfg.paths.output_dir) / "results.csv") as handle:
        first = next(csv.DictReader(handle))
    # one balanced query, over the 80 scored samples, with cycle 0's labeled class counts
    assert calls == [([int(first[f"labeled_class_{c}"]) for c in range(4)], 16, 80)]


def test_class_balance_on_a_set_strategy_stops_before_training(
    smoke_config: Callable[..., DictConfig],
) -> None:
    cfg = smoke_config("strategy=coreset", "strategy.class_balance=true")
    with pytest.raises(ConfigError, match=r"strategy\.class_balance=true"):
        run(cfg)
    assert not (Path(cfg.paths.output_dir) / "results.csv").exists()


def test_what_a_strategy_reports_about_its_query_becomes_result_columns(
    smoke_config: Callable[..., DictConfig],
) -> None:
    """ProbCover's radius and the MIP's reach results.csv, blank in a cycle without a query."""
    for strategy, column in (("probcover", "probcover_delta"), ("coreset_mip", "coreset_radius")):
        cfg = smoke_config(f"strategy={strategy}", "al.cycles=2", run=strategy)
        run(cfg)
        with open(Path(cfg.paths.output_dir) / "results.csv") as handle:
            rows = list(csv.DictReader(handle))
        assert float(rows[0][column]) > 0, (strategy, rows[0])
        assert rows[1][column] == ""  # the last cycle queries nothing
