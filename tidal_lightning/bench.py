"""`python -m tidal_lightning.bench` (`make bench`): what the training and scoring paths cost.

One run measures, side by side, on synthetic data (no dataset needed):

1. epoch time with TiDAL's TD module and tracker vs the plain classifier, on the paper's
   model (ResNet-18, batch 128); the same ratio on the run's own model (the CPU recipe's
   small CNN by default) and the tracker callback alone are reported beside it;
2. the Lightning loop vs a plain PyTorch loop doing the same work (same system, optimizer,
   loader, augmentation, TD module and tracker updates, on-device loss sums);
3. the real data path (device-resident uint8 split, batched crop/flip, normalisation) vs
   pre-made normalised batches already on the device;
4. label dispersion's per-epoch pool pass (`PoolDynamicsRecorder`) as a fraction of training;
5. pool scoring (`al.scoring.model_pass`) throughput and peak memory for 10k, 100k, 1M pools;
6. the per-sample PIL `DataLoader` path of the official TiDAL code vs the device path;

plus, on CUDA, ResNet-18 training images/s for fp32 / bf16-mixed, channels_last, compile.

`--short` is the GPU check's form (`scripts/gpu_check.sh`, a few minutes on a GPU): sections 1
and 2 (the TD overhead and Lightning-vs-raw ratios), scoring at two pool sizes, and five rows
of the speed options (fp32, fp32 + channels_last, bf16, bf16 + channels_last, and that with
compile; on a CPU only fp32 and bf16 + channels_last, for the CPU tiny mode of the check).
With `--out`, the JSON is rewritten after every section (`"complete": false` until the end),
so a run stopped at a time limit keeps what it measured.

Sections 1-4 run in repeats; every repeat trains each variant once, in an order rotated per
repeat, and each ratio is the median of the per-repeat ratios, so machine noise hits all
variants alike. Times are seconds per epoch, the mean of the epochs after a warm-up epoch.
Results go to `bench.json` (or `--out`).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch import Tensor

from tidal_lightning.al.scoring import model_pass
from tidal_lightning.callbacks.pool_dynamics import PoolDynamicsRecorder
from tidal_lightning.callbacks.training_dynamics import TrainingDynamicsTracker
from tidal_lightning.data.augment import random_crop_flip
from tidal_lightning.data.cache import CacheSource, ImageCache, open_cache, write_cache
from tidal_lightning.data.cached import (
    CachedImageData,
    SplitFiles,
    choose_placement,
    free_memory_bytes,
)
from tidal_lightning.data.datamodules import (
    ImageClassificationData,
    normalize_uint8,
    uint8_scale_stats,
)
from tidal_lightning.data.loader import TensorBatchLoader
from tidal_lightning.data.manifest import Manifest
from tidal_lightning.data.streaming import StreamingBatchLoader, prefetched
from tidal_lightning.errors import ConfigError, TidalError
from tidal_lightning.models.backbones import SmallCNN
from tidal_lightning.models.system import ActiveLearningSystem
from tidal_lightning.seeding import make_generator
from tidal_lightning.strategies.tidal_margin import TiDALMargin

CONF = Path(__file__).resolve().parent.parent / "conf"
if not (CONF / "model").is_dir():  # a non-editable install ships conf/ inside the package
    CONF = Path(__file__).resolve().parent / "conf"

TARGETS = {
    "td_overhead_ratio": ("<=", 1.02),
    "lightning_vs_raw_ratio": ("<=", 1.10),
    "data_path_ratio": (">=", 0.90),
    "streaming_ratio": (">=", 0.80),
}
# The Lightning fits of every repeat of sections 2-4 (on the run's model).
VARIANTS = ("plain", "td", "raw_td", "premade_td", "dispersion")
# Section 1: variants trained in lockstep (`paired_epochs`), on the paper's model and on the
# run's model.
PAPER_MODEL = "resnet18"
PAIRED_VARIANTS: dict[str, dict[str, bool]] = {
    "plain": {"td": False},
    "tracker": {"td": False, "tracker_only": True},
    "td": {"td": True},
}
PAPER_VARIANTS = ("plain", "td")
# --short: the Lightning fits section 2 needs (Lightning vs raw)
SHORT_VARIANTS = ("td", "raw_td")
# Speed-option rows (precision, channels_last, compile): every combination on CUDA; --short
# keeps the preset's default and the bf16 rows, and on a CPU (tiny mode) skips compiling.
FULL_GRID = tuple(
    (precision, channels_last, compiled)
    for compiled in (False, True)
    for precision in ("32-true", "bf16-mixed")
    for channels_last in (False, True)
)
SHORT_GRID = (
    ("32-true", False, False),
    ("32-true", True, False),
    ("bf16-mixed", False, False),
    ("bf16-mixed", True, False),
    ("bf16-mixed", True, True),
)
SHORT_CPU_GRID = (("32-true", False, False), ("bf16-mixed", True, False))


@dataclass(frozen=True)
class Settings:
    """What one bench run trains on; recorded in bench.json."""

    device: str
    model: str
    image_shape: tuple[int, int, int]
    num_classes: int
    batch_size: int
    eval_batch_size: int
    labeled: int  # training-set size of one epoch
    pool: int  # pool subset the dispersion recorder predicts every epoch
    epochs: int  # timed epochs per run, after one warm-up epoch
    repeats: int
    precision: str
    channels_last: bool
    compile: bool
    num_workers: int  # workers of the PIL DataLoader (section 6)
    scoring_sizes: tuple[int, ...]
    gpu_extra_labeled: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # section 1 on the paper's model (skipped when `model` is already it)
    td_model: str = PAPER_MODEL
    td_batch_size: int = 128
    td_labeled: int = 512
    quick: bool = False
    short: bool = False
    variants: tuple[str, ...] = VARIANTS  # the Lightning fits of sections 2-4
    pil_section: bool = True  # section 6
    # speed-option rows (precision, channels_last, compile) of ResNet-18 at `grid_image_shape`,
    # batch `td_batch_size`, `gpu_extra_labeled` images; empty: skipped
    grid: tuple[tuple[str, bool, bool], ...] = ()
    grid_image_shape: tuple[int, int, int] = (3, 32, 32)
    streaming: bool = True  # section 7
    at_scale: bool = False  # section 8: selection on pools of 437k and 1M (minutes)


def default_settings(args: argparse.Namespace) -> Settings:
    """The project's CPU recipe (fashion_mnist_cpu) on CPU, CIFAR-10 + ResNet-18 on CUDA."""
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    model = args.model or ("resnet18" if cuda else "small_cnn")
    cifar = model == "resnet18"
    settings = Settings(
        device=str(device),
        model=model,
        image_shape=(3, 32, 32) if cifar else (1, 28, 28),
        num_classes=10,
        batch_size=128 if cifar else 64,
        eval_batch_size=1024,
        labeled=10_000 if cuda else 2048,
        pool=10_000 if cuda else 5000,
        epochs=2,
        repeats=args.repeats or 5,
        precision=args.precision,
        channels_last=args.channels_last,
        compile=args.compile,
        num_workers=args.num_workers,
        scoring_sizes=(10_000, 100_000, 1_000_000),
        gpu_extra_labeled=10_000,
        mean=(0.4914, 0.4822, 0.4465) if cifar else (0.2860,),
        std=(0.2470, 0.2435, 0.2616) if cifar else (0.3530,),
        td_labeled=args.td_labeled or 512,
        grid=FULL_GRID if cuda else (),
        at_scale=args.at_scale,
    )
    if args.short:
        settings = replace(
            settings,
            short=True,
            variants=SHORT_VARIANTS,
            pil_section=False,
            streaming=False,
            repeats=args.repeats or 3,
            scoring_sizes=(10_000, 100_000),
            grid=SHORT_GRID if cuda else SHORT_CPU_GRID,
        )
    if args.quick:
        settings = replace(
            settings,
            batch_size=32,
            eval_batch_size=256,
            labeled=128,
            pool=128,
            epochs=1,
            repeats=args.repeats or 2,
            scoring_sizes=(256,) if args.short else (256, 512, 1024),
            gpu_extra_labeled=32,
            grid_image_shape=(3, 8, 8),
            td_batch_size=16,
            td_labeled=args.td_labeled or 32,
            quick=True,
        )
    if settings.repeats < 1:
        raise ConfigError(f"--repeats={settings.repeats}: must be at least 1")
    if settings.td_labeled < settings.td_batch_size:
        raise ConfigError(
            f"--td-labeled={settings.td_labeled}: must be at least one batch "
            f"({settings.td_batch_size})"
        )
    return settings


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is visible; use --device cpu or auto")
    return torch.device(name)


