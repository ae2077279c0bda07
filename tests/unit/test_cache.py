"""The on-disk image cache: reads, builds, refusals of changed sources, kills and resumes,
concurrent builders; the streaming loader against the in-memory one; the placement rule."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tidal_lightning.callbacks.pool_dynamics import IndexedImages, PoolDynamicsRecorder
from tidal_lightning.data.cache import (
    CacheSource,
    ImageCache,
    StaleCacheError,
    open_cache,
    write_cache,
)
from tidal_lightning.data.cached import MEMORY_SHARE, choose_placement
from tidal_lightning.data.image_folder import ImageFolderData, list_images, read_image
from tidal_lightning.data.loader import TensorBatchLoader
from tidal_lightning.data.manifest import Manifest
from tidal_lightning.data.streaming import StreamingBatchLoader, prefetched
from tidal_lightning.errors import ConfigError
from tidal_lightning.models.backbones import SmallCNN
from tidal_lightning.models.system import ActiveLearningSystem

REPO = Path(__file__).resolve().parents[2]
SHAPE = (3, 6, 5)


def array_cache(
    folder: Path, count: int = 40, shape: tuple[int, int, int] = SHAPE
) -> tuple[ImageCache, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, *shape), dtype=torch.uint8, generator=generator)
    source = CacheSource(folder, Manifest([], torch.empty(0), torch.empty(0)), shape)
    chunks = (images[start : start + 7] for start in range(0, count, 7))
    return write_cache(folder, source, count, chunks), images


def photos(root: Path, count: int) -> list[str]:
    """`count` small PNGs of distinct colours, `img_00.png` ...; returns their paths."""
    rng = np.random.default_rng(count)
    root.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        pixels = rng.integers(0, 256, size=(9, 7, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"img_{n:02d}.png")
    return list_images(root)


def source_of(root: Path) -> CacheSource:
    return CacheSource(root, Manifest.scan(root, list_images(root)), SHAPE)


def decoded(root: Path) -> torch.Tensor:
    """The folder decoded file by file, without any cache: what a cache must hold."""
    return torch.stack([read_image(root / p, SHAPE[0], SHAPE[1:]) for p in list_images(root)])


class CountingDecoder:
    """`read_image` that counts its calls (run in this process: `workers=0`)."""

    calls = 0

    @staticmethod
    def decode(path: Path, channels: int, size: tuple[int, int]) -> torch.Tensor:
        CountingDecoder.calls += 1
        return read_image(path, channels, size)


# ----------------------------------------------------------------------------- reading
def test_reads_any_indices_in_their_order(tmp_path: Path) -> None:
    cache, images = array_cache(tmp_path / "c")
    assert cache.shape == (40, *SHAPE) and cache.nbytes == images.numel()
    for indices in ([3, 4, 5, 6], [39, 0, 17, 17, 2], [], list(range(40)), [12]):
        wanted = torch.tensor(indices, dtype=torch.long)
        assert torch.equal(cache.read(wanted), images[wanted])
    assert torch.equal(cache.read_all(), images)
    assert torch.equal(cache.as_tensor(), images)
    with pytest.raises(IndexError, match="out of range"):
        cache.read(torch.tensor([40]))


def test_a_build_decodes_every_file_once_and_reopening_decodes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    photos(root, 11)
    CountingDecoder.calls = 0
    cache = open_cache(tmp_path / "cache" / "c", source_of(root), CountingDecoder.decode, workers=0)
    assert CountingDecoder.calls == 11
    assert torch.equal(cache.read_all(), decoded(root))
    again = open_cache(tmp_path / "cache" / "c", source_of(root), CountingDecoder.decode)
    assert CountingDecoder.calls == 11 and torch.equal(again.read_all(), decoded(root))
    assert not (tmp_path / "cache" / "c.partial").exists()


@pytest.mark.parametrize("change", ["added", "removed", "rewritten"])
def test_a_changed_source_is_refused_naming_the_files_then_rebuilt_on_request(
    tmp_path: Path, change: str
) -> None:
    root = tmp_path / "photos"
    paths = photos(root, 5)
    folder = tmp_path / "cache" / "c"
    open_cache(folder, source_of(root), read_image, workers=0)
    if change == "added":
        Image.new("RGB", (4, 4), (1, 2, 3)).save(root / "zz_new.png")
        named = "1 added: zz_new.png"
    elif change == "removed":
        (root / paths[1]).unlink()
        named = f"1 removed: {paths[1]}"
    else:
        Image.new("RGB", (9, 7), (200, 0, 0)).save(root / paths[2])
        stat = (root / paths[2]).stat()
        os.utime(root / paths[2], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        named = f"1 rewritten (size or mtime): {paths[2]}"
    with pytest.raises(StaleCacheError) as refused:
        open_cache(folder, source_of(root), read_image, workers=0)
    assert named in str(refused.value)
    assert "dataset.cache_rebuild=true" in str(refused.value) and str(folder) in str(refused.value)
    rebuilt = open_cache(folder, source_of(root), read_image, workers=0, rebuild=True)
    assert torch.equal(rebuilt.read_all(), decoded(root))


# --------------------------------------------------------------------------- streaming
def test_streaming_batches_equal_the_in_memory_loader_epoch_after_epoch(tmp_path: Path) -> None:
    cache, images = array_cache(tmp_path / "c", count=30)
    targets = torch.arange(30) % 4
    labeled = torch.tensor([5, 9, 0, 13, 22, 29, 2, 17, 8, 11, 3])
    for replicas in (1, 2):
        for replica in range(replicas):
            shards = {"num_replicas": replicas, "replica": replica}
            memory = TensorBatchLoader(
                images, targets, labeled, 4, True, torch.Generator().manual_seed(3), **shards
            )
            streamed = StreamingBatchLoader(
                cache, targets, labeled, 4, True, torch.Generator().manual_seed(3), **shards
            )
            assert len(memory) == len(streamed)
            for _ in range(3):  # epochs: the permutations must stay in step
                for a, b in zip(memory, streamed, strict=True):
                    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    inline = StreamingBatchLoader(cache, targets, torch.arange(30), 8, prefetch=0)
    assert torch.equal(torch.cat([x for x, _, _ in inline]), images)


def test_streaming_reads_the_targets_as_they_are_now(tmp_path: Path) -> None:
    cache, _ = array_cache(tmp_path / "c", count=10)
    targets = torch.full((10,), -1)
    loader = StreamingBatchLoader(cache, targets, torch.arange(4), 4)
    targets[:4] = torch.tensor([3, 1, 0, 2])  # labels given after the loader was built
    ((_, labels, indices),) = list(loader)
    assert labels.tolist() == [3, 1, 0, 2] and indices.tolist() == [0, 1, 2, 3]


def test_prefetched_keeps_order_raises_in_place_and_stops_early() -> None:
    calls: list[int] = []

    def produce(n: int) -> int:
        calls.append(n)
        if n == 7:
            raise ValueError("seven")
        return n * n

    assert list(prefetched(produce, range(5), depth=2)) == [0, 1, 4, 9, 16]
    got = []
    with pytest.raises(ValueError, match="seven"):
        for value in prefetched(produce, range(5, 12), depth=2):
            got.append(value)
    assert got == [25, 36]
    calls.clear()
    for value in prefetched(produce, range(100), depth=2):
        if value == 1:
            break
    assert max(calls) <= 1 + 2  # at most `depth` computed past the last one handed out


def test_the_recorder_streams_the_same_counts_as_from_a_tensor(tmp_path: Path) -> None:
    cache, images = array_cache(tmp_path / "c", count=23, shape=(3, 16, 16))
    subset = torch.tensor([4, 19, 0, 7, 7, 22, 11, 3, 15])
    torch.manual_seed(0)
    system = ActiveLearningSystem(
        SmallCNN(num_classes=3, in_channels=3, width=4), 3, optimizer=torch.optim.SGD
    )
    asked: list[list[int]] = []

    def gather(indices: torch.Tensor, device: torch.device) -> torch.Tensor:
        asked.append(indices.tolist())
        return cache.read(indices).to(device)

    def normalize(x: torch.Tensor) -> torch.Tensor:
        return x.float() / 255

    results = []
    for source in (images[subset], IndexedImages(gather, subset)):
        recorder = PoolDynamicsRecorder(source, normalize, 3, batch_size=4, record_probs=True)
        recorder.on_fit_start(None, system)  # type: ignore[arg-type]
        for epoch in range(2):
            recorder.on_train_epoch_end(SimpleEpoch(epoch), system)  # type: ignore[arg-type]
        results.append(recorder.outputs())
    assert torch.equal(results[0]["label_counts"], results[1]["label_counts"])
    torch.testing.assert_close(results[0]["pool_td"], results[1]["pool_td"])
    assert results[0]["label_counts"].sum() == 2 * len(subset)
    assert asked == [subset[:4].tolist(), subset[4:8].tolist(), subset[8:].tolist()] * 2


class SimpleEpoch:
    def __init__(self, epoch: int) -> None:
        self.current_epoch = epoch


# --------------------------------------------------------------------------- placement
def test_auto_holds_what_fits_in_half_the_free_memory_and_a_key_forces_either() -> None:
    free = 1000
    assert choose_placement("auto", int(MEMORY_SHARE * free), free)[0] == "memory"
    assert choose_placement("auto", int(MEMORY_SHARE * free) + 1, free)[0] == "stream"
    assert choose_placement("stream", 1, free) == ("stream", "dataset.storage=stream")
    assert choose_placement("memory", 10**15, None) == ("memory", "dataset.storage=memory")


def folder_data(root: Path, **kwargs: object) -> ImageFolderData:
    return ImageFolderData(
        root=str(root), classes=["a", "b"], image_size=[6, 5], cache_workers=0, **kwargs
    )


def test_both_placements_serve_the_same_batches_and_say_which_they_took(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    photos(root, 13)
    modules = {s: folder_data(root, storage=s, batch_size=4) for s in ("memory", "stream")}
    batches = {}
    for storage, module in modules.items():
        module.load()
        module.start_cycle(torch.tensor([1, 4, 6, 7, 9, 12]), seed=2, cycle=1)
        loader = module.train_dataloader()
        assert type(loader) is (TensorBatchLoader if storage == "memory" else StreamingBatchLoader)
        assert module.placements["cpu"]["placement"] == storage
        assert module.placements["cpu"]["reason"] == f"dataset.storage={storage}"
        batches[storage] = [b for _ in range(2) for b in loader]
        assert torch.equal(
            module.gather(torch.tensor([12, 0, 5]), "cpu"), decoded(root)[[12, 0, 5]]
        )
    for a, b in zip(batches["memory"], batches["stream"], strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert modules["stream"].image_shape == SHAPE and modules["stream"].num_train == 13


def test_bad_storage_settings_are_named(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    photos(root, 2)
    cache_dir = tmp_path / "cache"
    with pytest.raises(ConfigError, match=r"dataset.storage='disk'.*\n.*dataset.prefetch=-1"):
        folder_data(root, storage="disk", prefetch=-1, cache_dir=str(cache_dir)).load()
    assert not cache_dir.exists()  # refused before anything was built
