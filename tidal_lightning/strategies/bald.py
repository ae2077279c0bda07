"""BALD with MC dropout (Houlsby et al. 2011; Gal, Islam & Ghahramani, ICML 2017)."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from tidal_lightning.strategies import scores
from tidal_lightning.strategies.base import PoolOutputs
from tidal_lightning.strategies.mc_dropout import MCDropoutStrategy


class BALD(MCDropoutStrategy):
    """Highest mutual information between the prediction and the weights first.

    `I = H[mean_t p_t] - mean_t H[p_t]` over `mc_samples` dropout masks of the layer before
    the classifier, applied at query time only (see `MCDropoutStrategy`).

    Args:
        mc_samples: T, stochastic passes per pool sample (10, as the official TiDAL code).
        dropout: p of the query-time masks (0.5, as the official TiDAL code).
    """

    needs: ClassVar[frozenset[str]] = frozenset({"mc_mean_probs", "mc_mean_entropy"})

    def score(self, pool: PoolOutputs) -> Tensor:
        return scores.mutual_information(pool["mc_mean_probs"], pool["mc_mean_entropy"])
