"""Lightning DDP on the CPU: 2 processes (gloo) train, record and score; results match one process.

One module fixture starts this file as a script twice (ranks 0 and 1), joined by a gloo
group through a rendezvous file (no ports to race for). Each rank runs every scenario and
saves what it saw to `rank<r>.pt`; the tests below check those files against hand-computed
values and single-process references. A child that fails or hangs fails the tests (its exit
code and stderr are shown; a failing rank exits at once and the other is killed). Collectives
time out after 180 s and the launch after 600 s: generous, because on a busy 2-core machine the
children's imports alone can take minutes; idle, the whole file takes about 35 CPU-seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import traceback
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from tidal_lightning.al.scoring import pool_pass
from tidal_lightning.callbacks.pool_dynamics import PoolDynamicsRecorder
from tidal_lightning.callbacks.training_dynamics import TrainingDynamicsTracker
from tidal_lightning.data.loader import TensorBatchLoader
from tidal_lightning.models.backbones import SmallCNN
from tidal_lightning.models.system import ActiveLearningSystem
from tidal_lightning.models.td_module import TDModule

REPO = Path(__file__).resolve().parents[2]
WORLD = 2
NUM_SAMPLES = 24  # the training split
NUM_CLASSES = 3
EPOCHS = 3
BATCH = 2
# 11 labeled samples: not divisible by W * batch = 4, and odd (DistributedSampler pads to 12)
LABELED = [1, 2, 4, 5, 8, 11, 13, 16, 17, 20, 23]
POOL = [0, 3, 6, 7, 9, 10, 12, 14, 15]  # 9, odd: the recorder's shards differ in size
SCORING_NEEDS = frozenset({"probs", "td_probs", "embeddings", "labeled_probs"})
MC_NEEDS = frozenset({"mc_probs", "mc_mean_probs", "mc_mean_entropy"})


# ------------------------------------------------------------------ scripted model
def scripted_probs(indices: Tensor, epoch: int, salt: float) -> Tensor:
    """`[B, K]` float32 softmax, a fixed function of (dataset index, epoch)."""
    k = torch.arange(1, NUM_CLASSES + 1, dtype=torch.float64)
    logits = 3.0 * torch.sin(0.7 * indices.double().cpu()[:, None] * k + 1.9 * epoch + salt)
    return logits.softmax(dim=1).float().to(indices.device)


def encoded_images() -> Tensor:
    """`[N, 1, 2, 2]` uint8 images whose pixels spell the sample's dataset index."""
    images = torch.zeros(NUM_SAMPLES, 1, 2, 2, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(NUM_SAMPLES) // 256
    images[:, 0, 0, 1] = torch.arange(NUM_SAMPLES) % 256
    return images


def decode(images: Tensor) -> Tensor:
    return (images[:, 0, 0, 0] * 256 + images[:, 0, 0, 1]).long()


class ScriptedSystem(pl.LightningModule):
    """Training probs and recorder probs are `scripted_probs` of the sample; one real weight
    keeps DDP's gradient all-reduce busy. Logs every training step's indices and TD target."""

    def __init__(self, tracker: TrainingDynamicsTracker) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1))
        self.tracker = tracker
        self.steps: list[tuple[int, list[int], Tensor]] = []

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        images, _, indices = batch
        probs = scripted_probs(indices, self.current_epoch, salt=0.0)
        target = self.tracker.running_mean_target(indices, probs)
        self.steps.append((self.current_epoch, indices.tolist(), target.clone()))
        loss = (self.weight * images.float().mean()).square()
        return {"loss": loss, "probs": probs, "indices": indices}

    def predict_batch(self, images: Tensor, *args: Any) -> dict[str, Tensor]:
        return {"probs": scripted_probs(decode(images), self.current_epoch, salt=1.0)}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class IndexedDataset(Dataset):
    def __init__(self, images: Tensor, indices: list[int]) -> None:
        self.images, self.indices = images, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        index = self.indices[i]
        return self.images[index], torch.tensor(0), torch.tensor(index)


def _trainer(callbacks: list[pl.Callback], devices: int) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        max_epochs=EPOCHS,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def fit_scripted(loader: Any, devices: int) -> dict[str, Any]:
    """Fits the scripted system over `loader` with a tracker and a pool recorder."""
    images = encoded_images()
    tracker = TrainingDynamicsTracker(NUM_SAMPLES, NUM_CLASSES)
    recorder = PoolDynamicsRecorder(
        images[POOL], lambda x: x.float(), NUM_CLASSES, batch_size=2, record_probs=True
    )
    system = ScriptedSystem(tracker)
    _trainer([tracker, recorder], devices).fit(system, train_dataloaders=loader)
    return {
        "prob_sums": tracker.prob_sums.cpu(),
        "epoch_counts": tracker.epoch_counts.cpu(),
        "steps": system.steps,
        "label_counts": recorder.label_counts.cpu(),
        "pool_td": recorder.outputs()["pool_td"].cpu(),
        "recorded_epochs": recorder.recorded_epochs,
    }


