"""Crash-safe resume: SIGKILL at three points, re-run the same command, get the same run."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.integration.test_loop import wandb_items_when_written

pytestmark = pytest.mark.slow
SMOKE = ("+experiment=smoke", "strategy=dispersion", "al.cycles=3")
# wall-clock columns: they differ between any two runs, interrupted or not
TIMING = {
    "train_seconds",
    "query_seconds",
    "query_peak_mem_mb",
    "record_seconds",
    "record_overhead",
}

# Runs the CLI with one kill point armed. The kill is SIGKILL: no handler, no `finally`, no flush
# runs, as when a cluster pre-empts a job or the machine loses power.
HARNESS = """
import os, signal, sys
from tidal_lightning.al import loop, state
from tidal_lightning.models.system import ActiveLearningSystem

point, argv = sys.argv[1], sys.argv[2:]
calls = {"train": 0, "query": 0, "save": 0}

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def term():  # what `timeout`, `docker stop` and a SLURM time limit send
    os.kill(os.getpid(), signal.SIGTERM)

end = term if point.startswith("term") else die
if point.startswith(("mid_epoch", "step", "term_step")):
    # mid_epoch: cycle 1's fifth epoch (cycle 0 takes 2 steps an epoch, 20 in all; then 3)
    at = 20 + 3 * 4 + 2 if point == "mid_epoch" else int(point.split(":")[1])
    step = ActiveLearningSystem.training_step
    def training_step(self, *args):
        calls["train"] += 1
        if calls["train"] == at:
            end()
        return step(self, *args)
    ActiveLearningSystem.training_step = training_step
elif point in ("mid_query", "term_query"):  # the second query (after cycle 1's training)
    pool_pass = loop.pool_pass
    def patched(*args, **kwargs):
        calls["query"] += 1
        if calls["query"] == 2:
            end()
        return pool_pass(*args, **kwargs)
    loop.pool_pass = patched
elif point == "between_cycles":  # right after state.pt commits cycle 1, before the CSVs follow
    save = state.RunState.save
    def patched_save(self, run_dir):
        save(self, run_dir)
        calls["save"] += 1
        if calls["save"] == 3:  # initial state, cycle 0, cycle 1
            die()
    state.RunState.save = patched_save

from tidal_lightning.__main__ import main
sys.argv = ["tidal_lightning", *argv]
main()
"""


def cli(*args: str, cwd: Path, kill: str | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI; with `kill`, through the harness with that kill point armed."""
    return run_cli(
        *args, cwd=cwd, entry=("-c", HARNESS, kill) if kill else ("-m", "tidal_lightning")
    )


