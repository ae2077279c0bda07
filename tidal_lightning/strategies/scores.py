"""Uncertainty formulas shared by the snapshot and TiDAL strategies. Higher = more uncertain."""

from __future__ import annotations

import torch
from torch import Tensor


def entropy(probs: Tensor) -> Tensor:
    """Shannon entropy in nats, `[N, K] -> [N]`; 0·log 0 counts as 0."""
    return torch.special.entr(probs).sum(dim=1)


def negative_margin(probs: Tensor, reference_class: Tensor | None = None) -> Tensor:
    """Minus the margin `p[ref] - max_{k != ref} p[k]`, `[N, K] -> [N]`.

    Args:
        probs: `[N, K]` probabilities.
        reference_class: `[N]` class whose probability the margin is measured from;
            None uses each row's own argmax (the usual top-1 minus top-2 margin).
    """
    if reference_class is None:
        reference_class = probs.argmax(dim=1)
    reference = probs.gather(1, reference_class[:, None])
    others = probs.scatter(1, reference_class[:, None], float("-inf"))
    return -(reference.squeeze(1) - others.max(dim=1).values)


def least_confidence(probs: Tensor) -> Tensor:
    """`1 - max_k p[k]`, `[N, K] -> [N]`."""
    return 1.0 - probs.max(dim=1).values


def dispersion(label_counts: Tensor) -> Tensor:
    """Label dispersion `1 - f_x / T`, `[N, K] -> [N]` (Bengar et al. 2021).

    Args:
        label_counts: `[N, K]` how many recorded epochs predicted each class; every row
            sums to T, the number of recorded epochs. f_x is the row's largest count.
    """
    counts = label_counts.float()
    return 1.0 - counts.max(dim=1).values / counts.sum(dim=1)


def mutual_information(mean_probs: Tensor, mean_entropy: Tensor) -> Tensor:
    """BALD's `H[mean_t p_t] - mean_t H[p_t]`, `[N, K], [N] -> [N]` (Gal et al. 2017).

    Args:
        mean_probs: `[N, K]` softmax averaged over the MC-dropout samples.
        mean_entropy: `[N]` entropy of each sample's softmax, averaged over the samples.
    """
    # >= 0 in exact arithmetic (Jensen); clamp the float rounding of confident samples.
    return (entropy(mean_probs) - mean_entropy).clamp(min=0.0)


def kl_divergence(p: Tensor, q: Tensor, eps: float = 1e-12) -> Tensor:
    """`KL(p ‖ q) = Σ_k p_k (log p_k - log q_k)` over the last dim; 0·log 0 counts as 0.

    `q` is clamped at `eps` so a zero where `p` has mass gives a large, finite value.
    """
    return (torch.special.xlogy(p, p) - p * q.clamp(min=eps).log()).sum(dim=-1)
