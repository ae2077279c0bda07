"""Feature sources: SimCLR's loss, augmentations and cache, timm features, the cold start."""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from tidal_lightning.al.oracle import SimulatedOracle
from tidal_lightning.config_checks import validate_config
from tidal_lightning.data.datamodules import SyntheticImages
from tidal_lightning.errors import ConfigError
from tidal_lightning.features import simclr, timm_source
from tidal_lightning.features.cold_start import (
    FEATURE_INITIAL_MODES,
    ColdStartFeatures,
    feature_initial_set,
)
from tidal_lightning.features.settings import FeatureSettings, SimCLRSettings, TimmSettings

TINY_ENCODER = {"_target_": "tidal_lightning.models.backbones.SmallCNN", "width": 4}


def tiny_data() -> SyntheticImages:
    data = SyntheticImages(num_classes=3, train_per_class=16, test_per_class=2, image_size=8)
    data.load()
    return data


def tiny_settings(**changes: object) -> SimCLRSettings:
    return SimCLRSettings(**{"encoder": TINY_ENCODER, "epochs": 1, "batch_size": 16, **changes})  # type: ignore[arg-type]


# --------------------------------------------------------------------------------- loss
def test_nt_xent_matches_a_hand_computation() -> None:
    first = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    second = torch.tensor([[1.0, 1.0], [0.0, -1.0]])
    tau = 0.5
    rows = [[1.0, 0.0], [0.0, 1.0], [1 / math.sqrt(2), 1 / math.sqrt(2)], [0.0, -1.0]]
    positive = {0: 2, 1: 3, 2: 0, 3: 1}
    losses = []
    for i in range(4):
        sims = {
            j: sum(a * b for a, b in zip(rows[i], rows[j], strict=True)) / tau for j in range(4)
        }
        denominator = sum(math.exp(sims[j]) for j in range(4) if j != i)
        losses.append(-math.log(math.exp(sims[positive[i]]) / denominator))
    expected = sum(losses) / 4
    assert float(simclr.nt_xent(first, second, tau)) == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------------------------- augmentation
