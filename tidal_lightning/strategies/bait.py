"""BAIT (Ash, Goel, Krishnamurthy & Kakade, NeurIPS 2021): Fisher-based batch selection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from omegaconf import DictConfig
from torch import Tensor

from tidal_lightning.errors import ConfigError
from tidal_lightning.strategies.base import PoolOutputs, Strategy

# Elements in the largest per-block temporary (2^24 floats: 64 MB in float32).
BLOCK_ELEMENTS = 2**24


def fisher_factor(probs: Tensor) -> Tensor:
    """`[N, K] -> [N, K, K]` A with `I(x) = (A ⊗ h)ᵀ (A ⊗ h)`, the last layer's Fisher of x.

    Row c of `A ⊗ h` is `√p_c` times the cross-entropy gradient for label c, `(e_c - p) ⊗ h`
    (the authors' `get_exp_grad_embedding`): A's row c is `√p_c (e_c - p)`.
    """
    root = probs.sqrt()
    return torch.diag_embed(root) - root[:, :, None] * probs[:, None, :]


def mean_fisher(probs: Tensor, embeddings: Tensor) -> Tensor:
    """`mean_x I(x)`, `[N, K], [N, D] -> [K·D, K·D]`, without any `[K·D, K·D]` per sample.

    Block (a, b) of `I(x)` is `(AᵀA)_ab h hᵀ`, and `AᵀA = diag(p) - p pᵀ`, so the sum is
    one `[K·K·D, n] @ [n, D]` product per block of n samples.
    """
    num_classes, dim = probs.shape[1], embeddings.shape[1]
    total = embeddings.new_zeros(num_classes, num_classes, dim, dim)
    block = max(1, BLOCK_ELEMENTS // (num_classes * num_classes * dim))
    for start in range(0, len(probs), block):
        p, h = probs[start : start + block], embeddings[start : start + block]
        gram = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]  # AᵀA, [n, K, K]
        lifted = (gram[:, :, :, None] * h[:, None, None, :]).reshape(len(p), -1)  # [n, K·K·D]
        total += (lifted.T @ h).view(num_classes, num_classes, dim, dim)
    size = num_classes * dim
    return total.permute(0, 2, 1, 3).reshape(size, size) / max(len(probs), 1)


def _inverse_from_cholesky(cholesky: Tensor, columns: int = 1024) -> Tensor:
    """`(L Lᵀ)⁻¹` from the Cholesky factor `L` `[S, S]`, `columns` identity columns at a time.

    Only the result is allocated at full size (`torch.cholesky_inverse` takes the same
    memory but, on the CPU, about ten times as long).
    """
    size = len(cholesky)
    inverse = torch.empty_like(cholesky)
    for start in range(0, size, columns):
        stop = min(start + columns, size)
        unit = cholesky.new_zeros(size, stop - start)
        unit[start:stop].fill_diagonal_(1.0)
        inverse[:, start:stop] = torch.cholesky_solve(unit, cholesky)
    return inverse


def _lift(embeddings: Tensor, matrix: Tensor) -> Tensor:
    """`(I_K ⊗ hᵀ) X` for each h: `[n, D], [K·D, m] -> [n, K, m]`.

    Row a of the result is `hᵀ X[a·D : (a+1)·D]`.
    """
    num_classes = matrix.shape[0] // embeddings.shape[1]
    dim, columns = embeddings.shape[1], matrix.shape[1]
    blocks = matrix.view(num_classes, dim, columns).permute(1, 0, 2).reshape(dim, -1)
    return (embeddings @ blocks).view(len(embeddings), num_classes, columns)


def _quadratic_forms(embeddings: Tensor, matrix: Tensor, num_classes: int) -> Tensor:
    """`H_x X H_xᵀ` for every x, `[N, D], [K·D, K·D] -> [N, K, K]`, `H_x = I_K ⊗ h_xᵀ`.

    Entry (a, b) is `h_xᵀ X[aD:(a+1)D, bD:(b+1)D] h_x`. Per block of samples, `h X` reads
    X as `[K, D, K·D]` (a view) and is dotted with h block by block: O((K·D)²) per sample,
    a `[K, block, K·D]` temporary of `BLOCK_ELEMENTS`.
    """
    dim = embeddings.shape[1]
    size = num_classes * dim
    rows = matrix.view(num_classes, dim, size)
    out = embeddings.new_empty(len(embeddings), num_classes, num_classes)
    block = max(1, BLOCK_ELEMENTS // (num_classes * size))
    for start in range(0, len(embeddings), block):
        h = embeddings[start : start + block]
        lifted = (h @ rows).view(num_classes, len(h), num_classes, dim)  # [a, x, b, e]
        out[start : start + len(h)] = torch.einsum("axbe,xe->xab", lifted, h)
    return out


@dataclass
class FisherState:
    """What BAIT's greedy keeps: two shared `[K·D, K·D]` matrices and `[K, K]` per sample.

    With `H_x = I_K ⊗ h_xᵀ` (`[K, K·D]`) and `V_x = √c A_x H_x` the scaled Fisher factor of
    a pool sample, every quantity the greedy reads is a `[K, K]` product of `H_x` with the
    shared matrices, kept per sample and updated per pick in O(K²·D):

    Attributes:
        fisher: `[K·D, K·D]` F, the mean Fisher over the pool and the labeled set.
        inverse: `[K·D, K·D]` M⁻¹, M = λI + the labeled and picked Fishers.
        inner: `[N, K, K]` `H_x M⁻¹ H_xᵀ`.
        outer: `[N, K, K]` `H_x M⁻¹ F M⁻¹ H_xᵀ`.
        factors: `[N, K, K]` `√c A_x`.
        embeddings: `[N, D]` h_x.
    """

    fisher: Tensor
    inverse: Tensor
    inner: Tensor
    outer: Tensor
    factors: Tensor
    embeddings: Tensor

    @classmethod
    def start(
        cls,
        probs: Tensor,
        embeddings: Tensor,
        labeled_probs: Tensor,
        labeled_embeddings: Tensor,
        budget: int,
        regularization: float,
    ) -> FisherState:
        """The state before any pick, weighted as the authors' `bait_sampling.select`.

        M = λI + L/(L+B) · (mean labeled Fisher), and each pick adds B/(L+B) of its own
        Fisher (its factor scaled by `√c`, c = B/(L+B)).
        """
        num_labeled = len(labeled_probs)
        fisher = mean_fisher(
            torch.cat([probs, labeled_probs]), torch.cat([embeddings, labeled_embeddings])
        )
        size = fisher.shape[0]
        if num_labeled:
            matrix = mean_fisher(labeled_probs, labeled_embeddings)
            matrix *= num_labeled / (num_labeled + budget)
        else:
            matrix = torch.zeros_like(fisher)
        matrix.diagonal().add_(regularization)
        # three [K·D, K·D] alive at most: F, M, its factor; then F, the factor, M⁻¹
        cholesky = torch.linalg.cholesky(matrix)
        del matrix
        inverse = _inverse_from_cholesky(cholesky)
        del cholesky
        # M⁻¹ F M⁻¹ by columns: F, M⁻¹ and the product are the only [K·D, K·D] alive
        sandwich = torch.empty_like(inverse)
        for first in range(0, size, 1024):
            columns = slice(first, first + 1024)
            sandwich[:, columns] = inverse @ (fisher @ inverse[:, columns])
        inner = _quadratic_forms(embeddings, inverse, probs.shape[1])
        outer = _quadratic_forms(embeddings, sandwich, probs.shape[1])
        del sandwich
        scale = (budget / (num_labeled + budget)) ** 0.5
        return cls(fisher, inverse, inner, outer, scale * fisher_factor(probs), embeddings)

    def gains(self, positions: Tensor | None, sign: float) -> Tensor:
        """How much `tr(M⁻¹ F)` falls when M gains (sign +1) or loses (sign -1) `V_x`.

        `tr(V M⁻¹ F M⁻¹ Vᵀ (sign·I + V M⁻¹ Vᵀ)⁻¹)` (Woodbury), for the samples at
        `positions` (all if None): `[n]`.
        """
        select = slice(None) if positions is None else positions
        factor, inner, outer = self.factors[select], self.inner[select], self.outer[select]
        eye = torch.eye(factor.shape[1], dtype=factor.dtype, device=factor.device)
        capacitance = sign * eye + factor @ inner @ factor.transpose(1, 2)
        gain = torch.linalg.solve(capacitance, factor @ outer @ factor.transpose(1, 2))
        return gain.diagonal(dim1=1, dim2=2).sum(dim=1)

    def update(self, position: Tensor, sign: float, rows: Tensor | None) -> None:
        """Adds (sign +1) or removes (sign -1) the Fisher of the sample at `position`.

        Woodbury: `M'⁻¹ = M⁻¹ - U C Uᵀ` with `U = M⁻¹ Vᵀ` and `C = (sign·I + V M⁻¹ Vᵀ)⁻¹`;
        the per-sample products follow with `a_x = H_x U`, `g_x = H_x M⁻¹ F U`:
        inner -= a C aᵀ, outer -= a C gᵀ + g C aᵀ - a C (Uᵀ F U) C aᵀ. Only `rows` (all if
        None) are updated: the pruning phase reads the picks' rows alone.
        """
        factor = self.factors[position]  # [K, K]
        num_classes, dim = factor.shape[0], self.embeddings.shape[1]
        # H M⁻¹ [K, K·D]: row a is hᵀ times rows a·D..(a+1)·D of M⁻¹ (a view: no copy)
        lifted = self.embeddings[position] @ self.inverse.view(num_classes, dim, -1)
        u = (factor @ lifted).T  # M⁻¹ Vᵀ: [K·D, K]
        eye = torch.eye(len(factor), dtype=factor.dtype, device=factor.device)
        core = torch.linalg.inv(sign * eye + factor @ self.inner[position] @ factor.T)
        fisher_u = self.fisher @ u
        g = self.inverse @ fisher_u  # M⁻¹ F U
        middle = core @ (u.T @ fisher_u) @ core  # C Uᵀ F U C
        select = slice(None) if rows is None else rows
        h_rows = self.embeddings[select]
        a = _lift(h_rows, u)  # [n, K, K]
        b = _lift(h_rows, g)
        a_core = a @ core
        self.inner[select] -= a_core @ a.transpose(1, 2)
        self.outer[select] -= (
            a_core @ b.transpose(1, 2) + b @ a_core.transpose(1, 2) - a @ middle @ a.transpose(1, 2)
        )
        self.inverse.addmm_(u @ core, u.T, alpha=-1.0)  # no [K·D, K·D] temporary


def bait_select(
    probs: Tensor,
    embeddings: Tensor,
    labeled_probs: Tensor,
    labeled_embeddings: Tensor,
    budget: int,
    regularization: float = 1.0,
    oversample: int = 2,
) -> Tensor:
    """The paper's Algorithm 1: greedily add `oversample · budget` samples, then remove the
    surplus one at a time, each step the best for `tr((M + Σ_S I(x))⁻¹ F)`.

    Args:
        probs: `[N, K]` softmax of the pool; `embeddings` `[N, D]` its penultimate features.
        labeled_probs, labeled_embeddings: the same for the labeled set (`[L, K]`, `[L, D]`).
        budget: B (<= N).
        regularization: λ (the authors' 1, 0.01 for CIFAR).
        oversample: forward picks per final pick (2 in the paper).

    Returns:
        `[budget]` positions, in the order they were added. Ties go to the lowest position.

    Memory: at most three `[K·D, K·D]` matrices at once (F and, at the start, two of M, its
    Cholesky factor, M⁻¹ and M⁻¹FM⁻¹; then F and M⁻¹), `[K, K]` products per pool sample,
    and `BLOCK_ELEMENTS`-sized blocks; never a `[K·D, K·D]` per sample.

    Cost: O(N·(K·D)²) at the start, then O(N·K²·D + (K·D)²·K) per forward pick and
    O(B·K²·D + (K·D)²·K) per pruning step.
    """
    state = FisherState.start(
        probs, embeddings, labeled_probs, labeled_embeddings, budget, regularization
    )
    forward = min(oversample * budget, len(probs))
    picked = torch.empty(forward, dtype=torch.long, device=probs.device)
    taken = torch.zeros(len(probs), dtype=torch.bool, device=probs.device)
    for step in range(forward):
        # the first maximum: the lowest position among ties
        choice = state.gains(None, 1.0).masked_fill(taken, float("-inf")).argmax()
        picked[step] = choice
        taken[choice] = True
        state.update(choice, 1.0, None)
    for _ in range(forward - budget):
        gains = state.gains(picked, -1.0)
        # removing the sample with the largest gain leaves the smallest trace
        drop = gains.argmax()
        state.update(picked[drop], -1.0, picked)
        picked = torch.cat([picked[:drop], picked[drop + 1 :]])
    return picked


class BAIT(Strategy):
    """The batch that most shrinks `tr(M⁻¹ F)`: a bound on the last layer's MLE error on the
    pool, with M the Fisher of the labeled set and the batch, F the Fisher of all samples.

    Fisher embeddings come from the softmax and the penultimate embedding (as BADGE's
    gradients); the greedy keeps `[K, K]` per pool sample and two `[K·D, K·D]` matrices
    (see `FisherState`): 105 MB each for ResNet-18 on CIFAR-10 (K·D = 5120, float32),
    10 GB each for CIFAR-100.

    Args:
        regularization: λ in M = λI + ...; 1 (the authors' `run.py`; 0.01 there for CIFAR).
        oversample: forward picks per final pick before the backward pruning (2).
        max_matrix_gb: refuse, with a message, when the `[K·D, K·D]` matrices need more.
    """

    needs: ClassVar[frozenset[str]] = frozenset(
        {"probs", "embeddings", "labeled_probs", "labeled_embeddings"}
    )

    def __init__(
        self, regularization: float = 1.0, oversample: int = 2, max_matrix_gb: float = 4.0
    ) -> None:
        self.regularization = regularization
        self.oversample = oversample
        self.max_matrix_gb = max_matrix_gb

    def check_config(self, cfg: DictConfig) -> list[str]:
        problems = super().check_config(cfg)
        if isinstance(self.regularization, bool) or not (
            isinstance(self.regularization, int | float) and self.regularization > 0
        ):
            problems.append(
                f"strategy.regularization={self.regularization!r}: λ must be > 0 "
                "(M = λI + Fisher must be invertible)"
            )
        if not isinstance(self.oversample, int) or self.oversample < 1:
            problems.append(f"strategy.oversample={self.oversample!r}: must be an integer >= 1")
        return problems

    def select(self, pool: PoolOutputs, budget: int, generator: torch.Generator) -> Tensor:
        probs, embeddings = pool["probs"], pool["embeddings"]
        size = probs.shape[1] * embeddings.shape[1]
        needed = 3 * size**2 * probs.element_size() / 2**30
        if needed > self.max_matrix_gb:
            raise ConfigError(
                f"BAIT needs three [K·D, K·D] = [{size}, {size}] matrices ({needed:.1f} GB) > "
                f"strategy.max_matrix_gb={self.max_matrix_gb}: raise it if the device has "
                "the memory, or use a strategy without a full Fisher (badge)"
            )
        picked = bait_select(
            probs,
            embeddings,
            pool["labeled_probs"],
            pool["labeled_embeddings"],
            budget,
            float(self.regularization),
            self.oversample,
        )
        return picked.cpu()
