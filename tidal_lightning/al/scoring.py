"""Batched eval-mode passes over the scored pool subset (and the labeled set), plus the
per-cycle query diagnostics."""

from __future__ import annotations

import torch
from torch import Tensor

from tidal_lightning import distributed
from tidal_lightning.data.datamodules import ImageClassificationData
from tidal_lightning.data.streaming import prefetched
from tidal_lightning.models.system import MC_OUTPUTS, ActiveLearningSystem
from tidal_lightning.strategies import scores
from tidal_lightning.strategies.base import (
    KNOWN_OUTPUTS,
    LABELED_OUTPUTS,
    POOL_PASS_OUTPUTS,
    PoolOutputs,
    QueryContext,
)


def model_pass(
    system: ActiveLearningSystem,
    datamodule: ImageClassificationData,
    indices: Tensor,
    needs: frozenset[str],
    device: torch.device,
    mc_samples: int = 0,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Runs the trained system in eval mode over `indices` of the training split.

    Images are read `datamodule.eval_batch_size` at a time (the next chunk while this one is
    predicted), so the pass holds two chunks of images whatever N is, also when the
    datamodule streams its split from disk; the outputs (`[N, ...]`) stay on `device`.

    Under DDP every rank must call this with the same arguments: each predicts its strided
    shard of `indices` (padded by one sample where it is one short, so all ranks send the
    same shape), with rank 0's BatchNorm statistics, and one all-gather per output
    reassembles the whole, in order, on every rank. The MC-dropout masks are drawn once,
    before the batches, from `generator` (seeded alike on every rank), so every rank uses
    one process's masks on its shard.

    Args:
        indices: `[N]` dataset indices.
        needs: names from `POOL_PASS_OUTPUTS` (see `ActiveLearningSystem.predict_batch`).
        mc_samples, generator: T masks for the MC-dropout outputs, and where they come from.

    Returns:
        Each needed output, `[N, ...]` on `device` (the same on every rank).
    """
    if not needs:
        return {}
    system.to(device).eval()
    distributed.broadcast_buffers_(system)
    masks = system.mc_dropout_masks(mc_samples, generator) if needs & MC_OUTPUTS else None
    sharded = distributed.is_distributed() and len(indices) > 0
    local = indices
    if sharded:
        positions = distributed.shard(len(indices))
        rows = distributed.shard_size(len(indices), distributed.world_size(), 0)
        local = torch.cat([indices[positions], indices[:1].expand(rows - len(positions))])
    chunks = [
        local[start : start + datamodule.eval_batch_size]
        for start in range(0, len(local), datamodule.eval_batch_size)
    ]
    batches: list[dict[str, Tensor]] = []
    # The next chunk is read (from the device copy, or from the cache on disk when the
    # datamodule streams) while this one is predicted.
    for images in prefetched(lambda chunk: datamodule.gather(chunk, device), chunks, depth=1):
        normalized = datamodule.normalize(images)
        batches.append(system.predict_batch(normalized, needs, masks))
    outputs = {name: torch.cat([b[name] for b in batches]) for name in sorted(needs)}
    if sharded:
        outputs = {k: distributed.gather_strided(v, len(indices)) for k, v in outputs.items()}
    return outputs


def pool_pass(
    system: ActiveLearningSystem,
    datamodule: ImageClassificationData,
    indices: Tensor,
    labeled_indices: Tensor,
    needs: frozenset[str],
    device: torch.device,
    mc_samples: int = 0,
    generator: torch.Generator | None = None,
    context: QueryContext | None = None,
) -> PoolOutputs:
    """The pool-subset outputs a strategy needs, plus its `labeled_*` outputs.

    Recorded outputs (`label_counts`, `pool_td`) come from the per-epoch recorder, not
    from here; the caller adds them. `labeled_targets` (`[L]`, on `device`) is always
    filled in: the labels are known and cost nothing to pass. `pool_targets` (`[N]`, the
    stored labels of the pool subset, -1 where unknown) only when `needs` names it: only
    ground-truth reference strategies may read them.

    Args:
        indices: `[N]` dataset indices of the pool subset.
        labeled_indices: `[L]` dataset indices of the labeled set.
        needs: the strategy's `needs`.
        context: handed to the strategy as `PoolOutputs.context`.
    """
    unknown = set(needs) - KNOWN_OUTPUTS
    if unknown:
        raise ValueError(f"no pool output called {sorted(unknown)}; known: {sorted(KNOWN_OUTPUTS)}")
    outputs = model_pass(
        system, datamodule, indices, needs & POOL_PASS_OUTPUTS, device, mc_samples, generator
    )
    labeled_needs = frozenset(n.removeprefix("labeled_") for n in needs & LABELED_OUTPUTS)
    labeled = model_pass(system, datamodule, labeled_indices, labeled_needs, device)
    outputs.update({f"labeled_{name}": value for name, value in labeled.items()})
    if "pool_targets" in needs:
        outputs["pool_targets"] = datamodule.train_targets[indices.cpu()].to(device)
    labeled_targets = datamodule.train_targets[labeled_indices.cpu()].to(device)
    return PoolOutputs(indices, outputs, labeled_targets=labeled_targets, context=context)


def td_agreement(td_probs: Tensor, pool_td: Tensor) -> dict[str, float]:
    """How well the TD module predicts the recorded pool TD.

    Args:
        td_probs: `[N, K]` the TD module's prediction for the pool subset.
        pool_td: `[N, K]` the recorded mean softmax (actual TD).

    Returns:
        `td_pool_kl`: mean `KL(actual ‖ predicted)`; `td_pool_spearman` and
        `td_pool_margin_spearman`: rank correlation between the entropies (margins) of the
        two (do they order the pool the same way?).
    """
    kl = scores.kl_divergence(pool_td, td_probs).mean()
    return {
        "td_pool_kl": float(kl),
        "td_pool_spearman": spearman(scores.entropy(td_probs), scores.entropy(pool_td)),
        "td_pool_margin_spearman": spearman(
            scores.negative_margin(td_probs), scores.negative_margin(pool_td)
        ),
    }


def spearman(x: Tensor, y: Tensor) -> float:
    """Spearman rank correlation of two `[N]` vectors (ties ranked by position)."""
    if len(x) < 2:
        return float("nan")
    rank_x = x.argsort(stable=True).argsort(stable=True).double()
    rank_y = y.argsort(stable=True).argsort(stable=True).double()
    rank_x, rank_y = rank_x - rank_x.mean(), rank_y - rank_y.mean()
    denominator = (rank_x.square().sum() * rank_y.square().sum()).sqrt()
    return float((rank_x * rank_y).sum() / denominator) if denominator > 0 else float("nan")


def imbalance_ratio(class_counts: Tensor) -> float:
    """Largest / smallest of `[K]` class counts; inf while a class has none."""
    smallest = int(class_counts.min())
    return int(class_counts.max()) / smallest if smallest else float("inf")


def query_diagnostics(queried_labels: Tensor, num_classes: int) -> dict[str, int]:
    """The queried batch's class histogram (`queried_class_<c>`) and `query_distinct_classes`.

    Args:
        queried_labels: `[B]` labels of the samples just queried.
    """
    queried = torch.bincount(queried_labels.cpu(), minlength=num_classes)
    return {
        **{f"queried_class_{c}": int(n) for c, n in enumerate(queried.tolist())},
        "query_distinct_classes": int((queried > 0).sum()),
    }
