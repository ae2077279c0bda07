"""Image-classification datamodules that keep a whole split in memory as uint8.

(Datasets of image files too large for that, `image_folder` and `inaturalist2018`, are
`CachedImageData` in `cached.py`: decoded once into a cache on disk, held in memory when it
fits, else streamed from the cache. They keep this interface.)

The AL loop needs index-level control over which samples are trained on each cycle,
so every datamodule exposes its splits as tensors and serves the current labeled
subset through `TensorBatchLoader`. The loaders read the split from the trainer's device
(`split_on`: copied there once, then kept), so a batch is one index op on the device and
Lightning's batch transfer has nothing to copy. Augmentation and normalisation run batched
in `on_after_batch_transfer`, on the same device.
"""

from __future__ import annotations

import gzip
import os
import shutil
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
import torchvision
from torch import Tensor

from tidal_lightning.data.augment import random_crop_flip
from tidal_lightning.data.loader import IndexBatchLoader, TensorBatchLoader
from tidal_lightning.errors import DataNotFoundError
from tidal_lightning.seeding import make_generator

# A download that cannot reach its host should fail in seconds, not hang a sweep.
_DOWNLOAD_TIMEOUT_S = 30.0


def uint8_scale_stats(
    mean: Sequence[float], std: Sequence[float], device: torch.device
) -> tuple[Tensor, Tensor]:
    """Per-channel `mean`, `std` (on the [0, 1] scale) as `[1, C, 1, 1]` on the 0-255 scale."""
    return (
        torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255.0,
        torch.tensor(std, device=device).view(1, -1, 1, 1) * 255.0,
    )


