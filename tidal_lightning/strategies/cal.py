"""CAL, contrastive active learning (Margatina et al., EMNLP 2021)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from tidal_lightning.strategies import scores
from tidal_lightning.strategies.base import PoolOutputs, Strategy
from tidal_lightning.strategies.geometry import nearest_neighbours


def contrastive_scores(
    embeddings: Tensor,
    probs: Tensor,
    labeled_embeddings: Tensor,
    labeled_probs: Tensor,
    neighbours: int,
    chunk_size: int = 1024,
) -> Tensor:
    """Mean `KL(p(x_l) ‖ p(x))` over the `neighbours` nearest labeled x_l of each pool x.

    Args:
        embeddings: `[N, D]` pool embeddings; `probs` `[N, K]` their softmax.
        labeled_embeddings: `[L, D]`; `labeled_probs` `[L, K]` the model's softmax for them.
        neighbours: k (10 in the paper); capped at L.

    Returns:
        `[N]` scores: high when the model predicts differently for a sample than for the
        labeled samples that look like it.
    """
    out = torch.empty(len(embeddings), device=embeddings.device)
    # chunk by chunk: the neighbours' softmax, `[chunk, k, K]`, would be `[N, k, K]` at once
    # (a 100k pool of 8,142 classes: 32 GB)
    for first in range(0, len(embeddings), chunk_size):
        rows = slice(first, first + chunk_size)
        near = nearest_neighbours(embeddings[rows], labeled_embeddings, neighbours, chunk_size)
        out[rows] = scores.kl_divergence(labeled_probs[near], probs[rows, None, :]).mean(dim=1)
    return out


class CAL(Strategy):
    """Highest contrastive score first: samples whose predicted distribution differs most
    from that of their nearest labeled neighbours in embedding space.

    Args:
        neighbours: k nearest labeled samples (10 in the paper).
        chunk_size: pool samples per block; memory is O(chunk_size · (L + k · K)).
    """

    needs: ClassVar[frozenset[str]] = frozenset(
        {"probs", "embeddings", "labeled_probs", "labeled_embeddings"}
    )

    def __init__(self, neighbours: int = 10, chunk_size: int = 1024) -> None:
        self.neighbours = neighbours
        self.chunk_size = chunk_size

    def score(self, pool: PoolOutputs) -> Tensor:
        return contrastive_scores(
            pool["embeddings"],
            pool["probs"],
            pool["labeled_embeddings"],
            pool["labeled_probs"],
            self.neighbours,
            self.chunk_size,
        )
