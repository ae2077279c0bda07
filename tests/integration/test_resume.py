"""Crash-safe resume: SIGKILL at three points, re-run the same command, get the same run."""

from __future__ import annotations

import csv
import io
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_cli

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

if point == "mid_epoch":  # cycle 1: 24 steps in cycle 0 (2 per epoch), then 3 per epoch
    step = ActiveLearningSystem.training_step
    def training_step(self, *args):
        calls["train"] += 1
        if calls["train"] == 20 + 3 * 4 + 2:
            die()
        return step(self, *args)
    ActiveLearningSystem.training_step = training_step
elif point == "mid_query":  # the second query (after cycle 1's training)
    pool_pass = loop.pool_pass
    def patched(*args, **kwargs):
        calls["query"] += 1
        if calls["query"] == 2:
            die()
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
    # one W&B run id, written in two sessions; `wandb sync` appends the second to the first
    assert len(runs) == 2
    assert len({run.name.rsplit("-", 1)[1] for run in runs}) == 1