def normalize_uint8(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """`[B, C, H, W]` uint8 -> float32 standardised; `mean`, `std` from `uint8_scale_stats`."""
    return (images.float() - mean) / std


class ImageClassificationData(pl.LightningDataModule):
    """Base class: a train and a test split held as `[N, C, H, W]` uint8 tensors.

    Subclasses implement `_read(train)`; the rest (loading once, labeled-subset loaders,
    device-side augmentation) is shared.

    Args:
        root: folder the dataset files live in (or are downloaded to).
        download: try to download missing files.
        imbalance_ratio: n_max / n_min of the long-tailed training pool; 1 = as shipped.
        batch_size: training batch size.
        eval_batch_size: batch size of test and pool passes (no gradients, so larger).
        pad: zero padding of the random crop; 0 disables cropping.
        flip: random horizontal flips during training.
    """

    dataset_name: ClassVar[str]
    mean: tuple[float, ...]  # per channel, on the [0, 1] scale
    std: tuple[float, ...]
    how_to_get: ClassVar[str] = "download it with dataset.download=true on a machine with a network"

    def __init__(
        self,
        root: str = "data",
        download: bool = True,
        imbalance_ratio: float = 1.0,
        batch_size: int = 128,
        eval_batch_size: int = 1024,
        pad: int = 4,
        flip: bool = True,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.download = download
        self.imbalance_ratio = imbalance_ratio
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.pad = pad
        self.flip = flip
        self.classes: list[str] = []
        self.train_images = self.train_targets = torch.empty(0)
        self.test_images = self.test_targets = torch.empty(0)
        self.labeled_indices = torch.empty(0, dtype=torch.long)
        self._seed = 0
        self._cycle = 0
        self._augment_generator: torch.Generator | None = None
        self._normalizers: dict[torch.device, tuple[Tensor, Tensor]] = {}
        # (split name, device) -> (the host tensors copied, their copies on the device)
        self._device_splits: dict[tuple[str, torch.device], tuple[Tensor, Tensor, Tensor]] = {}

    # ----------------------------------------------------------------- reading
    def _read(self, train: bool) -> tuple[Tensor, Tensor, list[str]]:
        """Returns `[N, C, H, W]` uint8 images, `[N]` int64 targets and the class names.

        In-memory datasets implement this; `CachedImageData` (files decoded into a cache on
        disk) overrides `load` instead.
        """
        raise NotImplementedError(f"{type(self).__name__} reads no split into memory")

    def expected_path(self) -> Path:
        """Where the files are looked for; named in the error when they are missing."""
        return self.root

    def load(self) -> None:
        """Reads both splits once (idempotent). Raises `DataNotFoundError` early."""
        if len(self.classes):
            return
        self.train_images, self.train_targets, self.classes = self._read(train=True)
        self.test_images, self.test_targets, _ = self._read(train=False)

    def _torchvision(self, dataset_class: Callable[..., Any], **split: Any) -> Any:
        """Builds a torchvision dataset from disk, downloading only when allowed and needed."""
        try:
            return dataset_class(root=str(self.root), download=False, **split)
        except RuntimeError as missing:
            if not self.download:
                raise self._not_found() from missing
        previous_timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)
        try:
            return dataset_class(root=str(self.root), download=True, **split)
        except Exception as failed:  # urllib, socket and torchvision errors alike
            raise self._not_found(f"the download failed ({failed}); ") from failed
        finally:
            socket.setdefaulttimeout(previous_timeout)

    def _not_found(self, why: str = "") -> DataNotFoundError:
        return DataNotFoundError(
            f"{self.dataset_name} files not found at {self.expected_path()}: {why}"
            f"{self.how_to_get}, or point dataset.root at a folder that has them."
        )

    # ------------------------------------------------------------------ shapes
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.image_shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """`(C, H, W)` of every image of the training split."""
        channels, height, width = self.train_images.shape[1:]
        return int(channels), int(height), int(width)

    @property
    def num_train(self) -> int:
        """N, the size of the training split."""
        return len(self.train_targets)

    def gather(self, indices: Tensor, device: torch.device | str) -> Tensor:
        """`[B, C, H, W]` uint8 training images at dataset `indices` (`[B]`), on `device`.

        The one way code outside the datamodule reads training images (pool passes, the
        per-epoch recorder, strategies that train their own models), so a datamodule that
        does not hold its split in memory only has to implement this.
        """
        device = torch.device(device)
        images, _ = self.split_on(device) if device.type != "cpu" else (self.train_images, None)
        return images[indices.to(images.device)]

    # ------------------------------------------------------------- AL control
    def start_cycle(self, labeled_indices: Tensor, seed: int, cycle: int) -> None:
        """Points the training loader at this cycle's labeled set and reseeds its streams."""
        self.labeled_indices = labeled_indices.cpu()
        self._seed, self._cycle = seed, cycle
        self._augment_generator = None

    def split_on(self, device: torch.device | str, train: bool = True) -> tuple[Tensor, Tensor]:
        """The whole split, `[N, C, H, W]` uint8 images and `[N]` targets, on `device`.

        Copied once per device and kept (CIFAR-10's training split is 150 MB as uint8), so
        every later cycle, batch gather and pool pass reads it where the model runs; on the
        split's own device this is the split itself, no copy. A split replaced after the
        copy (a subclass re-reading it) is copied again.
        """
        device = torch.device(device)
        images, targets = (
            (self.train_images, self.train_targets)
            if train
            else (self.test_images, self.test_targets)
        )
        if images.device == device:
            return images, targets
        key = ("train" if train else "test", device)
        cached = self._device_splits.get(key)
        if cached is None or cached[0] is not images:
            # drop the stale copy first, so two copies never sit on the device at once
            self._device_splits.pop(key, None)
            cached = (images, images.to(device), targets.to(device))
            self._device_splits[key] = cached
        return cached[1], cached[2]

    def _loader_device(self, split: Tensor) -> torch.device:
        """The attached trainer's device; without one (a loader built by hand), the split's."""
        if self.trainer is None:
            return split.device
        return self.trainer.strategy.root_device

    def train_dataloader(self) -> IndexBatchLoader:
        images, targets = self.split_on(self._loader_device(self.train_images), train=True)
        return TensorBatchLoader(
            images,
            targets,
            self.labeled_indices,
            self.batch_size,
            shuffle=True,
            generator=make_generator(self._seed, self._cycle, "shuffle"),
        )

    def test_dataloader(self) -> IndexBatchLoader:
        images, targets = self.split_on(self._loader_device(self.test_images), train=False)
        every = torch.arange(len(targets))
        return TensorBatchLoader(images, targets, every, self.eval_batch_size)

    # ------------------------------------------------------- device-side work
    def normalize(self, images: Tensor) -> Tensor:
        """`[B, C, H, W]` uint8 -> float32, scaled to [0, 1] and standardised per channel."""
        # Built once per device: a fresh torch.tensor(..., device=cuda) per batch would be a
        # host-to-device copy on the training hot path.
        if images.device not in self._normalizers:
            self._normalizers[images.device] = uint8_scale_stats(self.mean, self.std, images.device)
        return normalize_uint8(images, *self._normalizers[images.device])

    def augment(self, images: Tensor) -> Tensor:
        """Training augmentation of a `[B, C, H, W]` batch on its own device."""
        if self._augment_generator is None or self._augment_generator.device != images.device:
            self._augment_generator = make_generator(
                self._seed, self._cycle, "augment", images.device
            )
        return random_crop_flip(images, self.pad, self.flip, self._augment_generator)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, targets, indices = batch
        if self.trainer is not None and self.trainer.training:
            images = self.augment(images)
        return self.normalize(images), targets, indices


def _as_nchw(images: Any) -> Tensor:
    """numpy/tensor images `[N, H, W]` or `[N, H, W, C]` -> contiguous `[N, C, H, W]` uint8."""
    tensor = torch.as_tensor(images, dtype=torch.uint8)
    if tensor.ndim == 3:
        return tensor.unsqueeze(1).contiguous()
    return tensor.permute(0, 3, 1, 2).contiguous()


class CIFAR10(ImageClassificationData):
    """CIFAR-10 from torchvision's python-pickle batches (`cifar-10-batches-py/`)."""

    dataset_name = "CIFAR-10"
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    folder = "cifar-10-batches-py"
    dataset_class: ClassVar[Callable[..., Any]] = torchvision.datasets.CIFAR10

    def expected_path(self) -> Path:
        return self.root / self.folder

    def _read(self, train: bool) -> tuple[Tensor, Tensor, list[str]]:
        dataset = self._torchvision(type(self).dataset_class, train=train)
        return _as_nchw(dataset.data), torch.as_tensor(dataset.targets), list(dataset.classes)


class CIFAR100(CIFAR10):
    """CIFAR-100 (fine labels) from `cifar-100-python/`."""

    dataset_name = "CIFAR-100"
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
    folder = "cifar-100-python"
    dataset_class = torchvision.datasets.CIFAR100


class FashionMNIST(ImageClassificationData):
    """Fashion-MNIST from idx files in `<root>/FashionMNIST/raw/`.

    Args:
        system_dir: where Debian's `dataset-fashion-mnist` package puts the four
            `*-ubyte.gz` files; used to fill `<root>/FashionMNIST/raw/` when it is empty,
            so the real data works offline.
        **kwargs: see `ImageClassificationData`.
    """

    dataset_name = "Fashion-MNIST"
    mean = (0.2860,)
    std = (0.3530,)
    how_to_get = (
        "install it offline with `make data` (Debian package dataset-fashion-mnist, files "
        "under /usr/share/datasets/fashion-mnist), or set dataset.download=true with a network"
    )
    files = (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    )

    def __init__(self, system_dir: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.system_dir = Path(system_dir) if system_dir else None

    def expected_path(self) -> Path:
        return self.root / "FashionMNIST" / "raw"

    def _install_from_system_dir(self) -> None:
        """Decompresses the Debian package's `.gz` files where torchvision reads them."""
        raw = self.expected_path()
        if self.system_dir is None or all((raw / f).exists() for f in self.files):
            return
        sources = [self.system_dir / f"{f}.gz" for f in self.files]
        if not all(s.exists() for s in sources):
            return
        raw.mkdir(parents=True, exist_ok=True)
        for source, name in zip(sources, self.files, strict=True):
            if (raw / name).exists():
                continue
            # One partial file per process: the jobs of a parallel sweep all fill an empty
            # folder at once (a shared name let one job rename another's half-written copy).
            partial = raw / f"{name}.partial.{os.getpid()}"
            try:
                with gzip.open(source, "rb") as src, open(partial, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                # atomic: a killed copy never looks complete; a racing job's equal copy is fine
                os.replace(partial, raw / name)
            finally:
                partial.unlink(missing_ok=True)

    def _read(self, train: bool) -> tuple[Tensor, Tensor, list[str]]:
        self._install_from_system_dir()
        dataset = self._torchvision(torchvision.datasets.FashionMNIST, train=train)
        return _as_nchw(dataset.data), dataset.targets.long(), list(dataset.classes)


class SVHN(ImageClassificationData):
    """SVHN (format 2, `train_32x32.mat` / `test_32x32.mat`); label 10 is digit 0."""

    dataset_name = "SVHN"
    mean = (0.4377, 0.4438, 0.4728)
    std = (0.1980, 0.2010, 0.1970)

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("flip", False)  # mirrored digits are other digits
        super().__init__(**kwargs)

    def _read(self, train: bool) -> tuple[Tensor, Tensor, list[str]]:
        split = "train" if train else "test"
        dataset = self._torchvision(torchvision.datasets.SVHN, split=split)
        images = torch.as_tensor(dataset.data, dtype=torch.uint8).contiguous()
        return images, torch.as_tensor(dataset.labels).long(), [str(d) for d in range(10)]


class SyntheticImages(ImageClassificationData):
    """Tiny generated dataset for smoke runs: no files, no network, seconds on a CPU.

    Each class is a fixed random prototype image plus per-sample noise, so a small
    network learns it and accuracy rises with more labels.

    Args:
        num_classes: C.
        train_per_class: training samples per class.
        test_per_class: test samples per class.
        image_size: height = width.
        channels: 1 or 3.
        noise: noise weight in [0, 1]; higher is harder.
        data_seed: fixes the generated data itself (the data, like a file on disk, does
            not change with the run's seed).
        **kwargs: see `ImageClassificationData`.
    """

    dataset_name = "synthetic"

    def __init__(
        self,
        num_classes: int = 4,
        train_per_class: int = 60,
        test_per_class: int = 20,
        image_size: int = 16,
        channels: int = 3,
        noise: float = 0.6,
        data_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.spec = (num_classes, train_per_class, test_per_class, image_size, channels)
        self.noise = noise
        self.data_seed = data_seed
        self.mean = (0.5,) * channels
        self.std = (0.25,) * channels

    def _read(self, train: bool) -> tuple[Tensor, Tensor, list[str]]:
        num_classes, train_per_class, test_per_class, size, channels = self.spec
        generator = torch.Generator().manual_seed(self.data_seed)
        prototypes = torch.rand(num_classes, channels, size, size, generator=generator)
        if not train:  # a separate stream, so the test split is not a copy of train
            generator.manual_seed(self.data_seed + 1)
        per_class = train_per_class if train else test_per_class
        targets = torch.arange(num_classes).repeat_interleave(per_class)
        noise = torch.rand(len(targets), channels, size, size, generator=generator)
        images = (1 - self.noise) * prototypes[targets] + self.noise * noise
        images_u8 = (images * 255).round().to(torch.uint8)
        return images_u8, targets, [f"class_{c}" for c in range(num_classes)]
