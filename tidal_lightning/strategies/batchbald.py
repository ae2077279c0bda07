"""BatchBALD (Kirsch, van Amersfoort & Gal, NeurIPS 2019): greedy joint mutual information."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from omegaconf import DictConfig
from torch import Tensor

from tidal_lightning.strategies.base import PoolOutputs
from tidal_lightning.strategies.mc_dropout import MCDropoutStrategy

# Elements in the largest temporary of a block (2^24 floats: 64 MB in float32).
BLOCK_ELEMENTS = 2**24


def conditional_entropies(mc_probs: Tensor) -> Tensor:
    """`E_t H[p(y | x, w_t)]`, `[N, T, K] -> [N]`."""
    return torch.special.entr(mc_probs).sum(dim=2).mean(dim=1)


def safe_log(probs: Tensor) -> Tensor:
    """`log p`, with exact zeros (float underflow of the softmax) at the smallest normal float."""
    return probs.clamp(min=torch.finfo(probs.dtype).tiny).log()


@dataclass
class JointConfigurations:
    """Configurations ŷ of the picked samples' labels and their likelihood under each model.

    Exact (all K^n configurations) while K^n <= M, as in the authors' code; then M
    configurations drawn from the model's joint, for the importance-sampling estimate of
    the paper's Section 3.3.

    Attributes:
        log_likelihoods: `[M, T]` `log P(ŷ^m | w_t)`: the sum over the picked samples of
            the log-softmax of their label in configuration m under mask t.
        models: `[M]` int64 mask `t` each sampled configuration was drawn under; None
            while the configurations are enumerated exactly.
    """

    log_likelihoods: Tensor
    models: Tensor | None = None

    def joint_entropies(self, mc_probs: Tensor) -> Tensor:
        """`H[y_picked, y_x]` for every candidate x, `[N, T, K] -> [N]`.

        With `p_mc = (1/T) Σ_t P(ŷ^m | w_t) p(c | x, w_t)` and `q_m = Σ_c p_mc`:
        exact, `H = Σ_m Σ_c -p_mc log p_mc`; sampled, `H ≈ (1/M) Σ_m Σ_c (p_mc / q_m)
        (-log p_mc)`. Each row of likelihoods is scaled by `e^{-s_m}`, `s_m = max_t log P`,
        so products of many probabilities do not underflow; the scale comes back as a
        per-configuration weight and a constant. Candidates go `BLOCK_ELEMENTS // (M · K)`
        at a time: the largest temporary is `[M, block · K]`.
        """
        configurations, samples = self.log_likelihoods.shape
        num_classes = mc_probs.shape[2]
        shift = self.log_likelihoods.max(dim=1).values  # s_m
        likelihoods = (self.log_likelihoods - shift[:, None]).exp() / samples  # [M, T]
        marginal = likelihoods.sum(dim=1)  # q̃_m = q_m e^{-s_m}
        if self.models is None:
            # Σ_c -p_mc log p_mc = e^{s_m} (Σ_c -p̃_mc log p̃_mc - s_m q̃_m)
            weights = shift.exp()
            offset = -(weights * shift * marginal).sum()
        else:
            # (1/M) Σ_c (p_mc/q_m)(-log p_mc) = (Σ_c -p̃_mc log p̃_mc) / (M q̃_m) - s_m / M
            weights = 1.0 / (configurations * marginal)
            offset = -shift.mean()
        block = max(1, BLOCK_ELEMENTS // (configurations * num_classes))
        out = []
        for start in range(0, len(mc_probs), block):
            chunk = mc_probs[start : start + block]  # [b, T, K]
            joint = likelihoods @ chunk.permute(1, 0, 2).reshape(samples, -1)  # [M, b·K]
            terms = weights @ torch.special.entr(joint)  # [b·K]
            out.append(terms.view(len(chunk), num_classes).sum(dim=1))
        return torch.cat(out) + offset


def _label_log_likelihoods(probs: Tensor, models: Tensor, generator: torch.Generator) -> Tensor:
    """One label per configuration, drawn under its mask: `[T, K], [M] -> [M, T]` log-probs.

    Configuration m's label y_m ~ p(y | w_{models[m]}); row m holds `log p(y_m | w_t)` for
    every t.
    """
    # inverse CDF: a quarter of torch.multinomial's time on M rows
    uniform = torch.rand(len(models), 1, generator=generator, device=probs.device)
    cumulative = probs.cumsum(dim=1)[models]  # [M, K]
    labels = torch.searchsorted(cumulative, uniform, right=True).squeeze(1)
    labels = labels.clamp(max=probs.shape[1] - 1)  # u above a cumulative sum rounded below 1
    return safe_log(probs).T[labels]


def extend(
    joint: JointConfigurations,
    picked_probs: list[Tensor],
    max_configurations: int,
    generator: torch.Generator,
) -> JointConfigurations:
    """`joint` extended by the latest pick, whose `[T, K]` softmax is `picked_probs[-1]`.

    Exact while K^n <= `max_configurations` (n picks, the latest included), as in the
    authors' `DynamicJointEntropy`; past that, `max_configurations // T` configurations
    per mask w_t, every picked label drawn afresh under w_t at the switch and one more
    label drawn per later pick. The authors redraw all n labels at every step; extending
    draws from the same joint at O(M·T) per pick instead of O(n·M·T).
    """
    latest = picked_probs[-1]
    samples, num_classes = latest.shape
    if num_classes ** len(picked_probs) <= max_configurations:
        # configuration m followed by label c is row m·K + c
        extended = joint.log_likelihoods[:, None, :] + safe_log(latest).T[None, :, :]
        return JointConfigurations(extended.reshape(-1, samples))
    if joint.models is None:
        per_model = max(1, max_configurations // samples)
        models = torch.arange(samples, device=latest.device).repeat_interleave(per_model)
        log_likelihoods = latest.new_zeros(len(models), samples)
        for probs in picked_probs:
            log_likelihoods += _label_log_likelihoods(probs, models, generator)
        return JointConfigurations(log_likelihoods, models)
    drawn = _label_log_likelihoods(latest, joint.models, generator)
    return JointConfigurations(joint.log_likelihoods + drawn, joint.models)


def batchbald_greedy(
    mc_probs: Tensor, budget: int, max_configurations: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """The paper's Algorithm 1: add, one at a time, the sample that most raises the joint MI.

    `I(y_1..y_n; w) = H[y_1..y_n] - Σ_i E_t H[y_i | w_t]`; at each step every candidate's
    joint entropy with the picks so far is computed (exactly, or from sampled
    configurations), and the largest joint MI wins; ties go to the lowest position.

    Args:
        mc_probs: `[N, T, K]` softmax under T masks shared by every sample.
        budget: picks (<= N).
        max_configurations: M, the most configurations enumerated or sampled.
        generator: for the sampled configurations, on `mc_probs.device`.

    Returns:
        `[budget]` positions in pick order, and `[budget]` the joint MI of the first
        1, 2, ..., budget picks (nats).

    Memory: `mc_probs`, `[M, T]` configurations and one `[M, block · K]` block.
    """
    samples = mc_probs.shape[1]
    conditional = conditional_entropies(mc_probs)
    joint = JointConfigurations(mc_probs.new_zeros(1, samples))
    picked = torch.empty(budget, dtype=torch.long, device=mc_probs.device)
    values = mc_probs.new_empty(budget)
    taken = torch.zeros(len(mc_probs), dtype=torch.bool, device=mc_probs.device)
    taken_entropy = mc_probs.new_zeros(())
    picked_probs: list[Tensor] = []
    for step in range(budget):
        gains = joint.joint_entropies(mc_probs) - conditional - taken_entropy
        gains = gains.masked_fill(taken, float("-inf"))
        choice = gains.argmax()  # the first maximum: the lowest position among ties
        picked[step], values[step] = choice, gains[choice]
        taken[choice] = True
        taken_entropy = taken_entropy + conditional[choice]
        if step + 1 < budget:
            picked_probs.append(mc_probs[choice])
            joint = extend(joint, picked_probs, max_configurations, generator)
    return picked, values


class BatchBALD(MCDropoutStrategy):
    """The batch with the largest joint mutual information with the weights, built greedily.

    BALD scores samples one by one, so a batch of near-duplicates all score high; BatchBALD
    scores the batch jointly, and a sample that tells nothing the picks so far do not adds
    nothing. The first pick is BALD's top sample (same masks for the same seed).

    Cost: per pick, O(N · M · T · K) for the joint entropies (M <= K^n while exact) and
    memory `[M, block · K]`; `mc_probs` holds N·T·K floats.

    Args:
        mc_samples: T (10: BALD's default, so both read the same masks; the paper's
            EMNIST and Repeated-MNIST runs used 10).
        dropout: p of the query-time masks.
        max_configurations: M, joint configurations enumerated exactly or sampled
            (40 000 // T per mask, as the authors' `multi_bald.py`).
    """

    needs: ClassVar[frozenset[str]] = frozenset({"mc_probs"})

    def __init__(
        self, mc_samples: int = 10, dropout: float = 0.5, max_configurations: int = 40_000
    ) -> None:
        super().__init__(mc_samples, dropout)
        self.max_configurations = max_configurations

    def check_config(self, cfg: DictConfig) -> list[str]:
        problems = super().check_config(cfg)
        if (
            not isinstance(self.max_configurations, int)
            or self.max_configurations < self.mc_samples
        ):
            problems.append(
                f"strategy.max_configurations={self.max_configurations!r}: must be an integer "
                f">= strategy.mc_samples={self.mc_samples} (at least one configuration per mask)"
            )
        return problems

    def select(self, pool: PoolOutputs, budget: int, generator: torch.Generator) -> Tensor:
        picked, _ = batchbald_greedy(pool["mc_probs"], budget, self.max_configurations, generator)
        return picked.cpu()
