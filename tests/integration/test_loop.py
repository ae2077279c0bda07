"""Whole AL runs on the smoke experiment: every strategy, determinism, errors, run-folder files."""

from __future__ import annotations

import csv
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from tests.conftest import ACQUISITION_STRATEGIES, EXPERIMENTS, compose_config
from tests.integration.test_readers import no_md5  # noqa: F401  (fixture)
from tests.standins import write_cifar
from tidal_lightning.al.loop import run
from tidal_lightning.errors import ConfigError, RunFolderError

pytestmark = pytest.mark.slow


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("strategy", ACQUISITION_STRATEGIES)
def test_every_strategy_runs_the_smoke_experiment(
    smoke_config: Callable[..., DictConfig], strategy: str
) -> None:
    cfg = smoke_config(f"strategy={strategy}", "al.cycles=2")
    rows = run(cfg)
    out = Path(cfg.paths.output_dir)
    results = read_csv(out / "results.csv")
    assert [int(r["num_labeled"]) for r in results] == [24, 40] == [r["num_labeled"] for r in rows]
    assert list(results[0])[:3] == ["cycle", "num_labeled", "test_acc"]
    queries = read_csv(out / "queries.csv")
    indices = [int(q["index"]) for q in queries]
    # `budget` new samples, none labeled before: nothing is labeled twice
    assert len(indices) == len(set(indices)) == 40
    assert [sum(q["cycle"] == str(c) for q in queries) for c in range(2)] == [24, 16]
    data = instantiate(cfg.dataset)
    data.load()
    labeled_counts = [int(results[-1][f"labeled_class_{c}"]) for c in range(4)]
    assert labeled_counts == torch.bincount(data.train_targets[indices], minlength=4).tolist()
    assert all(int(q["label"]) == int(data.train_targets[int(q["index"])]) for q in queries)
    # the query diagnostics describe the batch that was queried
    queried = torch.tensor([int(q["label"]) for q in queries if q["cycle"] == "1"])
    histogram = [int(results[0][f"queried_class_{c}"]) for c in range(4)]
    assert histogram == torch.bincount(queried, minlength=4).tolist()
    assert int(results[0]["query_distinct_classes"]) == sum(n > 0 for n in histogram)
    first = [int(results[0][f"labeled_class_{c}"]) for c in range(4)]
    assert float(results[0]["labeled_imbalance_ratio"]) == pytest.approx(
        max(first) / min(first) if min(first) else float("inf"), abs=1e-4
    )
    assert float(results[0]["query_seconds"]) >= 0 and results[1]["query_seconds"] == ""
    recorded = strategy in ("dispersion", "td_entropy_oracle", "td_margin_oracle")
    assert (results[0]["record_seconds"] != "") == recorded
    assert (results[0]["td_pool_kl"] != "") == strategy.startswith("td_")
    if strategy.startswith("td_"):
        assert float(results[0]["td_pool_kl"]) >= 0
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["status"] == "finished" and summary["final_test_acc"] == float(
        results[-1]["test_acc"]
    )
    assert summary["strategy_name"] == strategy
    # deterministic: the same config in a fresh folder queries the same samples
    again = smoke_config(f"strategy={strategy}", "al.cycles=2", run="again")
    run(again)
    assert (Path(again.paths.output_dir) / "queries.csv").read_text() == (
        out / "queries.csv"
    ).read_text()


def test_full_data_trains_once_on_the_whole_pool(smoke_config: Callable[..., DictConfig]) -> None:
    """The full-data reference: every pool sample labeled at once, one training, no query."""
    cfg = smoke_config("strategy=full_data", "al.cycles=3", "dataset.imbalance_ratio=4")
    rows = run(cfg)
    out = Path(cfg.paths.output_dir)
    summary = json.loads((out / "run_summary.json").read_text())
    pool_size = sum(summary["train_pool_class_counts"])  # after long-tail subsampling
    assert pool_size < 240 and [r["num_labeled"] for r in rows] == [pool_size]
    assert rows[0]["query_seconds"] == "" and summary["status"] == "finished"
    assert {q["cycle"] for q in read_csv(out / "queries.csv")} == {"0"}
    with pytest.raises(ConfigError, match="strategy=full_data labels the whole training pool"):
        run(smoke_config("strategy=full_data", "oracle=file", run="file"))


