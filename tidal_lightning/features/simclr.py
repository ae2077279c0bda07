"""A SimCLR encoder trained once per dataset on the unlabeled pool, cached on disk.

TypiClust and ProbCover are defined on self-supervised features (their papers use SimCLR
features from SCAN's pretext stage); this trains such an encoder here, with the run's
backbone architecture, on the device, with batched device-side augmentations (no PIL, no
per-sample Python, as `data/augment.py`).

The encoder is cached under `features.cache_dir/simclr-<key>/encoder.pt`, the key hashing
the dataset's identity (name, size, image shape and a fingerprint of its pixels), the
indices it trains on and every SimCLR setting. A file lock makes concurrent jobs train it
once: the first trains and publishes atomically, the others wait and load it.

A plain PyTorch loop rather than a Lightning Trainer: it runs inside a query, where a
second Trainer would meet the run's own (loggers, DDP ranks, seeding).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from filelock import FileLock
from hydra.utils import instantiate
from torch import Tensor, nn

from tidal_lightning.al.records import atomic_torch_save
from tidal_lightning.data.datamodules import ImageClassificationData
from tidal_lightning.features.settings import SimCLRSettings
from tidal_lightning.models.backbones import Backbone
from tidal_lightning.seeding import derive_seed, make_generator

log = logging.getLogger(__name__)

FINGERPRINT_SAMPLES = 256  # images hashed to tell one dataset's pixels from another's


# ------------------------------------------------------------------------- augmentation
def random_resized_crop_flip(
    images: Tensor, scale: tuple[float, float], generator: torch.Generator
) -> Tensor:
    """Per-sample random resized crop (area in `scale`, aspect in [3/4, 4/3]) and h-flip.

    The distribution of torchvision's `RandomResizedCrop` + `RandomHorizontalFlip`, drawn
    for the whole batch and applied as one `grid_sample`: each sample's crop is an affine
    map of the output grid (`[[±w, 0, cx], [0, h, cy]]` in normalised coordinates, the
    sign the flip). Bilinear, so the output is float.

    Args:
        images: `[B, C, H, W]` float.
        scale: (min, max) fraction of the image area kept.
        generator: on `images.device`.
    """
    batch = len(images)
    device = images.device
    area = torch.empty(batch, device=device).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(batch, device=device).uniform_(
        math.log(3 / 4), math.log(4 / 3), generator=generator
    )
    ratio = log_ratio.exp()
    width = (area * ratio).sqrt().clamp(max=1.0)  # fractions of the side
    height = (area / ratio).sqrt().clamp(max=1.0)
    center_x = (torch.rand(batch, device=device, generator=generator) * 2 - 1) * (1 - width)
    center_y = (torch.rand(batch, device=device, generator=generator) * 2 - 1) * (1 - height)
    mirror = torch.where(torch.rand(batch, device=device, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(batch, 2, 3, device=device)
    theta[:, 0, 0] = width * mirror
    theta[:, 0, 2] = center_x
    theta[:, 1, 1] = height
    theta[:, 1, 2] = center_y
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def colour_jitter(images: Tensor, generator: torch.Generator, p: float = 0.8) -> Tensor:
    """SimCLR's colour distortion on `[B, C, H, W]` floats on the 0-255 scale.

    With probability `p` per sample: brightness and contrast factors in [0.6, 1.4] and, for
    RGB, saturation in [0.6, 1.4]; then, for RGB, grayscale with probability 0.2. Hue
    jitter is left out (it needs an HSV round trip; the contrastive signal here comes mostly
    from the crops).
    """
    batch, channels = images.shape[:2]
    device = images.device

    def factor() -> Tensor:
        return torch.empty(batch, 1, 1, 1, device=device).uniform_(0.6, 1.4, generator=generator)

    apply = (torch.rand(batch, 1, 1, 1, device=device, generator=generator) < p).float()
    brightness, contrast = factor(), factor()
    out = images * (1 + apply * (brightness - 1))
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = mean + (out - mean) * (1 + apply * (contrast - 1))
    if channels == 3:
        weights = torch.tensor([0.299, 0.587, 0.114], device=device).view(1, 3, 1, 1)
        saturation = factor()
        gray = (out * weights).sum(dim=1, keepdim=True)
        out = gray + (out - gray) * (1 + apply * (saturation - 1))
        to_gray = torch.rand(batch, 1, 1, 1, device=device, generator=generator) < 0.2
        out = torch.where(to_gray, (out * weights).sum(dim=1, keepdim=True).expand_as(out), out)
    return out.clamp(0.0, 255.0)


def two_views(
    images: Tensor, scale: tuple[float, float], generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Two independently augmented views of a uint8 batch `[B, C, H, W]`, floats 0-255."""
    source = images.float()
    first = colour_jitter(random_resized_crop_flip(source, scale, generator), generator)
    second = colour_jitter(random_resized_crop_flip(source, scale, generator), generator)
    return first, second


