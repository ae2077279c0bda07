"""One batched pass over the scored pool subset, computing only what the strategy needs."""

from __future__ import annotations

import torch
from torch import Tensor

from tidal_lightning.data.datamodules import ImageClassificationData
from tidal_lightning.models.system import ActiveLearningSystem
from tidal_lightning.strategies.base import PoolOutputs


def pool_pass(
    system: ActiveLearningSystem,
    datamodule: ImageClassificationData,
    indices: Tensor,
    needs: frozenset[str],
    device: torch.device,
) -> PoolOutputs:
    """Runs the trained system over `indices` of the training split in eval mode.

    Batches of `datamodule.eval_batch_size` bound memory; outputs stay on `device`.

    Args:
        indices: `[N]` dataset indices of the pool subset.
        needs: output names the strategy reads (`"probs"`, `"td_probs"`).

    Returns:
        `PoolOutputs` with each needed output `[N, K]` on `device`.
    """
    unknown = set(needs) - {"probs", "td_probs"}
    if unknown:
        raise ValueError(f"no pool output called {sorted(unknown)}")
    if not needs:
        return PoolOutputs(indices)
    system.to(device).eval()
    batches: list[dict[str, Tensor]] = []
    for start in range(0, len(indices), datamodule.eval_batch_size):
        batch = indices[start : start + datamodule.eval_batch_size]
        images = datamodule.normalize(datamodule.train_images[batch].to(device))
        batches.append(system.predict_batch(images, with_td="td_probs" in needs))
    outputs = {name: torch.cat([b[name] for b in batches]) for name in needs}
    return PoolOutputs(indices, outputs)
