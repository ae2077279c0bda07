"""The GPU check (`scripts/gpu_check.sh`): its epoch clock, its projection arithmetic against
hand-worked numbers, its step runner, and the whole check in its CPU tiny mode."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from tidal_lightning import gpu_check
from tidal_lightning.profiling import EpochProfiler

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ EpochProfiler
class _Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.layer(batch[0]).square().mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(profiler: EpochProfiler, samples: int, epochs: int) -> float:
    data = torch.utils.data.TensorDataset(torch.randn(samples, 3))
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        profiler=profiler,
    )
    started = time.perf_counter()
    trainer.fit(_Tiny(), torch.utils.data.DataLoader(data, batch_size=4))
    return time.perf_counter() - started


def test_epoch_profiler_records_every_epoch_with_its_steps(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "epochs.jsonl"
    wall = _fit(EpochProfiler(str(path)), samples=10, epochs=3)  # 3 steps per epoch (4, 4, 2)
    _fit(EpochProfiler(str(path)), samples=4, epochs=2)  # a second fit appends
    events = [json.loads(line) for line in path.read_text().splitlines()]
    fits = [e for e in events if e["event"] == "fit"]
    assert len(fits) == 2 and fits[0]["fit"] != fits[1]["fit"]
    epochs = [e for e in events if e["event"] == "epoch"]
    assert [(e["fit"] == fits[0]["fit"], e["epoch"], e["steps"], e["last"]) for e in epochs] == [
        (True, 0, 3, False),
        (True, 1, 3, False),
        (True, 2, 3, True),
        (False, 0, 1, False),
        (False, 1, 1, True),
    ]
    first = [e["seconds"] for e in epochs[:3]]
    assert all(s > 0 for s in first) and sum(first) < wall  # inside the fit's own time


def test_epoch_profiler_refuses_an_unknown_sync_mode(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sync_debug='loud'"):
        EpochProfiler(str(tmp_path / "e.jsonl"), sync_debug="loud")


# ---------------------------------------------------------------------- projection
def _epoch(fit: int, epoch: int, steps: int, seconds: float, last: bool = False) -> dict:
    return {"event": "epoch", "fit": fit, "epoch": epoch, "steps": steps, "seconds": seconds,
            "last": last}  # fmt: skip


def test_epoch_model_is_fitted_on_steady_epochs_only() -> None:
    # seconds = 0.5 + 0.01 * steps on the steady epochs; the first and last of each fit are
    # far off the line and must not move it
    epochs = [
        _epoch(0, 0, 8, 9.0),
        _epoch(0, 1, 8, 0.58),
        _epoch(0, 2, 8, 0.58),
        _epoch(0, 3, 8, 0.01, last=True),
        _epoch(1, 0, 79, 40.0),
        _epoch(1, 1, 79, 1.29),
        _epoch(1, 2, 79, 1.29),
        _epoch(1, 3, 30, 0.2, last=True),
    ]
    model = gpu_check.fit_epoch_seconds(epochs)
    assert model is not None
    assert model["a_s"] == pytest.approx(0.5) and model["b_s_per_step"] == pytest.approx(0.01)
    assert model["epochs"] == 4 and model["steps"] == [8.0, 79.0]
    # one epoch size: no fixed part, the median seconds per step
    one = gpu_check.fit_epoch_seconds([_epoch(0, e, 10, s) for e, s in enumerate([9, 1, 2, 3])])
    assert one is not None and one["a_s"] == 0 and one["b_s_per_step"] == pytest.approx(0.2)
    assert gpu_check.fit_epoch_seconds([_epoch(0, 0, 8, 1.0)]) is None


def test_steps_per_epoch_follow_the_training_loader() -> None:
    # ceil(n / batch), except that a trailing 1-sample batch joins the one before
    assert gpu_check.steps_per_epoch(1000, 128) == 8
    assert gpu_check.steps_per_epoch(10_000, 128) == 79
    assert gpu_check.steps_per_epoch(129, 64) == 2
    assert gpu_check.steps_per_epoch(130, 64) == 3


def test_projection_by_hand() -> None:
    protocol = gpu_check.Protocol(initial=100, budget=100, cycles=3, epochs=2, batch_size=64)
    projected = gpu_check.project_run(
        protocol,
        a_s=0.5,
        b_s_per_step=0.1,
        startup_s=10.0,
        first_epoch_extra_s=1.0,
        cycle_overhead_s=3.0,
        query_s=2.0,
    )
    # labeled 100, 200, 300 -> 2, 4, 5 steps; train = 2 * (0.5 + 0.1 * steps) + 1
    trains = [2 * (0.5 + 0.2) + 1, 2 * (0.5 + 0.4) + 1, 2 * (0.5 + 0.5) + 1]
    assert [c["steps_per_epoch"] for c in projected["cycles"]] == [2, 4, 5]
    assert [c["train_s"] for c in projected["cycles"]] == pytest.approx(trains)
    # a query after every cycle but the last
    seconds = [trains[0] + 3 + 2, trains[1] + 3 + 2, trains[2] + 3]
    assert [c["seconds"] for c in projected["cycles"]] == pytest.approx(seconds)
    assert projected["total_s"] == pytest.approx(10 + sum(seconds))
    assert projected["minutes"] == pytest.approx(projected["total_s"] / 60)


def test_measured_run_is_split_into_startup_epochs_queries_and_overhead() -> None:
    events = [
        {"event": "fit", "fit": 4, "time": 105.0},
        _epoch(4, 0, 2, 3.0),
        _epoch(4, 1, 2, 1.0),
        _epoch(4, 2, 2, 1.0, last=True),
        {"event": "fit", "fit": 5, "time": 120.0},
        _epoch(5, 0, 6, 5.0),
        _epoch(5, 1, 6, 2.0),
        _epoch(5, 2, 3, 0.5, last=True),
    ]
    cycles = [
        {"num_labeled": "20", "test_acc": "0.5", "train_seconds": "6", "query_seconds": "4"},
        {"num_labeled": "60", "test_acc": "0.7", "train_seconds": "8", "query_seconds": ""},
    ]
    measured = gpu_check.measure_paper_run(events, cycles, launched=100.0, ended=140.0)
    # steady epochs (2 steps, 1 s) and (6 steps, 2 s): a = 0.5, b = 0.25
    assert measured["model"]["a_s"] == pytest.approx(0.5)
    assert measured["model"]["b_s_per_step"] == pytest.approx(0.25)
    assert measured["startup_s"] == pytest.approx(5.0)
    # first epochs beyond the model: 3 - 1 = 2 and 5 - 2 = 3
    assert measured["first_epoch_extra_s"] == pytest.approx(2.5)
    # 140 - 105 = 35 s after the first fit began: 12.5 s of epochs, a 4 s query, 18.5 s rest
    assert measured["cycle_overhead_s"] == pytest.approx(18.5 / 2)
    assert measured["query_s"] == pytest.approx(4.0)
    assert [c["num_labeled"] for c in measured["cycles"]] == [20, 60]
    assert [c["epochs"] for c in measured["cycles"]] == [3, 3]
    assert [c["median_epoch_s"] for c in measured["cycles"]] == [1.0, 2.0]


def _steps(bench: dict, official: dict, paper: dict | None = None) -> dict:
    steps = {"bench": {"result": bench}, "bench_official": {"result": official}}
    if paper is not None:
        steps["paper_cycle"] = {"result": paper}
    return steps


def test_targets_read_the_speed_rows_and_the_official_loop() -> None:
    bench = {
        "td_overhead_ratio": 1.01,
        "lightning_vs_raw_ratio": 1.2,
        "speed_options": {
            "fp32": {"images_per_s": 9000.0, "epoch_seconds": 10000 / 9000},
            "bf16+channels_last": {"images_per_s": 21000.0, "epoch_seconds": 10000 / 21000},
            "bf16+channels_last+compile": {"error": "RuntimeError: no compiler"},
        },
        "speed_options_steps_per_epoch": 79,
        "speed_options_labeled": 10000,
    }
    official = {"workers_0_images_per_s": 1500.0, "workers_8_images_per_s": 6000.0}
    figures, targets = gpu_check.figures_and_targets(_steps(bench, official))
    assert figures["speedup_vs_official"] == pytest.approx(6.0)  # the shipped fp32 row / w0
    assert figures["speedup_vs_official_best_option"] == pytest.approx(14.0)
    assert targets["speedup_vs_official"]["met"] is True
    assert targets["bf16_channels_last_images_per_s"] == {
        "value": 21000.0,
        "op": ">=",
        "target": 20000.0,
        "met": True,
    }
    assert targets["td_overhead_ratio"]["met"] is True
    assert targets["lightning_vs_raw_ratio"]["met"] is False
    assert targets["projected_cifar10_minutes"]["met"] is None  # no paper cycle ran
    assert "projection" not in figures


def test_cifar10_projection_swaps_in_each_speed_options_per_step_time() -> None:
    bench = {
        "speed_options": {
            "fp32": {"images_per_s": 8000.0, "epoch_seconds": 1.25, "first_epoch_extra_s": 0.5},
            "bf16+channels_last+compile": {
                "images_per_s": 20000.0,
                "epoch_seconds": 0.5,
                "first_epoch_extra_s": 40.0,
            },
        },
        "speed_options_steps_per_epoch": 79,
    }
    paper = {
        "model": {"a_s": 0.05, "b_s_per_step": 0.012},
        "startup_s": 10.0,
        "first_epoch_extra_s": 1.0,
        "cycle_overhead_s": 4.0,
        "query_s": 2.0,
    }
    projected = gpu_check.projections(paper, bench)
    protocol = gpu_check.experiment_protocol("cifar10")
    assert (protocol.initial, protocol.budget, protocol.cycles, protocol.epochs) == (
        1000,
        1000,
        10,
        200,
    )
    steps = [gpu_check.steps_per_epoch(1000 * (k + 1), 128) for k in range(10)]
    per_step = (1.25 - 0.05) / 79
    expected = 10.0 + sum(200 * (0.05 + per_step * s) + 1.0 + 4.0 for s in steps) + 9 * 2.0
    assert projected["cifar10"]["total_s"] == pytest.approx(expected)
    # compiled: its 40 s first epoch (compilation) is paid in every cycle
    per_step = (0.5 - 0.05) / 79
    expected = 10.0 + sum(200 * (0.05 + per_step * s) + 40.0 + 4.0 for s in steps) + 9 * 2.0
    compiled = projected["cifar10_by_speed_option"]["bf16+channels_last+compile"]
    assert compiled["minutes"] == pytest.approx(expected / 60)
    fashion = projected["fashion_mnist"]
    assert [c["num_labeled"] for c in fashion["cycles"]] == [1000 * (k + 1) for k in range(10)]
    expected = 10.0 + sum(200 * (0.05 + 0.012 * s) + 1.0 + 4.0 for s in steps) + 9 * 2.0
    assert fashion["total_s"] == pytest.approx(expected)


def test_junit_counts(tmp_path: Path) -> None:
    path = tmp_path / "j.xml"
    path.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="t.a" name="ok"/>'
        '<testcase classname="t.a" name="bad"><failure message="boom">trace</failure></testcase>'
        '<testcase classname="t.b" name="err"><error message="setup">x</error></testcase>'
        '<testcase classname="t.b" name="skip"><skipped message="no cuda"/></testcase>'
        "</testsuite></testsuites>"
    )
    counts = gpu_check.junit_counts(path)
    assert {k: counts[k] for k in ("passed", "failed", "errors", "skipped")} == {
        "passed": 1,
        "failed": 1,
        "errors": 1,
        "skipped": 1,
    }
    assert [f["test"] for f in counts["failures"]] == ["t.a.bad", "t.b.err"]
    assert "boom" in counts["failures"][0]["message"]


def test_max_time_is_lightnings_day_hour_minute_second_string() -> None:
    assert gpu_check.max_time(75) == "00:00:01:15"
    assert gpu_check.max_time(3725.9) == "00:01:02:05"


def test_gpu_test_files_are_the_files_that_use_the_mark() -> None:
    files = gpu_check.gpu_test_files()
    assert "tests/unit/test_gpu.py" in files
    assert "tests/unit/test_training_dynamics.py" in files
    assert "tests/unit/test_gpu_check.py" not in files  # no test here needs a device


# --------------------------------------------------------------------- step runner
def _check(tmp_path: Path) -> gpu_check.Check:
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir()
    work.mkdir()
    check = gpu_check.Check(gpu_check.TINY, out, work, tmp_path / "w", tmp_path / "d")
    check.env.update(os.environ)
    return check


def _alive(status: Path) -> bool:
    """Whether the process of `/proc/<pid>/status` runs (a zombie is dead, only unreaped)."""
    try:
        return "\tZ" not in next(
            line for line in status.read_text().splitlines() if line.startswith("State:")
        )
    except FileNotFoundError:
        return False


def test_a_step_over_its_limit_is_stopped_with_its_children(tmp_path: Path) -> None:
    check = _check(tmp_path)
    marker = tmp_path / "child.pid"
    # the step starts a child that would outlive it; both must be gone after the limit
    script = (
        "import subprocess, sys, time; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"open({str(marker)!r}, 'w').write(str(p.pid)); print('started', flush=True); "
        "time.sleep(60)"
    )
    started = time.monotonic()
    result = gpu_check.run_commands(check, "slow", [[sys.executable, "-c", script]], limit=3)
    assert time.monotonic() - started < 20
    assert result["status"] == "timeout" and result["commands"][0]["returncode"] is None
    assert "started" in result["log_tail"] and "time limit" in result["log_tail"]
    child = Path(f"/proc/{int(marker.read_text())}/status")
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child)
    assert "===== slow (timeout" in (check.out / "gpu_check.log").read_text()


def test_a_failing_command_ends_its_step(tmp_path: Path) -> None:
    check = _check(tmp_path)
    fail = [sys.executable, "-c", "import sys; print('bad input'); sys.exit(3)"]
    never = [sys.executable, "-c", "print('never')"]
    result = gpu_check.run_commands(check, "x", [fail, never], limit=60)
    assert result["status"] == "failed"
    assert [c["returncode"] for c in result["commands"]] == [3]
    assert "bad input" in result["log_tail"] and "never" not in result["log_tail"]


def test_a_missing_program_fails_its_step(tmp_path: Path) -> None:
    result = gpu_check.run_commands(_check(tmp_path), "x", [["no-such-program-xyz"]], limit=10)
    assert result["status"] == "failed"


def test_the_install_without_wheels_fails_clearly_and_nothing_else_runs(tmp_path: Path) -> None:
    check = _check(tmp_path)
    check = gpu_check.Check(gpu_check.GPU, check.out, check.work, tmp_path / "none", tmp_path)
    assert gpu_check.run_check(check) == 1
    record = json.loads((check.out / "gpu_check.json").read_text())
    assert record["steps"]["install"]["status"] == "failed"
    assert "make gpu-wheels" in record["steps"]["install"]["log_tail"]
    assert [record["steps"][s]["status"] for s in gpu_check.STEPS[1:]] == ["skipped"] * 5
    assert "| install | failed |" in (check.out / "gpu_check.md").read_text()


# ------------------------------------------------------------------------ tiny mode
@pytest.mark.slow
def test_the_tiny_check_runs_every_step_and_writes_consistent_figures(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable}
    completed = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), "--tiny", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    record = json.loads((out / "gpu_check.json").read_text())
    statuses = {name: step["status"] for name, step in record["steps"].items()}
    assert statuses == dict.fromkeys(gpu_check.STEPS, "ok"), (statuses, completed.stdout[-3000:])
    assert completed.returncode == 0
    # what the device tool brings back: at most 8 plain files, plain names, nothing nested
    files = sorted(p.name for p in out.iterdir())
    assert files == [
        "bench.json",
        "bench_official.json",
        "gpu_check.json",
        "gpu_check.log",
        "gpu_check.md",
        "paper_epochs.jsonl",
        "paper_results.csv",
    ]
    assert all((out / f).is_file() for f in files)
    assert record["mode"] == "tiny" and record["total_seconds"] > 0

    tests = record["steps"]["gpu_tests"]["result"]
    if not torch.cuda.is_available():
        assert tests["skipped"] >= 8 and tests["passed"] == tests["failed"] == 0

    bench = json.loads((out / "bench.json").read_text())
    assert bench["complete"] is True and bench["settings"]["short"] is True
    figures = record["figures"]
    assert figures["td_overhead_ratio"] == bench["td_overhead_ratio"] > 0
    assert figures["lightning_vs_raw_ratio"] == bench["lightning_vs_raw_ratio"] > 0
    rows = {r["precision"] + str(r["channels_last"]): r for r in bench["gpu_extra"]["rows"]}
    assert set(rows) == {"32-trueFalse", "bf16-mixedTrue"}  # no compile on a CPU
    fp32 = rows["32-trueFalse"]
    assert figures["images_per_s_fp32"] == pytest.approx(
        bench["gpu_extra"]["labeled"] / fp32["epoch_seconds"]
    )
    official = json.loads((out / "bench_official.json").read_text())["runs"]
    assert [r["num_workers"] for r in official] == [0]
    assert figures["speedup_vs_official"] == pytest.approx(
        figures["images_per_s_fp32"] / official[0]["images_per_s"]
    )

    paper = record["steps"]["paper_cycle"]["result"]
    assert [c["num_labeled"] for c in paper["cycles"]] == [24, 64]
    assert [c["epochs"] for c in paper["cycles"]] == [3, 3]
    assert [c["steps_per_epoch"] for c in paper["cycles"]] == [3, 8]  # batch 8
    events = (out / "paper_epochs.jsonl").read_text().splitlines()
    assert sum(json.loads(e)["event"] == "epoch" for e in events) == 6
    assert paper["startup_s"] > 0 and paper["model"]["epochs"] == 2
    projection = figures["projection"]
    fashion = projection["fashion_mnist"]
    assert [c["num_labeled"] for c in fashion["cycles"]] == [1000 * (k + 1) for k in range(10)]
    assert fashion["total_s"] == pytest.approx(
        paper["startup_s"] + sum(c["seconds"] for c in fashion["cycles"])
    )
    assert figures["projected_fashion_mnist_minutes"] == pytest.approx(fashion["total_s"] / 60)
    assert set(projection["cifar10_by_speed_option"]) == {"fp32", "bf16+channels_last"}
    assert figures["projected_cifar10_minutes"] == pytest.approx(projection["cifar10"]["minutes"])
    assert set(record["targets"]) == set(gpu_check.TARGETS)
    assert all(t["value"] is not None for t in record["targets"].values())

    table = (out / "gpu_check.md").read_text()
    for name in gpu_check.STEPS:
        assert f"| {name} | ok |" in table
    log = (out / "gpu_check.log").read_text()
    assert all(f"===== {name} (ok" in log for name in gpu_check.STEPS)
    assert statistics.fmean(s["seconds"] for s in record["steps"].values()) > 0
