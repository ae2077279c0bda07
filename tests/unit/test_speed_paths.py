"""The speed work keeps results: device-resident split, one-gather augmentation, NHWC and
compiled backbones, TD pre-pooling, per-epoch loss logging."""

from functools import partial

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from tidal_lightning.callbacks.training_dynamics import TrainingDynamicsTracker
from tidal_lightning.data.augment import random_crop_flip
from tidal_lightning.data.datamodules import SyntheticImages
from tidal_lightning.data.loader import TensorBatchLoader
from tidal_lightning.models.backbones import SmallCNN, global_average_pool
from tidal_lightning.models.system import ActiveLearningSystem
from tidal_lightning.models.td_module import TDModule
from tidal_lightning.seeding import make_generator


def _reference_crop_flip(images: Tensor, pad: int, seed: int) -> Tensor:
    """Per-sample slicing of the padded image, then `flip`, with the same three draws."""
    generator = torch.Generator().manual_seed(seed)
    batch, _, height, width = images.shape
    dy = torch.randint(0, 2 * pad + 1, (batch,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (batch,), generator=generator)
    mirror = torch.rand(batch, generator=generator) < 0.5
    padded = F.pad(images, (pad, pad, pad, pad))
    out = []
    for b in range(batch):
        crop = padded[b, :, dy[b] : dy[b] + height, dx[b] : dx[b] + width]
        out.append(crop.flip(2) if mirror[b] else crop)
    return torch.stack(out)


@pytest.mark.parametrize("shape", [(32, 3, 8, 8), (9, 1, 5, 7)])
def test_one_gather_crop_flip_matches_per_sample_slicing(shape: tuple[int, ...]) -> None:
    images = torch.randint(0, 256, shape, dtype=torch.uint8)
    out = random_crop_flip(images, 2, True, torch.Generator().manual_seed(3))
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert torch.equal(out, _reference_crop_flip(images, 2, 3))


def _data() -> SyntheticImages:
    data = SyntheticImages(num_classes=3, train_per_class=10, image_size=6, channels=1)
    data.load()
    data.start_cycle(torch.tensor([1, 4, 5, 8, 13, 21, 22]), seed=7, cycle=2)
    data.batch_size = 3
    return data


def test_train_loader_on_the_cpu_yields_the_batches_of_the_host_split() -> None:
    data = _data()
    ours = list(data.train_dataloader())
    before = TensorBatchLoader(
        data.train_images,
        data.train_targets,
        data.labeled_indices,
        3,
        shuffle=True,
        generator=make_generator(7, 2, "shuffle"),
    )
    assert len(ours) == len(before) == 2
    for (x, y, i), (x0, y0, i0) in zip(ours, before, strict=True):
        assert torch.equal(i, i0) and torch.equal(y, y0) and torch.equal(x, x0)
    assert data.split_on("cpu")[0] is data.train_images  # no copy on the split's own device


def test_split_on_another_device_is_copied_once_and_again_when_replaced() -> None:
    data = _data()
    # the meta device stands in for an accelerator: copies have shapes but no storage
    images, targets = data.split_on("meta")
    assert images.device.type == targets.device.type == "meta"
    assert images.shape == data.train_images.shape
    assert data.split_on("meta")[0] is images  # cached
    assert data.split_on("meta", train=False)[0].shape == data.test_images.shape
    data.train_images = data.train_images[:5].clone()
    assert data.split_on("meta")[0].shape[0] == 5


def test_global_average_pool_by_hand() -> None:
    maps = torch.tensor([[1.0, 2.0], [3.0, 6.0]]).view(1, 1, 2, 2).repeat(2, 3, 1, 1)
    assert global_average_pool(maps).shape == (2, 3, 1, 1)
    torch.testing.assert_close(global_average_pool(maps), torch.full((2, 3, 1, 1), 3.0))


def _system(**backbone_options: bool) -> ActiveLearningSystem:
    torch.manual_seed(0)
    backbone = SmallCNN(num_classes=3, in_channels=3, width=4, **backbone_options)
    return ActiveLearningSystem(
        backbone,
        3,
        optimizer=partial(torch.optim.SGD, lr=0.0),
        td_module=TDModule(backbone.stage_channels, 3, hidden=8),
        td_tracker=TrainingDynamicsTracker(40, 3),
    )


def test_pre_pooled_td_logits_equal_the_td_module_on_the_stage_maps() -> None:
    system = _system()
    _, features = system.backbone(torch.randn(4, 3, 16, 16))
    torch.testing.assert_close(system._td_logits(features), system.td_module(features))


def test_channels_last_backbone_gives_the_same_outputs() -> None:
    images = torch.randn(5, 3, 16, 16)
    needs = frozenset({"probs", "td_probs"})
    plain, nhwc = _system().eval(), _system(channels_last=True).eval()
    assert nhwc.backbone.stages[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    expected, got = plain.predict_batch(images, needs), nhwc.predict_batch(images, needs)
    for name in needs:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_compiled_backbone_gives_the_same_outputs_and_state_dict_keys() -> None:
    images = torch.randn(4, 3, 16, 16)
    plain, compiled = _system().eval(), _system(compile=True).eval()
    assert list(compiled.state_dict()) == list(plain.state_dict())
    with torch.no_grad():
        expected, got = plain.backbone(images)[0], compiled.backbone(images)[0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_epoch_losses_are_batch_size_weighted_means_of_the_step_losses() -> None:
    # lr = 0: the weights never move, so each batch's CE can be recomputed afterwards
    system = _system()
    tracker = system.td_tracker
    images = torch.randint(0, 256, (40, 3, 16, 16), dtype=torch.uint8)
    targets = torch.randint(0, 3, (40,))
    labeled = torch.arange(0, 40, 8)  # 5 samples, batches of 3 and 2

    class Data(pl.LightningDataModule):
        def train_dataloader(self) -> TensorBatchLoader:
            return TensorBatchLoader(images, targets, labeled, 3)

        def on_after_batch_transfer(self, batch, dataloader_idx):  # type: ignore[no-untyped-def]
            x, y, i = batch
            return x.float() / 255, y, i

    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        callbacks=[tracker],
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(system, datamodule=Data())
    system.train()
    ces = []
    with torch.no_grad():
        for x, y, _ in TensorBatchLoader(images, targets, labeled, 3):
            ces.append(F.cross_entropy(system.backbone(x.float() / 255)[0], y))
    expected = (3 * ces[0] + 2 * ces[1]) / 5
    torch.testing.assert_close(trainer.callback_metrics["train/ce"], expected)
    assert {"train/ce", "train/td_kl", "train/loss"} <= set(trainer.callback_metrics)
