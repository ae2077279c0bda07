"""VAAL and TA-VAAL: losses by hand, the selection direction, seeding, reading images via gather."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from tidal_lightning.models.loss_prediction import pairwise_bce_ranking_loss
from tidal_lightning.models.vaal import (
    VAE,
    Discriminator,
    adversarial_loss,
    discriminator_loss,
    vae_loss,
)
from tidal_lightning.strategies.base import PoolOutputs, QueryContext
from tidal_lightning.strategies.ta_vaal import TAVAAL
from tidal_lightning.strategies.vaal import VAAL, index_batches


class GatherOnly:
    """A datamodule that hands out images only through `gather` (and records what it gave)."""

    def __init__(self, images: Tensor, eval_batch_size: int = 5) -> None:
        self._images = images
        self.eval_batch_size = eval_batch_size
        self.gathered: list[Tensor] = []

    @property
    def image_shape(self) -> tuple[int, int, int]:
        channels, height, width = self._images.shape[1:]
        return int(channels), int(height), int(width)

    @property
    def train_images(self) -> Tensor:
        raise AssertionError("a strategy read datamodule.train_images")

    def gather(self, indices: Tensor, device: torch.device | str) -> Tensor:
        self.gathered.append(indices.clone())
        return self._images[indices].to(device)

    def normalize(self, images: Tensor) -> Tensor:
        return images.float() / 255


def context(data: GatherOnly, labeled: list[int], pool: list[int], seed: int = 0) -> QueryContext:
    return QueryContext(
        system=None,  # type: ignore[arg-type]
        datamodule=data,  # type: ignore[arg-type]
        device=torch.device("cpu"),
        seed=seed,
        cycle=1,
        labeled_indices=torch.tensor(labeled),
        pool_indices=torch.tensor(pool),
    )


def tiny(**overrides: object) -> dict[str, object]:
    return {"iterations": 3, "batch_size": 4, "latent_dim": 3, "width": 2, **overrides}


def random_images(count: int, seed: int = 0, shape: tuple[int, ...] = (1, 8, 8)) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, *shape), generator=generator, dtype=torch.uint8)


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# ------------------------------------------------------------------------- losses
def test_vae_loss_by_hand() -> None:
    images = torch.tensor([[[[0.0, 1.0], [2.0, -1.0]]]])  # [1, 1, 2, 2]
    recon = torch.tensor([[[[0.5, 1.0], [1.0, 0.0]]]])
    mu = torch.tensor([[0.5, -1.0]])
    logvar = torch.tensor([[0.0, math.log(2.0)]])
    mse = (0.25 + 0 + 1 + 1) / 4
    # -1/2 (1 + log σ² - μ² - σ²) per latent: (0.125) and (-1/2 (1 + ln 2 - 1 - 2))
    kl_terms = [-0.5 * (1 + 0 - 0.25 - 1), -0.5 * (1 + math.log(2) - 1 - 2)]
    beta = 0.7
    assert float(vae_loss(images, recon, mu, logvar, beta, "sum")) == pytest.approx(
        mse + beta * sum(kl_terms)
    )
    assert float(vae_loss(images, recon, mu, logvar, beta, "mean")) == pytest.approx(
        mse + beta * sum(kl_terms) / 2
    )


def test_discriminator_and_adversarial_losses_by_hand() -> None:
    labeled, unlabeled = [2.0, -1.0], [0.5, 3.0, -2.0]
    l_logits, u_logits = torch.tensor(labeled), torch.tensor(unlabeled)
    labeled_term = sum(-math.log(sigmoid(x)) for x in labeled) / 2
    # the discriminator: unlabeled latents are "not labeled" (target 0)
    unlabeled_as_0 = sum(-math.log(1 - sigmoid(x)) for x in unlabeled) / 3
    # the VAE's adversarial term: unlabeled latents should look labeled (target 1)
    unlabeled_as_1 = sum(-math.log(sigmoid(x)) for x in unlabeled) / 3
    assert float(discriminator_loss(l_logits, u_logits)) == pytest.approx(
        labeled_term + unlabeled_as_0
    )
    assert float(adversarial_loss(l_logits, u_logits)) == pytest.approx(
        labeled_term + unlabeled_as_1
    )


def test_pairwise_bce_ranking_loss_by_hand() -> None:
    predicted = torch.tensor([1.0, 0.0, 3.0, 0.5])
    target = torch.tensor([2.0, 1.0, 1.5, 0.1])  # pairs (0, 3) and (1, 2)
    # pair (0, 3): Δ = 0.5 and loss_0 > loss_3 -> -log σ(0.5);
    # pair (1, 2): Δ = -3 and loss_1 < loss_2 -> -log(1 - σ(-3))
    expected = (-math.log(sigmoid(0.5)) - math.log(1 - sigmoid(-3.0))) / 2
    assert float(pairwise_bce_ranking_loss(predicted, target)) == pytest.approx(expected)


# ------------------------------------------------------------------- networks
@pytest.mark.parametrize(
    ("shape", "depth"),
    [((1, 28, 28), 4), ((3, 32, 32), 4), ((3, 64, 48), 4), ((3, 16, 16), 4), ((1, 5, 7), 2)],
)
def test_vae_is_sized_to_the_images(shape: tuple[int, int, int], depth: int) -> None:
    vae = VAE(shape, latent_dim=3, width=2, condition_dim=1)
    images = torch.randn(2, *shape)
    recon, mu, logvar = vae(images, torch.Generator().manual_seed(0), torch.zeros(2, 1))
    assert vae.depth == depth
    assert recon.shape == images.shape and mu.shape == logvar.shape == (2, 3)
    assert Discriminator(3, condition_dim=1)(mu, torch.zeros(2, 1)).shape == (2,)


def test_index_batches_cover_the_set_each_pass_and_drop_the_short_batch() -> None:
    batches = index_batches(10, 4, torch.Generator().manual_seed(0))
    first_pass = [next(batches) for _ in range(2)]
    assert [len(b) for b in first_pass] == [4, 4] and len(set(torch.cat(first_pass).tolist())) == 8
    small = index_batches(3, 4, torch.Generator().manual_seed(0))
    assert sorted(next(small).tolist()) == [0, 1, 2]


# ------------------------------------------------------------------ selection
class MeanBrightness(nn.Module):
    """A stand-in encoder: μ = the mean pixel value (normalised to [0, 1])."""

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        mu = images.mean(dim=(1, 2, 3))[:, None]
        return mu, torch.zeros_like(mu)


class ScaledLogit(nn.Module):
    """A stand-in discriminator: logit of p(labeled) = 10 · (μ - 0.5) (+ the condition)."""

    def forward(self, mu: Tensor, condition: Tensor | None = None) -> Tensor:
        logits = 10 * (mu[:, 0] - 0.5)
        return logits if condition is None else logits + condition[:, 0]


def test_samples_the_discriminator_calls_labeled_are_not_picked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # pool positions 0, 2, 4 are bright: the discriminator is sure they are labeled
    images = torch.zeros(10, 1, 4, 4, dtype=torch.uint8)
    images[[4, 6, 8]] = 250
    images[[5, 7, 9]] = torch.tensor([10, 30, 20], dtype=torch.uint8)[:, None, None, None]
    data = GatherOnly(images, eval_batch_size=2)
    monkeypatch.setattr(
        VAAL, "train_networks", lambda *args, **kwargs: (MeanBrightness(), ScaledLogit())
    )
    pool = PoolOutputs(torch.arange(6), context=context(data, [0, 1, 2, 3], [4, 5, 6, 7, 8, 9]))
    picks = VAAL().select(pool, 3, torch.Generator())
    # darkest first: lowest p(labeled)
    assert picks.tolist() == [1, 5, 3]


def test_same_seed_same_picks_and_images_only_through_gather() -> None:
    images = random_images(20)
    labeled, pool = [0, 3, 5, 7, 11, 13], [1, 2, 4, 6, 8, 9, 10, 12, 14, 15]

    def query(seed: int) -> tuple[Tensor, GatherOnly]:
        data = GatherOnly(images)
        outputs = PoolOutputs(torch.arange(len(pool)), context=context(data, labeled, pool, seed))
        scores = VAAL(**tiny()).score(outputs)  # type: ignore[arg-type]
        assert outputs.diagnostics["vaal_iterations"] == 3
        assert math.isfinite(outputs.diagnostics["vaal_vae_loss"])
        return scores, data

    first, data = query(seed=0)
    again, _ = query(seed=0)
    other, _ = query(seed=1)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    gathered = torch.cat(data.gathered)
    assert set(gathered.tolist()) == set(labeled) | set(pool)  # no other image, all of them


def test_the_file_oracles_second_look_does_not_train_again(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(
        VAAL,
        "train_networks",
        lambda *args, **kwargs: calls.append(1) or (MeanBrightness(), ScaledLogit()),
    )
    data = GatherOnly(random_images(6, shape=(1, 2, 2)))
    outputs = PoolOutputs(torch.arange(3), context=context(data, [0, 1, 2], [3, 4, 5]))
    strategy = VAAL()
    assert torch.equal(strategy.score(outputs), strategy.score(outputs)) and len(calls) == 1


def test_default_iterations_follow_the_authors_formula() -> None:
    # VAAL: 50 000 images x 100 epochs / 128 = 39 062;
    # TA-VAAL's code at cycle 1: (1000 + 10 000) x 100 / 128 = 8593
    assert VAAL().num_iterations(5000, 45_000) == 39_062
    assert VAAL().num_iterations(1000, 10_000) == 8593
    assert VAAL(iterations=7).num_iterations(1000, 10_000) == 7


def test_settings_are_checked() -> None:
    cfg = OmegaConf.create({"trainer": {"max_epochs": 5, "devices": 2}})
    problems = VAAL(kl_reduction="max", batch_size=0, iterations=0).check_config(cfg)
    text = "\n".join(problems)
    assert "trainer.devices=2" in text and "use trainer.devices=1" in text
    assert "strategy.kl_reduction='max'" in text and "strategy.batch_size=0" in text
    assert "strategy.iterations=0" in text
    cfg.trainer.devices = 1
    assert VAAL().check_config(cfg) == []
    assert TAVAAL().check_config(cfg) == []
    assert "strategy.ranking='x'" in "\n".join(TAVAAL(ranking="x").check_config(cfg))


# ---------------------------------------------------------------------- TA-VAAL
def test_ta_vaal_conditions_on_the_predicted_loss() -> None:
    pool = PoolOutputs(
        torch.arange(3),
        {
            "predicted_loss": torch.tensor([0.0, 2.0, -1.0]),
            "labeled_predicted_loss": torch.tensor([1.0, -3.0]),
        },
    )
    (decoder_l, decoder_u), (disc_l, disc_u) = TAVAAL().conditions(pool)
    # the decoder sees σ(r), the discriminator r itself (as the authors' code)
    assert torch.allclose(decoder_u, torch.tensor([[0.5], [sigmoid(2.0)], [sigmoid(-1.0)]]))
    assert torch.allclose(decoder_l, torch.tensor([[sigmoid(1.0)], [sigmoid(-3.0)]]))
    assert disc_u.tolist() == [[0.0], [2.0], [-1.0]] and disc_l.tolist() == [[1.0], [-3.0]]


def test_ta_vaal_picks_by_what_the_conditioned_discriminator_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # equal images: only the predicted loss r (added to the logit by the stand-in) decides
    data = GatherOnly(torch.full((8, 1, 2, 2), 128, dtype=torch.uint8), eval_batch_size=2)
    monkeypatch.setattr(
        VAAL, "train_networks", lambda *args, **kwargs: (MeanBrightness(), ScaledLogit())
    )
    predicted = torch.tensor([0.3, -2.0, 1.0, -0.5, 4.0])
    pool = PoolOutputs(
        torch.arange(5),
        {"predicted_loss": predicted, "labeled_predicted_loss": torch.zeros(3)},
        context=context(data, [0, 1, 2], [3, 4, 5, 6, 7]),
    )
    # lowest p(labeled) = lowest logit = lowest r here, across eval chunks of 2
    assert TAVAAL().select(pool, 3, torch.Generator()).tolist() == [1, 3, 0]


def test_ta_vaal_trains_the_loss_module_with_its_ranking_loss() -> None:
    options = TAVAAL().system_options((4, 8, 16, 32), max_epochs=200)
    assert options["loss_ranking"] == "bce" and options["loss_detach_epoch"] == 120
    assert options["loss_module"] is not None
    assert TAVAAL.needs == {"predicted_loss", "labeled_predicted_loss"}
    # TA-VAAL's code: 1 VAE step per iteration and the KL term averaged (VAAL: 2, summed)
    assert (TAVAAL().vae_steps, TAVAAL().kl_reduction) == (1, "mean")
    assert (VAAL().vae_steps, VAAL().kl_reduction) == (2, "sum")


def test_ta_vaal_trains_end_to_end_on_a_tiny_case() -> None:
    data = GatherOnly(random_images(12, seed=3))
    pool = PoolOutputs(
        torch.arange(6),
        {"predicted_loss": torch.randn(6), "labeled_predicted_loss": torch.randn(6)},
        context=context(data, [0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]),
    )
    picks = TAVAAL(**tiny()).select(pool, 2, torch.Generator())  # type: ignore[arg-type]
    assert len(set(picks.tolist())) == 2 and pool.diagnostics["vaal_iterations"] == 3


@pytest.mark.parametrize("ranking", ["bce", "margin"])
def test_the_system_trains_the_loss_module_with_the_named_ranking_loss(ranking: str) -> None:
    from functools import partial
    from types import SimpleNamespace

    import torch.nn.functional as F

    from tidal_lightning.models.backbones import SmallCNN
    from tidal_lightning.models.loss_prediction import LossPredictionModule, ranking_loss
    from tidal_lightning.models.system import ActiveLearningSystem

    torch.manual_seed(0)
    backbone = SmallCNN(num_classes=3, in_channels=1, width=4)
    system = ActiveLearningSystem(
        backbone,
        3,
        optimizer=partial(torch.optim.SGD, lr=0.1),
        loss_module=LossPredictionModule(backbone.stage_channels, hidden=4),
        loss_weight=0.5,
        loss_ranking=ranking,
    )
    system._trainer = SimpleNamespace(current_epoch=0)  # type: ignore[assignment]
    images = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 1, 2, 0, 1, 2])
    loss = system.training_step((images, targets, torch.arange(6)), 0)["loss"].detach()
    with torch.no_grad():
        logits, features = backbone(images)
        ce = F.cross_entropy(logits, targets, reduction="none")
        predicted = system.loss_module(features)  # type: ignore[misc]
    named = pairwise_bce_ranking_loss if ranking == "bce" else ranking_loss
    other = ranking_loss if ranking == "bce" else pairwise_bce_ranking_loss
    assert float(loss) == pytest.approx(float(ce.mean() + 0.5 * named(predicted, ce)), rel=1e-5)
    assert float(loss) != pytest.approx(float(ce.mean() + 0.5 * other(predicted, ce)), rel=1e-5)
