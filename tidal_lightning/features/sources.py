"""`[N, D]` features of training images from a model-free source (SimCLR or timm)."""

from __future__ import annotations

import torch
from torch import Tensor

from tidal_lightning.data.datamodules import ImageClassificationData
from tidal_lightning.data.longtail import long_tail_indices
from tidal_lightning.features import simclr, timm_source
from tidal_lightning.features.settings import FeatureSettings
from tidal_lightning.seeding import make_generator


def training_pool(datamodule: ImageClassificationData, seed: int) -> Tensor:
    """`[M]` dataset indices of the run's AL pool: the training split after long-tail
    subsampling, drawn exactly as `al.loop.run` draws it (stream `long_tail`, cycle 0).

    The SimCLR encoder trains on these images only, so a long-tailed run's encoder never
    sees the samples subsampling dropped. With `dataset.imbalance_ratio=1` it is the whole
    split for every seed: one encoder per dataset.
    """
    return long_tail_indices(
        datamodule.train_targets,
        datamodule.num_classes,
        float(datamodule.imbalance_ratio),
        make_generator(seed, 0, "long_tail"),
    )


def compute_features(
    source: str,
    settings: FeatureSettings,
    datamodule: ImageClassificationData,
    indices: Tensor,
    device: torch.device,
    encoder_pool: Tensor,
) -> Tensor:
    """`[N, D]` float features of the training images at dataset `indices` (`[N]`).

    Args:
        source: `simclr` or `timm` (`model` features come from the pool pass instead).
        encoder_pool: `[M]` dataset indices the SimCLR encoder trains on (the AL pool; see
            `training_pool`); part of its cache key.
    """
    if source == "simclr":
        encoder = simclr.load_or_train(
            settings.simclr, datamodule, encoder_pool, device, settings.cache_dir
        )
        return simclr.encode(encoder, datamodule, indices, device, settings.batch_size)
    if source == "timm":
        return timm_source.encode(settings.timm, datamodule, indices, device, settings.batch_size)
    raise ValueError(f"no model-free feature source {source!r}; known: simclr, timm")
