"""The command line as a user runs it: exit codes, messages, sweeps, and an installed copy."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, cwd=cwd, env=env)


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


ALL_STRATEGIES = (
    "random,entropy,margin,least_confidence,tidal_entropy,tidal_margin,"
    "dispersion,bald,coreset,lloss,badge,cal,td_entropy_oracle,td_margin_oracle,"
    "kcenter_greedy,coreset_mip,vaal,ta_vaal,gt_oracle"
)


def test_multirun_sweep_over_every_strategy(tmp_path: Path) -> None:
    done = cli(
        "+experiment=smoke",
        "-m",
        f"strategy={ALL_STRATEGIES}",
        "al.cycles=2",
        "trainer.max_epochs=2",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    names = ALL_STRATEGIES.split(",")
    # each job's folder is named from its overrides
    jobs = {p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir()}
    expected = {f"+experiment=smoke,al.cycles=2,strategy={n},trainer.max_epochs=2" for n in names}
    assert jobs == expected
    for name in names:
        job = (
            tmp_path
            / "sweep"
            / f"+experiment=smoke,al.cycles=2,strategy={name},trainer.max_epochs=2"
        )
        with open(job / "results.csv") as handle:
            assert len(list(csv.DictReader(handle))) == 2
        assert f'"strategy_name": "{name}"' in (job / "run_summary.json").read_text()
    assert "cycle  labeled" in done.stdout + done.stderr  # the per-cycle table


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
