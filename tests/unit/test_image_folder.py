"""The image-folder datamodule's reading and errors, predict's arguments, checkpoint safety."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tidal_lightning.checkpoints import (
    CheckpointError,
    build_backbone,
    load_checkpoint,
    make_checkpoint,
    save_checkpoint,
)
from tidal_lightning.data.image_folder import (
    UNKNOWN,
    ImageFolderData,
    ImageFolderError,
    list_images,
)
from tidal_lightning.errors import ConfigError, TidalError
from tidal_lightning.models.backbones import SmallCNN
from tidal_lightning.predict import parse_args


def png(path: Path, rgb: tuple[int, int, int], size: tuple[int, int] = (8, 6)) -> None:
    """A solid-colour PNG, `size` = (width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).save(path)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    png(root / "b.png", (255, 0, 0))
    png(root / "sub" / "a.PNG", (0, 255, 0))
    png(root / "a.jpg", (0, 0, 255))
    png(root / ".hidden" / "c.png", (9, 9, 9))  # skipped, as is .x.png
    png(root / ".x.png", (9, 9, 9))
    (root / "notes.txt").write_text("not an image")
    return root


def test_list_images_is_recursive_sorted_and_skips_hidden(folder: Path) -> None:
    assert list_images(folder) == ["a.jpg", "b.png", "sub/a.PNG"]


def data(root: Path, **kwargs: object) -> ImageFolderData:
    settings: dict = {"classes": ["red", "green", "blue"], "image_size": [4, 5], **kwargs}
    return ImageFolderData(root=str(root), **settings)


def test_reads_resized_images_known_labels_and_a_test_split(folder: Path, tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("path,label\nsub/a.PNG,green\nb.png,\na.jpg,blue\n")
    png(tmp_path / "held" / "t.png", (255, 0, 0))
    png(folder / "inside_test.png", (0, 255, 0))  # a test image inside root: not trained on
    (tmp_path / "test.csv").write_text("path,label\n../held/t.png,red\ninside_test.png,green\n")
    module = data(
        folder, labels_csv=str(tmp_path / "labels.csv"), test_csv=str(tmp_path / "test.csv")
    )
    module.load()
    assert module.train_paths == ["a.jpg", "b.png", "sub/a.PNG"]
    assert module.train_images.shape == (3, 3, 4, 5) and module.train_images.dtype == torch.uint8
    # b.png is red: channel 0 full, the others empty (a solid colour survives resizing)
    assert module.train_images[1, :, 2, 2].tolist() == [255, 0, 0]
    assert module.train_targets.tolist() == [2, UNKNOWN, 1]
    assert module.known_order.tolist() == [2, 0]  # the CSV's order, blank labels left out
    assert module.test_targets.tolist() == [0, 1] and module.test_images.shape == (2, 3, 4, 5)
    assert module.mean == (0.5, 0.5, 0.5) and module.in_channels == 3


def test_greyscale_and_a_classes_file(folder: Path, tmp_path: Path) -> None:
    (tmp_path / "classes.txt").write_text("red\n\ngreen\nblue\n")
    module = ImageFolderData(
        root=str(folder), classes_file=str(tmp_path / "classes.txt"), channels=1, image_size=3
    )
    module.load()
    assert module.classes == ["red", "green", "blue"]
    assert module.train_images.shape == (3, 1, 3, 3) and len(module.test_targets) == 0
    # ITU-R 601-2 luma of pure blue (PIL's L mode): 29/255 of full white
    assert module.train_images[0, 0, 1, 1].item() == 29


@pytest.mark.parametrize(
    ("setup", "kwargs", "message"),
    [
        (lambda root, tmp: None, {"classes": None}, "no class names given"),
        (lambda root, tmp: None, {"root_name": "missing"}, "no such folder"),
        (
            lambda root, tmp: (root / "x.png").write_bytes(b"not a png"),
            {},
            "x.png is not a readable image",
        ),
        (
            lambda root, tmp: (tmp / "l.csv").write_text("path,label\nb.png,purple\n"),
            {"labels_csv": "l.csv"},
            "line 2 (b.png): label 'purple' is not a class",
        ),
        (
            lambda root, tmp: (tmp / "l.csv").write_text("path,label\nzz.png,red\n"),
            {"labels_csv": "l.csv"},
            "line 2: zz.png",
        ),
        (
            lambda root, tmp: (tmp / "l.csv").write_text("path,label\nb.png,red\nb.png,red\n"),
            {"labels_csv": "l.csv"},
            "line 3: b.png is listed again (first on line 2)",
        ),
        (lambda root, tmp: None, {"labels_csv": "nowhere.csv"}, "nowhere.csv: no such file"),
        (
            lambda root, tmp: (tmp / "t.csv").write_text("path,label\nb.png,\n"),
            {"test_csv": "t.csv"},
            "every test image needs a label",
        ),
        (lambda root, tmp: None, {"channels": 2}, "dataset.channels=2: must be 1 or 3"),
        (lambda root, tmp: None, {"std": [1, 0, 1]}, "dataset.std=[1, 0, 1]"),
        (lambda root, tmp: None, {"classes": ["a", "a"]}, "names a class twice"),
    ],
)
def test_bad_folders_and_csvs_are_clear_errors(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setup, kwargs, message
) -> None:
    monkeypatch.chdir(tmp_path)  # CSV paths are relative to the working directory
    setup(folder, tmp_path)
    root = tmp_path / kwargs.pop("root_name") if "root_name" in kwargs else folder
    with pytest.raises(ImageFolderError, match=re.escape(message)):
        data(root, **kwargs).load()


def test_an_empty_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageFolderError, match="holds no training images"):
        data(tmp_path / "empty").load()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["images=x"], "checkpoint must be given"),
        (["checkpoint=c.pt", "images=x", "colour=red"], "unknown argument 'colour=red'"),
        (["checkpoint=c.pt", "images=x", "batch_size=0"], "batch_size=0"),
        (["checkpoint=c.pt", "checkpoint=d.pt", "images=x"], "checkpoint is given twice"),
        (["checkpoint=c.pt", "--images", "x"], "unknown argument '--images'"),
    ],
)
def test_predict_arguments(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_args(argv)


def test_checkpoint_round_trip_and_refusals(tmp_path: Path) -> None:
    backbone = SmallCNN(num_classes=2, in_channels=3, width=4)
    system = torch.nn.Module()
    system.backbone = backbone
    checkpoint = make_checkpoint(
        system,
        {"_target_": "tidal_lightning.models.backbones.SmallCNN", "width": 4, "dropout": 0.0},
        ["x", "y"],
        (3, 8, 8),
        (0.5, 0.5, 0.5),
        (0.25, 0.25, 0.25),
        cycle=1,
        num_labeled=10,
    )
    path = tmp_path / "c.pt"
    save_checkpoint(checkpoint, path)
    rebuilt = build_backbone(load_checkpoint(path))
    images = torch.from_numpy(np.random.default_rng(0).random((2, 3, 8, 8), dtype=np.float32))
    assert torch.equal(rebuilt(images)[0], backbone.eval()(images)[0])
    # a file that names something other than a Backbone is refused before anything is called
    for target in ("os.system", "collections.OrderedDict"):
        with pytest.raises(CheckpointError, match="not a plain tidal_lightning Backbone"):
            build_backbone({**checkpoint, "backbone": {"_target_": target}})
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="lacks"):
        load_checkpoint(tmp_path / "other.pt")
    assert issubclass(CheckpointError, TidalError)
