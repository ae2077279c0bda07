"""TA-VAAL (Kim, Park, Kim & Chun, CVPR 2021): VAAL conditioned on Learning Loss's predicted loss.

VAAL's training and scoring (`strategies/vaal.py`) with two additions: Learning Loss's module
trains with the classifier (`strategy=lloss`'s `system_options`, TA-VAAL's sigmoid/BCE ranking
loss by default), and its prediction r for every labeled and pool sample is concatenated to z
before the decoder (as σ(r)) and to μ before the discriminator (as r), as the authors'
`selection_methods.py` does. Their code runs 1 VAE step per iteration and averages the KL
term (`conf/strategy/ta_vaal.yaml`); it feeds random ranks in its very first iteration, before
computing r, which is not copied here (r is known from the pool pass).
"""

from __future__ import annotations

from typing import Any, ClassVar

from omegaconf import DictConfig

from tidal_lightning.strategies.base import PoolOutputs
from tidal_lightning.strategies.lloss import LearningLoss
from tidal_lightning.strategies.vaal import VAAL, Conditions


class TAVAAL(VAAL):
    """VAAL conditioned on Learning Loss's predicted loss r (TA-VAAL, Kim et al., CVPR 2021).

    The loss-prediction module trains with the classifier (`weight`, `margin`,
    `detach_fraction`, `hidden`, `ranking`: as `strategy=lloss`, ranking `bce` by default,
    TA-VAAL's relaxation); at query time the decoder sees σ(r) and the discriminator r, for
    the labeled set and the pool subset alike. The other arguments are VAAL's, with TA-VAAL's
    defaults `vae_steps=1`, `kl_reduction="mean"`.
    """

    needs: ClassVar[frozenset[str]] = frozenset({"predicted_loss", "labeled_predicted_loss"})
    condition_dim: ClassVar[int] = 1

    def __init__(
        self,
        weight: float = 1.0,
        margin: float = 1.0,
        detach_fraction: float = 0.6,
        hidden: int = 128,
        ranking: str = "bce",
        **vaal: Any,
    ) -> None:
        # TA-VAAL's code: one VAE step per iteration, the KL term averaged
        super().__init__(**{"vae_steps": 1, "kl_reduction": "mean", **vaal})
        self.learning_loss = LearningLoss(weight, margin, detach_fraction, hidden, ranking)

    def system_options(self, stage_channels: tuple[int, ...], max_epochs: int) -> dict[str, Any]:
        return self.learning_loss.system_options(stage_channels, max_epochs)

    def check_config(self, cfg: DictConfig) -> list[str]:
        problems = super().check_config(cfg)
        return problems + [p for p in self.learning_loss.check_config(cfg) if p not in problems]

    def conditions(self, pool: PoolOutputs) -> tuple[Conditions, Conditions]:
        """Decoder: σ(r); discriminator: r; `[n, 1]` each, labeled and pool."""
        labeled, unlabeled = (
            pool["labeled_predicted_loss"][:, None],
            pool["predicted_loss"][:, None],
        )
        return (labeled.sigmoid(), unlabeled.sigmoid()), (labeled, unlabeled)
