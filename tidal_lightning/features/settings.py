"""The `features` block of the config: how the self-supervised and pretrained sources are built.

One block for the whole run (`conf/config.yaml`), read by the coverage strategies (through
`strategy.feature_settings: ${features}`) and by the feature-based cold start
(`al.initial_mode`), so both use the same encoder and the same cache.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tidal_lightning.errors import ConfigError

# `model`: the trained classifier's penultimate embeddings (the pool pass's `embeddings`);
# `simclr`: an encoder trained once per dataset with SimCLR on the unlabeled pool;
# `timm`: a timm backbone, with pretrained weights where they can be fetched.
FEATURE_SOURCES = ("model", "simclr", "timm")
# Sources that exist before any model is trained (the cold start has no classifier yet).
MODEL_FREE_SOURCES = ("simclr", "timm")
# Backbone options that do not change the pooled embedding (the classifier's dropout, speed
# options): dropped from the encoder config, so they do not split the cache.
EMBEDDING_NEUTRAL = ("dropout", "channels_last", "compile")


def _default_encoder() -> dict[str, Any]:
    return {"_target_": "tidal_lightning.models.backbones.SmallCNN", "width": 16}


@dataclass(frozen=True)
class SimCLRSettings:
    """SimCLR (Chen et al., ICML 2020) as trained here; every field is part of the cache key.

    Attributes:
        encoder: a backbone config with `_target_` (default in the config: the run's
            `model.backbone`); its pooled penultimate embedding is the feature.
        epochs: passes over the pool.
        batch_size: images per step (2 views each, so 2·batch_size rows in the loss).
        temperature: τ of the NT-Xent loss.
        projection_dim: output of the 2-layer projection head the loss sees.
        lr, weight_decay: Adam, with the learning rate annealed to 0 over the steps (cosine).
        crop_scale: area range of the random resized crop.
        seed: the encoder's own seed (not the run's): one encoder serves every run.
    """

    encoder: dict[str, Any] = field(default_factory=_default_encoder)
    epochs: int = 15
    batch_size: int = 256
    temperature: float = 0.5
    projection_dim: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-6
    crop_scale: tuple[float, float] = (0.2, 1.0)
    seed: int = 0


@dataclass(frozen=True)
class TimmSettings:
    """A timm backbone (`pip install 'tidal_lightning[features]'`).

    Attributes:
        model: a timm model name (`timm.list_models()`).
        pretrained: load the model's pretrained weights (from the Hugging Face hub or its
            local cache); false gives random weights (tests, or a network-free check).
    """

    model: str = "resnet18"
    pretrained: bool = True


@dataclass(frozen=True)
class FeatureSettings:
    """Attributes:
    cache_dir: where trained encoders are kept (one folder per cache key).
    batch_size: images per encoder pass when features are computed.
    simclr, timm: the two sources' settings.
    """

    cache_dir: str = "feature_cache"
    batch_size: int = 512
    simclr: SimCLRSettings = field(default_factory=SimCLRSettings)
    timm: TimmSettings = field(default_factory=TimmSettings)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | DictConfig | None) -> FeatureSettings:
        """Settings from the `features` block (missing keys keep their defaults).

        Raises `ConfigError` naming an unknown key.
        """
        if config is None:
            return cls()
        if isinstance(config, DictConfig):
            config = OmegaConf.to_container(config, resolve=True)  # type: ignore[assignment]
        if not isinstance(config, Mapping):
            raise ConfigError(f"features={config!r}: must be a mapping (the features block)")
        try:
            unknown = set(config) - {f.name for f in fields(cls)}
            if unknown:
                raise TypeError(f"unexpected keys {sorted(unknown)}")
            simclr = dict(config.get("simclr") or {})
            if "crop_scale" in simclr:
                simclr["crop_scale"] = tuple(simclr["crop_scale"])
            if "encoder" in simclr:
                # options that do not change the pooled embedding stay out of the cache key
                simclr["encoder"] = {
                    k: v for k, v in dict(simclr["encoder"]).items() if k not in EMBEDDING_NEUTRAL
                }
            return cls(
                cache_dir=str(config.get("cache_dir", cls.cache_dir)),
                batch_size=int(config.get("batch_size", cls.batch_size)),
                simclr=SimCLRSettings(**simclr),
                timm=TimmSettings(**dict(config.get("timm") or {})),
            )
        except (TypeError, ValueError) as bad:
            raise ConfigError(
                f"features: {bad} (see the features block of conf/config.yaml)"
            ) from bad

    def problems(self, source: str, key: str) -> list[str]:
        """Bad values for `source` (named as `key=<source>`), each naming the key and the fix."""
        if source not in FEATURE_SOURCES:
            return [f"{key}={source!r}: must be one of {FEATURE_SOURCES}"]
        problems = []
        if self.batch_size < 1:
            problems.append(f"features.batch_size={self.batch_size}: must be >= 1")
        if source == "simclr":
            s = self.simclr
            if "_target_" not in s.encoder:
                problems.append(
                    "features.simclr.encoder: must be a backbone config with a _target_ "
                    "(default: ${model.backbone})"
                )
            if s.epochs < 1 or s.batch_size < 2:
                problems.append(
                    f"features.simclr.epochs={s.epochs}, features.simclr.batch_size="
                    f"{s.batch_size}: need epochs >= 1 and batch_size >= 2 (pairs of views)"
                )
            if s.temperature <= 0 or s.lr <= 0:
                problems.append(
                    f"features.simclr.temperature={s.temperature}, features.simclr.lr={s.lr}: "
                    "must be > 0"
                )
            low, high = s.crop_scale
            if not 0 < low <= high <= 1:
                problems.append(
                    f"features.simclr.crop_scale={list(s.crop_scale)}: need 0 < low <= high <= 1"
                )
        return problems
