"""A folder of your own image files as an AL dataset; labels come from CSVs, or later from you.

The training split is every image under `root` (recursively, sorted by relative path: the
position in that order is the sample's dataset index). Labels known up front come from
`labels_csv`; every other training label is `UNKNOWN` (-1) until an oracle supplies it. A
held-out `test_csv` forms the test split; without one there is none.

Each split is decoded once, resized to `image_size`, into a cache on disk (`CachedImageData`:
built in parallel, resumable, shared by runs, refused when the files change), then held in
memory or streamed from the cache as it fits: a folder of a million photos runs as a folder
of a hundred does.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tidal_lightning.data.cached import CachedImageData, SplitFiles
from tidal_lightning.data.decode import (  # re-exported: predict and tests read them here
    IMAGE_SUFFIXES,
    ImageFolderError,
    as_size,
    list_images,
    read_image,
    read_images,
)

UNKNOWN = -1  # the target of a training image whose label nobody has given yet

__all__ = [
    "IMAGE_SUFFIXES",
    "UNKNOWN",
    "ImageFolderData",
    "ImageFolderError",
    "as_size",
    "list_images",
    "read_image",
    "read_images",
]


def read_class_names(classes: Sequence[str] | None, classes_file: str | None) -> list[str]:
    """The class list from `dataset.classes` or `dataset.classes_file` (one name per line)."""
    if classes and classes_file:
        raise ImageFolderError(
            "dataset.classes and dataset.classes_file are both set; keep one of them"
        )
    if classes_file:
        path = Path(classes_file)
        if not path.is_file():
            raise ImageFolderError(f"dataset.classes_file={classes_file}: no such file")
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        names = [n for n in names if n]
        where = f"dataset.classes_file={classes_file}"
    else:
        names = [str(c).strip() for c in classes or []]
        where = "dataset.classes"
    if not names:
        raise ImageFolderError(
            "no class names given: set dataset.classes=[cat,dog,...] or "
            "dataset.classes_file=<a file with one class name per line>"
        )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated or "" in names:
        raise ImageFolderError(f"{where} names a class twice or a blank class: {repeated}")
    return names


def read_label_csv(
    csv_path: Path, key: str, classes: Sequence[str]
) -> list[tuple[int, str, int | None]]:
    """`(line, path, class index or None for a blank label)` for each row of a `path,label` CSV.

    Args:
        csv_path: the CSV file.
        key: the config key that names it, for error messages.
        classes: the class names; a label must be one of them.
    """
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise ImageFolderError(f"{key}={csv_path} cannot be read ({error})") from error
    reader = csv.DictReader(text.splitlines())
    if reader.fieldnames is None or not {"path", "label"} <= set(reader.fieldnames):
        raise ImageFolderError(
            f"{key}={csv_path} must be a CSV with a header row holding `path` and `label` "
            f"columns (found {reader.fieldnames})"
        )
    index_of = {name: c for c, name in enumerate(classes)}
    rows: list[tuple[int, str, int | None]] = []
    seen: dict[str, int] = {}
    problems: list[str] = []
    for line, row in enumerate(reader, start=2):
        path, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
        if not path:
            problems.append(f"line {line}: the path is blank")
            continue
        if path in seen:
            problems.append(f"line {line}: {path} is listed again (first on line {seen[path]})")
            continue
        seen[path] = line
        if label and label not in index_of:
            problems.append(
                f"line {line} ({path}): label {label!r} is not a class; the classes are "
                f"{list(classes)}"
            )
            continue
        rows.append((line, path, index_of[label] if label else None))
    if problems:
        raise ImageFolderError(f"{key}={csv_path}:\n  " + "\n  ".join(problems[:10]))
    return rows


class ImageFolderData(CachedImageData):
    """Your own images: a folder, a class list, and whichever labels are known.

    Args:
        root: the folder of training images (searched recursively; png, jpg, jpeg, bmp,
            gif, webp, tif). Sorted relative paths give the dataset indices.
        image_size: `[H, W]` (or one int) every image is resized to.
        channels: 1 (greyscale) or 3 (RGB).
        classes: the class names, in the order the model's outputs follow.
        classes_file: instead of `classes`: a text file with one class name per line.
        labels_csv: `path,label` rows (path relative to `root`) of the labels known now; a
            blank label means unknown. The CSV file itself is looked for as given, then
            inside `root`.
        test_csv: held-out `path,label` rows (path relative to `root`, may lead outside
            it); these images are never in the training pool. None: no test split.
        mean, std: per-channel normalisation on the [0, 1] scale (one number for all).
        **kwargs: see `CachedImageData` (storage, cache) and `ImageClassificationData`
            (batch sizes, augmentation, imbalance).
    """

    dataset_name = "image_folder"
    how_to_get = "point dataset.root at your folder of images"

    def __init__(
        self,
        root: str,
        image_size: int | Sequence[int] = (32, 32),
        channels: int = 3,
        classes: Sequence[str] | None = None,
        classes_file: str | None = None,
        labels_csv: str | None = None,
        test_csv: str | None = None,
        mean: float | Sequence[float] = 0.5,
        std: float | Sequence[float] = 0.5,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("download", False)  # nothing to download: the files are yours
        super().__init__(root=root, **kwargs)
        # Checked in `load`, not here: Hydra's instantiate would wrap the error in its own.
        self.settings: dict[str, Any] = {
            "image_size": image_size,
            "channels": channels,
            "mean": mean,
            "std": std,
        }
        self.image_size = (0, 0)
        self.channels = 0
        self.class_names = list(classes) if classes else None
        self.classes_file = classes_file
        self.labels_csv = labels_csv
        self.test_csv = test_csv
        self.train_paths: list[str] = []
        self.test_paths: list[str] = []
        # dataset indices of the labels_csv rows that carry a label, in the file's order
        self.known_order = torch.empty(0, dtype=torch.long)

    def _check_settings(self) -> None:
        channels = self.settings["channels"]
        if channels not in (1, 3):
            raise ImageFolderError(f"dataset.channels={channels}: must be 1 or 3")
        self.channels = int(channels)
        self.image_size = as_size(self.settings["image_size"])
        self.mean = self._per_channel(self.settings["mean"], "mean")
        self.std = self._per_channel(self.settings["std"], "std")

    def _per_channel(self, value: float | Sequence[float], name: str) -> tuple[float, ...]:
        values = [float(value)] if isinstance(value, int | float) else [float(v) for v in value]
        if len(values) == 1:
            values *= self.channels
        if len(values) != self.channels or (name == "std" and min(values) <= 0):
            raise ImageFolderError(
                f"dataset.{name}={value}: give one number or {self.channels} "
                f"(one per channel){', all > 0' if name == 'std' else ''}"
            )
        return tuple(values)

    def _csv_file(self, given: str, key: str) -> Path:
        """A CSV named in the config: as given (relative to the working dir), else in root."""
        for candidate in (Path(given), self.root / given):
            if candidate.is_file():
                return candidate
        raise ImageFolderError(
            f"{key}={given}: no such file (looked at {Path(given).resolve()} and "
            f"{(self.root / given).resolve()})"
        )

    def _test_rows(self) -> list[tuple[int, str, int | None]]:
        if not self.test_csv:
            return []
        path = self._csv_file(self.test_csv, "dataset.test_csv")
        rows = read_label_csv(path, "dataset.test_csv", self.classes)
        blank = [f"line {line} ({p})" for line, p, label in rows if label is None]
        if blank:
            raise ImageFolderError(
                f"dataset.test_csv={self.test_csv}: every test image needs a label; "
                f"blank on {', '.join(blank[:5])}"
            )
        missing = [f"line {line}: {p}" for line, p, _ in rows if not (self.root / p).is_file()]
        if missing:
            raise ImageFolderError(
                f"dataset.test_csv={self.test_csv} lists images that do not exist (paths are "
                f"relative to dataset.root={self.root}):\n  " + "\n  ".join(missing[:10])
            )
        return rows

    def decoder(self) -> Callable[[Path, int, tuple[int, int]], Tensor]:
        return read_image

    def decoded_shape(self) -> tuple[int, int, int]:
        return self.channels, *self.image_size

    def _split_files(self, train: bool) -> SplitFiles:
        if train:
            return self._train_files()
        rows = self._test_rows()
        self.test_paths = [p for _, p, _ in rows]
        targets = torch.tensor([label for _, _, label in rows], dtype=torch.long)
        return SplitFiles(self.root, self.test_paths, targets)

    def _train_files(self) -> SplitFiles:
        self._check_settings()
        self.classes = read_class_names(self.class_names, self.classes_file)
        if not self.root.is_dir():
            raise ImageFolderError(
                f"dataset.root={self.root}: no such folder; point it at your folder of images"
            )
        # Test images inside root would otherwise also sit in the training pool (a leak).
        held_out = {(self.root / p).resolve() for _, p, _ in self._test_rows()}
        paths = [p for p in list_images(self.root) if (self.root / p).resolve() not in held_out]
        if not paths:
            raise ImageFolderError(
                f"dataset.root={self.root} holds no training images (looked recursively for "
                f"{', '.join(sorted(IMAGE_SUFFIXES))}, minus those in dataset.test_csv)"
            )
        self.train_paths = paths
        targets = torch.full((len(paths),), UNKNOWN, dtype=torch.long)
        if self.labels_csv:
            csv_path = self._csv_file(self.labels_csv, "dataset.labels_csv")
            position = {p: i for i, p in enumerate(paths)}
            rows = read_label_csv(csv_path, "dataset.labels_csv", self.classes)
            unknown = [f"line {line}: {p}" for line, p, _ in rows if p not in position]
            if unknown:
                raise ImageFolderError(
                    f"dataset.labels_csv={self.labels_csv} names images that are not training "
                    f"images under dataset.root={self.root} (paths are relative to it):\n  "
                    + "\n  ".join(unknown[:10])
                )
            known = [(position[p], label) for _, p, label in rows if label is not None]
            if known:
                order = torch.tensor([i for i, _ in known], dtype=torch.long)
                targets[order] = torch.tensor([label for _, label in known], dtype=torch.long)
                self.known_order = order
        return SplitFiles(self.root, paths, targets)
