"""Features from a timm backbone (optional: `pip install 'tidal_lightning[features]'`).

The images are resized and normalised as the model's pretrained config says
(`timm.data.resolve_data_config`: input size, interpolation, mean, std); one-channel images
are repeated to three. Pretrained weights come from the Hugging Face hub or its local cache;
without them the source refuses with the key and the fix, never falling back to random
weights on its own.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tidal_lightning.data.datamodules import ImageClassificationData
from tidal_lightning.errors import ConfigError
from tidal_lightning.features.settings import TimmSettings

INSTALL_HINT = "pip install 'tidal_lightning[features]' (or pip install timm)"

# models built in this process, by (name, pretrained)
_MODELS: dict[tuple[str, bool], tuple[nn.Module, dict[str, Any]]] = {}


def timm_model(settings: TimmSettings) -> tuple[nn.Module, dict[str, Any]]:
    """The timm backbone without its classifier (`num_classes=0`: pooled features) and its
    data config; raises `ConfigError` naming the key and the fix when it cannot be built."""
    memo = (settings.model, settings.pretrained)
    if memo in _MODELS:
        return _MODELS[memo]
    try:
        import timm
    except ImportError as missing:
        raise ConfigError(
            f"strategy.features=timm (or al.initial_features=timm) needs the optional timm "
            f"package, which is not installed: {INSTALL_HINT}"
        ) from missing
    if not timm.is_model(settings.model.split(".")[0]):
        raise ConfigError(
            f"features.timm.model={settings.model!r}: timm has no such model "
            "(timm.list_models() lists them)"
        )
    try:
        model = timm.create_model(settings.model, pretrained=settings.pretrained, num_classes=0)
    except Exception as failed:  # hub, network and file errors alike
        raise ConfigError(
            f"features.timm.pretrained=true: the pretrained weights of "
            f"features.timm.model={settings.model} could not be loaded ({type(failed).__name__}: "
            f"{str(failed)[:200]}). They come from the Hugging Face hub: run once on a machine "
            "with a network (they are cached under ~/.cache/huggingface, or $HF_HOME), or use "
            "strategy.features=simclr (trained here, no network) or strategy.features=model"
        ) from failed
    config = timm.data.resolve_data_config({}, model=model)
    _MODELS[memo] = (model.eval(), config)
    return _MODELS[memo]


def prepare(images: Tensor, config: dict[str, Any]) -> Tensor:
    """`[B, C, H, W]` uint8 -> the float input the model was pretrained on.

    One channel is repeated to three; the batch is resized to `config['input_size']` with
    its interpolation (bicubic or bilinear, antialiased when shrinking) and normalised with
    its mean and std.
    """
    x = images.float() / 255.0
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    _, height, width = config["input_size"]
    mode = "bicubic" if config.get("interpolation") == "bicubic" else "bilinear"
    x = F.interpolate(x, size=(height, width), mode=mode, align_corners=False, antialias=True)
    mean = torch.tensor(config["mean"], device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(config["std"], device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


@torch.inference_mode()
def encode(
    settings: TimmSettings,
    datamodule: ImageClassificationData,
    indices: Tensor,
    device: torch.device,
    batch_size: int,
) -> Tensor:
    """`[N, D]` pooled features of the training images at `indices`."""
    model, config = timm_model(settings)
    model = model.to(device)
    blocks = [
        model(prepare(datamodule.gather(indices[start : start + batch_size], device), config))
        .float()
        .flatten(1)
        for start in range(0, len(indices), batch_size)
    ]
    if not blocks:
        return torch.empty(0, int(getattr(model, "num_features", 0)), device=device)
    return torch.cat(blocks)
