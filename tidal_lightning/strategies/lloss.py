"""Learning Loss (Yoo & Kweon, CVPR 2019): query the samples with the highest predicted loss."""

from __future__ import annotations

from typing import Any, ClassVar

from omegaconf import DictConfig
from torch import Tensor

from tidal_lightning.models.loss_prediction import RANKING_LOSSES, LossPredictionModule
from tidal_lightning.strategies.base import PoolOutputs, Strategy


class LearningLoss(Strategy):
    """Highest predicted loss first.

    The loss-prediction module trains jointly with the classifier on the four stage maps
    (loss CE + `weight` · ranking loss with `margin`); after `detach_fraction` of the epochs
    its input is detached from the backbone (epoch 120 of 200 in the paper).

    Args:
        weight: λ of the ranking loss (1 in the paper).
        margin: ξ of the ranking loss (1 in the paper).
        detach_fraction: fraction of the epochs after which the stage maps are detached.
        hidden: width of each per-stage projection of the module (128 in the paper).
        ranking: `margin` (the paper's margin ranking loss) or `bce` (TA-VAAL's relaxation,
            `models.loss_prediction.pairwise_bce_ranking_loss`).
    """

    needs: ClassVar[frozenset[str]] = frozenset({"predicted_loss"})

    def __init__(
        self,
        weight: float = 1.0,
        margin: float = 1.0,
        detach_fraction: float = 0.6,
        hidden: int = 128,
        ranking: str = "margin",
    ) -> None:
        self.weight = weight
        self.margin = margin
        self.detach_fraction = detach_fraction
        self.hidden = hidden
        self.ranking = ranking

    def detach_epoch(self, max_epochs: int) -> int:
        """The first epoch (0-based) whose stage maps reach the module detached."""
        return round(self.detach_fraction * max_epochs)

    def system_options(self, stage_channels: tuple[int, ...], max_epochs: int) -> dict[str, Any]:
        return {
            "loss_module": LossPredictionModule(stage_channels, self.hidden),
            "loss_weight": self.weight,
            "loss_margin": self.margin,
            "loss_detach_epoch": self.detach_epoch(max_epochs),
            "loss_ranking": self.ranking,
        }

    def check_config(self, cfg: DictConfig) -> list[str]:
        problems = super().check_config(cfg)
        if not 0.0 <= self.detach_fraction <= 1.0:
            problems.append(f"strategy.detach_fraction={self.detach_fraction}: must be in [0, 1]")
        if self.weight < 0 or self.margin < 0:
            problems.append(
                f"strategy.weight={self.weight}, strategy.margin={self.margin}: must be >= 0"
            )
        if self.ranking not in RANKING_LOSSES:
            problems.append(
                f"strategy.ranking={self.ranking!r}: must be one of {sorted(RANKING_LOSSES)}"
            )
        return problems

    def score(self, pool: PoolOutputs) -> Tensor:
        return pool["predicted_loss"]