# ------------------------------------------------------------------------------- loss
def nt_xent(first: Tensor, second: Tensor, temperature: float) -> Tensor:
    """SimCLR's NT-Xent loss of two views' projections `[B, P]` (rows i are positives).

    The 2B projections are L2-normalised; each row's logits are its cosine similarities to
    the 2B − 1 others divided by τ, and the loss is the cross-entropy of picking its
    positive, averaged over the 2B rows (Chen et al. 2020, Eq. 1).
    """
    z = F.normalize(torch.cat([first, second]), dim=1)
    batch = len(first)
    logits = (z @ z.T) / temperature
    logits = logits.masked_fill(torch.eye(2 * batch, dtype=torch.bool, device=z.device), -math.inf)
    positives = torch.cat([torch.arange(batch, 2 * batch), torch.arange(batch)]).to(z.device)
    return F.cross_entropy(logits, positives)


class ProjectionHead(nn.Module):
    """SimCLR's projection g: Linear(D, D) → ReLU → Linear(D, P); only the loss sees it."""

    def __init__(self, width: int, out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, out))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


# --------------------------------------------------------------------------- training
def build_encoder(settings: SimCLRSettings, in_channels: int, seed: int) -> Backbone:
    """The encoder's backbone, initialised from `seed` alone (the global RNG is left as is)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, 0, "simclr_init"))
        encoder: Backbone = instantiate(settings.encoder, num_classes=1, in_channels=in_channels)
    return encoder


def train_simclr(
    settings: SimCLRSettings,
    datamodule: ImageClassificationData,
    indices: Tensor,
    device: torch.device,
) -> Backbone:
    """Trains an encoder with SimCLR on the training images at `indices` (`[M]`).

    Each epoch visits `indices` in a seeded random order in batches of
    `settings.batch_size` (the last, partial batch dropped: the loss wants full batches).
    All randomness (initialisation, order, augmentation) derives from `settings.seed`.

    Returns:
        The encoder in eval mode, on `device`.
    """
    encoder = build_encoder(settings, datamodule.in_channels, settings.seed).to(device)
    width = encoder.linear.in_features
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(settings.seed, 0, "simclr_head"))
        head = ProjectionHead(width, settings.projection_dim).to(device)
    parameters = [*encoder.parameters(), *head.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=settings.lr, weight_decay=settings.weight_decay)
    batch = min(settings.batch_size, len(indices))
    steps_per_epoch = max(1, len(indices) // batch)
    total = settings.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total)
    order_generator = make_generator(settings.seed, 0, "simclr_order")
    augment_generator = make_generator(settings.seed, 0, "simclr_augment", device)
    encoder.train()
    head.train()
    for epoch in range(settings.epochs):
        order = indices[torch.randperm(len(indices), generator=order_generator)]
        loss_sum = torch.zeros((), device=device)
        for step in range(steps_per_epoch):
            images = datamodule.gather(order[step * batch : (step + 1) * batch], device)
            first, second = two_views(images, settings.crop_scale, augment_generator)
            embedded, _ = encoder.embed(datamodule.normalize(torch.cat([first, second])))
            projected = head(embedded)
            loss = nt_xent(projected[: len(images)], projected[len(images) :], settings.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach()
        log.info(
            "SimCLR epoch %d/%d: NT-Xent %.4f",
            epoch + 1,
            settings.epochs,
            float(loss_sum) / steps_per_epoch,
        )
    return encoder.eval()


# ------------------------------------------------------------------------------ cache
def dataset_fingerprint(datamodule: ImageClassificationData) -> str:
    """A hash of what identifies the training images: name, size, shape and sample pixels."""
    count = datamodule.num_train
    probe = torch.linspace(0, count - 1, min(FINGERPRINT_SAMPLES, count)).long()
    digest = hashlib.sha256()
    digest.update(f"{datamodule.dataset_name}/{count}/{datamodule.image_shape}".encode())
    digest.update(datamodule.gather(probe, "cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()


def cache_key(
    settings: SimCLRSettings, datamodule: ImageClassificationData, indices: Tensor
) -> str:
    """The encoder's cache key: dataset, the trained-on indices and every SimCLR setting."""
    described = {
        "dataset": dataset_fingerprint(datamodule),
        "indices": hashlib.sha256(indices.cpu().long().numpy().tobytes()).hexdigest(),
        "settings": asdict(settings),
    }
    text = json.dumps(described, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


# encoders loaded in this process, by cache folder: one load per run, not one per cycle
_LOADED: dict[tuple[str, str], Backbone] = {}


def load_or_train(
    settings: SimCLRSettings,
    datamodule: ImageClassificationData,
    indices: Tensor,
    device: torch.device,
    cache_dir: str | Path,
) -> Backbone:
    """The cached encoder for (dataset, `indices`, settings), trained first if there is none.

    Concurrent callers (sweep jobs, DDP ranks) serialise on a file lock beside the cache
    folder; the first trains and publishes `encoder.pt` atomically (temp file + rename),
    the others find it when they get the lock. The lock is held only while checking and
    training, never while a finished encoder is read.
    """
    folder = Path(cache_dir) / f"simclr-{cache_key(settings, datamodule, indices)}"
    memo = (str(folder.resolve()), str(device))
    if memo in _LOADED:
        return _LOADED[memo]
    path = folder / "encoder.pt"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder) + ".lock"):
            if not path.exists():
                started = time.perf_counter()
                log.info("training a SimCLR encoder on %d images (cache %s)", len(indices), folder)
                encoder = train_simclr(settings, datamodule, indices, device)
                seconds = time.perf_counter() - started
                atomic_torch_save(
                    path,
                    {
                        "state_dict": {k: v.cpu() for k, v in encoder.state_dict().items()},
                        "settings": asdict(settings),
                        "num_images": len(indices),
                        "train_seconds": seconds,
                    },
                )
                log.info("SimCLR encoder trained in %.1f s: %s", seconds, path)
    saved: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    encoder = build_encoder(settings, datamodule.in_channels, settings.seed)
    encoder.load_state_dict(saved["state_dict"])
    encoder = encoder.to(device).eval()
    _LOADED[memo] = encoder
    return encoder


@torch.inference_mode()
def encode(
    encoder: Backbone,
    datamodule: ImageClassificationData,
    indices: Tensor,
    device: torch.device,
    batch_size: int,
) -> Tensor:
    """`[N, D]` pooled penultimate embeddings of the training images at `indices`."""
    blocks = []
    for start in range(0, len(indices), batch_size):
        images = datamodule.gather(indices[start : start + batch_size], device)
        blocks.append(encoder.embed(datamodule.normalize(images))[0].float())
    if not blocks:
        return torch.empty(0, encoder.linear.in_features, device=device)
    return torch.cat(blocks)