# ------------------------------------------------------------------------------ data
class SyntheticSplit(ImageClassificationData):
    """Random uint8 images of a given shape, generated chunk by chunk (bounded memory)."""

    dataset_name = "bench-synthetic"

    def __init__(
        self,
        num_train: int,
        shape: tuple[int, int, int],
        num_classes: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.spec = (num_train, shape, num_classes)
        self.mean, self.std = mean, std

    def _read(self, train: bool) -> tuple[Tensor, Tensor, list[str]]:
        num_train, shape, num_classes = self.spec
        n = num_train if train else 64
        generator = torch.Generator().manual_seed(int(train))
        images = torch.empty(n, *shape, dtype=torch.uint8)
        chunk = 65_536  # samples per generated chunk: no int64 temporary of the whole split
        for start in range(0, n, chunk):
            part = images[start : start + chunk]
            part.copy_(torch.randint(0, 256, part.shape, dtype=torch.uint8, generator=generator))
        targets = torch.randint(0, num_classes, (n,), generator=generator)
        return images, targets, [f"class_{c}" for c in range(num_classes)]


class _ListLoader:
    """A fixed list of batches as a loader (a bare list would be read as several loaders)."""

    def __init__(self, batches: list[tuple[Tensor, Tensor, Tensor]]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        return iter(self.batches)


class PremadeBatches(pl.LightningDataModule):
    """One epoch of the real path's output (augmented, normalised, on the device), replayed."""

    def __init__(self, batches: list[tuple[Tensor, Tensor, Tensor]]) -> None:
        super().__init__()
        self.batches = batches

    def train_dataloader(self) -> _ListLoader:
        return _ListLoader(self.batches)


def make_data(settings: Settings, num_train: int) -> SyntheticSplit:
    data = SyntheticSplit(
        num_train,
        settings.image_shape,
        settings.num_classes,
        settings.mean,
        settings.std,
        batch_size=settings.batch_size,
        eval_batch_size=settings.eval_batch_size,
        pad=4,
        flip=True,
    )
    data.load()
    data.start_cycle(torch.arange(settings.labeled), seed=0, cycle=0)
    return data


def premade_batches(data: SyntheticSplit, device: torch.device) -> PremadeBatches:
    images, targets = data.split_on(device)
    loader = TensorBatchLoader(
        images,
        targets,
        data.labeled_indices,
        data.batch_size,
        True,
        make_generator(0, 0, "shuffle"),
    )
    batches = [(data.normalize(data.augment(x)), y, i) for x, y, i in loader]
    data.start_cycle(data.labeled_indices, seed=0, cycle=0)  # rewinds the augment stream
    return PremadeBatches(batches)


# ---------------------------------------------------------------------------- models
def model_config(settings: Settings) -> Any:
    """conf/model/<model>.yaml with the bench's speed options (the CPU recipe's lr)."""
    cfg = OmegaConf.create({"model": OmegaConf.load(CONF / "model" / f"{settings.model}.yaml")})
    cfg.model.channels_last = settings.channels_last
    cfg.model.compile = settings.compile
    cfg.model.optimizer.lr = 0.05
    return cfg.model


def build_system(
    settings: Settings,
    num_train: int,
    td: bool,
    precision_options: tuple[bool, bool] | None = None,
) -> ActiveLearningSystem:
    """A freshly seeded system, as the AL loop builds it (same seed -> same weights)."""
    torch.manual_seed(0)
    model = model_config(settings)
    if precision_options is not None:
        model.channels_last, model.compile = precision_options
    backbone = instantiate(
        model.backbone, num_classes=settings.num_classes, in_channels=settings.image_shape[0]
    )
    td_module = tracker = None
    if td:
        td_module = instantiate(
            model.td_module,
            stage_channels=backbone.stage_channels,
            num_classes=settings.num_classes,
        )
        tracker = TrainingDynamicsTracker(num_train, settings.num_classes)
    return ActiveLearningSystem(
        backbone,
        settings.num_classes,
        optimizer=instantiate(model.optimizer),
        scheduler=instantiate(model.scheduler),
        td_module=td_module,
        td_tracker=tracker,
        td_weight=float(model.td_weight),
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EpochTimer(pl.Callback):
    """Wall time of each epoch: from one epoch's start to the next (end hooks included)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stamps: list[float] = []

    def _stamp(self) -> None:
        synchronize(self.device)
        self.stamps.append(time.perf_counter())

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stamp()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stamp()

    @property
    def epoch_seconds(self) -> list[float]:
        return [b - a for a, b in zip(self.stamps, self.stamps[1:], strict=False)]


def make_trainer(
    device: torch.device, epochs: int, callbacks: list[pl.Callback], precision: str
) -> pl.Trainer:
    """conf/trainer/default.yaml, without logger and progress bar (nothing to show)."""
    cfg = OmegaConf.load(CONF / "trainer" / "default.yaml")
    return instantiate(
        cfg,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        max_epochs=epochs,
        precision=precision,
        logger=False,
        enable_progress_bar=False,
        callbacks=callbacks,
    )


def lightning_run(
    settings: Settings,
    data: ImageClassificationData,
    td: bool,
    premade: PremadeBatches | None = None,
    pool_images: Tensor | None = None,
    precision: str | None = None,
    speed: tuple[bool, bool] | None = None,
    epochs: int | None = None,
) -> dict[str, Any]:
    """Trains one warm-up epoch plus `epochs` timed ones with `trainer.fit`."""
    device = torch.device(settings.device)
    timed = settings.epochs if epochs is None else epochs
    system = build_system(settings, len(data.train_targets), td, speed)
    timer = EpochTimer(device)
    callbacks: list[pl.Callback] = [timer]
    if system.td_tracker is not None:
        callbacks.append(system.td_tracker)
    recorder = None
    if pool_images is not None:
        recorder = PoolDynamicsRecorder(
            pool_images, data.normalize, settings.num_classes, settings.eval_batch_size
        )
        callbacks.append(recorder)
    data.start_cycle(data.labeled_indices, seed=0, cycle=0)
    trainer = make_trainer(device, 1 + timed, callbacks, precision or settings.precision)
    trainer.fit(system, datamodule=premade if premade is not None else data)
    seconds = timer.epoch_seconds
    result: dict[str, Any] = {"first_epoch": seconds[0], "epoch": statistics.fmean(seconds[1:])}
    if recorder is not None:
        result["record_per_epoch"] = recorder.seconds / recorder.recorded_epochs
    return result


class RawTrainer:
    """The training of `lightning_run`, as a plain PyTorch loop driven one step at a time.

    Same system (so the same `training_step` math: CE, softmax, TD target from the tracker,
    TD module, KL, on-device loss sums), same optimizer and per-epoch scheduler, same loader
    over the device-resident split, same augmentation and normalisation, same tracker hooks
    (per batch and per epoch). Stepping it one batch at a time lets section 1 interleave the
    steps of two variants, so slow machine drift hits both alike.

    `tracker_only`: the plain classifier with a TD tracker fed by its hooks (the softmax
    every training step returns), without the TD module and its loss.
    """

    def __init__(
        self, settings: Settings, data: SyntheticSplit, td: bool, tracker_only: bool = False
    ) -> None:
        self.device = torch.device(settings.device)
        self.data = data
        self.system = build_system(settings, len(data.train_targets), td).to(self.device).train()
        self.tracker = self.system.td_tracker
        if tracker_only:
            self.tracker = TrainingDynamicsTracker(len(data.train_targets), settings.num_classes)
        if self.tracker is not None:
            self.tracker.on_fit_start(None, self.system)  # type: ignore[arg-type]  # moves its buffers
        configured = self.system.configure_optimizers()
        self.optimizer = configured["optimizer"]
        self.scheduler = configured["lr_scheduler"]["scheduler"]
        images, targets = data.split_on(self.device)
        self.loader = TensorBatchLoader(
            images,
            targets,
            data.labeled_indices,
            data.batch_size,
            shuffle=True,
            generator=make_generator(0, 0, "shuffle"),
        )
        self.autocast = settings.precision == "bf16-mixed"
        self.batches: Iterator[tuple[Tensor, Tensor, Tensor]] = iter(())
        self.batch_idx = 0

    def start_epoch(self) -> None:
        self.system.on_train_epoch_start()
        if self.tracker is not None:
            self.tracker.on_train_epoch_start(None, self.system)  # type: ignore[arg-type]
        self.batches = iter(self.loader)
        self.batch_idx = 0

    def step(self) -> bool:
        """Trains on the epoch's next batch; False when the epoch has none left."""
        try:
            x, y, i = next(self.batches)
        except StopIteration:
            return False
        batch = (self.data.normalize(self.data.augment(x)), y, i)
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast):
            out = self.system.training_step(batch, self.batch_idx)
        self.optimizer.zero_grad()
        out["loss"].backward()
        self.optimizer.step()
        if self.tracker is not None:
            self.tracker.on_train_batch_end(None, self.system, out, batch, self.batch_idx)  # type: ignore[arg-type]
        self.batch_idx += 1
        return True

    def end_epoch(self) -> None:
        if self.tracker is not None:
            self.tracker.on_train_epoch_end(None, self.system)  # type: ignore[arg-type]
        self.scheduler.step()


def raw_run(settings: Settings, data: SyntheticSplit, td: bool) -> dict[str, Any]:
    """`lightning_run`'s training with `RawTrainer`: one warm-up epoch plus the timed ones."""
    data.start_cycle(data.labeled_indices, seed=0, cycle=0)
    trainer = RawTrainer(settings, data, td)
    seconds = []
    for _ in range(1 + settings.epochs):
        synchronize(trainer.device)
        started = time.perf_counter()
        trainer.start_epoch()
        while trainer.step():
            pass
        trainer.end_epoch()
        synchronize(trainer.device)
        seconds.append(time.perf_counter() - started)
    return {"first_epoch": seconds[0], "epoch": statistics.fmean(seconds[1:])}


def paired_epochs(
    settings: Settings, data: SyntheticSplit, variants: dict[str, dict[str, bool]], epochs: int
) -> dict[str, list[float]]:
    """Epoch seconds of several variants trained step by step in lockstep.

    Every step trains each variant on its next batch, in an order rotated per step, and
    adds the step's wall time to that variant's epoch; epoch-end work is timed alike. One
    warm-up epoch is dropped. `variants` maps a name to `RawTrainer` keyword arguments.
    """
    data.start_cycle(data.labeled_indices, seed=0, cycle=0)
    trainers = {name: RawTrainer(settings, data, **kwargs) for name, kwargs in variants.items()}
    names = list(trainers)
    seconds: dict[str, list[float]] = {name: [] for name in names}

    device = torch.device(settings.device)

    def timed(call: Callable[[], object]) -> tuple[float, object]:
        synchronize(device)
        started = time.perf_counter()
        result = call()
        synchronize(device)
        return time.perf_counter() - started, result

    turn = 0
    for epoch in range(1 + epochs):
        spent = dict.fromkeys(names, 0.0)
        for name in names:
            spent[name] += timed(trainers[name].start_epoch)[0]
        active = list(names)
        while active:
            turn += 1
            order = active[turn % len(active) :] + active[: turn % len(active)]
            for name in order:
                elapsed, stepped = timed(trainers[name].step)
                spent[name] += elapsed
                if not stepped:
                    active.remove(name)
        for name in names:
            spent[name] += timed(trainers[name].end_epoch)[0]
        if epoch > 0:
            for name in names:
                seconds[name].append(spent[name])
    return seconds


# --------------------------------------------------------------------- sections 1-4
def median_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """Median over repeats of the per-repeat ratio `numerators[r] / denominators[r]`."""
    return statistics.median(a / b for a, b in zip(numerators, denominators, strict=True))


def training_sections(settings: Settings, log: Callable[[str], None]) -> dict[str, Any]:
    """Sections 2-4: every variant once per repeat (rotated order), after a warm-up.

    `settings.variants` names the fits to run (all of `VARIANTS`, or `--short`'s two); a
    ratio is reported when both of its variants ran.
    """
    device = torch.device(settings.device)
    variants = settings.variants
    data = make_data(settings, settings.labeled + settings.pool)
    # one epoch of ready batches on the device, made only when its variant runs
    premade = premade_batches(data, device) if "premade_td" in variants else None
    pool_images = data.train_images[settings.labeled :]
    runs: dict[str, Callable[[], dict[str, Any]]] = {
        "plain": lambda: lightning_run(settings, data, td=False),
        "td": lambda: lightning_run(settings, data, td=True),
        "raw_td": lambda: raw_run(settings, data, td=True),
        "premade_td": lambda: lightning_run(settings, data, td=True, premade=premade),
        "dispersion": lambda: lightning_run(settings, data, td=False, pool_images=pool_images),
    }
    log("warm-up: one run of each variant")
    for name in variants:
        if not settings.quick or name == "td":
            runs[name]()
    times: dict[str, list[float]] = {name: [] for name in variants}
    record: list[float] = []
    for repeat in range(settings.repeats):
        order = variants[repeat % len(variants) :] + variants[: repeat % len(variants)]
        for name in order:
            result = runs[name]()
            times[name].append(result["epoch"])
            if name == "dispersion":
                record.append(result["record_per_epoch"])
        log(
            f"repeat {repeat + 1}/{settings.repeats}: "
            + ", ".join(f"{n} {times[n][-1]:.3f}s" for n in variants)
        )
    loader = TensorBatchLoader(
        data.train_images, data.train_targets, data.labeled_indices, settings.batch_size
    )
    results: dict[str, Any] = {"epoch_seconds": times, "steps_per_epoch": len(loader)}
    ratios = {
        "lightning_vs_raw_ratio": ("td", "raw_td"),
        "data_path_ratio": ("premade_td", "td"),
        "dispersion_epoch_ratio": ("dispersion", "plain"),
    }
    for key, (numerator, denominator) in ratios.items():
        if numerator in times and denominator in times:
            results[key] = median_ratio(times[numerator], times[denominator])
    if record:
        # the recorder's own seconds against the rest of the same epoch (the loop's
        # record_overhead)
        fractions = [r / (t - r) for r, t in zip(record, times["dispersion"], strict=True)]
        results["record_seconds_per_epoch"] = record
        results["dispersion_pool_pass_fraction"] = statistics.median(fractions)
    return results


def paper_model_settings(settings: Settings) -> Settings:
    """Section 1's settings on the paper's model: ResNet-18, its batch, the run's images."""
    return replace(
        settings,
        model=settings.td_model,
        batch_size=settings.td_batch_size,
        labeled=settings.td_labeled,
    )


def td_overhead_section(settings: Settings, log: Callable[[str], None]) -> dict[str, Any]:
    """Section 1: TD module + tracker vs plain (and the tracker alone), same data and seed.

    The variants train in lockstep (`paired_epochs`): a Lightning fit per variant, even
    interleaved per repeat, left this 2-core VM's drift (±10% between 15 s epochs) in the
    ratio. Lightning's own cost per step is section 2's measure.

    TiDAL's module is a fixed-size head (per-stage pooling, `Linear(C_s -> 128)`, a
    classifier), so its share of the work depends on the backbone: about 1% of ResNet-18's
    parameters (the paper's model, which the target reads), a third of the CPU recipe's
    small CNN's. Both are measured; on the small CNN the module is ~1.4% of the FLOPs, but
    the pooling of four stage maps (and its gradient) and the small matrix products run far
    less efficiently than its convolutions on a CPU.
    """
    paper = paper_model_settings(settings)
    runs = [(settings, dict(PAIRED_VARIANTS), settings.repeats * settings.epochs)]
    if settings.model != paper.model:
        runs.append((paper, {v: PAIRED_VARIANTS[v] for v in PAPER_VARIANTS}, settings.repeats))
    results: dict[str, Any] = {}
    for run_settings, variants, epochs in runs:
        data = make_data(run_settings, run_settings.labeled)
        times = paired_epochs(run_settings, data, variants, epochs)
        entry = {
            "model": run_settings.model,
            "batch_size": run_settings.batch_size,
            "labeled": run_settings.labeled,
            "epochs": epochs,
            "epoch_seconds": times,
            "td_overhead_ratio": median_ratio(times["td"], times["plain"]),
        }
        if "tracker" in times:
            entry["tracker_ratio"] = median_ratio(times["tracker"], times["plain"])
        log(
            f"section 1, {run_settings.model}: td/plain {entry['td_overhead_ratio']:.3f} "
            f"over {epochs} paired epochs"
        )
        results["paper" if run_settings.model == paper.model else "run_model"] = entry
        if run_settings.model == paper.model and settings.model == paper.model:
            results["run_model"] = entry
        del data
        gc.collect()
    return results


# ------------------------------------------------------------------------- section 5
def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def scoring_section(settings: Settings, log: Callable[[str], None]) -> dict[str, Any]:
    """`model_pass` over synthetic pools, ascending sizes (so peak RSS is each size's)."""
    device = torch.device(settings.device)
    needs = TiDALMargin.needs
    results: dict[str, Any] = {"needs": sorted(needs), "eval_batch_size": settings.eval_batch_size}
    for size in settings.scoring_sizes:
        data = make_data(settings, size)
        system = build_system(settings, size, td=True)
        indices = torch.arange(size)
        model_pass(system, data, indices[: settings.eval_batch_size], needs, device)  # warm-up
        repeats = 1 if size >= 1_000_000 else min(settings.repeats, 3)
        seconds = []
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(repeats):
            synchronize(device)
            started = time.perf_counter()
            outputs = model_pass(system, data, indices, needs, device)
            synchronize(device)
            seconds.append(time.perf_counter() - started)
            del outputs
        entry = {
            "seconds": statistics.median(seconds),
            "samples_per_s": size / statistics.median(seconds),
            "pool_mb": data.train_images.numel() / 2**20,
            "peak_rss_mb": peak_rss_mb(),
            "repeats": repeats,
        }
        if device.type == "cuda":
            entry["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        results[str(size)] = entry
        log(f"scoring {size}: {entry['samples_per_s']:.0f} samples/s")
        del data, system
        gc.collect()
    return results


# ------------------------------------------------------------------------- section 6
class PILImages(torch.utils.data.Dataset[tuple[Tensor, int, int]]):
    """The torchvision-dataset way: one PIL image and a transform call per sample."""

    def __init__(self, images: np.ndarray, targets: list[int], transform: Any) -> None:
        self.images = images  # [N, H, W] or [N, H, W, C] uint8, as torchvision stores them
        self.targets = targets
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:
        image = Image.fromarray(self.images[index])
        return self.transform(image), self.targets[index], index


def pil_loader(
    data: ImageClassificationData, labeled: Tensor, num_workers: int, cuda: bool
) -> torch.utils.data.DataLoader[Any]:
    """Official-TiDAL-style loader: RandomCrop(pad 4), flip, ToTensor, Normalize per sample."""
    import torchvision.transforms as T

    size = data.train_images.shape[-1]
    transform = T.Compose(
        [
            T.RandomCrop(size, padding=data.pad),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(data.mean, data.std),
        ]
    )
    images = data.train_images.permute(0, 2, 3, 1).numpy()
    if images.shape[-1] == 1:
        images = images[..., 0]
    dataset = PILImages(images, data.train_targets.tolist(), transform)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=data.batch_size,
        sampler=torch.utils.data.SubsetRandomSampler(
            labeled.tolist(), generator=torch.Generator().manual_seed(0)
        ),
        num_workers=num_workers,
        pin_memory=cuda,
    )


def data_path_section(settings: Settings, log: Callable[[str], None]) -> dict[str, Any]:
    """Images/s of one epoch of batches delivered to the device, ready for the model."""
    device = torch.device(settings.device)
    data = make_data(settings, settings.labeled)
    old = pil_loader(data, data.labeled_indices, settings.num_workers, device.type == "cuda")
    images, targets = data.split_on(device)

    def old_epoch() -> float:
        synchronize(device)
        started = time.perf_counter()
        for x, y, _ in old:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        synchronize(device)
        return time.perf_counter() - started

    def new_epoch() -> float:
        loader = TensorBatchLoader(
            images, targets, data.labeled_indices, data.batch_size, True, torch.Generator()
        )
        synchronize(device)
        started = time.perf_counter()
        for x, _, _ in loader:
            data.normalize(data.augment(x))
        synchronize(device)
        return time.perf_counter() - started

    old_epoch(), new_epoch()  # warm-up
    old_s, new_s = [], []
    for _ in range(settings.repeats):
        old_s.append(old_epoch())
        new_s.append(new_epoch())
    n = settings.labeled
    result = {
        "num_workers": settings.num_workers,
        "pil_epoch_seconds": old_s,
        "device_epoch_seconds": new_s,
        "pil_images_per_s": n / statistics.median(old_s),
        "device_images_per_s": n / statistics.median(new_s),
        "speedup": median_ratio(old_s, new_s),
    }
    old_rate, new_rate = result["pil_images_per_s"], result["device_images_per_s"]
    log(f"data path: PIL {old_rate:.0f}/s, device {new_rate:.0f}/s")
    return result


# ------------------------------------------------------------------------- section 7
class CachedSynthetic(CachedImageData):
    """Generated images written once into caches on disk (`<folder>/train`, `/test`), then
    held in memory or streamed from them as `storage` says: the file datasets' path without
    the files. The same folder gives the same images to every instance."""

    dataset_name = "bench-cached"

    def __init__(
        self,
        folder: Path,
        num_train: int,
        shape: tuple[int, int, int],
        num_classes: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        **kwargs: Any,
    ) -> None:
        super().__init__(root=str(folder), cache_dir=str(folder), progress=False, **kwargs)
        self.spec = (num_train, shape, num_classes)
        self.mean, self.std = mean, std

    def decoder(self) -> Callable[[Path, int, tuple[int, int]], Tensor]:
        raise NotImplementedError("generated images are written, not decoded")

    def decoded_shape(self) -> tuple[int, int, int]:
        return self.spec[1]

    def _split_files(self, train: bool) -> SplitFiles:
        raise NotImplementedError("generated images have no files")

    def load(self) -> None:
        if len(self.classes):
            return
        num_train, shape, num_classes = self.spec
        no_files = Manifest([], torch.empty(0), torch.empty(0))
        for split, count in (("train", num_train), ("test", 64)):
            folder = self.cache_dir / split
            if not (folder / "source.pt").exists():
                generator = torch.Generator().manual_seed(int(split == "train"))
                chunks = (
                    torch.randint(
                        0,
                        256,
                        (min(65_536, count - a), *shape),
                        dtype=torch.uint8,
                        generator=generator,
                    )
                    for a in range(0, count, 65_536)
                )
                write_cache(folder, CacheSource(folder, no_files, shape), count, chunks)
            self.caches[split] = ImageCache(folder)
        targets = torch.randint(0, num_classes, (num_train,), generator=torch.Generator())
        self.train_targets = targets
        self.test_targets = torch.arange(64) % num_classes
        self.classes = [f"class_{c}" for c in range(num_classes)]


def cached_data(settings: Settings, folder: Path, num_train: int, storage: str) -> CachedSynthetic:
    data = CachedSynthetic(
        folder,
        num_train,
        settings.image_shape,
        settings.num_classes,
        settings.mean,
        settings.std,
        storage=storage,
        batch_size=settings.batch_size,
        eval_batch_size=settings.eval_batch_size,
        pad=4,
        flip=True,
    )
    data.load()
    data.start_cycle(torch.arange(min(settings.labeled, num_train)), seed=0, cycle=0)
    return data


def write_photos(folder: Path, count: int, size: tuple[int, int] = (256, 192)) -> None:
    """`count` photo-like JPEGs (smooth colour gradients with mild noise), `size` = (W, H)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    ys, xs = np.mgrid[0 : size[1], 0 : size[0]]
    for n in range(count):
        base = rng.uniform(0, 1, 3)[:, None, None] * 255
        wave = np.sin(xs / rng.uniform(8, 40) + ys / rng.uniform(8, 40))
        pixels = base + 60 * wave + rng.normal(0, 8, (3, size[1], size[0]))
        image = pixels.clip(0, 255).astype(np.uint8).transpose(1, 2, 0)
        Image.fromarray(image).save(folder / f"p{n:05d}.jpg", quality=90)


class PILFiles(torch.utils.data.Dataset[tuple[Tensor, int]]):
    """A folder of image files the torchvision way: decode, resize, augment per sample."""

    def __init__(self, paths: list[Path], transform: Any) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        with Image.open(self.paths[index]) as image:
            return self.transform(image.convert("RGB")), 0


def cache_build_measure(
    settings: Settings, workdir: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    """Images/s: building a cache from JPEG files, once, against decoding them every epoch
    with a per-sample PIL `DataLoader`, and an epoch streamed from the built cache."""
    import torchvision.transforms as T

    from tidal_lightning.data.decode import list_images, read_image

    count = 64 if settings.quick else 1024
    side = 64  # the iNaturalist preset's resolution
    photos = workdir / "photos"
    write_photos(photos, count)
    names = list_images(photos)
    source = CacheSource(photos, Manifest.scan(photos, names), (3, side, side))
    started = time.perf_counter()
    cache = open_cache(workdir / "photo_cache", source, read_image, progress=False)
    build_s = time.perf_counter() - started
    transform = T.Compose(
        [
            T.Resize((side, side)),
            T.RandomCrop(side, padding=8),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    loader = torch.utils.data.DataLoader(
        PILFiles([photos / n for n in names], transform),
        batch_size=128,
        shuffle=True,
        num_workers=settings.num_workers,
        generator=torch.Generator().manual_seed(0),
    )
    device = torch.device(settings.device)
    stats = uint8_scale_stats((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), device)
    generator = make_generator(0, 0, "augment", device)

    def pil_epoch() -> float:
        started = time.perf_counter()
        for x, _ in loader:
            x.to(device)
        synchronize(device)
        return time.perf_counter() - started

    def stream_epoch() -> float:
        batches = StreamingBatchLoader(
            cache,
            torch.zeros(count, dtype=torch.long),
            torch.arange(count),
            128,
            True,
            torch.Generator().manual_seed(0),
            device=device,
        )
        started = time.perf_counter()
        for x, _, _ in batches:
            normalize_uint8(random_crop_flip(x, 8, True, generator), *stats)
        synchronize(device)
        return time.perf_counter() - started

    pil_s = [pil_epoch() for _ in range(max(2, min(settings.repeats, 3)))]
    stream_s = [stream_epoch() for _ in range(settings.repeats)]
    result: dict[str, Any] = {
        "images": count,
        "file_size": [256, 192],
        "resolution": side,
        "build_workers": os.cpu_count(),
        "build_seconds": build_s,
        "build_images_per_s": count / build_s,
        "pil_workers": settings.num_workers,
        "pil_epoch_seconds": pil_s,
        "pil_images_per_s": count / statistics.median(pil_s),
        "stream_epoch_seconds": stream_s,
        "stream_images_per_s": count / statistics.median(stream_s),
    }
    result["build_vs_pil_epoch"] = result["build_images_per_s"] / result["pil_images_per_s"]
    log(
        f"cache build {result['build_images_per_s']:.0f} img/s, PIL epoch "
        f"{result['pil_images_per_s']:.0f} img/s, streamed epoch "
        f"{result['stream_images_per_s']:.0f} img/s"
    )
    return result


CHILD = "import sys; from tidal_lightning.bench import child_main; child_main(sys.argv[1])"


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs `child_main(spec)` in a fresh process (its own peak RSS) and returns its JSON."""
    env = {**os.environ, "MALLOC_ARENA_MAX": "2"}  # thread arenas would reserve 64 MB each
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        timeout=3600,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"bench child {spec['kind']} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def child_main(encoded: str) -> None:
    """A bench measure in its own process: `bounded` (training and a pool pass from a cache
    4x larger than the memory allowed, under `ulimit -v`) or `scoring` (a streamed pool pass)."""
    quiet_lightning()
    spec = json.loads(encoded)
    if spec["kind"] == "select":
        print(json.dumps(select_child(spec)))
        return
    # JSON turned the tuples into lists
    fields: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in spec["settings"].items()
    }
    settings = Settings(**fields)
    device = torch.device(settings.device)
    data = cached_data(settings, Path(spec["folder"]), spec["num_train"], "stream")
    result: dict[str, Any] = {}
    if spec["kind"] == "scoring":
        system = build_system(settings, spec["num_train"], td=True)
        indices = torch.arange(spec["num_train"])
        model_pass(system, data, indices[: settings.eval_batch_size], TiDALMargin.needs, device)
        synchronize(device)
        started = time.perf_counter()
        model_pass(system, data, indices, TiDALMargin.needs, device)
        synchronize(device)
        result["seconds"] = time.perf_counter() - started
        result["peak_rss_mb"] = peak_rss_mb()
        print(json.dumps(result))
        return
    # bounded: the whole training set is the cache; only the allowance may be added. The
    # measure is the data path's memory, so a narrow CNN keeps the full pass short.
    data.start_cycle(torch.arange(spec["num_train"]), seed=0, cycle=0)
    torch.manual_seed(0)
    backbone = SmallCNN(settings.num_classes, settings.image_shape[0], width=4)
    system = ActiveLearningSystem(
        backbone, settings.num_classes, optimizer=partial(torch.optim.SGD, lr=0.01)
    )
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        max_epochs=1,
        limit_train_batches=spec["steps"],
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    small = torch.arange(settings.eval_batch_size)
    model_pass(system, data, small, frozenset({"probs"}), device)  # warm-up: lazy allocations
    baseline_rss, baseline_vm = _status_kb("VmRSS") / 1024, _status_kb("VmSize") * 1024
    allowed = spec["allowance_mb"] * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (baseline_vm + allowed, resource.RLIM_INFINITY))
    result.update(
        cache_mb=data.caches["train"].nbytes / 2**20,
        allowance_mb=spec["allowance_mb"],
        baseline_rss_mb=baseline_rss,
        placement_auto=choose_placement(
            "auto", data.caches["train"].nbytes, free_memory_bytes(torch.device("cpu"))
        )[0],
    )
    try:
        data.caches["train"].read_all()
        result["in_memory_copy"] = "allocated (the limit is not real)"
    except (MemoryError, RuntimeError) as refused:
        result["in_memory_copy"] = f"refused: {type(refused).__name__}"
    started = time.perf_counter()
    trainer.fit(system, datamodule=data)
    result["train_steps"] = trainer.global_step
    result["train_seconds"] = time.perf_counter() - started
    # Every image once, as a pool pass reads them (chunks through `gather`, the next chunk
    # prefetched, normalised), without the model: this measure is the data path's memory.
    started = time.perf_counter()
    every = torch.arange(spec["num_train"]).split(settings.eval_batch_size)
    checksum = 0.0
    for images in prefetched(lambda chunk: data.gather(chunk, device), every, depth=1):
        checksum += float(data.normalize(images).mean())
    result["pass_seconds"] = time.perf_counter() - started
    result["pass_images"] = spec["num_train"]
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