def tensor_loader() -> TensorBatchLoader:
    images = encoded_images()
    generator = torch.Generator().manual_seed(5)  # the same seed on every rank
    return TensorBatchLoader(
        images,
        torch.zeros(NUM_SAMPLES, dtype=torch.long),
        torch.tensor(LABELED),
        BATCH,
        shuffle=True,
        generator=generator,
    )


def padded_loader() -> DataLoader:
    # Lightning swaps in a DistributedSampler, which pads 11 samples to 12 across 2 ranks
    return DataLoader(IndexedDataset(encoded_images(), LABELED), batch_size=BATCH, shuffle=True)


# ------------------------------------------------------------------- pool scoring
def scoring_setup() -> tuple[ActiveLearningSystem, SimpleNamespace]:
    torch.manual_seed(0)
    backbone = SmallCNN(num_classes=NUM_CLASSES, in_channels=1, width=4, dropout=0.3)
    system = ActiveLearningSystem(
        backbone,
        NUM_CLASSES,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
        td_module=TDModule(backbone.stage_channels, NUM_CLASSES, hidden=8),
        td_tracker=TrainingDynamicsTracker(NUM_SAMPLES, NUM_CLASSES),
    )
    # non-trivial BatchNorm statistics, the same in every process
    for module in system.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
    images = torch.randint(0, 256, (NUM_SAMPLES, 1, 8, 8), dtype=torch.uint8)
    datamodule = SimpleNamespace(
        train_images=images,
        train_targets=torch.zeros(NUM_SAMPLES, dtype=torch.long),
        gather=lambda indices, device: images[indices].to(device),
        eval_batch_size=4,
        normalize=lambda x: x.float() / 255 - 0.5,
    )
    return system, datamodule


def score(
    system: ActiveLearningSystem, datamodule: Any, needs: frozenset[str]
) -> dict[str, Tensor]:
    outputs = pool_pass(
        system,
        datamodule,
        torch.tensor(POOL),
        torch.tensor(LABELED),
        needs,
        torch.device("cpu"),
        mc_samples=4,
        generator=torch.Generator().manual_seed(11),
    )
    return {name: value.cpu() for name, value in outputs.outputs.items()}


# ------------------------------------------------------------------------ a rank
def run_rank(rank: int, out_dir: Path) -> None:
    started = time.perf_counter()
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        NODE_RANK="0",
        MASTER_ADDR="127.0.0.1",
    )
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo",
        init_method=f"file://{out_dir / 'rendezvous'}",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=180),
    )
    results: dict[str, Any] = {}
    system, datamodule = scoring_setup()
    if rank == 1:  # DDP leaves each rank its own last-batch BatchNorm statistics
        for module in system.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.add_(1.0)
    results["scores"] = score(system, datamodule, SCORING_NEEDS)
    results["mc_scores"] = score(system, datamodule, MC_NEEDS)
    loader = tensor_loader()
    results["loader_len"] = len(loader)
    results["tensor_fit"] = fit_scripted(loader, WORLD)
    results["padded_fit"] = fit_scripted(padded_loader(), WORLD)
    torch.save(results, out_dir / f"rank{rank}.pt")
    print(f"rank {rank} done in {time.perf_counter() - started:.1f}s after imports", flush=True)
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Both ranks' results; fails (never hangs) when a child fails."""
    out_dir = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    children = []
    for rank in range(WORLD):
        log = open(out_dir / f"rank{rank}.log", "w")  # noqa: SIM115  # closed below
        command = [sys.executable, __file__, str(rank), str(out_dir)]
        children.append((subprocess.Popen(command, env=env, stdout=log, stderr=log), log))
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            codes = [child.poll() for child, _ in children]
            if all(code == 0 for code in codes) or any(code not in (None, 0) for code in codes):
                break
            time.sleep(0.2)
    finally:
        for child, log in children:
            if child.poll() is None:
                child.kill()
                child.wait()
            log.close()
    late = " (killed: still running after 600 s)" if time.monotonic() >= deadline else ""
    problems = [
        f"rank {r} exited with {child.returncode}{late}:\n"
        + (out_dir / f"rank{r}.log").read_text()[-3000:]
        for r, (child, _) in enumerate(children)
        if child.returncode != 0
    ]
    if problems:
        pytest.fail("\n".join(problems))
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


