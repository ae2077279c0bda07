"""Batches read from an on-disk cache while the previous batch trains.

The streaming path keeps the device-resident path's batches exactly (same indices, same
order, same shards; augmentation and normalisation still run on the device in the
datamodule's `on_after_batch_transfer`): only where a batch's pixels come from changes.
A background thread reads the next batches (`os.preadv` into pinned memory on CUDA, then an
asynchronous copy) while the current one trains.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from typing import TypeVar

import torch
from torch import Tensor

from tidal_lightning.data.cache import ImageCache
from tidal_lightning.data.loader import IndexBatchLoader

Item = TypeVar("Item")
Result = TypeVar("Result")


def prefetched(
    produce: Callable[[Item], Result], items: Iterable[Item], depth: int = 2
) -> Iterator[Result]:
    """`produce(item)` for each of `items`, in order, up to `depth` computed ahead.

    One background thread runs `produce` (reading files and `torch` copies release the
    GIL, so it overlaps the consumer's work); its exceptions surface at the item that
    raised them. Stopping early (a `break`, an exception in the consumer) cancels what is
    queued and waits for the running call. `depth=0` runs `produce` inline.
    """
    if depth <= 0:
        for item in items:
            yield produce(item)
        return
    remaining = iter(items)
    pending: deque[Future[Result]] = deque()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tidal-prefetch") as executor:
        try:
            pending.extend(executor.submit(produce, item) for item in islice(remaining, depth))
            while pending:
                result = pending.popleft().result()
                # queue the next before handing this one out: the thread never idles
                pending.extend(executor.submit(produce, item) for item in islice(remaining, 1))
                yield result
        finally:
            for future in pending:
                future.cancel()


class StreamingBatchLoader(IndexBatchLoader):
    """`(images, targets, indices)` batches of a labeled subset, read from an `ImageCache`.

    The same batches as `TensorBatchLoader` over the same split (same permutation from the
    same generator, same DDP shards and batch bounds), delivered on `device`. Host memory is
    `prefetch + 1` batches, whatever the cache's size.

    Args:
        cache: the split's images on disk.
        targets: `[N]` int64 labels of the whole split, on the CPU (read per batch, so
            labels set after the loader was built are seen).
        indices, batch_size, shuffle, generator, num_replicas, replica: see `IndexBatchLoader`.
        device: where the batches are delivered.
        prefetch: batches read ahead in a background thread; 0 reads inline.
    """

    def __init__(
        self,
        cache: ImageCache,
        targets: Tensor,
        indices: Tensor,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        *,
        device: torch.device | str = "cpu",
        prefetch: int = 2,
        num_replicas: int | None = None,
        replica: int | None = None,
    ) -> None:
        super().__init__(
            indices,
            batch_size,
            shuffle,
            generator,
            num_replicas=num_replicas,
            replica=replica,
        )
        self.cache = cache
        self.targets = targets
        self.device = torch.device(device)
        self.prefetch = prefetch

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        order, bounds = self.epoch_order()

        def load(bound: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
            batch = order[bound[0] : bound[1]]
            return read_batch(self.cache, self.targets, batch, self.device)

        yield from prefetched(load, bounds, self.prefetch)


def read_batch(
    cache: ImageCache, targets: Tensor, indices: Tensor, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """`([B, C, H, W] uint8, [B] targets, [B] indices)` for CPU `indices`, on `device`.

    On CUDA the three are read into pinned memory and copied asynchronously; the caching
    host allocator keeps a pinned block until the copy that reads it has finished.
    """
    pin = device.type == "cuda"
    images = cache.read(indices, pin_memory=pin)
    labels = targets[indices]
    if pin:
        labels, indices = labels.pin_memory(), indices.pin_memory()
    return (
        images.to(device, non_blocking=pin),
        labels.to(device, non_blocking=pin),
        indices.to(device, non_blocking=pin),
    )