def test_recording_the_pool_does_not_change_training(
    smoke_config: Callable[..., DictConfig],
) -> None:
    """Dispersion trains like margin, and the TD oracle like TiDAL-M, bit for bit."""
    first_acc = {}
    for strategy in ("margin", "dispersion", "tidal_margin", "td_margin_oracle"):
        cfg = smoke_config(f"strategy={strategy}", "al.cycles=2", run=strategy)
        first_acc[strategy] = run(cfg)[0]["test_acc"]
    assert first_acc["margin"] == first_acc["dispersion"]
    assert first_acc["tidal_margin"] == first_acc["td_margin_oracle"]
    assert first_acc["margin"] != first_acc["tidal_margin"]  # the TD module does change it


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["strategy=bald", "strategy.dropout=0"], "strategy.dropout=0: the query-time"),
        (["strategy=bald", "strategy.mc_samples=0"], "strategy.mc_samples=0"),
        (["strategy=dispersion", "strategy.record_every=11"], "strategy.record_every=11"),
        (["strategy=lloss", "strategy.detach_fraction=2"], "strategy.detach_fraction=2"),
        (["strategy=gt_oracle", "oracle=file"], "strategy=gt_oracle with oracle=FileOracle"),
        (["strategy=vaal", "trainer.devices=2"], "trainer.devices=2: VAAL does its query work"),
        (["strategy=ta_vaal", "strategy.kl_reduction=max"], "strategy.kl_reduction='max'"),
        (["strategy=coreset_mip", "trainer.devices=2"], "trainer.devices=2: CoreSetMIP"),
    ],
)
def test_strategy_settings_are_checked_before_anything_is_written(
    smoke_config: Callable[..., DictConfig], overrides: list[str], message: str
) -> None:
    cfg = smoke_config(*overrides)
    with pytest.raises(ConfigError, match=message):
        run(cfg)
    out = Path(cfg.paths.output_dir)
    assert not out.exists() or list(out.iterdir()) == []


def test_same_seed_same_queries_other_seed_other_queries(
    smoke_config: Callable[..., DictConfig],
) -> None:
    outputs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        cfg = smoke_config("strategy=tidal_margin", f"seed={seed}", run=name)
        run(cfg)
        outputs[name] = (Path(cfg.paths.output_dir) / "queries.csv").read_text()
    assert outputs["a"] == outputs["b"]
    assert outputs["a"] != outputs["c"]


def test_queries_come_from_the_strategy(smoke_config: Callable[..., DictConfig]) -> None:
    """Entropy and random pick different samples from the same trained model and subset."""
    picked = {}
    for strategy in ("entropy", "random"):
        cfg = smoke_config(f"strategy={strategy}", "al.cycles=2", run=strategy)
        run(cfg)
        queries = read_csv(Path(cfg.paths.output_dir) / "queries.csv")
        picked[strategy] = {q["index"] for q in queries if q["cycle"] == "1"}
    assert picked["entropy"] != picked["random"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("al.budget=0", "al.budget=0"),
        ("al.cycles=0", "al.cycles=0"),
        ("al.pool_subset=10", "al.pool_subset=10 is smaller than al.budget=16"),
        ("dataset.imbalance_ratio=0.5", "dataset.imbalance_ratio=0.5"),
        ("al.initial=100000", "al.initial=100000 is larger than the training pool"),
        ("al.initial_mode=stratified", "al.initial_mode='stratified'"),
        ("trainer.devices=2 +trainer.strategy=ddp_spawn", "needs trainer.strategy=ddp"),
        ("trainer.devices=2 oracle=file", "oracle=file with trainer.devices=2"),
    ],
)
def test_bad_config_fails_early_and_writes_nothing(
    smoke_config: Callable[..., DictConfig], override: str, message: str
) -> None:
    cfg = smoke_config(*override.split())
    with pytest.raises(ConfigError, match=message):
        run(cfg)
    out = Path(cfg.paths.output_dir)
    assert not out.exists() or list(out.iterdir()) == []


def test_existing_results_are_never_overwritten(smoke_config: Callable[..., DictConfig]) -> None:
    cfg = smoke_config("al.cycles=1")
    run(cfg)
    out = Path(cfg.paths.output_dir)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    # another config in the same folder: refused, naming what differs
    with pytest.raises(RunFolderError, match=r"different config \(seed: 0 -> 9\)"):
        run(smoke_config("al.cycles=1", "seed=9"))
    # results left by something that kept no state: refused too
    (out / "state.pt").rename(out / "moved.pt")
    with pytest.raises(RunFolderError, match="already holds"):
        run(smoke_config("al.cycles=1", "seed=9"))
    (out / "moved.pt").rename(out / "state.pt")
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert before == after


def test_pool_running_out_stops_with_the_rows_so_far(
    smoke_config: Callable[..., DictConfig],
) -> None:
    # 240 training samples: 24 + 16 * k labeled; 14 trainings would need 232 + 16 > 240
    rows = run(smoke_config("al.cycles=20", "trainer.max_epochs=1", "strategy=random"))
    assert [r["num_labeled"] for r in rows][-1] == 24 + 16 * 13
    assert len(rows) == 14


def test_warm_start_and_class_balanced_initial(smoke_config: Callable[..., DictConfig]) -> None:
    cfg = smoke_config("al.warm_start=true", "al.initial_mode=class_balanced", "al.cycles=2")
    run(cfg)
    first = read_csv(Path(cfg.paths.output_dir) / "results.csv")[0]
    assert [int(first[f"labeled_class_{c}"]) for c in range(4)] == [6, 6, 6, 6]


