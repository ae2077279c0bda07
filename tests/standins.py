"""Tiny datasets written in the real on-disk formats, so torchvision's own readers run on them."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import scipy.io


def _pixels(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def write_cifar(
    root: Path, hundred: bool = False, per_class: int = 10, test_per_class: int = 2
) -> dict:
    """CIFAR-10 (`cifar-10-batches-py`, 5 train batches) or CIFAR-100 (`cifar-100-python`) pickles.

    Returns the arrays written: `train_x [N, 3, 32, 32]`, `train_y`, `test_x`, `test_y`, `classes`.
    """
    rng = np.random.default_rng(0)
    num_classes = 100 if hundred else 10
    label_key = "fine_labels" if hundred else "labels"
    train_y = np.tile(np.arange(num_classes), per_class)
    test_y = np.tile(np.arange(num_classes), test_per_class)
    train_x = _pixels(rng, (len(train_y), 3 * 32 * 32))
    test_x = _pixels(rng, (len(test_y), 3 * 32 * 32))
    classes = [f"name{c}" for c in range(num_classes)]
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True, exist_ok=True)

    def dump(name: str, obj: dict) -> None:
        with open(folder / name, "wb") as handle:
            pickle.dump(obj, handle)

    if hundred:
        dump("train", {"data": train_x, label_key: train_y.tolist()})
        dump("test", {"data": test_x, label_key: test_y.tolist()})
        dump("meta", {"fine_label_names": classes})
    else:
        for b, part in enumerate(np.array_split(np.arange(len(train_y)), 5), start=1):
            dump(f"data_batch_{b}", {"data": train_x[part], label_key: train_y[part].tolist()})
        dump("test_batch", {"data": test_x, label_key: test_y.tolist()})
        dump("batches.meta", {"label_names": classes})
    reshape = (-1, 3, 32, 32)
    return {
        "train_x": train_x.reshape(reshape),
        "train_y": train_y,
        "test_x": test_x.reshape(reshape),
        "test_y": test_y,
        "classes": classes,
    }


def _idx(path: Path, magic: int, array: np.ndarray) -> None:
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.tobytes())


def write_fashion_mnist_gz(folder: Path, train: int = 30, test: int = 10) -> dict:
    """The four `*-ubyte.gz` idx files, laid out as Debian's dataset-fashion-mnist ships them."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", train), ("t10k", test)):
        images = _pixels(rng, (n, 28, 28))
        labels = (np.arange(n) % 10).astype(np.uint8)
        _idx(folder / f"{split}-images-idx3-ubyte.gz", 0x803, images)
        _idx(folder / f"{split}-labels-idx1-ubyte.gz", 0x801, labels)
        arrays[split] = (images, labels)
    return arrays


def write_svhn(root: Path, train: int = 20, test: int = 10) -> dict:
    """`train_32x32.mat` / `test_32x32.mat` (format 2): X `[32, 32, 3, N]`, y `[N, 1]` in 1..10."""
    rng = np.random.default_rng(2)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", train), ("test", test)):
        x = _pixels(rng, (32, 32, 3, n))
        y = (np.arange(n) % 10 + 1).reshape(-1, 1).astype(np.uint8)  # 10 stands for digit 0
        scipy.io.savemat(root / f"{split}_32x32.mat", {"X": x, "y": y})
        arrays[split] = (x, y)
    return arrays