def test_augmentations_are_seeded_shaped_and_keep_constant_images_constant() -> None:
    images = torch.randint(0, 256, (5, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    one = simclr.two_views(images.to(torch.uint8), (0.2, 1.0), torch.Generator().manual_seed(1))
    two = simclr.two_views(images.to(torch.uint8), (0.2, 1.0), torch.Generator().manual_seed(1))
    assert one[0].shape == (5, 3, 8, 8) and torch.equal(one[0], two[0])
    assert not torch.equal(one[0], one[1])  # the two views differ
    flat = torch.full((4, 1, 8, 8), 100.0)
    cropped = simclr.random_resized_crop_flip(flat, (0.2, 1.0), torch.Generator().manual_seed(2))
    torch.testing.assert_close(cropped, flat)  # a crop of a constant image is that constant
    # without jitter (p = 0) a one-channel image is left as it is (no grayscale step)
    gray = images[:, :1].float()
    torch.testing.assert_close(
        simclr.colour_jitter(gray, torch.Generator().manual_seed(3), p=0.0), gray
    )


# -------------------------------------------------------------------------------- cache
def test_the_encoder_is_cached_reused_and_retrained_when_its_key_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tiny_data()
    calls: list[int] = []
    train = simclr.train_simclr

    def counting(*args: object, **kwargs: object) -> torch.nn.Module:
        calls.append(1)
        return train(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(simclr, "train_simclr", counting)
    indices = torch.arange(48)
    device = torch.device("cpu")
    first = simclr.load_or_train(tiny_settings(), data, indices, device, tmp_path)
    assert len(calls) == 1
    simclr._LOADED.clear()  # as a new process would: read from disk, no training
    again = simclr.load_or_train(tiny_settings(), data, indices, device, tmp_path)
    assert len(calls) == 1
    for name, value in first.state_dict().items():
        torch.testing.assert_close(again.state_dict()[name], value)
    features = simclr.encode(again, data, torch.arange(10), device, batch_size=4)
    assert features.shape == (10, 32)  # SmallCNN width 4: 4 * 8 channels at the end
    # any change of the key trains a new encoder: settings, indices, dataset pixels
    simclr.load_or_train(tiny_settings(epochs=2), data, indices, device, tmp_path)
    simclr.load_or_train(tiny_settings(), data, indices[:32], device, tmp_path)
    other = SyntheticImages(num_classes=3, train_per_class=16, image_size=8, data_seed=1)
    other.load()
    simclr.load_or_train(tiny_settings(), other, indices, device, tmp_path)
    assert len(calls) == 4
    assert len(list(tmp_path.glob("simclr-*/encoder.pt"))) == 4


def test_concurrent_callers_train_one_encoder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tiny_data()
    calls: list[int] = []
    train = simclr.train_simclr

    def counting(*args: object, **kwargs: object) -> torch.nn.Module:
        calls.append(1)
        return train(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(simclr, "train_simclr", counting)
    results: list[torch.nn.Module] = []

    def call() -> None:
        results.append(
            simclr.load_or_train(
                tiny_settings(seed=7), data, torch.arange(48), torch.device("cpu"), tmp_path
            )
        )

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and len(results) == 3


def test_training_is_deterministic_from_the_encoder_seed() -> None:
    data = tiny_data()
    one = simclr.train_simclr(tiny_settings(), data, torch.arange(48), torch.device("cpu"))
    two = simclr.train_simclr(tiny_settings(), data, torch.arange(48), torch.device("cpu"))
    for name, value in one.state_dict().items():
        torch.testing.assert_close(two.state_dict()[name], value)


# --------------------------------------------------------------------------------- timm
def test_timm_features_are_resized_and_normalised_as_the_model_says() -> None:
    pytest.importorskip("timm")
    data = tiny_data()
    # timm's own tiny test model (random weights: no network), input 160 x 160
    settings = TimmSettings(model="test_convnext", pretrained=False)
    model, config = timm_source.timm_model(settings)
    assert config["input_size"] == (3, 160, 160)
    flat = torch.full((2, 1, 8, 8), 51, dtype=torch.uint8)  # 0.2 on the [0, 1] scale
    prepared = timm_source.prepare(flat, config)
    assert prepared.shape == (2, 3, 160, 160)
    for c in range(3):  # the gray channel repeated, then each channel's mean and std
        expected = (0.2 - config["mean"][c]) / config["std"][c]
        torch.testing.assert_close(prepared[:, c], torch.full((2, 160, 160), expected))
    features = timm_source.encode(settings, data, torch.arange(3), torch.device("cpu"), 2)
    assert features.shape == (3, model.num_features)


def test_timm_refuses_without_weights_or_without_the_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    timm = pytest.importorskip("timm")

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("no network")

    monkeypatch.setattr(timm, "create_model", offline)
    monkeypatch.setattr(timm_source, "_MODELS", {})
    with pytest.raises(
        ConfigError, match=r"features\.timm\.pretrained=true.*strategy\.features=simclr"
    ):
        timm_source.timm_model(TimmSettings(model="resnet18", pretrained=True))
    monkeypatch.setitem(sys.modules, "timm", None)  # as if it were not installed
    with pytest.raises(ConfigError, match=r"pip install"):
        timm_source.timm_model(TimmSettings(model="resnet18", pretrained=True))


# --------------------------------------------------------------------------- cold start
@pytest.mark.parametrize("mode", FEATURE_INITIAL_MODES)
def test_cold_start_is_deterministic_and_of_the_right_size(tmp_path: Path, mode: str) -> None:
    data = tiny_data()
    settings = FeatureSettings(cache_dir=str(tmp_path), batch_size=16, simclr=tiny_settings())
    features = ColdStartFeatures("simclr", settings, torch.device("cpu"))
    pool = torch.arange(3, 48)

    def draw(seed: int) -> torch.Tensor:
        return SimulatedOracle().initial_set(
            data, pool, 7, mode, torch.Generator().manual_seed(seed), features
        )

    picked = draw(0)
    assert len(picked) == len(set(picked.tolist())) == 7
    assert bool(torch.isin(picked, pool).all())
    assert torch.equal(picked, draw(0))
    assert torch.equal(
        picked, feature_initial_set(data, pool, 7, mode, torch.Generator().manual_seed(0), features)
    )
    with pytest.raises(ValueError, match="ColdStartFeatures"):
        SimulatedOracle().initial_set(data, pool, 7, mode, torch.Generator())


def test_cold_start_config_is_checked(smoke_config: Callable[..., DictConfig]) -> None:
    validate_config(smoke_config("al.initial_mode=typiclust"))  # simclr by default: fine
    with pytest.raises(ConfigError, match=r"al\.initial_features='model'"):
        validate_config(smoke_config("al.initial_mode=probcover", "al.initial_features=model"))
    with pytest.raises(ConfigError, match=r"features\.simclr\.epochs=0"):
        validate_config(smoke_config("al.initial_mode=maxherding", "features.simclr.epochs=0"))
    cfg = smoke_config("al.initial_mode=typiclust", "trainer.accelerator=cpu")
    features = ColdStartFeatures.from_config(cfg)
    assert features.source == "simclr" and features.device == torch.device("cpu")
    assert features.settings.simclr.epochs == 1  # the smoke experiment's
    assert "dropout" not in features.settings.simclr.encoder  # not part of the cache key