def streaming_section(settings: Settings, log: Callable[[str], None]) -> dict[str, Any]:
    """Section 7: the streaming path (batches read from a cache on disk, prefetched).

    a. training throughput, streamed / held in memory, on the same data (fits both);
    b. building a cache from JPEG files against decoding them every epoch (PIL DataLoader);
    c. peak RSS training from (and reading every image of) a cache 4x the memory allowed,
       in a child process under `ulimit -v` (RLIMIT_AS = its size after start-up +
       allowance), where a copy of the split in memory is refused;
    d. pool scoring from the cache at the section-5 sizes from 100k up, each in a fresh
       process (its own peak RSS), beside section 5's in-memory figures.
    """
    workdir = Path(tempfile.mkdtemp(prefix="tidal-bench-"))
    try:
        folder = workdir / "labeled"
        runs = {
            storage: cached_data(settings, folder, settings.labeled, storage)
            for storage in ("memory", "stream")
        }
        for data in runs.values():
            lightning_run(settings, data, td=True)  # warm-up
        times: dict[str, list[float]] = {"memory": [], "stream": []}
        for repeat in range(settings.repeats):
            order = ("memory", "stream") if repeat % 2 == 0 else ("stream", "memory")
            for storage in order:
                times[storage].append(lightning_run(settings, runs[storage], td=True)["epoch"])
        result: dict[str, Any] = {
            "epoch_seconds": times,
            "ratio": median_ratio(times["memory"], times["stream"]),
            "placements": {s: d.placements for s, d in runs.items()},
        }
        log(f"streaming / in memory, training images/s: {result['ratio']:.3f}")
        result["build"] = cache_build_measure(settings, workdir, log)
        shared = asdict(settings)
        allowance = 64 if settings.quick else 256
        shape_bytes = int(np.prod(settings.image_shape))
        bounded_n = 4 * allowance * 2**20 // shape_bytes
        cached_data(settings, workdir / "bounded", bounded_n, "stream")  # writes the cache
        result["bounded"] = run_child(
            {
                "kind": "bounded",
                "settings": shared,
                "folder": str(workdir / "bounded"),
                "num_train": bounded_n,
                "allowance_mb": allowance,
                "steps": 20 if settings.quick else 200,
            }
        )
        shutil.rmtree(workdir / "bounded")
        log(f"bounded memory: {result['bounded']}")
        sizes = [n for n in settings.scoring_sizes if n >= 100_000]
        sizes = sizes or list(settings.scoring_sizes[-2:])  # --quick: its two largest
        scoring = {}
        for size in sizes:
            pool = workdir / f"pool_{size}"
            cached_data(settings, pool, size, "stream")
            entry = run_child(
                {"kind": "scoring", "settings": shared, "folder": str(pool), "num_train": size}
            )
            entry["samples_per_s"] = size / entry["seconds"]
            entry["cache_mb"] = size * shape_bytes / 2**20
            scoring[str(size)] = entry
            shutil.rmtree(pool)
            log(f"streamed scoring {size}: {entry['samples_per_s']:.0f} samples/s")
        result["scoring"] = scoring
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# ------------------------------------------------------------------------- section 8
SCALE_STRATEGIES = ("entropy", "tidal_margin", "coreset", "badge", "cal")
SCALE_SIZES = (437_513, 1_000_000)  # iNaturalist 2018's training split; a million


