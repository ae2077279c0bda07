"""The shared part of the coverage strategies: which feature space they select in.

TypiClust, ProbCover and (U)Herding are defined on self-supervised features, not on the
embeddings of a classifier trained on a few hundred labels. `strategy.features` picks the
space: `model` (the pool pass's penultimate embeddings; works everywhere, costs nothing
extra), `simclr` (an encoder trained once per dataset on the unlabeled pool, cached) or
`timm` (a pretrained timm backbone). The settings of the last two are the run's `features`
block, passed in as `strategy.feature_settings: ${features}`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor

from tidal_lightning.errors import ConfigError
from tidal_lightning.features.settings import FeatureSettings
from tidal_lightning.features.sources import compute_features, training_pool
from tidal_lightning.features.timm_source import timm_model
from tidal_lightning.strategies.base import PoolOutputs, Strategy


class CoverageStrategy(Strategy):
    """Base of strategies that select on L2-normalised features of `strategy.features`.

    The features are L2-normalised, as in the TypiClust/ProbCover and (U)Herding code
    (their `load_features` normalises), so radii and bandwidths are on the unit sphere
    (distances in [0, 2]).

    `needs` follows the source: the `model` source reads `embeddings` and
    `labeled_embeddings` from the pool pass; the others read no pool-pass output (the loop
    then skips the pass), except what `extra_needs` adds (UHerding's `probs`).

    Args:
        features: `model`, `simclr` or `timm`.
        feature_settings: the run's `features` block (None: the defaults).
        chunk_size: rows per distance block; memory O(chunk_size · N).
    """

    needs: ClassVar[frozenset[str]] = frozenset({"embeddings", "labeled_embeddings"})
    extra_needs: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        features: str = "simclr",
        feature_settings: Mapping[str, Any] | DictConfig | None = None,
        chunk_size: int = 1024,
    ) -> None:
        self.features = features
        self.feature_settings = FeatureSettings.from_config(feature_settings)
        self.chunk_size = chunk_size
        model_needs = frozenset({"embeddings", "labeled_embeddings"})
        self._declare_needs(
            (model_needs if features == "model" else frozenset()) | self.extra_needs
        )
        self._diagnostics: dict[str, float] = {}

    def check_config(self, cfg: DictConfig) -> list[str]:
        problems = super().check_config(cfg)
        source_problems = self.feature_settings.problems(self.features, "strategy.features")
        problems += source_problems
        if self.features == "timm" and not source_problems:
            try:
                timm_model(self.feature_settings.timm)  # built now: refused before training
            except ConfigError as refused:
                problems.append(str(refused))
        if not isinstance(self.chunk_size, int) or self.chunk_size < 1:
            problems.append(f"strategy.chunk_size={self.chunk_size!r}: must be an integer >= 1")
        return problems

    def query_diagnostics(self) -> dict[str, float]:
        return dict(self._diagnostics)

    def feature_pair(self, pool: PoolOutputs) -> tuple[Tensor, Tensor]:
        """L2-normalised features of the pool subset `[N, D]` and the labeled set `[L, D]`."""
        if self.features == "model":
            pool_features, labeled_features = pool["embeddings"], pool["labeled_embeddings"]
        else:
            context = pool.context
            if context is None:
                raise ValueError(f"strategy.features={self.features} needs PoolOutputs.context")
            indices = torch.cat([pool.indices.cpu(), context.labeled_indices.cpu()])
            features = compute_features(
                self.features,
                self.feature_settings,
                context.datamodule,
                indices,
                context.device,
                training_pool(context.datamodule, context.seed),
            )
            pool_features, labeled_features = features[: len(pool)], features[len(pool) :]
        return F.normalize(pool_features.float(), dim=1), F.normalize(
            labeled_features.float(), dim=1
        )
