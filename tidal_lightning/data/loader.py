"""Index-batch loader over in-memory tensors: one gather per batch, not one call per sample."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor


class TensorBatchLoader:
    """Yields `(images, targets, indices)` batches of a subset of an in-memory split.

    A DataLoader over a `TensorDataset` would call `__getitem__` and `collate` once per
    sample; this gathers a whole batch with one indexing op, on whatever device the
    tensors live on.

    Args:
        images: `[N, C, H, W]` uint8, the whole split.
        targets: `[N]` int64.
        indices: `[M]` int64 dataset indices of the subset to iterate.
        batch_size: samples per batch; the last batch may be smaller, but never a single
            sample (BatchNorm cannot train on one): that one joins the batch before it, so
            every sample is still seen exactly once per epoch.
        shuffle: draw a new permutation of `indices` every epoch.
        generator: CPU generator for the permutations (required when `shuffle`).
    """

    def __init__(
        self,
        images: Tensor,
        targets: Tensor,
        indices: Tensor,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        if shuffle and generator is None:
            raise ValueError("a shuffling loader needs an explicit generator")
        self.images = images
        self.targets = targets
        self.indices = indices.to(torch.long).cpu()
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator

    def _starts(self) -> list[int]:
        starts = list(range(0, len(self.indices), self.batch_size))
        if len(starts) > 1 and len(self.indices) - starts[-1] == 1:
            starts.pop()
        return starts

    def __len__(self) -> int:
        return len(self._starts())

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        order = self.indices
        if self.shuffle:
            order = order[torch.randperm(len(order), generator=self.generator)]
        order = order.to(self.images.device)
        starts = self._starts()
        for start, end in zip(starts, [*starts[1:], len(order)], strict=True):
            batch = order[start:end]
            yield self.images[batch], self.targets[batch], batch
