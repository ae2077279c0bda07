"""Backbone shapes, the TD module's structure, Learning Loss's detach and MC dropout."""

from functools import partial
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor

from tidal_lightning.models.backbones import ResNet18, SmallCNN
from tidal_lightning.models.loss_prediction import LossPredictionModule
from tidal_lightning.models.system import ActiveLearningSystem
from tidal_lightning.models.td_module import TDModule


def test_cifar_resnet18_shapes_and_size() -> None:
    model = ResNet18(num_classes=10)
    logits, features = model(torch.zeros(2, 3, 32, 32))
    assert logits.shape == (2, 10)
    assert [tuple(f.shape[1:]) for f in features] == [
        (64, 32, 32),
        (128, 16, 16),
        (256, 8, 8),
        (512, 4, 4),
    ]
    # the widely used CIFAR ResNet-18 (3x3 stem, no max-pool) has 11,173,962 parameters
    assert sum(p.numel() for p in model.parameters()) == 11_173_962


def test_one_channel_inputs_and_the_small_cnn() -> None:
    logits, features = ResNet18(num_classes=10, in_channels=1)(torch.zeros(2, 1, 28, 28))
    assert logits.shape == (2, 10) and features[-1].shape[1:] == (512, 4, 4)
    small = SmallCNN(num_classes=4, in_channels=1, width=8)
    logits, features = small(torch.zeros(3, 1, 28, 28))
    assert logits.shape == (3, 4)
    assert [f.shape[1] for f in features] == list(small.stage_channels) == [8, 16, 32, 64]
    assert [f.shape[-1] for f in features] == [28, 14, 7, 3]


def test_td_module_is_gap_linear_relu_per_stage_then_linear() -> None:
    module = TDModule(stage_channels=(64, 128, 256, 512), num_classes=10, hidden=128)
    assert [(p.in_features, p.out_features) for p in module.projections] == [
        (64, 128),
        (128, 128),
        (256, 128),
        (512, 128),
    ]
    assert (module.head.in_features, module.head.out_features) == (512, 10)
    maps = [torch.randn(2, c, s, s) for c, s in ((64, 32), (128, 16), (256, 8), (512, 4))]
    out = module(maps)
    # recompute by hand: pool each map, project, ReLU, concatenate, classify
    pooled = [
        torch.relu(p(m.mean(dim=(2, 3)))) for p, m in zip(module.projections, maps, strict=True)
    ]
    torch.testing.assert_close(out, module.head(torch.cat(pooled, dim=1)))


def _system_with_loss_module(detach_epoch: int) -> ActiveLearningSystem:
    torch.manual_seed(0)
    backbone = SmallCNN(num_classes=3, in_channels=1, width=4)
    system = ActiveLearningSystem(
        backbone,
        3,
        optimizer=partial(torch.optim.SGD, lr=0.1),
        loss_module=LossPredictionModule(backbone.stage_channels, hidden=4),
        loss_detach_epoch=detach_epoch,
    )
    system.log = lambda *args, **kwargs: None  # type: ignore[method-assign]
    return system


def _backbone_grads(system: ActiveLearningSystem, epoch: int, with_rank: bool) -> list[Tensor]:
    system._trainer = SimpleNamespace(current_epoch=epoch)  # type: ignore[assignment]
    system.zero_grad()
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(6, 1, 8, 8, generator=generator)
    targets = torch.tensor([0, 1, 2, 0, 1, 2])
    if with_rank:
        loss = system.training_step((images, targets, torch.arange(6)), 0)["loss"]
    else:
        loss = torch.nn.functional.cross_entropy(system.backbone(images)[0], targets)
    loss.backward()
    return [p.grad.clone() for p in system.backbone.parameters() if p.grad is not None]


def test_learning_loss_shapes_the_backbone_only_before_the_detach_epoch() -> None:
    system = _system_with_loss_module(detach_epoch=5)
    plain = _backbone_grads(system, epoch=4, with_rank=False)
    before = _backbone_grads(system, epoch=4, with_rank=True)
    after = _backbone_grads(system, epoch=5, with_rank=True)
    assert any(not torch.allclose(a, b) for a, b in zip(plain, before, strict=True))
    for a, b in zip(plain, after, strict=True):
        torch.testing.assert_close(a, b)
    assert system.loss_module is not None
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0 for p in system.loss_module.parameters()
    )


def test_mc_dropout_is_seeded_and_only_with_dropout() -> None:
    torch.manual_seed(0)
    backbone = SmallCNN(num_classes=3, in_channels=1, width=4, dropout=0.5)
    system = ActiveLearningSystem(backbone, 3, optimizer=partial(torch.optim.SGD, lr=0.1)).eval()
    images = torch.randn(5, 1, 8, 8)
    needs = frozenset({"probs", "mc_mean_probs", "mc_mean_entropy"})

    def mc(seed: int, samples: int = 10) -> dict[str, Tensor]:
        masks = system.mc_dropout_masks(samples, torch.Generator().manual_seed(seed))
        return system.predict_batch(images, needs, masks)

    first, again, other = mc(0), mc(0), mc(1)
    torch.testing.assert_close(first["mc_mean_probs"], again["mc_mean_probs"])
    assert not torch.allclose(first["mc_mean_probs"], other["mc_mean_probs"])
    torch.testing.assert_close(first["mc_mean_probs"].sum(dim=1), torch.ones(5))
    # masks differ between samples, so the mean entropy is not the entropy of the mean
    assert not torch.allclose(
        first["mc_mean_entropy"], torch.special.entr(first["mc_mean_probs"]).sum(dim=1)
    )
    # one sample with one mask, shared by every input: dropout rescales kept units by 1/(1-p)
    embedding, _ = backbone.embed(images)
    keep = torch.rand(1, embedding.shape[1], generator=torch.Generator().manual_seed(3)) >= 0.5
    expected = backbone.linear(embedding * keep * 2.0).softmax(dim=1)
    single = system.predict_batch(
        images, needs, system.mc_dropout_masks(1, torch.Generator().manual_seed(3))
    )["mc_mean_probs"]
    torch.testing.assert_close(single, expected)
    plain = ActiveLearningSystem(
        SmallCNN(num_classes=3, in_channels=1, width=4), 3, optimizer=torch.optim.SGD
    )
    with pytest.raises(RuntimeError, match=r"dropout probability in \(0, 1\)"):
        plain.mc_dropout_masks(10, torch.Generator())