def select_child(spec: dict[str, Any]) -> dict[str, Any]:
    """One strategy's selection on generated pool outputs of size N (its own process)."""
    from tidal_lightning.strategies.base import PoolOutputs, build_strategy

    n, labeled, classes, dim = spec["pool"], spec["labeled"], spec["classes"], spec["dim"]
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(n, classes, generator=generator)
    outputs = {
        "probs": logits.softmax(dim=1),
        "td_probs": (logits + torch.randn(n, classes, generator=generator)).softmax(dim=1),
        "embeddings": torch.randn(n, dim, generator=generator),
        "labeled_probs": torch.randn(labeled, classes, generator=generator).softmax(dim=1),
        "labeled_embeddings": torch.randn(labeled, dim, generator=generator),
    }
    del logits
    config = OmegaConf.load(CONF / "strategy" / f"{spec['strategy']}.yaml")
    assert isinstance(config, DictConfig)
    strategy = build_strategy(config)
    pool = PoolOutputs(torch.arange(n), {k: outputs[k] for k in strategy.needs if k in outputs})
    del outputs
    gc.collect()
    before = _status_kb("VmRSS") / 1024
    started = time.perf_counter()
    picked = strategy.select(pool, spec["budget"], torch.Generator().manual_seed(1))
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_select_mb": before,
        "outputs_mb": sum(t.numel() * t.element_size() for t in pool.outputs.values()) / 2**20,
        "picked": len(set(picked.tolist())),
    }


