"""EPIG (Bickford Smith, Kirsch, Farquhar, Gal, Foster & Rainforth, AISTATS 2023): expected
predictive information gain."""

from __future__ import annotations

from typing import ClassVar

import torch
from omegaconf import DictConfig
from torch import Tensor

from tidal_lightning.strategies.base import PoolOutputs
from tidal_lightning.strategies.batchbald import BLOCK_ELEMENTS
from tidal_lightning.strategies.mc_dropout import MCDropoutStrategy


def marginal_entropies(mc_probs: Tensor) -> Tensor:
    """`H[mean_t p(y | x, w_t)]`, `[N, T, K] -> [N]`."""
    return torch.special.entr(mc_probs.mean(dim=1)).sum(dim=1)


def epig_scores(mc_probs: Tensor, target_probs: Tensor) -> Tensor:
    """`EPIG(x) = E_{x*}[I(y; y* | x, x*)]` for every pool sample, `[N, T, K], [N*, T, K] -> [N]`.

    As the authors' `epig_from_probs_using_matmul`: `I(y; y*) = H[y] + H[y*] - H[y, y*]`
    with the joint predictive `p(y, y* | x, x*) = (1/T) Σ_t p(y | x, w_t) p(y* | x*, w_t)`
    (the same T masks for x and x*), averaged over the N* target inputs.

    Pool samples go `BLOCK_ELEMENTS // (K · N* · K)` at a time: the largest temporary is
    the `[block · K, N* · K]` joint (64 MB), whatever N is.
    """
    num_targets, samples, num_classes = target_probs.shape
    targets = target_probs.permute(1, 0, 2).reshape(samples, -1)  # [T, N*·K]
    target_entropy = marginal_entropies(target_probs).mean()
    block = max(1, BLOCK_ELEMENTS // (num_classes * num_targets * num_classes))
    joint_entropy = []
    for start in range(0, len(mc_probs), block):
        chunk = mc_probs[start : start + block]  # [b, T, K]
        pool = chunk.permute(0, 2, 1).reshape(-1, samples)  # [b·K, T]
        joint = (pool @ targets / samples).view(len(chunk), -1)  # [b, K·N*·K]
        joint_entropy.append(torch.special.entr(joint).sum(dim=1) / num_targets)
    return marginal_entropies(mc_probs) + target_entropy - torch.cat(joint_entropy)


class EPIG(MCDropoutStrategy):
    """Highest expected information gain about the predictions on target inputs first.

    BALD asks what a label tells about the weights; EPIG asks what it tells about the
    predictions on inputs like those the model will be used on. Without a known target
    distribution, the targets are a random sample of the scored pool, drawn with the
    query's generator (the authors' `n_target_samples: 100`, one batch for the whole pool).

    Memory: the `[block · K, N* · K]` joint (64 MB) besides `mc_probs` (N·T·K floats).

    Args:
        mc_samples: T (100, the authors' `n_samples_test` for MC-dropout models).
        dropout: p of the query-time masks.
        targets: N*, target inputs drawn from the pool (at most the pool's size).
    """

    needs: ClassVar[frozenset[str]] = frozenset({"mc_probs"})

    def __init__(self, mc_samples: int = 100, dropout: float = 0.5, targets: int = 100) -> None:
        super().__init__(mc_samples, dropout)
        self.targets = targets

    def check_config(self, cfg: DictConfig) -> list[str]:
        problems = super().check_config(cfg)
        if not isinstance(self.targets, int) or self.targets < 1:
            problems.append(f"strategy.targets={self.targets!r}: must be an integer >= 1")
        return problems

    def select(self, pool: PoolOutputs, budget: int, generator: torch.Generator) -> Tensor:
        mc_probs = pool["mc_probs"]
        order = torch.randperm(len(mc_probs), generator=generator, device=generator.device)
        targets = order[: self.targets].to(mc_probs.device)
        scores = epig_scores(mc_probs, mc_probs[targets])
        ranking = torch.sort(scores, descending=True, stable=True).indices
        return ranking[:budget].cpu()
