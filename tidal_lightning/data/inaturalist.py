"""iNaturalist 2018 (Van Horn et al., CVPR 2018): the real-world long tail of the TiDAL paper.

Read from the official release layout under `dataset.root`:

    train_val2018/<supercategory>/<category id>/<image>.jpg    (train_val2018.tar.gz)
    train2018.json, val2018.json                                 (COCO-style annotations)

437,513 training and 24,426 validation images of 8,142 species. The official validation split
is the test split (the competition's test labels were never released). The image folders hold
both splits mixed, which is all torchvision's `INaturalist("2018")` lists, so the json files
decide which image is in which split and with which label; torchvision's downloader fetches
and checks the archives (`dataset.download=true`). Each split is decoded once into a cache at
`image_size` (`CachedImageData`) and trained from memory or streamed from it.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision.datasets.inaturalist import DATASET_MD5, DATASET_URLS
from torchvision.datasets.utils import download_and_extract_archive

from tidal_lightning.data.cached import CachedImageData, SplitFiles
from tidal_lightning.data.decode import as_size, read_image
from tidal_lightning.errors import DataNotFoundError, TidalError

ANNOTATIONS = {"train": "train2018.json", "test": "val2018.json"}
IMAGES_FOLDER = "train_val2018"
# The annotation archives and their md5 sums, as the competition's README lists them.
_BUCKET = "https://ml-inat-competition-datasets.s3.amazonaws.com/2018"
ANNOTATION_ARCHIVES = {
    "train2018.json": (f"{_BUCKET}/train2018.json.tar.gz", "bfa29d89d629cbf04d826a720c0a68b0"),
    "val2018.json": (f"{_BUCKET}/val2018.json.tar.gz", "f2ed8bfe3e9901cdefceb4e53cd3775d"),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_DOWNLOAD_TIMEOUT_S = 60.0


class AnnotationError(TidalError):
    """An annotation file does not follow the iNaturalist 2018 schema."""


class INaturalist2018(CachedImageData):
    """iNaturalist 2018 from `train2018.json` / `val2018.json` and `train_val2018/`.

    Dataset indices follow the order of `images` in each json file; class `k` is the `k`-th
    category by id (ids run 0 .. 8141, so class = category id), named by its `name`.

    Args:
        root: the folder holding `train_val2018/` and the two json files.
        image_size: `[H, W]` (or one int) every image is resized to (squashed, not cropped).
        mean, std: per-channel normalisation on the [0, 1] scale (default: ImageNet's).
        download: fetch the missing archives (about 120 GB of images) with torchvision.
        **kwargs: see `CachedImageData` (storage, cache) and `ImageClassificationData`.
    """

    dataset_name = "iNaturalist 2018"
    how_to_get = (
        "get train_val2018.tar.gz, train2018.json.tar.gz and val2018.json.tar.gz of the "
        "iNaturalist 2018 competition (github.com/visipedia/inat_comp, 2018/) and extract them "
        "there, or set dataset.download=true (about 120 GB)"
    )

    def __init__(
        self,
        root: str = "data/inaturalist2018",
        image_size: int | Sequence[int] = 64,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        download: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, download=download, **kwargs)
        self.image_size = image_size
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.supercategories: list[str] = []  # per class
        self._class_of: dict[int, int] = {}  # category id -> class index

    def decoder(self) -> Callable[[Path, int, tuple[int, int]], Tensor]:
        return read_image

    def decoded_shape(self) -> tuple[int, int, int]:
        return (3, *as_size(self.image_size))

    def expected_path(self) -> Path:
        return self.root / ANNOTATIONS["train"]

    def _annotations(self, split: str) -> dict[str, Any]:
        path = self.root / ANNOTATIONS[split]
        if not path.is_file() and self.download:
            self._download()
        if not path.is_file():
            raise DataNotFoundError(
                f"{self.dataset_name}: {path} not found: {self.how_to_get}, or point "
                "dataset.root at a folder that has them."
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise AnnotationError(f"{path} cannot be read as JSON ({error})") from error
        missing = [key for key in ("images", "annotations", "categories") if key not in data]
        if missing:
            raise AnnotationError(f"{path} lacks {missing}: not an iNaturalist 2018 file")
        return data

    def _download(self) -> None:
        """The missing archives, fetched and md5-checked by torchvision, extracted into root."""
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)
        try:
            for name, (url, md5) in ANNOTATION_ARCHIVES.items():
                if not (self.root / name).is_file():
                    download_and_extract_archive(url, str(self.root), md5=md5)
            if not (self.root / IMAGES_FOLDER).is_dir():
                download_and_extract_archive(
                    DATASET_URLS["2018"], str(self.root), md5=DATASET_MD5["2018"]
                )
        except Exception as failed:  # urllib, socket and torchvision errors alike
            raise DataNotFoundError(
                f"{self.dataset_name}: the download into {self.root} failed ({failed}); "
                f"{self.how_to_get}"
            ) from failed
        finally:
            socket.setdefaulttimeout(previous)

    def _split_files(self, train: bool) -> SplitFiles:
        split = "train" if train else "test"
        data = self._annotations(split)
        where = self.root / ANNOTATIONS[split]
        if train:
            categories = sorted(data["categories"], key=lambda c: int(c["id"]))
            self._class_of = {int(c["id"]): k for k, c in enumerate(categories)}
            self.classes = [str(c["name"]) for c in categories]
            self.supercategories = [str(c.get("supercategory", "")) for c in categories]
        category_of: dict[int, list[int]] = {}
        for annotation in data["annotations"]:
            category_of.setdefault(int(annotation["image_id"]), []).append(
                int(annotation["category_id"])
            )
        paths, targets, problems = [], [], []
        for image in data["images"]:
            found = category_of.get(int(image["id"]), [])
            if len(found) != 1 or found[0] not in self._class_of:
                problems.append(
                    f"image {image['id']} ({image['file_name']}): category ids {found}, "
                    "expected exactly one of the training file's categories"
                )
                continue
            paths.append(str(image["file_name"]))
            targets.append(self._class_of[found[0]])
        if problems:
            raise AnnotationError(
                f"{where}: {len(problems)} images without one known label:\n  "
                + "\n  ".join(problems[:5])
            )
        return SplitFiles(self.root, paths, torch.tensor(targets, dtype=torch.long))
