"""Image files -> uint8 tensors: the one decoder of training, caches and predictions.

Kept free of Lightning and of the datamodules, so a cache build's worker processes import
only this, PIL and torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from tidal_lightning.errors import TidalError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


class ImageFolderError(TidalError):
    """The image folder, its class list or one of its label CSVs cannot be used as given."""


def list_images(root: Path) -> list[str]:
    """Relative POSIX paths of the image files under `root`, recursively, sorted.

    Hidden files and folders (a leading `.`, e.g. `.ipynb_checkpoints`) are skipped.
    """
    found = []
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            found.append(relative.as_posix())
    return sorted(found)


def as_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    """`image_size` as `(H, W)`: an int is a square side."""
    if isinstance(image_size, int):
        return image_size, image_size
    sizes = tuple(int(s) for s in image_size)
    if len(sizes) != 2 or min(sizes) < 1:
        raise ImageFolderError(f"dataset.image_size={list(image_size)}: must be [height, width]")
    return sizes[0], sizes[1]


def read_image(path: Path, channels: int, size: tuple[int, int]) -> Tensor:
    """One image file -> `[C, H, W]` uint8 at `size`, `C` = `channels` (1: grey, 3: RGB).

    EXIF orientation is applied (phone photos are stored rotated); an animated GIF gives
    its first frame. A JPEG much larger than `size` is decoded at a reduced scale (1/2 .. 1/8,
    never below `size`), which makes decoding several times faster.
    """
    try:
        with Image.open(path) as opened:
            if opened.format == "JPEG":
                side = max(size)  # both sides stay >= the target, even when EXIF rotates
                opened.draft(None, (side, side))
            upright = ImageOps.exif_transpose(opened)
            array = np.asarray(upright.convert("L" if channels == 1 else "RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ImageFolderError(
            f"{path} is not a readable image ({error}); remove or replace it"
        ) from error
    image = torch.from_numpy(array.copy())
    image = image.unsqueeze(0) if image.ndim == 2 else image.permute(2, 0, 1)
    if tuple(image.shape[1:]) != size:
        image = TF.resize(image, list(size), antialias=True)
    return image.contiguous()


def read_images(paths: Sequence[Path], channels: int, size: tuple[int, int]) -> Tensor:
    """`[N, C, H, W]` uint8 of the files in `paths`, each resized to `size`."""
    images = torch.empty(len(paths), channels, *size, dtype=torch.uint8)
    for position, path in enumerate(paths):
        images[position] = read_image(path, channels, size)
    return images
