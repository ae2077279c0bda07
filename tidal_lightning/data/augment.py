"""Batched augmentation on whatever device the batch is on: no PIL, no per-sample Python."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def random_crop_flip(images: Tensor, pad: int, flip: bool, generator: torch.Generator) -> Tensor:
    """Per-sample random crop after zero padding, and random horizontal flip.

    Same distribution as torchvision's `RandomCrop(size, padding=pad)` followed by
    `RandomHorizontalFlip()`, drawn for the whole batch at once.

    Args:
        images: `[B, C, H, W]` (any dtype).
        pad: zero padding on each side before cropping back to `H x W`; 0 disables.
        flip: whether to mirror each sample with probability 1/2.
        generator: on the same device as `images`.

    Returns:
        `[B, C, H, W]`, same dtype and device.
    """
    batch, channels, height, width = images.shape
    device = images.device
    if pad > 0:
        padded = F.pad(images, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (batch,), device=device, generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (batch,), device=device, generator=generator)
        rows = (dy[:, None] + torch.arange(height, device=device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(width, device=device))[:, None, None, :]
        b = torch.arange(batch, device=device)[:, None, None, None]
        c = torch.arange(channels, device=device)[None, :, None, None]
        images = padded[b, c, rows, cols]
    if flip:
        mirror = torch.rand(batch, device=device, generator=generator) < 0.5
        images = torch.where(mirror[:, None, None, None], images.flip(3), images)
    return images
