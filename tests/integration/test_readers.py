"""The datamodules read the real on-disk formats (through torchvision's readers)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from tests.standins import (
    write_cifar,
    write_fashion_mnist_gz,
    write_inaturalist2018,
    write_svhn,
)
from tidal_lightning.data.datamodules import CIFAR10, CIFAR100, SVHN, FashionMNIST
from tidal_lightning.data.decode import read_image
from tidal_lightning.data.inaturalist import AnnotationError, INaturalist2018
from tidal_lightning.errors import DataNotFoundError

DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def no_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stand-ins cannot match the real archives' md5 sums; every other step runs as shipped."""

    def exists(fpath: str, md5: str | None = None) -> bool:
        return os.path.isfile(fpath)

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", exists)
    monkeypatch.setattr(torchvision.datasets.svhn, "check_integrity", exists)


@pytest.mark.parametrize("hundred", [False, True])
def test_cifar_pickles(tmp_path: Path, no_md5: None, hundred: bool) -> None:
    written = write_cifar(tmp_path, hundred=hundred)
    data = (CIFAR100 if hundred else CIFAR10)(root=str(tmp_path), download=False)
    data.load()
    assert data.train_images.dtype == torch.uint8
    assert torch.equal(data.train_images, torch.from_numpy(written["train_x"]))
    assert data.train_targets.tolist() == written["train_y"].tolist()
    assert torch.equal(data.test_images, torch.from_numpy(written["test_x"]))
    assert data.classes == written["classes"] and data.in_channels == 3


def test_fashion_mnist_from_the_debian_layout(tmp_path: Path) -> None:
    written = write_fashion_mnist_gz(tmp_path / "system")
    data = FashionMNIST(
        root=str(tmp_path / "root"), download=False, system_dir=str(tmp_path / "system")
    )
    data.load()
    images, labels = written["train"]
    assert data.train_images.shape == (30, 1, 28, 28)
    assert torch.equal(data.train_images[:, 0], torch.from_numpy(images))
    assert data.train_targets.tolist() == labels.tolist()
    assert data.test_images.shape == (10, 1, 28, 28) and data.num_classes == 10
    assert sorted(p.name for p in (tmp_path / "root/FashionMNIST/raw").iterdir()) == sorted(
        FashionMNIST.files
    )


def test_svhn_mat_files(tmp_path: Path, no_md5: None) -> None:
    written = write_svhn(tmp_path)
    data = SVHN(root=str(tmp_path), download=False)
    data.load()
    x, y = written["train"]
    assert torch.equal(data.train_images, torch.from_numpy(np.transpose(x, (3, 2, 0, 1)).copy()))
    assert data.train_targets.tolist() == [
        d % 10 for d in y.flatten().tolist()
    ]  # label 10 -> digit 0
    assert not data.flip


@pytest.mark.parametrize("make", [CIFAR10, CIFAR100, SVHN, FashionMNIST])
def test_missing_files_offline_name_the_path(tmp_path: Path, make: type) -> None:
    data = make(root=str(tmp_path / "empty"), download=False)
    with pytest.raises(DataNotFoundError, match=str(tmp_path / "empty")):
        data.load()


@pytest.mark.skipif(not DEBIAN_FMNIST.exists(), reason="needs `make data` (dataset-fashion-mnist)")
def test_real_fashion_mnist(tmp_path: Path) -> None:
    data = FashionMNIST(root=str(tmp_path), download=False, system_dir=str(DEBIAN_FMNIST))
    data.load()
    assert data.train_images.shape == (60000, 1, 28, 28) and len(data.test_targets) == 10000
    assert torch.bincount(data.train_targets).tolist() == [6000] * 10
    assert data.classes[0] == "T-shirt/top"


def test_inaturalist2018_from_its_release_layout(tmp_path: Path) -> None:
    written = write_inaturalist2018(tmp_path / "inat")
    data = INaturalist2018(
        root=str(tmp_path / "inat"), image_size=[12, 10], cache_workers=0, storage="memory"
    )
    data.load()
    assert data.classes == written["classes"] and data.num_classes == 3
    assert data.supercategories == ["Plantae", "Aves", "Aves"]
    # dataset order = the order of `images` in each json file; the val split is the test set
    assert data.train_targets.tolist() == [label for _, label in written["train"]]
    assert data.test_targets.tolist() == [label for _, label in written["test"]]
    assert data.image_shape == (3, 12, 10) and data.num_train == 13
    files = [tmp_path / "inat" / name for name, _ in written["train"]]
    expected = torch.stack([read_image(f, 3, (12, 10)) for f in files])
    assert torch.equal(data.gather(torch.arange(13), "cpu"), expected)
    # the JPEGs are mostly their class's colour: channel (class % 3) is the brightest
    brightest = expected.float().mean(dim=(2, 3)).argmax(dim=1)
    assert brightest.tolist() == [label % 3 for _, label in written["train"]]
    test_images, _ = data.split_on("cpu", train=False)
    first_test = read_image(tmp_path / "inat" / written["test"][0][0], 3, (12, 10))
    assert torch.equal(test_images[0], first_test)


def test_inaturalist2018_missing_files_and_bad_annotations_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match=r"train2018\.json not found"):
        INaturalist2018(root=str(tmp_path / "none"), cache_workers=0).load()
    written = write_inaturalist2018(tmp_path / "inat")
    (tmp_path / "inat" / written["train"][2][0]).unlink()
    with pytest.raises(DataNotFoundError, match=re.escape(written["train"][2][0])):
        INaturalist2018(root=str(tmp_path / "inat"), cache_workers=0).load()
    document = json.loads((tmp_path / "inat" / "val2018.json").read_text())
    document["annotations"][0]["category_id"] = 99
    (tmp_path / "inat" / "val2018.json").write_text(json.dumps(document))
    with pytest.raises(AnnotationError, match=r"category ids \[99\]"):
        INaturalist2018(root=str(tmp_path / "inat"), cache_workers=0)._split_files(train=False)


def _install_at(root: str, start: float) -> None:
    """One sweep job's first use of the data folder, starting at wall-clock time `start`."""
    import time

    time.sleep(max(0.0, start - time.time()))
    FashionMNIST(
        root=root, download=False, system_dir=str(DEBIAN_FMNIST)
    )._install_from_system_dir()


@pytest.mark.skipif(not DEBIAN_FMNIST.is_dir(), reason="needs `make data` (dataset-fashion-mnist)")
def test_parallel_jobs_fill_an_empty_data_folder_at_once(tmp_path: Path) -> None:
    """Four sweep jobs copy the Debian files into the same empty folder at the same moment."""
    import multiprocessing
    import time
    from concurrent.futures import ProcessPoolExecutor

    start = time.time() + 2.0
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(4, mp_context=context) as pool:
        list(pool.map(_install_at, [str(tmp_path)] * 4, [start] * 4))  # raises if a job failed
    raw = tmp_path / "FashionMNIST/raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(FashionMNIST.files)  # no partial left
    data = FashionMNIST(root=str(tmp_path), download=False)
    data.load()
    assert data.train_images.shape == (60000, 1, 28, 28)
