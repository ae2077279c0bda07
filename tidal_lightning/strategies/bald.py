"""BALD with MC dropout (Houlsby et al. 2011; Gal, Islam & Ghahramani, ICML 2017)."""

from __future__ import annotations

from typing import ClassVar

from omegaconf import DictConfig
from torch import Tensor

from tidal_lightning.strategies import scores
from tidal_lightning.strategies.base import PoolOutputs, Strategy


class BALD(Strategy):
    """Highest mutual information between the prediction and the weights first.

    `I = H[mean_t p_t] - mean_t H[p_t]` over `mc_samples` dropout masks of the layer before
    the classifier (`model.dropout`, which the model also trains with).

    Args:
        mc_samples: T, stochastic passes per pool sample (10 by default).
    """

    needs: ClassVar[frozenset[str]] = frozenset({"mc_mean_probs", "mc_mean_entropy"})

    def __init__(self, mc_samples: int = 10) -> None:
        self.mc_samples = mc_samples

    def check_config(self, cfg: DictConfig) -> list[str]:
        problems = super().check_config(cfg)
        if not isinstance(self.mc_samples, int) or self.mc_samples < 1:
            problems.append(f"strategy.mc_samples={self.mc_samples!r}: must be an integer >= 1")
        dropout = cfg.model.get("dropout", 0.0)
        if not isinstance(dropout, int | float) or not 0 < dropout < 1:
            problems.append(
                f"model.dropout={dropout!r}: BALD samples dropout masks, so it must be in (0, 1) "
                "(strategy=bald sets 0.3; keep a positive value when overriding it)"
            )
        return problems

    def score(self, pool: PoolOutputs) -> Tensor:
        return scores.mutual_information(pool["mc_mean_probs"], pool["mc_mean_entropy"])
