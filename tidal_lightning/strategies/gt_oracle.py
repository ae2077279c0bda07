"""The ground-truth oracle (label-dispersion paper, §4 Baselines): an upper-bound reference.

"An acquisition function using ground-truth that selects samples that the model
misclassified" (Bengar et al. 2021). It reads the stored labels of the pool subset, so it is
no active-learning method: it shows what knowing the model's mistakes would be worth.

The paper says no more than that. When more pool samples are misclassified than the budget,
it takes a uniform draw among them (the run's `select` generator): any further preference
(say, the most confident mistakes) would add a criterion the paper does not name. When fewer
are misclassified, it takes all of them and fills the budget with a uniform draw among the
correctly classified ones, as random sampling would. (In the paper's protocol, 2500 of
≥ 35 000 pool images with test accuracy below 91%, there are always enough mistakes.)
"""

from __future__ import annotations

from typing import ClassVar

import torch
from hydra.utils import get_class
from omegaconf import DictConfig
from torch import Tensor

from tidal_lightning.strategies.base import PoolOutputs, Strategy


class GroundTruthOracle(Strategy):
    """Misclassified pool samples first (final model's argmax ≠ stored label), in random order."""

    needs: ClassVar[frozenset[str]] = frozenset({"probs", "pool_targets"})

    def check_config(self, cfg: DictConfig) -> list[str]:
        problems = super().check_config(cfg)
        oracle = cfg.get("oracle")
        target = oracle.get("_target_") if oracle is not None else None
        # no oracle group = the simulated one (see the loop)
        if target is not None and not getattr(get_class(target), "reveals_labels", False):
            problems.append(
                f"strategy=gt_oracle with oracle={target.rsplit('.', 1)[-1]}: the ground-truth "
                "oracle reads the stored labels of the pool before it queries (a reference, "
                "not an active-learning method), and here a person gives the labels after the "
                "query; use oracle=simulated on a dataset whose labels are all known"
            )
        return problems

    def select(self, pool: PoolOutputs, budget: int, generator: torch.Generator) -> Tensor:
        targets = pool["pool_targets"]
        unknown = int((targets < 0).sum())
        if unknown:
            raise ValueError(
                f"strategy=gt_oracle needs the stored label of every pool sample; {unknown} of "
                f"{len(targets)} are unknown (-1)"
            )
        wrong = pool["probs"].argmax(dim=1) != targets
        order = torch.randperm(len(targets), generator=generator, device=generator.device)
        # a stable sort on "is correct" keeps the random order within each group
        ranked = order[torch.sort((~wrong[order]).to(torch.uint8), stable=True).indices]
        pool.diagnostics["oracle_misclassified"] = int(wrong.sum())
        return ranked[:budget].cpu()