def test_long_tailed_cifar10_standin_end_to_end(tmp_path: Path, no_md5: None) -> None:  # noqa: F811
    write_cifar(tmp_path / "data", per_class=10)
    cfg = compose_config(
        [
            "dataset=cifar10",
            f"dataset.root={tmp_path / 'data'}",
            "dataset.download=false",
            "dataset.imbalance_ratio=10",
            "logger=none",
            "trainer.max_epochs=1",
            "trainer.accelerator=cpu",
            "trainer.enable_progress_bar=false",
            "al.initial=10",
            "al.budget=5",
            "al.cycles=2",
            "al.pool_subset=20",
            "model.backbone.width=4",
        ],
        tmp_path / "run",
    )
    run(cfg)
    summary = json.loads((tmp_path / "run" / "run_summary.json").read_text())
    # int(10 * 10 ** (-c / 9)), c = 0..9
    assert summary["train_pool_class_counts"] == [10, 7, 5, 4, 3, 2, 2, 1, 1, 1]
    assert summary["test_size"] == 20 and summary["num_classes"] == 10
    assert summary["dataset"] == "CIFAR-10" and summary["git_commit"]
    assert "torch" in summary["package_versions"]
    queried = [int(q["index"]) for q in read_csv(tmp_path / "run" / "queries.csv")]
    assert len(queried) == 15


@pytest.mark.parametrize("logger", ["csv", "wandb"])
def test_loggers_record_the_per_cycle_accuracy(
    smoke_config: Callable[..., DictConfig], logger: str
) -> None:
    cfg = smoke_config(f"logger={logger}", "al.cycles=2")
    run(cfg)
    out = Path(cfg.paths.output_dir)
    if logger == "csv":
        logged = read_csv(out / "csv" / "metrics.csv")
        accs = [r["al/test_acc"] for r in logged if r.get("al/test_acc")]
        assert len(accs) == 2
    else:
        # one W&B run id, finished at each commit and resumed: a session (file) per cycle, and
        # one for the learning-curve table at the end
        run_files = sorted((out / "wandb").glob("offline-run-*/*.wandb"))
        assert len(run_files) == 3 and len({f.name for f in run_files}) == 1
        logged: dict[str, list[float]] = {}
        for run_file in run_files[:2]:  # the cycles' sessions
            for key, values in wandb_items_when_written(run_file, "al/test_acc").items():
                logged.setdefault(key, []).extend(values)
        results = read_csv(out / "results.csv")
        assert {round(v, 6) for v in logged["al/test_acc"]} == {
            float(r["test_acc"]) for r in results
        }
        # no 0: per-epoch rows carry no `al/*` key, so W&B fills no `al/num_labeled` into them
        assert set(logged["al/num_labeled"]) == {24, 40}
        assert sum(logged["al/queried_class_0"] + logged["al/queried_class_1"]) <= 16
        # per-epoch steps keep increasing across the two cycles' fresh Trainers (W&B would
        # otherwise overlay or drop them): 2 steps/epoch in cycle 0, 3 in cycle 1, 10 epochs
        steps = logged["trainer/global_step"]
        assert steps == sorted(steps) and max(steps) >= 20 + 30
        assert set(logged["train/cycle"]) == {0, 1}
        blob = b"".join(f.read_bytes() for f in run_files)
        # group (the sweep), name and tags from the run, the resolved config attached
        assert b"adhoc" in blob and b"tidal_margin-synthetic-ir1-seed0" in blob
        assert b"seed=0" in blob and b"imbalance_ratio=1" in blob
        assert b"pool_subset" in blob
        assert b"al/queried_class_histogram" in blob and b"al/learning_curve" in blob


def wandb_items_when_written(
    run_file: Path, key: str, count: int = 1, timeout_s: float = 60.0
) -> dict[str, list[float]]:
    """`wandb_items` of the file once `key` is in it `count` times.

    W&B's service process writes the offline file asynchronously; on a loaded machine the last
    records can land just after `finish()` returns, so poll briefly instead of reading once.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        items = wandb_items(run_file.read_bytes())
        if len(items.get(key, [])) >= count or time.monotonic() > deadline:
            return items
        time.sleep(0.5)


def wandb_items(blob: bytes) -> dict[str, list[float]]:
    """`al/*`, `train/*` and `trainer/*` values in an offline `.wandb` file (its wire format).

    Each logged item is an `Item` message: field 2 (`key`, tag 0x12) then field 16
    (`value_json`, tag 0x82 0x01), each a length-prefixed string; W&B's own reader for
    these files is not part of its Python package.
    """
    items: dict[str, list[float]] = {}
    pattern = rb"\x12(.)((?:al|trainer|train)/[a-z_0-9]+)\x82\x01(.)"
    for match in re.finditer(pattern, blob, flags=re.DOTALL):
        if match.group(1)[0] != len(match.group(2)):
            continue
        start = match.end()
        value = blob[start : start + match.group(3)[0]]
        items.setdefault(match.group(2).decode(), []).append(float(value))
    return items


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_builds(tmp_path: Path, experiment: str) -> None:
    cfg = compose_config([f"+experiment={experiment}"], tmp_path)
    from tidal_lightning.config_checks import validate_config

    validate_config(cfg)
    data = instantiate(cfg.dataset)
    backbone = instantiate(cfg.model.backbone, num_classes=10, in_channels=3)
    logits, features = backbone(torch.zeros(2, 3, 32, 32))
    assert logits.shape == (2, 10) and len(features) == 4
    assert data.batch_size > 0
