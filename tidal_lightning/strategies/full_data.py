"""The full-data reference: one training on the whole training pool, no query.

Not an acquisition strategy but the number AL results are read against: the label-dispersion
paper's "All data" row (Table 1, where each method's accuracy at 30% of the labels is also
given relative to it), the official TiDAL code's `--total` (main.py: every index labeled, one
cycle, one trial). `python -m tidal_lightning.report` shows each strategy's accuracy relative
to it when a run of it is in the sweep folder (or given with `--full-data`).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from omegaconf import DictConfig
from torch import Tensor

from tidal_lightning.strategies.base import PoolOutputs, Strategy


class FullData(Strategy):
    """Labels every pool sample at the start and trains once; `al.initial`/`budget` unused."""

    needs: ClassVar[frozenset[str]] = frozenset()
    labels_everything: ClassVar[bool] = True

    def check_config(self, cfg: DictConfig) -> list[str]:
        problems = super().check_config(cfg)
        oracle = cfg.get("oracle") or {}
        if "FileOracle" in str(oracle.get("_target_", "")):
            problems.append(
                "strategy=full_data labels the whole training pool at once: it needs the "
                "dataset's own labels (oracle=simulated), not a person's (oracle=file)"
            )
        return problems

    def select(self, pool: PoolOutputs, budget: int, generator: torch.Generator) -> Tensor:
        raise RuntimeError("strategy=full_data trains once on everything: it never queries")
