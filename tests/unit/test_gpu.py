"""What only a CUDA device can show (`pytest -m gpu`; the GPU check runs these; skipped
without a device): no host synchronisation inside a training epoch, the device-resident
split, bf16-mixed precision with the TD loss, channels_last.

Each test builds the real system the AL loop trains (`al.loop.build_system` on the
`cifar10` preset: ResNet-18, TD module, tracker, fused SGD) on generated CIFAR-shaped data.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from tests.conftest import compose_config
from tidal_lightning.al.loop import build_system, run
from tidal_lightning.data.datamodules import ImageClassificationData
from tidal_lightning.data.loader import TensorBatchLoader
from tidal_lightning.models.system import ActiveLearningSystem
from tidal_lightning.profiling import EpochProfiler
from tidal_lightning.seeding import make_generator
from tidal_lightning.strategies.base import build_strategy

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CUDA = torch.device("cuda")
LABELED = 256  # of 400 generated training images; 4 steps of 64 per epoch


def _config(tmp_path: Path, *overrides: str) -> DictConfig:
    return compose_config(
        [
            "+experiment=cifar10",
            "dataset=synthetic",
            "dataset.num_classes=10",
            "dataset.train_per_class=40",
            "dataset.test_per_class=10",
            "dataset.image_size=32",
            "dataset.batch_size=64",
            f"al.initial={LABELED}",
            "al.cycles=1",
            "al.pool_subset=64",
            "trainer.max_epochs=3",
            "trainer.accelerator=gpu",
            *overrides,
        ],
        tmp_path / "run",
    )


def _data(cfg: DictConfig) -> ImageClassificationData:
    data: ImageClassificationData = instantiate(cfg.dataset)
    data.load()
    data.start_cycle(torch.arange(LABELED), seed=0, cycle=0)
    return data


def _system(cfg: DictConfig, data: ImageClassificationData) -> ActiveLearningSystem:
    torch.manual_seed(0)
    system, _, _ = build_system(cfg, data, build_strategy(cfg.strategy))
    assert system.td_module is not None and system.td_tracker is not None  # TiDAL-M's system
    return system


def _trainer(cfg: DictConfig, system: ActiveLearningSystem, **options: Any) -> pl.Trainer:
    """The loop's Trainer (conf/trainer) for `system`, quiet, with `options` on top."""
    assert system.td_tracker is not None
    callbacks = [system.td_tracker, *options.pop("callbacks", [])]
    return instantiate(
        cfg.trainer, callbacks=callbacks, logger=False, enable_progress_bar=False, **options
    )


@contextlib.contextmanager
def sync_check(mode: str = "error") -> Iterator[None]:
    """CUDA's sync check: every operation that makes the host wait for the GPU raises."""
    before = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(mode)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(before)


def test_the_sync_check_catches_a_host_read() -> None:
    # the tests below rely on it: a host read of a device value inside it must fail
    value = torch.ones(2, device=CUDA).sum()
    with sync_check(), pytest.raises(RuntimeError, match="synchroniz"):
        value.item()


def test_training_steps_never_wait_for_the_gpu(tmp_path: Path) -> None:
    """The training step's own work, without Lightning: the device-resident loader, crop/flip
    and normalisation, TD target, forward, loss, backward, fused SGD, tracker updates."""
    cfg = _config(tmp_path)
    data = _data(cfg)
    system = _system(cfg, data).to(CUDA).train()
    tracker = system.td_tracker
    assert tracker is not None
    tracker.on_fit_start(None, system)  # type: ignore[arg-type]  # moves its buffers
    images, targets = data.split_on(CUDA)
    loader = TensorBatchLoader(
        images,
        targets,
        data.labeled_indices,
        data.batch_size,
        shuffle=True,
        generator=make_generator(0, 0, "shuffle"),
    )
    optimizer = system.configure_optimizers()["optimizer"]

    def epoch() -> None:
        system.on_train_epoch_start()
        tracker.on_train_epoch_start(None, system)  # type: ignore[arg-type]
        for batch_idx, (x, y, i) in enumerate(loader):
            batch = (data.normalize(data.augment(x)), y, i)
            out = system.training_step(batch, batch_idx)
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            optimizer.step()
            tracker.on_train_batch_end(None, system, out, batch, batch_idx)  # type: ignore[arg-type]
        tracker.on_train_epoch_end(None, system)  # type: ignore[arg-type]

    epoch()  # warm-up: cuDNN and cuBLAS handles, first allocations
    torch.cuda.synchronize()
    with sync_check():
        epoch()
        epoch()
    counts = tracker.epoch_counts.cpu()
    assert counts[:LABELED].tolist() == [3] * LABELED  # the guarded epochs did train
    assert counts[LABELED:].sum() == 0
    assert system._loss_sums is not None and bool(torch.isfinite(system._loss_sums).all())


def test_the_al_loop_never_waits_for_the_gpu_inside_an_epoch(tmp_path: Path) -> None:
    """The real loop (two cycles, Lightning, CSV logger, progress bar): the profiler turns the
    sync check on for every epoch's batch loop after a fit's first, so any wait raises, with
    its place in the traceback. If this fails and the test above passes, the wait is in
    Lightning's loop or the logging, not in the training step."""
    epochs_path = tmp_path / "epochs.jsonl"
    cfg = _config(
        tmp_path,
        "al.cycles=2",
        "al.budget=64",
        "logger=csv",
        "trainer.enable_progress_bar=true",
        "+trainer.profiler._target_=tidal_lightning.profiling.EpochProfiler",
        f"+trainer.profiler.path={epochs_path}",
        "+trainer.profiler.sync_debug=error",
    )
    rows = run(cfg)
    assert [r["num_labeled"] for r in rows] == [LABELED, LABELED + 64]
    events = [json.loads(line) for line in epochs_path.read_text().splitlines()]
    epochs = [e for e in events if e["event"] == "epoch"]
    # two fits of 3 epochs, each with its training steps (256 and 320 labeled, batch 64)
    assert [(e["fit"] - epochs[0]["fit"], e["epoch"], e["steps"]) for e in epochs] == [
        (0, 0, 4),
        (0, 1, 4),
        (0, 2, 4),
        (1, 0, 5),
        (1, 1, 5),
        (1, 2, 5),
    ]
    assert torch.cuda.get_sync_debug_mode() == 0  # restored after every epoch