def scale_section(settings: Settings, log: Callable[[str], None]) -> dict[str, Any]:
    """Section 8 (`--at-scale`): selection on pools of 437,513 and 1M samples, per strategy.

    Pool outputs are generated (K = 10 classes, D = 128: the small CNN's embedding), 1000
    labeled, a budget of 200; each (strategy, size) runs in a fresh process for its own
    peak RSS. The pool pass that produces the outputs is section 7d's measure.
    """
    results: dict[str, Any] = {"labeled": 1000, "budget": 200, "classes": 10, "dim": 128}
    sizes = (2048, 4096) if settings.quick else SCALE_SIZES
    for size in sizes:
        for name in SCALE_STRATEGIES:
            spec = {"kind": "select", "strategy": name, "pool": size, **results}
            entry = run_child({**spec, "settings": asdict(settings), "folder": "", "num_train": 0})
            results[f"{name}/{size}"] = entry
            took = f"{entry['seconds']:.1f} s, peak RSS {entry['peak_rss_mb']:.0f} MB"
            log(f"select {name} on {size:,}: {took}")
    return results


# ---------------------------------------------------------------------------- GPU extra
def gpu_section(settings: Settings, log: Callable[[str], None]) -> dict[str, Any]:
    """ResNet-18 on CIFAR-10 shapes (`--quick`: 8x8) with TiDAL: images/s per speed option.

    One Lightning fit per row of `settings.grid` (a warm-up epoch, then the timed ones). A
    row that fails (say, no compiler for `torch.compile`) records its error and the next
    row runs.
    """
    if not settings.grid:
        return {"skipped": "needs a CUDA device (run with --device cuda on a GPU machine)"}
    gpu = replace(
        settings,
        model="resnet18",
        image_shape=settings.grid_image_shape,
        batch_size=settings.td_batch_size,
        labeled=settings.gpu_extra_labeled,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
    )
    data = make_data(gpu, gpu.labeled)
    rows = []
    for precision, channels_last, compiled in settings.grid:
        row: dict[str, Any] = {
            "precision": precision,
            "channels_last": channels_last,
            "compile": compiled,
        }
        try:
            result = lightning_run(
                gpu, data, td=True, precision=precision, speed=(channels_last, compiled)
            )
        except Exception as error:  # report the row, keep measuring the others
            row["error"] = f"{type(error).__name__}: {error}"[:2000]
            log(f"gpu {precision} cl={channels_last} compile={compiled}: {row['error']}")
        else:
            row["epoch_seconds"] = result["epoch"]
            row["images_per_s"] = gpu.labeled / result["epoch"]
            # the first epoch's extra time: compilation (and cuDNN/allocator warm-up)
            row["first_epoch_extra_s"] = result["first_epoch"] - result["epoch"]
            log(
                f"gpu {precision} cl={channels_last} compile={compiled}: "
                f"{row['images_per_s']:.0f} img/s"
            )
        rows.append(row)
        torch._dynamo.reset()
    return {
        "labeled": gpu.labeled,
        "batch_size": gpu.batch_size,
        "steps_per_epoch": len(
            TensorBatchLoader(
                data.train_images, data.train_targets, data.labeled_indices, gpu.batch_size
            )
        ),
        "rows": rows,
    }


