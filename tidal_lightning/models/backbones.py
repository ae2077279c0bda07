"""Classifier backbones. Each returns `(logits [B, C], [four stage maps])`.

The stage maps feed the TD module and the loss-prediction module, and `stage_channels`
tells those modules how wide each map is, so any backbone with this interface works
with them. `embed` exposes the penultimate (pooled) embedding that CoreSet, BADGE and CAL
measure distances in, and `dropout_p` the dropout before the classifier that BALD samples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Backbone(nn.Module):
    """Interface: `forward(x [B, C_in, H, W]) -> (logits [B, K], [4 maps [B, C_s, H_s, W_s]])`.

    Subclasses build `stem`, the four `stages` and the `linear` classifier, and call
    `_set_dropout` and `_set_speed_options`; the forward pass (stem, stages, global average
    pooling, dropout, classifier) is shared.

    Speed options (results equal within float tolerance; the system applies them):
    `channels_last` keeps weights and inputs NHWC, `compile_forward` asks for
    `torch.compile` of `forward`.
    """

    stage_channels: tuple[int, ...]
    stem: nn.Module
    stages: nn.ModuleList
    linear: nn.Linear
    dropout: nn.Module
    dropout_p: float
    channels_last: bool = False
    compile_forward: bool = False

    def _set_speed_options(self, channels_last: bool, compile: bool) -> None:
        self.channels_last = bool(channels_last)
        self.compile_forward = bool(compile)

    def _set_dropout(self, p: float) -> None:
        if not 0.0 <= p < 1.0:
            raise ValueError(f"model.dropout={p}: must be in [0, 1)")
        self.dropout_p = p
        # Identity at p = 0: no dropout layer, so no random numbers drawn, and runs without
        # dropout stay identical to what they were before the option existed.
        self.dropout = nn.Dropout(p) if p > 0 else nn.Identity()

    def embed(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """`x [B, C_in, H, W]` -> (pooled embedding `[B, D]`, the four stage maps)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.stem(x)
        features = []
        for stage in self.stages:
            out = stage(out)
            features.append(out)
        return global_average_pool(out).flatten(1), features

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        embedding, features = self.embed(x)
        return self.linear(self.dropout(embedding)), features


def global_average_pool(maps: Tensor) -> Tensor:
    """`[B, C, H, W]` -> `[B, C, 1, 1]` spatial mean.

    Written as a sum scaled on the small `[B, C, 1, 1]` result: its backward is then a
    broadcast view, where `adaptive_avg_pool2d(x, 1)` (a mean) divides a full-size
    `[B, C, H, W]` gradient, one extra pass over the largest tensors of the step.
    """
    return maps.sum(dim=(2, 3), keepdim=True) * (1.0 / (maps.shape[2] * maps.shape[3]))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(Backbone):
    """CIFAR-style ResNet-18: 3x3 stride-1 stem, no max-pool, BasicBlocks [2, 2, 2, 2].

    Args:
        num_classes: K.
        in_channels: 1 (Fashion-MNIST) or 3.
        dropout: dropout probability before the classifier (0 = none; BALD trains with it).
        channels_last: NHWC weights and inputs (faster convolutions on tensor-core GPUs).
        compile: `torch.compile` the forward pass (`model.compile`).
    """

    stage_channels = (64, 128, 256, 512)

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        dropout: float = 0.0,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self._set_dropout(dropout)
        self._set_speed_options(channels_last, compile)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()
        )
        stages = []
        in_planes = 64
        for planes, stride in zip(self.stage_channels, (1, 2, 2, 2), strict=True):
            stages.append(
                nn.Sequential(BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes))
            )
            in_planes = planes
        self.stages = nn.ModuleList(stages)
        self.linear = nn.Linear(512, num_classes)


class SmallCNN(Backbone):
    """Four conv-BN-ReLU stages (the last three first halve the resolution) for CPU runs.

    Args:
        num_classes: K.
        in_channels: 1 or 3.
        width: channels of the first stage; each later stage doubles it.
        dropout: dropout probability before the classifier (0 = none; BALD trains with it).
        channels_last: NHWC weights and inputs.
        compile: `torch.compile` the forward pass (`model.compile`).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        width: int = 16,
        dropout: float = 0.0,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self._set_dropout(dropout)
        self._set_speed_options(channels_last, compile)
        self.stage_channels = tuple(width * 2**s for s in range(4))
        self.stem = nn.Identity()
        stages = []
        in_planes = in_channels
        for s, planes in enumerate(self.stage_channels):
            # Pooling before the conv (not after) runs each later conv at a quarter of the cost.
            layers: list[nn.Module] = [nn.MaxPool2d(2)] if s > 0 else []
            layers += [
                nn.Conv2d(in_planes, planes, 3, 1, 1, bias=False),
                nn.BatchNorm2d(planes),
                nn.ReLU(inplace=True),
            ]
            stages.append(nn.Sequential(*layers))
            in_planes = planes
        self.stages = nn.ModuleList(stages)
        self.linear = nn.Linear(in_planes, num_classes)
