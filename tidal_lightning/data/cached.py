"""Datasets of image files: each split decoded once into a cache on disk, then trained either
from memory (the device-resident path) or streamed from the cache, whichever fits.

`dataset.storage` picks: `memory` holds both splits on the training device (read from the
cache once per device), exactly the in-memory datasets' path; `stream` reads every batch from
the cache (`StreamingBatchLoader`), prefetched while the previous batch trains; `auto`
(default) holds them when they take at most half of the device's free memory and streams
otherwise. The choice is made when the trainer asks for its first loader (the device is known
then), logged, and kept in `placements`. Both paths deliver the same batches, so a run's
results do not depend on it.
"""

from __future__ import annotations

import logging
import os
import resource
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tidal_lightning.data.cache import CacheSource, ImageCache, cache_name, open_cache
from tidal_lightning.data.datamodules import ImageClassificationData
from tidal_lightning.data.loader import IndexBatchLoader, TensorBatchLoader
from tidal_lightning.data.manifest import Manifest
from tidal_lightning.data.streaming import StreamingBatchLoader
from tidal_lightning.errors import ConfigError, DataNotFoundError
from tidal_lightning.seeding import make_generator

log = logging.getLogger(__name__)

STORAGE_CHOICES = ("auto", "memory", "stream")
# `auto` holds the splits on a device when they take at most this share of its free memory:
# the rest is for the model, its activations, the TD buffers and other jobs.
MEMORY_SHARE = 0.5


@dataclass(frozen=True)
class SplitFiles:
    """One split as files: `paths` relative to `root`, in dataset order, and `[N]` targets."""

    root: Path
    paths: list[str]
    targets: Tensor


def default_cache_dir() -> Path:
    """`$TIDAL_CACHE_DIR`, else `cache/` in the data folder (`$TIDAL_DATA_DIR` or `data/`)."""
    if os.environ.get("TIDAL_CACHE_DIR"):
        return Path(os.environ["TIDAL_CACHE_DIR"])
    return Path(os.environ.get("TIDAL_DATA_DIR") or "data") / "cache"


def free_memory_bytes(device: torch.device) -> int:
    """Memory this process can still take on `device`: CUDA's free memory, or on the host
    the least of what the kernel calls available, the cgroup's headroom and `ulimit -v`'s."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    limits = [_meminfo_available(), _cgroup_headroom(), _address_space_headroom()]
    return min(limit for limit in limits if limit is not None)


def _meminfo_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _cgroup_headroom() -> int | None:
    """The memory cgroup's limit minus its usage (v2, then v1), None without a limit."""
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:  # v1 writes a huge number for "no limit"
            return max(int(limit) - usage, 0)
    return None


def _address_space_headroom() -> int | None:
    """`ulimit -v` minus the address space in use, None when unlimited."""
    limit, _ = resource.getrlimit(resource.RLIMIT_AS)
    if limit == resource.RLIM_INFINITY:
        return None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return max(limit - int(line.split()[1]) * 1024, 0)
    except OSError:
        pass
    return limit


def choose_placement(storage: str, needed_bytes: int, free_bytes: int | None) -> tuple[str, str]:
    """`("memory" | "stream", why)` for splits of `needed_bytes` where `free_bytes` are free.

    `storage` "memory" or "stream" forces that path; "auto" holds the splits when they take at
    most `MEMORY_SHARE` of the free memory.
    """
    if storage != "auto":
        return storage, f"dataset.storage={storage}"
    assert free_bytes is not None
    share = f"{MEMORY_SHARE:.0%} of the {_gb(free_bytes)} free there"
    if needed_bytes <= MEMORY_SHARE * free_bytes:
        return "memory", f"auto: they fit in {share}"
    return "stream", f"auto: they need more than {share}"


