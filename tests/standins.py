"""Tiny datasets written in the real on-disk formats, so torchvision's own readers run on them."""

from __future__ import annotations

import gzip
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image


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


def write_inaturalist2018(
    root: Path,
    supercategories: tuple[str, ...] = ("Plantae", "Aves", "Aves"),
    train_per_class: tuple[int, ...] = (6, 4, 3),
    val_per_class: int = 2,
    size: tuple[int, int] = (40, 30),
) -> dict:
    """iNaturalist 2018 in its release layout: `train_val2018/<super>/<id>/<hash>.jpg` and the
    COCO-style `train2018.json` / `val2018.json` with every field of the official schema.

    Category `k` (json id `k`, as the release numbers them 0..8141) is in
    `supercategories[k]`, its images in folder `train_val2018/<supercategory>/<k>/`. Each image
    is a JPEG of `size` (width, height) in a colour of its class plus noise.

    Returns `{"train": [(file_name, class)], "test": [...], "classes": [names]}`.
    """
    rng = np.random.default_rng(3)
    category_entries = []
    for cid, supercategory in enumerate(supercategories):
        category_entries.append(
            {
                "id": cid,
                "name": f"{cid}",  # the 2018 release obfuscates names
                "supercategory": supercategory,
                "kingdom": "k",
                "phylum": "p",
                "class": "c",
                "order": "o",
                "family": "f",
                "genus": "g",
            }
        )
    written: dict = {"classes": [c["name"] for c in category_entries]}
    next_id = 1000
    val_counts = (val_per_class,) * len(supercategories)
    for split, counts in (("train", train_per_class), ("test", val_counts)):
        images, annotations, listed = [], [], []
        for cid, (supercategory, count) in enumerate(zip(supercategories, counts, strict=True)):
            for _ in range(count):
                next_id += 1
                name = f"{next_id:032x}.jpg"
                file_name = f"train_val2018/{supercategory}/{cid}/{name}"
                pixels = rng.integers(0, 60, size=(size[1], size[0], 3))
                pixels[..., cid % 3] += 180
                path = root / file_name
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=95)
                images.append(
                    {
                        "id": next_id,
                        "width": size[0],
                        "height": size[1],
                        "file_name": file_name,
                        "license": 1,
                        "rights_holder": "someone",
                    }
                )
                annotation = {"id": next_id + 50_000, "image_id": next_id, "category_id": cid}
                annotations.append(annotation)
                listed.append((file_name, cid))
        document = {
            "info": {
                "year": 2018,
                "version": "1.0",
                "description": "stand-in",
                "contributor": "tests",
                "url": "",
                "date_created": "2018-02-01 00:00:00",
            },
            "images": images,
            "annotations": annotations,
            "categories": category_entries,
            "licenses": [{"id": 1, "name": "CC BY", "url": ""}],
        }
        json_name = "train2018.json" if split == "train" else "val2018.json"
        (root / json_name).write_text(json.dumps(document))
        written[split] = listed
    return written
