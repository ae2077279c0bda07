"""VAAL (Sinha, Ebrahimi & Darrell, ICCV 2019): variational adversarial active learning.

VAAL trains a β-VAE and a discriminator adversarially on the labeled set and the unlabeled
pool subset: the VAE reconstructs both and tries to make the discriminator call every latent
"labeled"; the discriminator learns to tell them apart. The unlabeled samples the
discriminator is least sure are labeled (lowest p(labeled)) are queried.

Both are trained here at query time, after the cycle's classifier, from fresh weights each
cycle, as TA-VAAL's code (`train_vaal`) does and the TiDAL authors' config (`EPOCHV = 100`,
VAAL's epochs) implies; the TiDAL repository itself ships no VAAL code. VAAL's own code trains
them inside the task model's loop instead; nothing in VAAL's selection depends on the task
model, so the picks are those of a VAE and discriminator trained for the same number of
iterations. Defaults follow VAAL's code (sinhasam/vaal): Adam at 5e-4 for both, batch 128,
z of 32, β = 1, adversary weight 1, 2 VAE steps and 1 discriminator step per iteration, the
KL term summed over the batch, and `epochs · (labeled + unlabeled) / batch` iterations with
100 epochs (VAAL: 50 000 images × 100 / 128; TA-VAAL: (labeled + subset) × EPOCHV / 128).

TA-VAAL (`strategies/ta_vaal.py`) subclasses this and conditions both networks on Learning
Loss's predicted loss through `conditions`.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterator
from typing import ClassVar

import torch
from omegaconf import DictConfig
from torch import Tensor

from tidal_lightning.models.vaal import (
    VAE,
    Discriminator,
    adversarial_loss,
    discriminator_loss,
    vae_loss,
)
from tidal_lightning.seeding import derive_seed
from tidal_lightning.strategies.base import PoolOutputs, QueryContext, Strategy

log = logging.getLogger(__name__)

KL_REDUCTIONS = ("sum", "mean")
# (labeled, pool) conditions, each `[n, c]` or None: what the decoder and the discriminator see
# next to z / μ.
Conditions = tuple[Tensor | None, Tensor | None]


def index_batches(count: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Endless `[batch]` positions into `range(count)`: a fresh permutation per pass.

    Batches hold `batch_size` positions; the short last batch of a pass is dropped (the
    authors' labeled loader uses `drop_last=True`), unless the set is smaller than one batch,
    which then is the batch.
    """
    per_pass = max(count // batch_size, 1)
    size = min(batch_size, count)
    while True:
        order = torch.randperm(count, generator=generator)
        for start in range(0, per_pass * size, size):
            yield order[start : start + size]


class VAAL(Strategy):
    """Lowest discriminator p(labeled) first: score = −logit of the discriminator.

    Args:
        iterations: training iterations; None: `epochs · (L + N) // batch_size`.
        epochs: passes over labeled + pool subset that set `iterations` when it is None.
        batch_size: labeled and unlabeled samples per step (each).
        latent_dim: size of z.
        width: channels of the VAE's first convolution (doubled per layer).
        beta: weight of the KL term.
        adversary_weight: weight of the VAE's adversarial term (λ₂ in the paper).
        vae_steps: VAE updates per iteration, each on a fresh pair of batches but the first.
        adversary_steps: discriminator updates per iteration; the first reuses the last
            VAE step's batches (as the authors' loop does).
        kl_reduction: `sum` (VAAL) or `mean` (TA-VAAL) of the KL terms.
        learning_rate: Adam's, for both networks.

    Memory: the two networks, their Adam states and one pair of batches; the pool is scored
    in `datamodule.eval_batch_size` chunks, images read with `datamodule.gather`.
    """

    needs: ClassVar[frozenset[str]] = frozenset()
    single_device: ClassVar[bool] = True
    condition_dim: ClassVar[int] = 0

    def __init__(
        self,
        iterations: int | None = None,
        epochs: int = 100,
        batch_size: int = 128,
        latent_dim: int = 32,
        width: int = 128,
        beta: float = 1.0,
        adversary_weight: float = 1.0,
        vae_steps: int = 2,
        adversary_steps: int = 1,
        kl_reduction: str = "sum",
        learning_rate: float = 5e-4,
    ) -> None:
        self.iterations = iterations
        self.epochs = epochs
        self.batch_size = batch_size
        self.latent_dim = latent_dim
        self.width = width
        self.beta = beta
        self.adversary_weight = adversary_weight
        self.vae_steps = vae_steps
        self.adversary_steps = adversary_steps
        self.kl_reduction = kl_reduction
        self.learning_rate = learning_rate
        # The last query's (outputs, scores): the file oracle's export asks for the scores
        # of the same query again, which must not train the networks a second time. A weak
        # reference, so the outputs (and the cycle's model in their context) are not kept.
        self._scored: tuple[weakref.ref[PoolOutputs], Tensor] | None = None

    def check_config(self, cfg: DictConfig) -> list[str]:
        problems = super().check_config(cfg)
        if self.iterations is not None and not (
            isinstance(self.iterations, int) and self.iterations >= 1
        ):
            problems.append(
                f"strategy.iterations={self.iterations!r}: must be an integer >= 1, or null "
                "(epochs · (labeled + pool subset) / batch_size)"
            )
        for key in ("epochs", "batch_size", "latent_dim", "width", "vae_steps"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                problems.append(f"strategy.{key}={value!r}: must be an integer >= 1")
        if not isinstance(self.adversary_steps, int) or self.adversary_steps < 0:
            problems.append(
                f"strategy.adversary_steps={self.adversary_steps!r}: must be an integer >= 0"
            )
        for key in ("beta", "adversary_weight"):
            if getattr(self, key) < 0:
                problems.append(f"strategy.{key}={getattr(self, key)}: must be >= 0")
        if not self.learning_rate > 0:
            problems.append(f"strategy.learning_rate={self.learning_rate}: must be > 0")
        if self.kl_reduction not in KL_REDUCTIONS:
            problems.append(
                f"strategy.kl_reduction={self.kl_reduction!r}: must be one of {KL_REDUCTIONS}"
            )
        return problems

    def num_iterations(self, num_labeled: int, num_pool: int) -> int:
        """`iterations`, or `epochs · (L + N) // batch_size` (at least 1) when it is None."""
        if self.iterations is not None:
            return self.iterations
        return max(self.epochs * (num_labeled + num_pool) // self.batch_size, 1)

    def conditions(self, pool: PoolOutputs) -> tuple[Conditions, Conditions]:
        """What the decoder and the discriminator see next to z / μ: (labeled, pool) each.

        VAAL: nothing.
        """
        return (None, None), (None, None)

    def score(self, pool: PoolOutputs) -> Tensor:
        if self._scored is not None and self._scored[0]() is pool:
            return self._scored[1]
        if pool.context is None:
            raise ValueError(f"{type(self).__name__} trains on the images: it needs pool.context")
        decoder_conditions, discriminator_conditions = self.conditions(pool)
        vae, discriminator = self.train_networks(
            pool.context, decoder_conditions, discriminator_conditions, pool.diagnostics
        )
        logits = self.pool_logits(vae, discriminator, pool.context, discriminator_conditions[1])
        scores = -logits
        self._scored = (weakref.ref(pool), scores)
        return scores

    def build_networks(self, context: QueryContext) -> tuple[VAE, Discriminator]:
        """Fresh networks on `context.device`, initialised from (seed, cycle, "vaal_init")."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(context.seed, context.cycle, "vaal_init"))
            vae = VAE(
                context.datamodule.image_shape, self.latent_dim, self.width, self.condition_dim
            )
            discriminator = Discriminator(self.latent_dim, self.condition_dim)
        return vae.to(context.device), discriminator.to(context.device)

    def train_networks(
        self,
        context: QueryContext,
        decoder_conditions: Conditions,
        discriminator_conditions: Conditions,
        diagnostics: dict[str, float | int] | None = None,
    ) -> tuple[VAE, Discriminator]:
        """Trains a fresh VAE and discriminator on the labeled set and the pool subset.

        Batch orders come from the (seed, cycle) streams `vaal_labeled_batches` and
        `vaal_pool_batches`, the VAE's noise from `vaal_noise`. Images are read with
        `context.datamodule.gather` and normalised as the classifier sees them (no
        augmentation, as in the authors' code).

        Args:
            decoder_conditions, discriminator_conditions: (labeled `[L, c]`, pool `[N, c]`)
                per-sample conditions, or None (VAAL).
            diagnostics: filled with `vaal_iterations` and the last step's `vaal_vae_loss`
                and `vaal_discriminator_loss`.
        """
        data, device = context.datamodule, context.device
        labeled, unlabeled = context.labeled_indices.cpu(), context.pool_indices.cpu()
        vae, discriminator = self.build_networks(context)
        vae.train()
        discriminator.train()
        vae_optimizer = torch.optim.Adam(vae.parameters(), lr=self.learning_rate)
        discriminator_optimizer = torch.optim.Adam(
            discriminator.parameters(), lr=self.learning_rate
        )
        labeled_batches = index_batches(
            len(labeled), self.batch_size, context.generator("vaal_labeled_batches", "cpu")
        )
        pool_batches = index_batches(
            len(unlabeled), self.batch_size, context.generator("vaal_pool_batches", "cpu")
        )
        noise = context.generator("vaal_noise")

        def images(indices: Tensor) -> Tensor:
            return data.normalize(data.gather(indices, device))

        def pick(conditions: Conditions, positions: tuple[Tensor, Tensor]) -> Conditions:
            return (
                None if conditions[0] is None else conditions[0][positions[0].to(device)],
                None if conditions[1] is None else conditions[1][positions[1].to(device)],
            )

        iterations = self.num_iterations(len(labeled), len(unlabeled))
        total_vae = total_discriminator = torch.zeros((), device=device)
        for _ in range(iterations):
            positions = (next(labeled_batches), next(pool_batches))
            for step in range(self.vae_steps):
                if step:
                    positions = (next(labeled_batches), next(pool_batches))
                x_l, x_u = images(labeled[positions[0]]), images(unlabeled[positions[1]])
                c_l, c_u = pick(decoder_conditions, positions)
                d_l, d_u = pick(discriminator_conditions, positions)
                recon_l, mu_l, logvar_l = vae(x_l, noise, c_l)
                recon_u, mu_u, logvar_u = vae(x_u, noise, c_u)
                # The adversarial term updates the VAE only: the discriminator is frozen here.
                discriminator.requires_grad_(False)
                total_vae = (
                    vae_loss(x_l, recon_l, mu_l, logvar_l, self.beta, self.kl_reduction)
                    + vae_loss(x_u, recon_u, mu_u, logvar_u, self.beta, self.kl_reduction)
                    + self.adversary_weight
                    * adversarial_loss(discriminator(mu_l, d_l), discriminator(mu_u, d_u))
                )
                discriminator.requires_grad_(True)
                vae_optimizer.zero_grad(set_to_none=True)
                total_vae.backward()
                vae_optimizer.step()
            for step in range(self.adversary_steps):
                if step:
                    positions = (next(labeled_batches), next(pool_batches))
                    x_l, x_u = images(labeled[positions[0]]), images(unlabeled[positions[1]])
                d_l, d_u = pick(discriminator_conditions, positions)
                with torch.no_grad():
                    mu_l, mu_u = vae.encode(x_l)[0], vae.encode(x_u)[0]
                total_discriminator = discriminator_loss(
                    discriminator(mu_l, d_l), discriminator(mu_u, d_u)
                )
                discriminator_optimizer.zero_grad(set_to_none=True)
                total_discriminator.backward()
                discriminator_optimizer.step()
        if diagnostics is not None:
            # one host read, after training
            diagnostics.update(
                vaal_iterations=iterations,
                vaal_vae_loss=round(float(total_vae.detach()), 6),
                vaal_discriminator_loss=round(float(total_discriminator.detach()), 6),
            )
        log.info(
            "%s: trained the VAE and discriminator for %d iterations on %d labeled + %d pool "
            "samples",
            type(self).__name__,
            iterations,
            len(labeled),
            len(unlabeled),
        )
        return vae, discriminator

    @torch.inference_mode()
    def pool_logits(
        self,
        vae: VAE,
        discriminator: Discriminator,
        context: QueryContext,
        pool_condition: Tensor | None = None,
    ) -> Tensor:
        """The discriminator's logit of p(labeled) for every pool sample, `[N]` on the device.

        Eval mode (BatchNorm running statistics), μ rather than a sampled z, in chunks of
        `eval_batch_size`: the scores do not depend on how the pool is batched.
        """
        data, device = context.datamodule, context.device
        vae.eval()
        discriminator.eval()
        pool = context.pool_indices.cpu()
        logits = []
        for start in range(0, len(pool), data.eval_batch_size):
            chunk = pool[start : start + data.eval_batch_size]
            mu = vae.encode(data.normalize(data.gather(chunk, device)))[0]
            condition = None
            if pool_condition is not None:
                condition = pool_condition[start : start + data.eval_batch_size]
            logits.append(discriminator(mu, condition))
        return torch.cat(logits) if logits else torch.empty(0, device=device)