def test_the_profilers_sync_check_fails_a_fit_that_reads_the_loss_on_the_host() -> None:
    """The check of the test above can fail: `.item()` in every step raises from epoch 1 on
    (epoch 0, the warm-up, is not checked)."""
    seen_epochs = []

    class ReadsLoss(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = self.layer(batch[0]).square().mean()
            seen_epochs.append(self.current_epoch)
            loss.item()
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 4)), 4)
    trainer = pl.Trainer(
        accelerator="gpu",
        devices=1,
        max_epochs=3,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        profiler=EpochProfiler("/dev/null", sync_debug="error"),
    )
    with pytest.raises(RuntimeError, match="synchroniz"):
        trainer.fit(ReadsLoss(), loader)
    assert seen_epochs == [0, 0, 1]
    assert torch.cuda.get_sync_debug_mode() == 0


def test_the_split_is_copied_to_the_device_once_and_batches_come_from_it(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    data = _data(cfg)
    images, targets = data.split_on(CUDA)
    assert images.device.type == targets.device.type == "cuda" and images.dtype == torch.uint8
    assert torch.equal(images.cpu(), data.train_images)
    assert torch.equal(targets.cpu(), data.train_targets)
    seen: list[tuple[bool, str]] = []

    class LoaderSpy(pl.Callback):
        def on_train_batch_start(
            self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any, batch_idx: int
        ) -> None:
            loader = trainer.train_dataloader
            seen.append((loader.images is images, batch[0].device.type))

    for cycle in range(2):  # as the loop runs cycles: a fresh system and Trainer each
        data.start_cycle(torch.arange(LABELED), seed=0, cycle=cycle)
        system = _system(cfg, data)
        trainer = _trainer(cfg, system, max_epochs=1, callbacks=[LoaderSpy()])
        trainer.fit(system, datamodule=data)
    assert len(seen) == 2 * 4 and all(same and device == "cuda" for same, device in seen)
    assert data.split_on(CUDA)[0] is images  # still the one copy
    indices = torch.tensor([5, 0, 399, 17])
    gathered = data.gather(indices, CUDA)
    assert gathered.device.type == "cuda"
    assert torch.equal(gathered.cpu(), data.train_images[indices])


def test_bf16_mixed_trains_with_the_td_loss_and_keeps_the_td_sums_in_float32(
    tmp_path: Path,
) -> None:
    cfg = _config(tmp_path)
    data = _data(cfg)
    system = _system(cfg, data)
    classifier_dtypes: list[torch.dtype] = []
    system.backbone.linear.register_forward_hook(
        lambda module, inputs, output: classifier_dtypes.append(output.dtype)
    )
    trainer = _trainer(cfg, system, precision="bf16-mixed", max_epochs=2)
    trainer.fit(system, datamodule=data)
    assert classifier_dtypes and set(classifier_dtypes) == {torch.bfloat16}  # autocast was on
    metrics = trainer.callback_metrics
    for name in ("train/ce", "train/td_kl", "train/loss"):
        assert bool(torch.isfinite(metrics[name])), name
    assert float(metrics["train/td_kl"]) > 0
    tracker = system.td_tracker
    assert tracker is not None
    assert tracker.prob_sums.dtype == torch.float32 and tracker.prob_sums.device.type == "cuda"
    assert tracker.epoch_counts[:LABELED].cpu().tolist() == [2] * LABELED
    # each epoch adds a float32 softmax summing to 1; one rounded to bf16 (8-bit mantissa)
    # would miss by about 1e-3
    sums = tracker.prob_sums[:LABELED].sum(dim=1).cpu()
    torch.testing.assert_close(sums, torch.full((LABELED,), 2.0), atol=2e-5, rtol=0)


def test_channels_last_gives_the_same_outputs_and_stays_nhwc_through_training(
    tmp_path: Path,
) -> None:
    plain_cfg, nhwc_cfg = _config(tmp_path), _config(tmp_path, "model.channels_last=true")
    data = _data(plain_cfg)
    plain = _system(plain_cfg, data).to(CUDA).eval()
    nhwc = _system(nhwc_cfg, data).to(CUDA).eval()
    convs = [m for m in nhwc.backbone.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    images = data.normalize(data.split_on(CUDA)[0][:64])
    needs = frozenset({"probs", "td_probs"})
    allow_tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # plain float32 in both layouts
    try:
        expected, got = plain.predict_batch(images, needs), nhwc.predict_batch(images, needs)
        with torch.no_grad():
            _, features = nhwc.backbone(images)
    finally:
        torch.backends.cudnn.allow_tf32 = allow_tf32
    for name in needs:
        torch.testing.assert_close(got[name], expected[name], atol=1e-3, rtol=0)
    assert all(f.is_contiguous(memory_format=torch.channels_last) for f in features)

    nhwc.train()
    trainer = _trainer(nhwc_cfg, nhwc, precision="bf16-mixed", max_epochs=1)
    trainer.fit(nhwc, datamodule=data)
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert all(bool(torch.isfinite(c.weight).all()) for c in convs)
