"""Batched augmentation on whatever device the batch is on: no PIL, no per-sample Python."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def random_crop_flip(images: Tensor, pad: int, flip: bool, generator: torch.Generator) -> Tensor:
    """Per-sample random crop after zero padding, and random horizontal flip.

    Same distribution as torchvision's `RandomCrop(size, padding=pad)` followed by
    `RandomHorizontalFlip()`, drawn for the whole batch at once: per sample a row offset
    `dy`, a column offset `dx` (each uniform in `[0, 2 pad]`) and a mirror bit, in that order.

    Crop and flip are one `gather`: each output pixel's flat position in the padded image is
    `(dy + i) * W_pad + col(j)` with `col(j) = dx + j`, or `dx + W - 1 - j` when mirrored. One
    pass over the batch, and the index is `[B, 1, H*W]` broadcast over the channels, not a
    `[B, C, H, W]` index per pixel.

    Args:
        images: `[B, C, H, W]` (any dtype).
        pad: zero padding on each side before cropping back to `H x W`; 0 disables.
        flip: whether to mirror each sample with probability 1/2.
        generator: on the same device as `images`.

    Returns:
        `[B, C, H, W]`, same dtype and device.
    """
    if pad <= 0 and not flip:
        return images
    batch, channels, height, width = images.shape
    device = images.device
    rows = torch.arange(height, device=device).expand(batch, height)  # [B, H]
    cols = torch.arange(width, device=device).expand(batch, width)  # [B, W]
    source = images
    if pad > 0:
        source = F.pad(images, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (batch,), device=device, generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (batch,), device=device, generator=generator)
        rows = rows + dy[:, None]
        cols = cols + dx[:, None]
    if flip:
        mirror = torch.rand(batch, device=device, generator=generator) < 0.5
        cols = torch.where(mirror[:, None], cols.flip(1), cols)
    flat = (rows[:, :, None] * source.shape[3] + cols[:, None, :]).view(batch, 1, -1)
    out = source.flatten(2).gather(2, flat.expand(batch, channels, height * width))
    return out.view(batch, channels, height, width)
