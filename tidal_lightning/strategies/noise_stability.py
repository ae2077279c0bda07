"""NoiseStability (Li, Yang, Gu, Zhan, Wang, Xu & Xu, AAAI 2024): how much the outputs move
under small Gaussian noise on the weights."""

from __future__ import annotations

import copy
from typing import ClassVar

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from tidal_lightning.models.backbones import Backbone
from tidal_lightning.strategies.base import PoolOutputs, QueryContext, Strategy
from tidal_lightning.strategies.geometry import kcenter_greedy


def perturb_weights_(
    module: nn.Module, clean: dict[str, Tensor], scale: float, generator: torch.Generator
) -> None:
    """Sets every submodule's `weight` to its clean value plus Gaussian noise of norm
    `scale · ‖weight‖`, in `named_modules` order (the authors' `add_noise_to_weights`:
    convolutions, BatchNorm scales and linear layers; biases stay clean).

    Args:
        clean: the clean weights by module name (`clean_weights(module)`).
        generator: on the weights' device.
    """
    with torch.no_grad():
        for name, weight in _weights(module):
            reference = clean[name]
            noise = torch.randn(
                reference.shape, generator=generator, device=reference.device, dtype=reference.dtype
            )
            noise *= scale * reference.norm() / noise.norm()
            weight.copy_(reference + noise)


def clean_weights(module: nn.Module) -> dict[str, Tensor]:
    """Copies of the weights `perturb_weights_` perturbs, by module name."""
    return {name: weight.detach().clone() for name, weight in _weights(module)}


def _weights(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [
        (name, sub.weight)
        for name, sub in module.named_modules()
        if isinstance(getattr(sub, "weight", None), nn.Parameter)
    ]


def relative_changes(noisy_probs: Tensor, clean_probs: Tensor) -> Tensor:
    """`(p_noisy - p_clean) / ‖p_clean‖`, row-wise, `[N, K]` (the authors' `diff_k`)."""
    return (noisy_probs - clean_probs) / clean_probs.norm(dim=1, keepdim=True)


@torch.no_grad()
def pool_probs(model: Backbone, context: QueryContext, batch_size: int) -> Tensor:
    """Softmax `[N, K]` of `model` (a backbone) over the pool, in batches, in eval mode."""
    datamodule, device = context.datamodule, context.device
    out = []
    for start in range(0, len(context.pool_indices), batch_size):
        batch = context.pool_indices[start : start + batch_size]
        embedding, _ = model.embed(datamodule.normalize(datamodule.gather(batch, device)))
        out.append(model.linear(embedding).float().softmax(dim=1))
    return torch.cat(out)


class NoiseStability(Strategy):
    """The pool samples whose softmax moves most, and most differently, under weight noise.

    A copy of the trained backbone gets `noise_draws` independent draws of Gaussian noise on
    every weight (norm `noise_scale` times the weight's norm, the authors' relative scale)
    and predicts the pool each time; each sample's feature is the concatenation of its
    softmax changes, each divided by the norm of its clean softmax. The batch is the
    authors' k-center greedy on these features from the origin: the largest change first,
    then the sample farthest from the picks so far (`geometry.kcenter_greedy`).

    It runs its own inference (`context.datamodule.gather`, batches of
    `eval_batch_size`, eval mode, `context.device`) on a copy: the trained weights are
    untouched. Under DDP every rank runs the same draws on the whole pool (the noise comes
    from `context.generator`, the same on every rank); the loop keeps rank 0's picks.

    Memory: the `[N, noise_draws · K]` features (120 MB for 100k × 30 × 10), one copy of
    the backbone and its clean weights.

    Args:
        noise_draws: noisy copies (30, the authors' README commands `-k 30`).
        noise_scale: noise norm relative to each weight's norm (0.001, their configs).
    """

    needs: ClassVar[frozenset[str]] = frozenset({"probs"})

    def __init__(self, noise_draws: int = 30, noise_scale: float = 0.001) -> None:
        self.noise_draws = noise_draws
        self.noise_scale = noise_scale

    def check_config(self, cfg: DictConfig) -> list[str]:
        problems = super().check_config(cfg)
        if not isinstance(self.noise_draws, int) or self.noise_draws < 1:
            problems.append(f"strategy.noise_draws={self.noise_draws!r}: must be an integer >= 1")
        if isinstance(self.noise_scale, bool) or not (
            isinstance(self.noise_scale, int | float) and self.noise_scale > 0
        ):
            problems.append(f"strategy.noise_scale={self.noise_scale!r}: must be > 0")
        return problems

    def features(self, pool: PoolOutputs) -> Tensor:
        """`[N, noise_draws · K]` relative softmax changes, draw after draw."""
        context = pool.context
        if context is None:
            raise RuntimeError("NoiseStability runs the model: it needs pool.context")
        clean = pool["probs"]
        noisy_model = copy.deepcopy(context.system.backbone).to(context.device).eval()
        weights = clean_weights(noisy_model)
        generator = context.generator("noise_stability")
        batch_size = context.datamodule.eval_batch_size
        num_classes = clean.shape[1]
        features = clean.new_empty(len(clean), self.noise_draws * num_classes)
        for draw in range(self.noise_draws):
            perturb_weights_(noisy_model, weights, float(self.noise_scale), generator)
            noisy = pool_probs(noisy_model, context, batch_size)
            features[:, draw * num_classes : (draw + 1) * num_classes] = relative_changes(
                noisy, clean
            )
        return features

    def select(self, pool: PoolOutputs, budget: int, generator: torch.Generator) -> Tensor:
        features = self.features(pool)
        origin = features.new_zeros(1, features.shape[1])
        return kcenter_greedy(features, origin, budget).cpu()
