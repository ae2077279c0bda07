"""Small collectives for multi-process (DDP) runs; every helper is a no-op in one process.

Lightning's DDP strategy initialises `torch.distributed` before the data loaders and the
callbacks' training hooks run, so these helpers read the process group lazily, at call
time. Without an initialised group (one process, or before `trainer.fit`) world size is 1,
rank is 0 and the collectives return their input unchanged.

Sharding is strided, as torch's `DistributedSampler` does it: rank `r` of `W` takes
positions `r, r + W, r + 2W, ...`, so shard sizes differ by at most one and depend only on
`(n, W, r)`; no rank needs to ask another how long its shard is.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from torch import Tensor, nn


def is_distributed() -> bool:
    """True when a process group with more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main_process() -> bool:
    """Whether this process writes the run's files: rank 0, or the only process.

    Read from the launcher's environment (Lightning's `rank_zero_only.rank`), so it is right
    from import on, before any process group exists: a DDP child that `trainer.fit` starts
    re-runs the whole program, and must not write what rank 0 writes.
    """
    return int(getattr(rank_zero_only, "rank", 0)) == 0


def world_size() -> int:
    """W, the number of processes in the default group; 1 without one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank in the default group; 0 without one."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def shard_size(n: int, num_replicas: int, replica: int) -> int:
    """How many of `n` strided positions rank `replica` of `num_replicas` takes."""
    return len(range(replica, n, num_replicas))


def shard(n: int, num_replicas: int | None = None, replica: int | None = None) -> Tensor:
    """`[ceil((n - r) / W)]` int64 positions of `0..n-1` that rank `r` of `W` handles.

    Args:
        n: how many items there are.
        num_replicas, replica: W and r; default to the process group's (1 and 0 without one).
    """
    num_replicas = world_size() if num_replicas is None else num_replicas
    replica = rank() if replica is None else replica
    if not 0 <= replica < num_replicas:
        raise ValueError(f"rank {replica} is outside 0..{num_replicas - 1}")
    return torch.arange(replica, n, num_replicas)


def all_reduce_sum_(tensor: Tensor) -> Tensor:
    """Sums `tensor` over all processes, in place; returns it (unchanged in one process)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_(tensor: Tensor, src: int = 0) -> Tensor:
    """Overwrites `tensor` on every process with rank `src`'s copy, in place; returns it."""
    if is_distributed():
        dist.broadcast(tensor, src=src)
    return tensor


def broadcast_buffers_(module: nn.Module, src: int = 0) -> None:
    """Makes every rank's module buffers (BatchNorm running statistics) rank `src`'s.

    DDP keeps parameters identical but only broadcasts buffers at the start of the next
    training forward, so after an epoch each rank's running statistics still hold its own
    last batch. An eval pass whose shards must agree with one process syncs them first;
    training is unaffected (the next DDP forward broadcasts rank 0's buffers anyway).
    """
    if not is_distributed():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=src)


def gather_strided(local: Tensor, n: int) -> Tensor:
    """Reassembles `[n, ...]` on every rank from each rank's rows for its `shard(n)`.

    Args:
        local: `[ceil(n / W), ...]` this rank's outputs for positions `r, r + W, ...`, padded
            with one arbitrary row where its shard is one shorter than rank 0's (every rank
            then sends the same shape).
        n: the total number of positions.

    Returns:
        `[n, ...]` rows in position order, identical on every rank (`local[:n]` in one process).
    """
    replicas = world_size()
    if replicas == 1:
        return local[:n]
    rows = shard_size(n, replicas, 0)
    if len(local) != rows:
        raise ValueError(f"rank {rank()} sends {len(local)} rows; strided shards need {rows}")
    gathered = [torch.empty_like(local) for _ in range(replicas)]
    dist.all_gather(gathered, local.contiguous())
    # position j * W + r is row j of rank r: interleave the ranks, then drop the padding
    return torch.stack(gathered, dim=1).flatten(0, 1)[:n]
