"""UHerding (Bae, Oliveira & Sutherland, ICLR 2025): kernel herding of the *uncertain* part
of the pool, `max_S Σ_i u(x_i) max_{s∈S} k(x_i, s)`."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from omegaconf import DictConfig
from torch import Tensor

from tidal_lightning.strategies import scores
from tidal_lightning.strategies.base import PoolOutputs
from tidal_lightning.strategies.maxherding import MaxHerding

UNCERTAINTIES = ("margin", "entropy", "least_confidence")


def min_pairwise_distance(points: Tensor, chunk_size: int = 1024) -> float:
    """The smallest non-zero distance between two of `points` (`[L, D]`); inf if none."""
    smallest = torch.tensor(float("inf"), device=points.device)
    for start in range(0, len(points), chunk_size):
        distances = torch.cdist(points[start : start + chunk_size], points)
        positive = distances[distances > 0]
        if len(positive):
            smallest = torch.minimum(smallest, positive.min())
    return float(smallest)


def uncertainty(probs: Tensor, kind: str, temperature: float) -> Tensor:
    """`[N, K] -> [N]` uncertainty of the temperature-scaled softmax, higher = less sure.

    `softmax(log p / T)` equals the softmax of the logits divided by T (the log-sum-exp is a
    constant per row). Margin: `1 − (p₁ − p₂)`, as in the authors' `uherding_margin`;
    entropy; least confidence `1 − p₁`.
    """
    scaled = torch.softmax(probs.clamp(min=1e-12).log() / temperature, dim=1)
    if kind == "margin":
        top = scaled.topk(2, dim=1).values
        return 1.0 - (top[:, 0] - top[:, 1])
    if kind == "entropy":
        return scores.entropy(scaled)
    return 1.0 - scaled.max(dim=1).values


class UHerding(MaxHerding):
    """Uncertainty herding: MaxHerding whose coverage is weighted by the classifier's
    uncertainty, so it covers the uncertain regions (high budgets) and the data (low).

    As in the authors' code (`uherding.py`, `run_budget.sh -a uherding_margin -p true`):
    margin uncertainty of the classifier's softmax, the Gaussian kernel on L2-normalised
    features, and the adaptive bandwidth: h = the smallest non-zero distance between two
    labeled samples (with fewer than two labeled samples, `bandwidth`). The paper also
    calibrates a temperature on a held-out part of the labeled set with a second
    classifier trained on the rest; that second training is not done here: `temperature`
    is fixed (1 = the softmax as trained).

    Args:
        uncertainty: `margin`, `entropy` or `least_confidence`.
        temperature: T of the softmax the uncertainty is computed from.
        adaptive_bandwidth: h from the labeled set as above; false: `bandwidth` always.
        **kwargs: `bandwidth` (see `MaxHerding`) and `features`,
            `feature_settings`, `chunk_size` (see `CoverageStrategy`).
    """

    extra_needs: ClassVar[frozenset[str]] = frozenset({"probs"})

    def __init__(
        self,
        uncertainty: str = "margin",
        temperature: float = 1.0,
        adaptive_bandwidth: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.uncertainty = uncertainty
        self.temperature = temperature
        self.adaptive_bandwidth = adaptive_bandwidth

    def check_config(self, cfg: DictConfig) -> list[str]:
        problems = super().check_config(cfg)
        if self.uncertainty not in UNCERTAINTIES:
            problems.append(
                f"strategy.uncertainty={self.uncertainty!r}: must be one of {UNCERTAINTIES}"
            )
        if not self.temperature > 0:
            problems.append(f"strategy.temperature={self.temperature}: must be > 0")
        return problems

    def weights(self, pool: PoolOutputs, labeled_features: Tensor) -> Tensor:
        return uncertainty(pool["probs"], self.uncertainty, self.temperature)

    def kernel_bandwidth(self, labeled_features: Tensor) -> float:
        if self.adaptive_bandwidth and len(labeled_features) >= 2:
            smallest = min_pairwise_distance(labeled_features, self.chunk_size)
            if 0 < smallest < float("inf"):
                return smallest
        return float(self.bandwidth)
