"""The feature-based cold start: the initial labeled set chosen without any labels.

`al.initial_mode=typiclust | probcover | maxherding` picks the `al.initial` samples with
that strategy's selection on the features of `al.initial_features` (`simclr` or `timm`:
no classifier exists yet), with an empty labeled set, the setting these methods were
designed for (TypiClust and ProbCover's "cold start", MaxHerding's low budgets).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor

from tidal_lightning.data.datamodules import ImageClassificationData
from tidal_lightning.features.settings import FeatureSettings
from tidal_lightning.features.sources import compute_features

FEATURE_INITIAL_MODES = ("typiclust", "probcover", "maxherding")


def resolve_device(accelerator: str) -> torch.device:
    """The device `trainer.accelerator` names (`auto`: CUDA when visible, else the CPU)."""
    if accelerator in ("auto", "gpu", "cuda"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(accelerator)


@dataclass(frozen=True)
class ColdStartFeatures:
    """What a feature-based initial draw needs beyond the pool.

    Attributes:
        source: `simclr` or `timm` (`al.initial_features`).
        settings: the run's `features` block.
        device: where the encoder runs.
    """

    source: str
    settings: FeatureSettings
    device: torch.device

    @classmethod
    def from_config(cls, cfg: DictConfig) -> ColdStartFeatures:
        """From `al.initial_features`, the `features` block and `trainer.accelerator`."""
        return cls(
            source=str(cfg.al.get("initial_features", "simclr")),
            settings=FeatureSettings.from_config(cfg.get("features")),
            device=resolve_device(str(cfg.trainer.get("accelerator", "auto"))),
        )


def feature_initial_set(
    datamodule: ImageClassificationData,
    pool_indices: Tensor,
    size: int,
    mode: str,
    generator: torch.Generator,
    features: ColdStartFeatures,
) -> Tensor:
    """`[size]` dataset indices chosen by `mode` on the features of every pool sample.

    The SimCLR encoder trains on `pool_indices` (the AL pool, as the coverage strategies'
    encoder does, so both share one cached encoder). Each mode runs with its paper's
    defaults (TypiClust: k = 20, at most 500 clusters; ProbCover: purity rule with α =
    0.95 and K = the number of classes; MaxHerding: bandwidth 1.0).

    Args:
        pool_indices: `[M]` dataset indices of the AL pool.
        size: the initial set's size (<= M).
        mode: one of `FEATURE_INITIAL_MODES`.
        generator: CPU generator (the run's `initial` stream); the device generator of
            k-means is seeded from it.
    """
    from tidal_lightning.strategies.maxherding import herding_select
    from tidal_lightning.strategies.probcover import probcover_select
    from tidal_lightning.strategies.typiclust import typiclust_select

    device = features.device
    points = compute_features(
        features.source, features.settings, datamodule, pool_indices, device, pool_indices
    )
    points = F.normalize(points.float(), dim=1)
    no_labels = points[:0]
    seed = int(torch.randint(2**62, (1,), generator=generator))
    device_generator = torch.Generator(device=device).manual_seed(seed)
    if mode == "typiclust":
        positions, _ = typiclust_select(points, no_labels, size, device_generator)
    elif mode == "probcover":
        positions, _ = probcover_select(
            points, no_labels, size, device_generator, datamodule.num_classes
        )
    elif mode == "maxherding":
        positions = herding_select(points, no_labels, size, bandwidth=1.0)
    else:
        raise ValueError(
            f"unknown feature-based initial mode {mode!r}; known: {FEATURE_INITIAL_MODES}"
        )
    return pool_indices[positions.cpu()]
