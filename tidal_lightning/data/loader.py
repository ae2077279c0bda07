"""Index-batch loaders: one gather per batch, not one call per sample."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from tidal_lightning import distributed
from tidal_lightning.errors import ConfigError


class IndexBatchLoader:
    """The batches of dataset indices one epoch visits: shuffling, DDP shards, batch bounds.

    Subclasses turn each index batch into `(images, targets, indices)`:
    `TensorBatchLoader` from tensors in memory, `StreamingBatchLoader` from a cache on disk.
    Both visit the same indices in the same order for the same generator.

    Under DDP (a process group of W > 1 processes) every rank draws the same epoch
    permutation from its identically seeded `generator` and keeps its strided shard, as
    `DistributedSampler` does, but without padding: shards are disjoint and cover the subset
    exactly once per epoch. `batch_size` is per rank (Lightning's convention), and every rank
    yields the same number of batches (DDP needs equal step counts): the count the shortest
    shard gives, the longer shards' extra sample joining their last batch.

    Args:
        indices: `[M]` int64 dataset indices of the subset to iterate.
        batch_size: samples per batch; the last batch may be smaller, but never a single
            sample (BatchNorm cannot train on one): that one joins the batch before it, so
            every sample is still seen exactly once per epoch.
        shuffle: draw a new permutation of `indices` every epoch.
        generator: CPU generator for the permutations (required when `shuffle`); drawing on
            the CPU keeps the order the same whatever device the images are on.
        num_replicas, replica: W and this rank; default to the process group's, read at
            iteration time (1 and 0 without one).
    """

    def __init__(
        self,
        indices: Tensor,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        *,
        num_replicas: int | None = None,
        replica: int | None = None,
    ) -> None:
        if shuffle and generator is None:
            raise ValueError("a shuffling loader needs an explicit generator")
        self.indices = indices.to(torch.long).cpu()
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator
        self.num_replicas = num_replicas
        self.replica = replica

    def _replicas(self) -> tuple[int, int]:
        replicas = distributed.world_size() if self.num_replicas is None else self.num_replicas
        replica = distributed.rank() if self.replica is None else self.replica
        if replicas > 1 and len(self.indices) // replicas < 2:
            raise ConfigError(
                f"{len(self.indices)} samples cannot give each of {replicas} processes at least "
                "2 (a 1-sample batch breaks BatchNorm): lower trainer.devices or label more "
                "samples (al.initial)"
            )
        return replicas, replica

    def _starts(self, count: int) -> list[int]:
        starts = list(range(0, count, self.batch_size))
        if len(starts) > 1 and count - starts[-1] == 1:
            starts.pop()
        return starts

    def __len__(self) -> int:
        replicas, _ = self._replicas()
        # the shortest shard sets the count, so that every rank agrees on it
        return len(self._starts(len(self.indices) // replicas))

    def epoch_order(self) -> tuple[Tensor, list[tuple[int, int]]]:
        """This epoch's (and rank's) `[M_r]` CPU indices and the `(start, end)` of each batch.

        Draws the epoch's permutation from `generator` when shuffling: call once per epoch.
        """
        replicas, replica = self._replicas()
        order = self.indices
        if self.shuffle:
            # every rank draws (the same permutation), so generators stay in step across ranks
            order = order[torch.randperm(len(order), generator=self.generator)]
        order = order[replica::replicas]
        starts = self._starts(len(self.indices) // replicas)
        return order, list(zip(starts, [*starts[1:], len(order)], strict=True))


class TensorBatchLoader(IndexBatchLoader):
    """Yields `(images, targets, indices)` batches of a subset of an in-memory split.

    A DataLoader over a `TensorDataset` would call `__getitem__` and `collate` once per
    sample; this gathers a whole batch with one indexing op, on whatever device the
    tensors live on (the yielded indices too).

    Args:
        images: `[N, C, H, W]` uint8, the whole split (CPU or the device).
        targets: `[N]` int64, on the images' device.
        indices, batch_size, shuffle, generator, num_replicas, replica: see `IndexBatchLoader`.
    """

    def __init__(
        self,
        images: Tensor,
        targets: Tensor,
        indices: Tensor,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        *,
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
        self.images = images
        self.targets = targets

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        order, bounds = self.epoch_order()
        # one copy per epoch, then slices of it; non_blocking: a blocking copy from pageable
        # memory waits for the device's queue (a sync every epoch); an async one stages the
        # host buffer before it returns, so it is safe
        order = order.to(self.images.device, non_blocking=True)
        for start, end in bounds:
            batch = order[start:end]
            yield self.images[batch], self.targets[batch], batch
