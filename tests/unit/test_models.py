"""Backbone shapes and the TD module's structure."""

import torch

from tidal_lightning.models.backbones import ResNet18, SmallCNN
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
