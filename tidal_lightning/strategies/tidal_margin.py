"""TiDAL-M (Kye et al., ICCV 2023): margin of the predicted training dynamics."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from tidal_lightning.strategies import scores
from tidal_lightning.strategies.base import PoolOutputs, Strategy


class TiDALMargin(Strategy):
    """Smallest TD-module margin first.

    The margin is measured from the *classifier's* predicted class: TD probability of
    that class minus the largest other TD probability. It turns negative when the
    predicted dynamics favour another class than the final model does.
    """

    needs: ClassVar[frozenset[str]] = frozenset({"probs", "td_probs"})

    def score(self, pool: PoolOutputs) -> Tensor:
        return scores.negative_margin(pool["td_probs"], pool["probs"].argmax(dim=1))
