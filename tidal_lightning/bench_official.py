"""`python -m tidal_lightning.bench_official`: images/s of a training loop in the official
TiDAL code's style, for comparison with `python -m tidal_lightning.bench`.

The loop follows the structure of hyperconnect/TiDAL's training (written here from reading
it, not copied): a torchvision-style dataset that decodes one PIL image per sample and runs
RandomCrop(pad 4), RandomHorizontalFlip, ToTensor and Normalize on it, and also returns the
sample's running-mean softmax from a host numpy array; a `DataLoader` with a
`SubsetRandomSampler` over the labeled indices; per batch a host-to-device copy, backbone and
TD-module forward, the running mean updated as `(p̄ * epoch + p) / (epoch + 1)` and written
back into the numpy array (a device-to-host copy and sync every batch), CE + λ·KL, and two
optimizers (backbone, module). Data are random CIFAR-shaped images, so no dataset is needed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image
from torch import Tensor, nn

from tidal_lightning.bench import resolve_device
from tidal_lightning.errors import ConfigError
from tidal_lightning.models.backbones import ResNet18, SmallCNN
from tidal_lightning.models.td_module import TDModule

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class MovingProbDataset(torch.utils.data.Dataset[tuple[Tensor, int, int, np.ndarray]]):
    """Per-sample PIL transform; returns `(image [3, 32, 32], target, index, p̄ [K])`."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, num_classes: int) -> None:
        self.images = images  # [N, 32, 32, 3] uint8, as torchvision's CIFAR10 keeps them
        self.targets = targets
        self.moving_prob = np.zeros((len(images), num_classes), dtype=np.float32)
        self.transform = T.Compose(
            [
                T.RandomCrop(32, padding=4),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                T.Normalize(CIFAR10_MEAN, CIFAR10_STD),
            ]
        )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int, int, np.ndarray]:
        image = self.transform(Image.fromarray(self.images[index]))
        return image, int(self.targets[index]), index, self.moving_prob[index]


def train_epoch(
    backbone: nn.Module,
    module: nn.Module,
    optimizers: tuple[torch.optim.Optimizer, torch.optim.Optimizer],
    loader: torch.utils.data.DataLoader[Any],
    dataset: MovingProbDataset,
    epoch: int,
    device: torch.device,
    weight: float = 1.0,
) -> None:
    """One epoch the official way: host-side p̄ bookkeeping, two optimizers."""
    backbone.train()
    module.train()
    for images, labels, index, moving_prob in loader:
        images, labels = images.to(device), labels.to(device)
        rows = index.numpy().tolist()
        for optimizer in optimizers:
            optimizer.zero_grad()
        scores, features = backbone(images)
        ce = F.cross_entropy(scores, labels, reduction="none")
        probs = torch.softmax(scores, dim=1)
        moving = (moving_prob.to(device) * epoch + probs) / (epoch + 1)
        dataset.moving_prob[rows, :] = moving.detach().cpu().numpy()  # a sync per batch
        kl = F.kl_div(F.log_softmax(module(features), 1), moving.detach(), reduction="batchmean")
        loss = ce.sum() / ce.size(0) + weight * kl
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()


def run(
    device: torch.device,
    model: str,
    labeled: int,
    epochs: int,
    batch_size: int,
    num_workers: int,
) -> dict[str, Any]:
    """Trains `1 + epochs` epochs; images/s over the `epochs` after the first."""
    generator = np.random.default_rng(0)
    num_classes = 10
    n = labeled * 2  # a pool beside the labeled set, as in an AL cycle
    images = generator.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    targets = generator.integers(0, num_classes, n)
    dataset = MovingProbDataset(images, targets, num_classes)
    labeled_set = generator.permutation(n)[:labeled].tolist()
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=torch.utils.data.SubsetRandomSampler(labeled_set),
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    torch.manual_seed(0)
    backbone: nn.Module = (ResNet18 if model == "resnet18" else SmallCNN)(num_classes, 3)
    module = TDModule(backbone.stage_channels, num_classes)  # type: ignore[arg-type]
    backbone, module = backbone.to(device), module.to(device)
    optimizers = (
        torch.optim.SGD(backbone.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4),
        torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4),
    )
    seconds = []
    for epoch in range(1 + epochs):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        train_epoch(backbone, module, optimizers, loader, dataset, epoch, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - started)
    steady = statistics.fmean(seconds[1:])
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "model": model,
        "labeled": labeled,
        "batch_size": batch_size,
        "num_workers": num_workers,
        "epoch_seconds": seconds,
        "images_per_s": labeled / steady,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tidal_lightning.bench_official")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    parser.add_argument(
        "--model",
        choices=("resnet18", "small_cnn"),
        default=None,
        help="default: resnet18 on CUDA, small_cnn on CPU",
    )
    parser.add_argument("--labeled", type=int, default=None, help="default 10000 (CUDA), 1024")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs after a warm-up")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-workers", type=int, default=0, help="the official default is 0")
    parser.add_argument("--out", type=Path, default=None, help="also write the result as JSON")
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.epochs < 1:
        print(f"error: --epochs={args.epochs}: must be at least 1", file=sys.stderr)
        return 1
    cuda = device.type == "cuda"
    result = run(
        device,
        args.model or ("resnet18" if cuda else "small_cnn"),
        args.labeled or (10_000 if cuda else 1024),
        args.epochs,
        args.batch_size,
        args.num_workers,
    )
    print(
        f"official-style loop: {result['images_per_s']:.0f} images/s "
        f"({result['model']}, {result['device_name']}, {result['labeled']} labeled, "
        f"batch {result['batch_size']}, workers {result['num_workers']})"
    )
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