def without_timings(path: Path) -> list[dict[str, str]]:
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    done = cli(*SMOKE, f"hydra.run.dir={out}", cwd=out)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.parametrize("point", ["mid_epoch", "mid_query", "between_cycles"])
def test_killed_run_resumes_to_the_uninterrupted_result(
    tmp_path: Path, uninterrupted: Path, point: str
) -> None:
    out = tmp_path / "run"
    killed = cli(*SMOKE, f"hydra.run.dir={out}", cwd=tmp_path, kill=point)
    assert killed.returncode == -9, killed.stderr[-3000:]  # it really died by SIGKILL
    assert len(without_timings(out / "results.csv")) < 3  # ... before the end
    resumed = cli(*SMOKE, f"hydra.run.dir={out}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout + resumed.stderr
    assert without_timings(out / "results.csv") == without_timings(uninterrupted / "results.csv")
    assert (out / "queries.csv").read_bytes() == (uninterrupted / "queries.csv").read_bytes()
    assert '"status": "finished"' in (out / "run_summary.json").read_text()


def test_a_finished_run_rerun_does_nothing_and_says_so(uninterrupted: Path) -> None:
    before = {p.name: p.read_bytes() for p in uninterrupted.iterdir() if p.is_file()}
    again = cli(*SMOKE, f"hydra.run.dir={uninterrupted}", cwd=uninterrupted)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "holds a finished run (3 cycles): nothing to do" in again.stdout + again.stderr
    after = {p.name: p.read_bytes() for p in uninterrupted.iterdir() if p.is_file()}
    after.pop("__main__.log"), before.pop("__main__.log")  # the log says so, too
    assert before == after


def test_sweep_rerun_skips_finished_jobs_and_resumes_the_killed_one(tmp_path: Path) -> None:
    sweep = (
        "+experiment=smoke",
        "-m",
        "strategy=dispersion,random",
        "al.cycles=3",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    # the basic launcher runs the jobs in this process: the kill in the first job's second
    # query takes the whole sweep down, leaving one job half done and one not started
    killed = cli(*sweep, cwd=tmp_path, kill="mid_query")
    assert killed.returncode == -9
    jobs = tmp_path / "sweep"
    dispersion = jobs / "experiment-smoke__al.cycles-3__strategy-dispersion"
    random = jobs / "experiment-smoke__al.cycles-3__strategy-random"
    assert (dispersion / "state.pt").exists() and not random.exists()
    rerun = cli(*sweep, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming" in rerun.stdout + rerun.stderr
    for job in (dispersion, random):
        assert len(without_timings(job / "results.csv")) == 3
    third = cli(*sweep, cwd=tmp_path)
    assert (third.stdout + third.stderr).count("nothing to do") == 2


def test_a_resumed_run_logs_into_the_same_wandb_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = (*SMOKE, "logger=wandb", f"hydra.run.dir={out}")
    assert cli(*args, cwd=tmp_path, kill="between_cycles").returncode == -9
    assert cli(*args, cwd=tmp_path).returncode == 0
    runs = sorted((out / "wandb").glob("offline-run-*"))
    # one W&B run id: a session per committed cycle (3) and the killed attempt's; `wandb sync`
    # appends each to the ones before it
    assert len(runs) >= 3
    assert len({run.name.rsplit("-", 1)[1] for run in runs}) == 1


@pytest.mark.parametrize("point", ["term_step:34", "term_query"])
def test_sigterm_exits_143_and_the_same_command_resumes(
    tmp_path: Path, uninterrupted: Path, point: str
) -> None:
    out = tmp_path / "run"
    terminated = cli(*SMOKE, f"hydra.run.dir={out}", cwd=tmp_path, kill=point)
    assert terminated.returncode == 143, terminated.stderr[-3000:]
    assert "run the same command to resume" in terminated.stderr
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["status"] == "running" and summary["cycles_completed"] == 1
    assert len(without_timings(out / "results.csv")) == 1  # consistent with the state
    resumed = cli(*SMOKE, f"hydra.run.dir={out}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert without_timings(out / "results.csv") == without_timings(uninterrupted / "results.csv")
    assert (out / "queries.csv").read_bytes() == (uninterrupted / "queries.csv").read_bytes()


def settled(files: list[Path], quiet_s: float = 3.0, timeout_s: float = 120.0) -> None:
    """Waits until no file has grown for `quiet_s`: W&B's service writes them after the fact
    (for a killed process too), so a file read at once may still miss its last records."""
    deadline = time.monotonic() + timeout_s
    sizes = [f.stat().st_size for f in files]
    quiet_since = time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - quiet_since < quiet_s:
        time.sleep(0.5)
        now = [f.stat().st_size for f in files]
        if now != sizes:
            sizes, quiet_since = now, time.monotonic()


def epoch_rows(rows: list[dict[str, str]]) -> dict[int, int]:
    """cycle -> per-epoch training rows logged for it."""
    counts: dict[int, int] = {}
    for row in rows:
        if row.get("train/loss") not in (None, ""):
            cycle = int(float(row["train/cycle"]))
            counts[cycle] = counts.get(cycle, 0) + 1
    return counts


@pytest.mark.parametrize("logger", ["csv", "wandb"])
def test_training_curves_survive_two_kills(tmp_path: Path, logger: str) -> None:
    """Killed in cycle 1, resumed and killed in cycle 2, resumed: every cycle's curve is kept."""
    out = tmp_path / "run"
    args = (*SMOKE, f"logger={logger}", f"hydra.run.dir={out}")
    # cycle 1 (mid-epoch), then, resumed there, cycle 2 (30 steps into cycle 1 first)
    for kill in ("mid_epoch", f"step:{30 + 3 * 4 + 2}"):
        assert cli(*args, cwd=tmp_path, kill=kill).returncode == -9
    assert cli(*args, cwd=tmp_path).returncode == 0
    if logger == "csv":
        rows = list(csv.DictReader(io.StringIO((out / "csv" / "metrics.csv").read_text())))
        # exactly one row per epoch: the killed cycles' partial rows are gone, none lost
        assert epoch_rows(rows) == {0: 10, 1: 10, 2: 10}
        steps = [float(r["step"]) for r in rows if r.get("train/loss")]
        assert steps == sorted(steps) and len(set(steps)) == len(steps)
        assert len([r for r in rows if r.get("al/test_acc")]) == 3
    else:
        counts: dict[int, int] = {}
        run_files = sorted((out / "wandb").glob("offline-run-*/*.wandb"))
        # one W&B run id, written in sessions: each cycle's is finished before it is committed
        assert len(run_files) >= 3 and len({f.name for f in run_files}) == 1, run_files
        settled(run_files)
        for run_file in run_files:
            items = wandb_items_when_written(run_file, "train/cycle")
            for cycle in items.get("train/cycle", []):
                counts[int(cycle)] = counts.get(int(cycle), 0) + 1
        # the killed attempts' partial epochs stay in W&B (it cannot delete), after them
        assert all(counts.get(c, 0) >= 10 for c in range(3)), counts
