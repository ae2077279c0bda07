"""Per-cycle model checkpoints that load with `torch.load(..., weights_only=True)`.

A checkpoint holds only tensors and plain values: the trained system's weights, the
backbone's config (to rebuild it), and what preparing an image needs (classes, channels,
size, normalisation). Loading it never runs code from the file; rebuilding the backbone
only instantiates a `Backbone` subclass named in it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from torch import nn

from tidal_lightning.al.records import atomic_torch_save
from tidal_lightning.errors import TidalError
from tidal_lightning.models.backbones import Backbone

CHECKPOINT_DIR = "checkpoints"
FORMAT_VERSION = 1
REQUIRED_KEYS = (
    "state_dict",
    "backbone",
    "classes",
    "in_channels",
    "image_size",
    "mean",
    "std",
    "cycle",
    "num_labeled",
)


class CheckpointError(TidalError):
    """A checkpoint file is missing, damaged, or not one this package wrote."""


def checkpoint_path(run_dir: Path, cycle: int) -> Path:
    return run_dir / CHECKPOINT_DIR / f"cycle_{cycle}.pt"


def make_checkpoint(
    system: nn.Module,
    backbone_config: dict[str, Any],
    classes: list[str],
    image_shape: tuple[int, int, int],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    cycle: int,
    num_labeled: int,
) -> dict[str, Any]:
    """The checkpoint of one trained cycle, in types `weights_only` loading accepts.

    Args:
        system: the trained `ActiveLearningSystem` (its backbone, and any heads).
        backbone_config: the backbone's config as a plain dict (`_target_` and arguments).
        image_shape: `(C, H, W)` of the images the model was trained on.
        mean, std: per-channel normalisation on the [0, 1] scale.
    """
    channels, height, width = image_shape
    return {
        "format_version": FORMAT_VERSION,
        "state_dict": {k: v.detach().cpu().clone() for k, v in system.state_dict().items()},
        "backbone": backbone_config,
        "classes": [str(c) for c in classes],
        "in_channels": int(channels),
        "image_size": [int(height), int(width)],
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "cycle": int(cycle),
        "num_labeled": int(num_labeled),
    }


def save_checkpoint(checkpoint: dict[str, Any], path: Path) -> None:
    """Writes to a temp file, fsyncs and renames: a killed run never leaves half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(path, checkpoint)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by `save_checkpoint`, loaded with `weights_only=True`."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint={path}: no such file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a damaged or foreign file
        raise CheckpointError(f"checkpoint={path} cannot be loaded ({error})") from error
    missing = [k for k in REQUIRED_KEYS if not isinstance(checkpoint, dict) or k not in checkpoint]
    if missing:
        raise CheckpointError(
            f"checkpoint={path} lacks {missing}: it is not a tidal_lightning cycle checkpoint "
            "(those are the run folder's checkpoints/cycle_<k>.pt)"
        )
    return checkpoint


def build_backbone(checkpoint: dict[str, Any]) -> Backbone:
    """The checkpoint's backbone, rebuilt from its config with the trained weights, in eval mode."""
    config = dict(checkpoint["backbone"])
    target = config.pop("_target_", None)
    refused = f"the checkpoint's backbone {target!r} is not a plain tidal_lightning Backbone"
    module_name, _, class_name = str(target).rpartition(".")
    try:
        backbone_class = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise CheckpointError(f"{refused} ({error})") from error
    # Only a Backbone is built: a crafted file must not make us call anything else.
    nested = [k for k, v in config.items() if isinstance(v, dict | list)]
    if not (isinstance(backbone_class, type) and issubclass(backbone_class, Backbone)) or nested:
        raise CheckpointError(refused)
    backbone: Backbone = instantiate(
        {"_target_": target, **config},
        num_classes=len(checkpoint["classes"]),
        in_channels=checkpoint["in_channels"],
    )
    weights = {
        name.removeprefix("backbone."): tensor
        for name, tensor in checkpoint["state_dict"].items()
        if name.startswith("backbone.")
    }
    backbone.load_state_dict(weights)
    return backbone.eval()