def _natural(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _gb(count: int) -> str:
    return f"{count / 1e9:.2f} GB" if count < 1e11 else f"{count / 1e9:.0f} GB"


class CachedImageData(ImageClassificationData):
    """Base class of file datasets: a split = image files decoded once into an `ImageCache`.

    Subclasses implement `_split_files` (which files, which labels; sets `classes`) and
    `decoded_shape`; `load` builds or opens the caches, and the loaders, `gather` and
    `split_on` serve the images from memory or from the cache as `storage` says.

    Args:
        storage: `auto`, `memory` or `stream` (see the module docstring).
        cache_dir: where the caches live (shared by runs and sweep jobs; one folder per
            source folder, split and image shape). None: `default_cache_dir()`.
        cache_rebuild: rebuild a cache whose files changed since it was built; false
            refuses it with what changed.
        cache_workers: decoding processes of a build; None: one per CPU core; 0: in this
            process.
        prefetch: batches the streaming path reads ahead in a background thread.
        **kwargs: see `ImageClassificationData`.
    """

    def __init__(
        self,
        storage: str = "auto",
        cache_dir: str | None = None,
        cache_rebuild: bool = False,
        cache_workers: int | None = None,
        prefetch: int = 2,
        progress: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.storage = storage
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.cache_rebuild = cache_rebuild
        self.cache_workers = cache_workers
        self.prefetch = prefetch
        self.progress = progress
        self.caches: dict[str, ImageCache] = {}
        # str(device) -> {"placement", "reason", "bytes", "free_bytes"}: what each device took
        self.placements: dict[str, dict[str, Any]] = {}
        self._resident: dict[tuple[str, torch.device], Tensor] = {}
        self._mapped: dict[str, Tensor] = {}

    # ----------------------------------------------------------------- reading
    @abstractmethod
    def _split_files(self, train: bool) -> SplitFiles:
        """The split's files and labels; the training split's call also sets `classes`."""

    @abstractmethod
    def decoder(self) -> Callable[[Path, int, tuple[int, int]], Tensor]:
        """`decode(path, channels, (H, W)) -> [C, H, W] uint8`: a module-level function (the
        build's worker processes import it by name)."""

    @abstractmethod
    def decoded_shape(self) -> tuple[int, int, int]:
        """`(C, H, W)` every image is decoded to (valid once the settings are checked)."""

    def _check_cache_settings(self) -> None:
        problems = []
        if self.storage not in STORAGE_CHOICES:
            problems.append(f"dataset.storage={self.storage!r}: must be one of {STORAGE_CHOICES}")
        if not _natural(self.prefetch):
            problems.append(f"dataset.prefetch={self.prefetch!r}: must be an integer >= 0")
        if self.cache_workers is not None and not _natural(self.cache_workers):
            problems.append(
                f"dataset.cache_workers={self.cache_workers!r}: must be null (one per CPU "
                "core) or an integer >= 0 (0: decode in the run's own process)"
            )
        if problems:
            raise ConfigError("invalid config:\n  " + "\n  ".join(problems))

    def load(self) -> None:
        """Lists both splits' files and builds (or checks and opens) their caches; idempotent.

        Raises `StaleCacheError` for a cache whose files changed (unless `cache_rebuild`),
        `DataNotFoundError` for missing files, `ConfigError` for bad settings.
        """
        if len(self.classes):
            return
        self._check_cache_settings()
        train = self._split_files(train=True)
        test = self._split_files(train=False)
        self.caches = {"train": self._open(train, "train")}
        if test.paths:
            self.caches["test"] = self._open(test, "test")
        self.train_targets, self.test_targets = train.targets, test.targets

    def _open(self, files: SplitFiles, split: str) -> ImageCache:
        try:
            manifest = Manifest.scan(files.root, files.paths)
        except FileNotFoundError as missing:
            raise DataNotFoundError(
                f"{self.dataset_name}: {missing.filename} is listed but not on disk; "
                f"{self.how_to_get}"
            ) from missing
        shape = self.decoded_shape()
        slug = self.dataset_name.lower().replace(" ", "_")
        folder = self.cache_dir / cache_name(slug, split, files.root, shape)
        return open_cache(
            folder,
            CacheSource(files.root, manifest, shape),
            self.decoder(),
            rebuild=self.cache_rebuild,
            workers=self.cache_workers,
            progress=self.progress,
        )

    # ------------------------------------------------------------------ shapes
    @property
    def image_shape(self) -> tuple[int, int, int]:
        _, channels, height, width = self.caches["train"].shape
        return channels, height, width

    @property
    def train_images(self) -> Tensor:
        """The training split as a memory-mapped `[N, C, H, W]` tensor: touching it reads the
        cache from disk. The training and scoring paths use `gather` and the loaders."""
        return self._mapped_split("train")

    @train_images.setter
    def train_images(self, value: Tensor) -> None:
        if len(value):
            raise AttributeError("a cached dataset's images live in its cache, not in memory")

    @property
    def test_images(self) -> Tensor:
        """The test split as a memory-mapped `[N, C, H, W]` tensor (see `train_images`)."""
        return self._mapped_split("test")

    @test_images.setter
    def test_images(self, value: Tensor) -> None:
        if len(value):
            raise AttributeError("a cached dataset's images live in its cache, not in memory")

    def _mapped_split(self, split: str) -> Tensor:
        if split not in self.caches:
            return torch.empty(0, *self.decoded_shape(), dtype=torch.uint8)
        if split not in self._mapped:
            self._mapped[split] = self.caches[split].as_tensor()
        return self._mapped[split]

    # --------------------------------------------------------------- placement
    def placement(self, device: torch.device | str) -> str:
        """`"memory"` or `"stream"`: how the splits reach `device`; decided once per device."""
        device = torch.device(device)
        key = str(device)
        if key not in self.placements:
            needed = sum(cache.nbytes for cache in self.caches.values())
            free = free_memory_bytes(device) if self.storage == "auto" else None
            choice, why = choose_placement(self.storage, needed, free)
            self.placements[key] = {
                "placement": choice,
                "reason": why,
                "bytes": needed,
                "free_bytes": free,
            }
            counts = " and ".join(f"{len(c):,} {split}" for split, c in self.caches.items())
            cache = self.caches["train"].folder.parent
            where = f"held on {key}" if choice == "memory" else f"streamed to {key} from {cache}"
            log.info(
                "%s: the %s images (%s as uint8 %s) are %s (%s)",
                self.dataset_name,
                counts,
                _gb(needed),
                "x".join(map(str, self.image_shape)),
                where,
                why,
            )
        return str(self.placements[key]["placement"])

    def _device(self) -> torch.device:
        if self.trainer is None:
            return torch.device("cpu")
        return self.trainer.strategy.root_device

    def split_on(self, device: torch.device | str, train: bool = True) -> tuple[Tensor, Tensor]:
        """The whole split, `[N, C, H, W]` uint8 and `[N]` targets, held on `device`.

        Read from the cache once per device and kept (the memory path); the targets are
        copied again on every call, so labels given since are current.
        """
        device = torch.device(device)
        split = "train" if train else "test"
        targets = self.train_targets if train else self.test_targets
        if split not in self.caches:
            return torch.empty(0, *self.decoded_shape(), dtype=torch.uint8), targets
        key = (split, device)
        if key not in self._resident:
            self._resident[key] = self.caches[split].read_all(device)
        return self._resident[key], targets.to(device)

    def gather(self, indices: Tensor, device: torch.device | str) -> Tensor:
        """`[B, C, H, W]` uint8 training images at `indices` (`[B]`), on `device`.

        From the split held on `device` when the memory path holds it there, else read from
        the cache (only the samples asked for; pinned and copied asynchronously on CUDA).
        """
        device = torch.device(device)
        resident = self._resident.get(("train", device))
        if resident is not None:
            return resident[indices.to(device)]
        pin = device.type == "cuda"
        images = self.caches["train"].read(indices.cpu(), pin_memory=pin)
        return images.to(device, non_blocking=pin)

    # ----------------------------------------------------------------- loaders
    def train_dataloader(self) -> IndexBatchLoader:
        device = self._device()
        generator = make_generator(self._seed, self._cycle, "shuffle")
        if self.placement(device) == "memory":
            images, targets = self.split_on(device, train=True)
            return TensorBatchLoader(
                images, targets, self.labeled_indices, self.batch_size, True, generator
            )
        return StreamingBatchLoader(
            self.caches["train"],
            self.train_targets,
            self.labeled_indices,
            self.batch_size,
            shuffle=True,
            generator=generator,
            device=device,
            prefetch=self.prefetch,
        )

    def test_dataloader(self) -> IndexBatchLoader:
        device = self._device()
        every = torch.arange(len(self.test_targets))
        if self.placement(device) == "memory" or "test" not in self.caches:
            images, targets = self.split_on(device, train=False)
            return TensorBatchLoader(images, targets, every, self.eval_batch_size)
        return StreamingBatchLoader(
            self.caches["test"],
            self.test_targets,
            every,
            self.eval_batch_size,
            device=device,
            prefetch=self.prefetch,
        )
