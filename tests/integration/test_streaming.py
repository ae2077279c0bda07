"""Whole runs on cached file datasets: the iNaturalist 2018 stand-in through a killed and
resumed cache build and an AL cycle; an image folder picking the same samples whether its
images are held in memory or streamed from the cache."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import compose_config
from tests.standins import write_inaturalist2018
from tidal_lightning.al.loop import run
from tidal_lightning.data import inaturalist
from tidal_lightning.data.decode import read_image
from tidal_lightning.data.inaturalist import INaturalist2018

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]

SMALL_RUN = [
    "model=small_cnn",
    "model.backbone.width=8",
    "model.optimizer.lr=0.05",
    "model.scheduler.milestones=[8]",
    "logger=none",
    "trainer.max_epochs=3",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "dataset.batch_size=8",
    "dataset.pad=2",
    "dataset.cache_workers=0",
]

KILLED_LOAD = """
import os, signal, sys
from tidal_lightning.data import cache, inaturalist

cache.CHUNK_IMAGES = 4
root, cache_dir = sys.argv[1], sys.argv[2]
real, seen = inaturalist.read_image, 0

def dying(path, channels, size):
    global seen
    seen += 1
    if seen == 7:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(path, channels, size)

inaturalist.read_image = dying
data = inaturalist.INaturalist2018(
    root=root, image_size=16, cache_dir=cache_dir, cache_workers=0, progress=False
)
data.load()
"""


def read_queries(run_dir: Path) -> list[tuple[str, str, str]]:
    with open(run_dir / "queries.csv", newline="") as handle:
        return [(r["cycle"], r["index"], r["label"]) for r in csv.DictReader(handle)]


def test_inaturalist2018_standin_build_killed_resumed_then_an_al_cycle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, cache_dir = tmp_path / "inat", tmp_path / "cache"
    written = write_inaturalist2018(root)
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_LOAD, str(root), str(cache_dir)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        timeout=300,
    )
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    (partial,) = cache_dir.glob("*train*.partial")
    # killed while decoding the 7th image: the first chunk of 4 was written and marked
    assert sorted(p.name for p in (partial / "done").iterdir()) == ["0-4"]
    # the resume: the same reader, decoding only what the killed build had not finished
    decoded: list[str] = []

    def counting(path: Path, channels: int, size: tuple[int, int]) -> torch.Tensor:
        decoded.append(Path(path).name)
        return read_image(path, channels, size)

    monkeypatch.setattr("tidal_lightning.data.cache.CHUNK_IMAGES", 4)
    monkeypatch.setattr(inaturalist, "read_image", counting)
    data = INaturalist2018(
        root=str(root), image_size=16, cache_dir=str(cache_dir), cache_workers=0, progress=False
    )
    data.load()
    train_files = [name for name, _ in written["train"]]
    assert decoded[: 13 - 4] == [Path(name).name for name in train_files[4:]]
    assert len(decoded) == 13 - 4 + 6  # the rest of the training split, then the test split
    expected = torch.stack([read_image(root / name, 3, (16, 16)) for name in train_files])
    assert torch.equal(data.gather(torch.arange(13), "cpu"), expected)
    monkeypatch.undo()

    # one AL cycle on it: train, query 3 of the pool, train again
    run_dir = tmp_path / "run"
    cfg = compose_config(
        [
            "dataset=inaturalist2018",
            f"dataset.root={root}",
            "dataset.image_size=16",
            f"dataset.cache_dir={cache_dir}",
            "strategy=tidal_margin",
            "al.initial=4",
            "al.budget=3",
            "al.cycles=2",
            "al.pool_subset=6",
            *SMALL_RUN,
        ],
        run_dir,
    )
    rows = run(cfg)
    assert [r["num_labeled"] for r in rows] == [4, 7]
    assert all(0.0 <= r["test_acc"] <= 1.0 for r in rows)
    queried = [int(i) for c, i, _ in read_queries(run_dir) if c == "1"]
    assert len(queried) == 3 and len(set(queried)) == 3
    labels = {int(i): int(label) for _, i, label in read_queries(run_dir)}
    assert all(labels[i] == written["train"][i][1] for i in labels)  # the json's labels


def write_folder(root: Path, count: int) -> Path:
    """`count` 12x12 PNGs of 3 colour classes and a labels CSV naming every one."""
    rng = np.random.default_rng(1)
    rows = []
    for n in range(count):
        label = int(rng.integers(0, 3))
        pixels = rng.integers(0, 90, size=(12, 12, 3))
        pixels[..., label] += 150
        relative = f"{'xy'[n % 2]}/p{n:03d}.png"
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(root / relative)
        rows.append(f"{relative},{'rgb'[label]}")
    labels = root.parent / "labels.csv"
    labels.write_text("path,label\n" + "\n".join(rows) + "\n")
    return labels


def test_an_image_folder_picks_the_same_samples_streamed_or_held_in_memory(
    tmp_path: Path,
) -> None:
    labels = write_folder(tmp_path / "photos", 70)
    results: dict[str, tuple[list, list]] = {}
    for storage in ("memory", "stream"):
        run_dir = tmp_path / storage
        cfg = compose_config(
            [
                "dataset=image_folder",
                f"dataset.root={tmp_path / 'photos'}",
                "dataset.image_size=[12,12]",
                "dataset.classes=[r,g,b]",
                f"dataset.labels_csv={labels}",
                f"dataset.storage={storage}",
                "strategy=cal",
                "al.initial=10",
                "al.budget=8",
                "al.cycles=3",
                "al.pool_subset=40",
                "seed=4",
                *SMALL_RUN,
            ],
            run_dir,
        )
        rows = run(cfg)
        results[storage] = (read_queries(run_dir), [r["test_acc"] for r in rows])
    assert len(results["memory"][0]) == 10 + 8 + 8
    assert results["memory"] == results["stream"]  # the same picks, the same accuracies
