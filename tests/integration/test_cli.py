"""The command line as a user runs it: exit codes, messages, sweeps, and an installed copy."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import STRATEGIES, run_cli
from tidal_lightning.report import build_report

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def cli(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    entry: tuple[str, ...] = ("-m", "tidal_lightning"),
) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, cwd=cwd, env=env, entry=entry)


def test_bad_value_exits_non_zero_with_a_message_and_no_traceback(tmp_path: Path) -> None:
    done = cli(
        "+experiment=smoke", "al.budget=-3", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path
    )
    assert done.returncode != 0
    assert "al.budget=-3: must be an integer >= 1" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not (tmp_path / "run" / "results.csv").exists()


@pytest.mark.parametrize(
    ("group", "a_choice"),
    [("strategy", "tidal_margin"), ("dataset", "cifar100"), ("model", "resnet18")],
)
def test_unknown_choice_lists_the_choices(tmp_path: Path, group: str, a_choice: str) -> None:
    done = cli(f"{group}=nope", cwd=tmp_path)
    assert done.returncode != 0
    assert f"Could not find '{group}/nope'" in done.stderr and a_choice in done.stderr


def test_missing_data_offline_names_the_path_and_the_fix(tmp_path: Path) -> None:
    (tmp_path / "nowhere").mkdir()  # the folder exists, the dataset's files do not
    done = cli(
        "dataset=cifar100",
        f"dataset.root={tmp_path / 'nowhere'}",
        "dataset.download=false",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert done.returncode != 0
    assert f"{tmp_path / 'nowhere' / 'cifar-100-python'}" in done.stderr
    assert "dataset.download=true" in done.stderr


def test_multirun_sweep_over_every_strategy(tmp_path: Path) -> None:
    """Every strategy of the registry in one sweep; the report then names a job that is gone."""
    sweep = tmp_path / "sweep"
    done = cli(
        "+experiment=smoke",
        "-m",
        f"strategy={','.join(STRATEGIES)}",
        "al.cycles=2",
        "trainer.max_epochs=2",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # each job's folder is named from its overrides
    folder = {
        n: f"experiment-smoke__al.cycles-2__strategy-{n}__trainer.max_epochs-2" for n in STRATEGIES
    }
    assert {p.name for p in sweep.iterdir() if p.is_dir()} == set(folder.values())
    for name in STRATEGIES:
        with open(sweep / folder[name] / "results.csv") as handle:
            # the full-data reference trains once, on everything
            assert len(list(csv.DictReader(handle))) == (1 if name == "full_data" else 2)
        assert (
            f'"strategy_name": "{name}"' in (sweep / folder[name] / "run_summary.json").read_text()
        )
    assert "cycle  labeled" in done.stdout + done.stderr  # the per-cycle table
    # a job that never started (as if the sweep had been killed before it): the report reads
    # the grid from multirun.yaml and names it with its overrides
    shutil.rmtree(sweep / folder["margin"])
    report = build_report(sweep, tmp_path / "report")
    (missing,) = [p for p in report.problems if p.folder == folder["margin"]]
    assert "never started" in missing.issue
    assert missing.overrides == (
        "+experiment=smoke",
        "strategy=margin",
        "al.cycles=2",
        "trainer.max_epochs=2",
    )
    assert len(report.runs) == len(STRATEGIES) - 1


def test_installed_wheel_finds_its_configs(tmp_path: Path) -> None:
    """A non-editable install has no checkout beside it: the configs must ship in the wheel."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "wheel"),
            str(REPO),
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "wheel").glob("tidal_lightning-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(tmp_path / "site")
    assert "tidal_lightning/conf/config.yaml" in names
    assert "tidal_lightning/conf/experiment/cifar100_lt.yaml" in names
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tidal_lightning",
            "+experiment=cifar100_lt",
            "strategy=tidal_margin",
            "--cfg",
            "job",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(tmp_path / "site")},
    )
    assert done.returncode == 0, done.stderr
    assert "imbalance_ratio: 100" in done.stdout and "TiDALMargin" in done.stdout


def tree_digest(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        # checked before Hydra runs
        ("+experiment=smoke al.budget=-5", "al.budget=-5: must be an integer >= 1"),
        ("+experiment=smoke trainer.max_epochs=0", "trainer.max_epochs=0: must be an integer >= 1"),
        # Fashion-MNIST: a mistyped root is not created and filled with a copy of the data
        ("dataset.root=/nonexistent/dir", "dataset.root=/nonexistent/dir: no such folder"),
        # needs the data: refused after Hydra made the folder, which is removed again
        ("+experiment=smoke al.initial=100000", "al.initial=100000 is larger than the training"),
    ],
)
def test_a_refused_run_makes_no_folder(tmp_path: Path, override: str, message: str) -> None:
    done = cli(*override.split(), cwd=tmp_path)  # the default, named run folder
    assert done.returncode == 1 and message in done.stderr, done.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no outputs/, no .hydra, no log
    assert not Path("/nonexistent").exists()


def test_another_config_in_a_finished_run_changes_no_byte(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    first = cli("+experiment=smoke", "al.cycles=1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (run_dir / ".hydra" / "overrides.yaml").is_file()
    before = tree_digest(run_dir)
    refused = cli(
        "+experiment=smoke", "al.cycles=1", "seed=9", f"hydra.run.dir={run_dir}", cwd=tmp_path
    )
    assert refused.returncode == 1
    assert "holds a run with a different config (seed: 0 -> 9)" in refused.stderr
    assert tree_digest(run_dir) == before  # .hydra/ and the log included


def test_a_sweep_with_a_bad_job_is_refused_before_any_job_runs(tmp_path: Path) -> None:
    done = cli("+experiment=smoke", "-m", "al.budget=16,-5", "seed=0,1", cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    said = done.stderr
    assert "2 of the sweep's 4 jobs cannot run; nothing was started" in said
    assert "job 2 of 4 (+experiment=smoke al.budget=-5 seed=0)" in said
    assert "job 3 of 4 (+experiment=smoke al.budget=-5 seed=1)" in said
    assert "al.budget=-5: must be an integer >= 1" in said
    assert list(tmp_path.iterdir()) == []  # job 0 did not train: no sweep folder at all


def test_a_log_to_a_file_is_plain_and_says_each_notice_once(tmp_path: Path) -> None:
    """Output that is not a terminal: no progress bars, a line per epoch, notices once."""
    done = cli("+experiment=smoke", "al.cycles=2", "logger=csv", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    said = done.stdout + done.stderr
    assert "\r" not in said and len(said) < 12_000, len(said)
    assert said.count("GPU available") == 1 and said.count("Tip:") <= 1
    assert "smaller than the logging interval" not in said
    assert "cycle 0 epoch 1/10 | train/loss" in said and "cycle 1 epoch 10/10" in said
    # one cycle numbering everywhere: the console says cycle 0 as the files do
    assert "cycle 0 (of 0-1) | labeled 24" in said and "cycle 1 (of 0-1) | labeled 40" in said


def test_predict_help_exits_zero(tmp_path: Path) -> None:
    done = cli("--help", cwd=tmp_path, entry=("-m", "tidal_lightning.predict"))
    assert done.returncode == 0 and "checkpoint=" in done.stdout