# ------------------------------------------------------------------------------- report
def machine_info(settings: Settings) -> dict[str, Any]:
    device = torch.device(settings.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return {
        "device": settings.device,
        "device_name": name or platform.machine(),
        "torch": torch.__version__,
        "lightning": pl.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }


def verdicts(results: dict[str, Any]) -> dict[str, bool]:
    """Met or not, for every target whose measure this run took."""
    out = {}
    for key, (op, target) in TARGETS.items():
        if key in results:
            value = results[key]
            out[key] = value <= target if op == "<=" else value >= target
    return out


def format_table(results: dict[str, Any]) -> str:
    s, m = results["settings"], results["machine"]
    lines = [
        f"device {m['device']} ({m['device_name']}), torch {m['torch']}, threads {m['threads']}; "
        f"model {s['model']}, images {tuple(s['image_shape'])}, batch {s['batch_size']}, "
        f"labeled {s['labeled']}, {s['repeats']} repeats x {s['epochs']} timed epochs "
        f"(medians of per-repeat ratios), precision {s['precision']}",
    ]
    paper, own = results["td_overhead"]["paper"], results["td_overhead"]["run_model"]
    lines.append(
        f"section 1: variants trained step by step in lockstep, median of per-epoch ratios; "
        f"{paper['model']} batch {paper['batch_size']}, labeled {paper['labeled']}, "
        f"{paper['epochs']} epochs"
        + (f"; {own['model']} {own['epochs']} epochs" if own["model"] != paper["model"] else "")
    )
    lines += [
        "",
        f"{'measure':<52} {'median':>12} {'target':>9}  result",
    ]
    for key, label in (
        ("td_overhead_ratio", f"1 epoch time, TD module+tracker / plain ({paper['model']})"),
        ("lightning_vs_raw_ratio", "2 epoch time, Lightning / raw loop (with TD)"),
        ("data_path_ratio", "3 throughput, real data path / pre-made"),
    ):
        if key not in results:  # not measured in --short
            continue
        op, target = TARGETS[key]
        verdict = "PASS" if results["pass"][key] else "FAIL"
        lines.append(f"{label:<52} {results[key]:>12.3f} {op + str(target):>9}  {verdict}")
        if key == "td_overhead_ratio":
            if own["model"] != paper["model"]:
                lines.append(
                    f"{'1 the same, on ' + s['model'] + ' (the run model)':<52} "
                    f"{results['td_overhead_ratio_run_model']:>12.3f} {'-':>9}  reported"
                )
            lines.append(
                f"{'1 TD tracker callback alone / plain':<52} "
                f"{results['td_tracker_ratio']:>12.3f} {'-':>9}  ({s['model']})"
            )
    if "dispersion_pool_pass_fraction" in results:
        lines.append(
            f"{'4 dispersion pool pass / rest of epoch':<52} "
            f"{results['dispersion_pool_pass_fraction']:>12.3f} {'-':>9}  "
            f"(pool {s['pool']}; epoch ratio {results['dispersion_epoch_ratio']:.3f})"
        )
    scoring = results["scoring"]
    for size in s["scoring_sizes"]:
        e = scoring[str(size)]
        memory = f"peak RSS {e['peak_rss_mb']:.0f} MB"
        if "cuda_max_allocated_mb" in e:
            memory += f", CUDA max {e['cuda_max_allocated_mb']:.0f} MB"
        lines.append(
            f"{'5 scoring ' + f'{size:,}' + ' samples/s':<52} {e['samples_per_s']:>12.0f} "
            f"{'-':>9}  ({memory}; pool {e['pool_mb']:.0f} MB uint8)"
        )
    if "old_vs_new" in results:
        d = results["old_vs_new"]
        lines.append(
            f"{'6 images/s PIL DataLoader (workers ' + str(d['num_workers']) + ')':<52} "
            f"{d['pil_images_per_s']:>12.0f}"
        )
        lines.append(f"{'6 images/s device path':<52} {d['device_images_per_s']:>12.0f}")
        lines.append(f"{'6 speed-up, device / PIL':<52} {d['speedup']:>12.1f}")
    if "streaming" in results:
        lines += streaming_lines(results)
    gpu = results["gpu_extra"]
    if "skipped" in gpu:
        lines.append(f"GPU extra skipped: {gpu['skipped']}")
    else:
        lines.append("")
        lines.append(
            f"{'speed options: precision':<24} {'ch_last':>7} {'compile':>7} {'img/s':>9} "
            f"{'1st-epoch extra s':>18}  (ResNet-18, images {tuple(s['grid_image_shape'])}, "
            f"batch {gpu['batch_size']})"
        )
        for r in gpu["rows"]:
            head = f"{r['precision']:<24} {r['channels_last']!s:>7} {r['compile']!s:>7}"
            if "error" in r:
                lines.append(f"{head} failed: {r['error'][:120]}")
            else:
                lines.append(f"{head} {r['images_per_s']:>9.0f} {r['first_epoch_extra_s']:>18.1f}")
    return "\n".join(lines)


def streaming_lines(results: dict[str, Any]) -> list[str]:
    """Sections 7 and 8 of the table."""
    streaming = results["streaming"]
    op, target = TARGETS["streaming_ratio"]
    verdict = "PASS" if results["pass"]["streaming_ratio"] else "FAIL"
    lines = [
        f"{'7a training images/s, streamed / in memory':<52} "
        f"{streaming['ratio']:>12.3f} {op + str(target):>9}  {verdict}"
    ]
    build = streaming["build"]
    lines.append(
        f"{'7b images/s: cache build / PIL decode epoch':<52} "
        f"{build['build_images_per_s']:>12.0f} / {build['pil_images_per_s']:.0f} "
        f"({build['build_vs_pil_epoch']:.1f}x; streamed epoch {build['stream_images_per_s']:.0f}; "
        f"{build['images']} JPEGs 256x192 -> {build['resolution']} px)"
    )
    bounded = streaming["bounded"]
    lines.append(
        f"{'7c peak RSS, cache 4x the allowance (ulimit -v)':<52} "
        f"{bounded['peak_rss_mb']:>9.0f} MB  (start {bounded['baseline_rss_mb']:.0f} MB, "
        f"allowance {bounded['allowance_mb']} MB, cache {bounded['cache_mb']:.0f} MB; "
        f"{bounded['train_steps']} steps + every image read; in-memory copy "
        f"{bounded['in_memory_copy']})"
    )
    for size, entry in streaming["scoring"].items():
        lines.append(
            f"{'7d streamed scoring ' + f'{int(size):,}' + ' samples/s':<52} "
            f"{entry['samples_per_s']:>12.0f} {'-':>9}  (peak RSS {entry['peak_rss_mb']:.0f} MB; "
            f"cache {entry['cache_mb']:.0f} MB)"
        )
    scale = results.get("at_scale")
    if scale:
        for key, entry in scale.items():
            if isinstance(entry, dict):
                lines.append(
                    f"{'8 select ' + key:<52} {entry['seconds']:>10.1f} s  "
                    f"(peak RSS {entry['peak_rss_mb']:.0f} MB; "
                    f"outputs {entry['outputs_mb']:.0f} MB)"
                )
    return lines


def run(
    settings: Settings,
    log: Callable[[str], None] = print,
    section_done: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """All sections (`--short`: its subset); returns what bench.json holds.

    `section_done(results so far)` is called after every section (and at the end, with
    `complete: true`).
    """
    pl.seed_everything(0, verbose=False)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "settings": asdict(settings),
        "machine": machine_info(settings),
        "targets": {k: {"op": op, "value": v} for k, (op, v) in TARGETS.items()},
        "complete": False,
    }

    def done() -> None:
        results["pass"] = verdicts(results)
        results["total_seconds"] = time.perf_counter() - started
        if section_done is not None:
            section_done(results)

    results.update(training_sections(settings, log))
    done()
    results["scoring"] = scoring_section(settings, log)
    done()
    if settings.pil_section:
        results["old_vs_new"] = data_path_section(settings, log)
        done()
    if settings.streaming:
        results["streaming"] = streaming_section(settings, log)
        results["streaming_ratio"] = results["streaming"]["ratio"]
        done()
    # after scoring: peak RSS is per process, and ResNet-18's would mask the pools' own peaks
    results["td_overhead"] = td_overhead_section(settings, log)
    results["td_overhead_ratio"] = results["td_overhead"]["paper"]["td_overhead_ratio"]
    results["td_overhead_ratio_run_model"] = results["td_overhead"]["run_model"][
        "td_overhead_ratio"
    ]
    results["td_tracker_ratio"] = results["td_overhead"]["run_model"]["tracker_ratio"]
    done()
    results["gpu_extra"] = gpu_section(settings, log)
    if settings.at_scale:
        results["at_scale"] = scale_section(settings, log)
    results["complete"] = True
    done()
    return results


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tidal_lightning.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    parser.add_argument(
        "--model",
        choices=("small_cnn", "resnet18"),
        default=None,
        help="default: small_cnn on CPU, resnet18 on CUDA",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="default 5 (2 with --quick)",
    )
    parser.add_argument(
        "--td-labeled",
        type=int,
        default=None,
        help="training-set size of section 1 on the paper's model (default 512: 4 steps)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes (tests)")
    parser.add_argument(
        "--short",
        action="store_true",
        help="the GPU check's form: sections 1, 2 and 5 and five speed-option rows",
    )
    parser.add_argument(
        "--at-scale",
        action="store_true",
        help="section 8: CoreSet, BADGE, CAL, ... selection on pools of 437,513 and 1M",
    )
    parser.add_argument("--precision", default="32-true", choices=("32-true", "bf16-mixed"))
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument(
        "--num-workers",
        type=int,
        default=0,
        help="workers of the PIL DataLoader in section 6 (official default 0)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench.json"))
    return parser.parse_args(argv)


def quiet_lightning() -> None:
    """Drops Lightning's per-fit banners and data-loader hints: the bench fits dozens of times."""
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*number of training batches.*")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_lightning()
    try:
        settings = default_settings(args)
    except TidalError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

    def write(results: dict[str, Any]) -> None:
        partial = args.out.with_name(args.out.name + ".partial")
        partial.write_text(json.dumps(results, indent=2) + "\n")
        partial.replace(args.out)  # a reader never sees half a file

    results = run(
        settings, log=lambda line: print(line, file=sys.stderr, flush=True), section_done=write
    )
    print(format_table(results))
    print(f"\nwrote {args.out} ({results['total_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
