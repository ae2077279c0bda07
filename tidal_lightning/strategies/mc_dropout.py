"""What the MC-dropout strategies (BALD, BatchBALD, EPIG) share: dropout at query time only."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from tidal_lightning.strategies.base import Strategy


class MCDropoutStrategy(Strategy):
    """Base of strategies that read the `mc_*` outputs: T dropout masks at query time.

    The model trains exactly like every other strategy's (`model.dropout`, 0 by default).
    Dropout with probability `dropout` acts only in the T passes at query time, on the
    embedding before the classifier, as in the official TiDAL code: `models/resnet.py`
    applies `self.dropout = nn.Dropout(0.5)` only when `forward(..., method='BALD')`, which
    training never passes, and `methods/selection_methods.py`
    (`predict_prob_dropout_split`) puts the dropout layers in train mode for the
    `n_drop=10` query passes. `system_options` hands `dropout` to the system, which draws
    the masks (`ActiveLearningSystem.mc_dropout_masks`).

    Args:
        mc_samples: T, masks per pass.
        dropout: p of the query-time masks.
    """

    def __init__(self, mc_samples: int = 10, dropout: float = 0.5) -> None:
        self.mc_samples = mc_samples
        self.dropout = dropout

    def check_config(self, cfg: DictConfig) -> list[str]:
        problems = super().check_config(cfg)
        if not isinstance(self.mc_samples, int) or self.mc_samples < 1:
            problems.append(f"strategy.mc_samples={self.mc_samples!r}: must be an integer >= 1")
        if (
            isinstance(self.dropout, bool)
            or not isinstance(self.dropout, int | float)
            or not 0 < self.dropout < 1
        ):
            problems.append(
                f"strategy.dropout={self.dropout!r}: the query-time dropout probability must "
                "be in (0, 1) (0.5 by default, as in the official TiDAL code)"
            )
        return problems

    def system_options(self, stage_channels: tuple[int, ...], max_epochs: int) -> dict[str, Any]:
        return {"mc_dropout": float(self.dropout)}