# ------------------------------------------------------------------------ tests
def _expected_sums() -> Tensor:
    """S by hand: the sum over epochs of each labeled sample's scripted softmax, float32."""
    sums = torch.zeros(NUM_SAMPLES, NUM_CLASSES)
    labeled = torch.tensor(LABELED)
    for epoch in range(EPOCHS):
        sums[labeled] = sums[labeled] + scripted_probs(labeled, epoch, salt=0.0)
    return sums


@pytest.mark.slow
@pytest.mark.parametrize("fit", ["tensor_fit", "padded_fit"])
def test_each_labeled_sample_counts_once_per_epoch_on_every_rank(
    ranks: list[dict[str, Any]], fit: str
) -> None:
    expected_counts = torch.zeros(NUM_SAMPLES, dtype=torch.long)
    expected_counts[LABELED] = EPOCHS
    for result in ranks:
        assert torch.equal(result[fit]["epoch_counts"], expected_counts)
        torch.testing.assert_close(result[fit]["prob_sums"], _expected_sums(), rtol=0, atol=1e-7)


@pytest.mark.slow
def test_the_padded_sampler_really_showed_a_sample_twice(ranks: list[dict[str, Any]]) -> None:
    """Guards the test above: without a duplicate, 'not double counted' proves nothing."""
    for epoch in range(EPOCHS):
        seen = [
            i
            for result in ranks
            for e, idx, _ in result["padded_fit"]["steps"]
            for i in idx
            if e == epoch
        ]
        assert len(seen) == len(LABELED) + 1 and sorted(set(seen)) == LABELED


@pytest.mark.slow
@pytest.mark.parametrize("fit", ["tensor_fit", "padded_fit"])
def test_td_targets_exclude_the_current_epoch(ranks: list[dict[str, Any]], fit: str) -> None:
    for result in ranks:
        for epoch, indices, target in result[fit]["steps"]:
            index = torch.tensor(indices)
            past = sum((scripted_probs(index, e, 0.0) for e in range(epoch)), torch.zeros(1))
            want = (past + scripted_probs(index, epoch, 0.0)) / (epoch + 1)
            torch.testing.assert_close(target, want)


@pytest.mark.slow
def test_the_tensor_loader_shards_disjointly_with_equal_step_counts(
    ranks: list[dict[str, Any]],
) -> None:
    for epoch in range(EPOCHS):
        per_rank = [[idx for e, idx, _ in r["tensor_fit"]["steps"] if e == epoch] for r in ranks]
        assert [len(batches) for batches in per_rank] == [ranks[0]["loader_len"]] * WORLD
        seen = [i for batches in per_rank for batch in batches for i in batch]
        assert sorted(seen) == LABELED  # disjoint, and each labeled sample once


@pytest.mark.slow
def test_recorded_label_counts_match_one_process_by_hand(ranks: list[dict[str, Any]]) -> None:
    pool = torch.tensor(POOL)
    counts = torch.zeros(len(POOL), NUM_CLASSES, dtype=torch.int32)
    prob_sums = torch.zeros(len(POOL), NUM_CLASSES)
    for epoch in range(EPOCHS):
        probs = scripted_probs(pool, epoch, salt=1.0)
        counts[torch.arange(len(POOL)), probs.argmax(dim=1)] += 1
        prob_sums += probs
    assert len({tuple(row) for row in counts.tolist()}) > 2  # the labels do move across epochs
    for result in ranks:
        for fit in ("tensor_fit", "padded_fit"):
            assert result[fit]["recorded_epochs"] == EPOCHS
            assert torch.equal(result[fit]["label_counts"], counts)
            assert result[fit]["label_counts"].sum(dim=1).tolist() == [EPOCHS] * len(POOL)
            torch.testing.assert_close(result[fit]["pool_td"], prob_sums / EPOCHS)


@pytest.mark.slow
@pytest.mark.parametrize("needs", [SCORING_NEEDS, MC_NEEDS], ids=["sharded", "mc_dropout"])
def test_pool_pass_on_two_ranks_returns_the_one_process_outputs(
    ranks: list[dict[str, Any]], needs: frozenset[str]
) -> None:
    system, datamodule = scoring_setup()
    expected = score(system, datamodule, needs)
    key = "scores" if needs is SCORING_NEEDS else "mc_scores"
    for result in ranks:
        assert set(result[key]) == set(expected)
        for name, value in expected.items():
            assert result[key][name].shape == value.shape, name
            torch.testing.assert_close(result[key][name], value, msg=name)


if __name__ == "__main__":
    try:
        run_rank(int(sys.argv[1]), Path(sys.argv[2]))
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        # exit now: a normal exit can wait on the process group, and the parent stops the
        # other rank as soon as one fails
        os._exit(1)
