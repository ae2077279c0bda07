"""Declared sweeps (`+sweep=<name> -m`) and the launchers that run them.

Every job of every grid in `conf/sweep/` composes, passes the run's early checks and
instantiates its dataset, strategy, backbone and optimiser (no data is read); the paper sweeps
hold the papers' protocols; `multirun_sweeps/` has a wrapper and a README row with the right
job count for each; and a tiny sweep runs through the submitit and joblib launchers.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from tests.conftest import CONF_DIR, compose_config, run_cli
from tidal_lightning.config_checks import validate_config, validate_pool_sizes
from tidal_lightning.data.longtail import long_tail_counts
from tidal_lightning.report import build_report
from tidal_lightning.strategies.base import Strategy, build_strategy

REPO = Path(__file__).resolve().parents[2]
SWEEP_DIR = REPO / "multirun_sweeps"
SWEEPS = sorted(p.stem for p in (CONF_DIR / "sweep").glob("*.yaml"))

# The training splits as shipped, so pools are sized without reading any data:
# dataset class -> (classes, image channels, training images).
SHIPPED = {
    "CIFAR10": (10, 3, 50_000),
    "CIFAR100": (100, 3, 50_000),
    "FashionMNIST": (10, 1, 60_000),
    "SVHN": (10, 3, 73_257),
    "INaturalist2018": (8142, 3, 437_513),
}

TIDAL_STRATEGIES = {
    "random",
    "entropy",
    "bald",
    "coreset",
    "lloss",
    "cal",
    "tidal_entropy",
    "tidal_margin",
}
# sweep -> (experiment preset it runs unchanged, imbalance ratios swept)
TIDAL_SWEEPS = {
    "tidal_cifar10": ("cifar10", {1}),
    "tidal_cifar100": ("cifar100", {1}),
    "tidal_fashion_mnist": ("fashion_mnist", {1}),
    "tidal_svhn": ("svhn", {1}),
    "tidal_cifar10_lt": ("cifar10_lt", {10, 100}),
    "tidal_cifar100_lt": ("cifar100_lt", {10, 100}),
    "tidal_inaturalist2018": ("inaturalist2018", {1}),
}
DISPERSION_SWEEPS = {"dispersion_cifar10": "CIFAR10", "dispersion_cifar100": "CIFAR100"}


def compose_with_hydra(overrides: list[str]) -> DictConfig:
    """The composed config including its `hydra` node (launcher, sweeper)."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose("config", overrides=overrides, return_hydra_config=True)


def expand_grid(name: str, *command_line: str) -> list[list[str]]:
    """The job overrides `python -m tidal_lightning +sweep=<name> -m <command_line>` launches,
    expanded by Hydra's own parser and basic sweeper."""
    params = compose_with_hydra([f"+sweep={name}"]).hydra.sweeper.params
    declared = [f"{key}={value}" for key, value in params.items()]
    overrides = OverridesParser.create().parse_overrides([*declared, *command_line])
    (jobs,) = BasicSweeper.split_arguments(overrides, max_batch_size=None)
    return jobs


def choices(jobs: list[list[str]], key: str) -> set[str]:
    return {o.split("=", 1)[1] for job in jobs for o in job if o.split("=", 1)[0] == key}


def readme_jobs() -> dict[str, int]:
    """sweep name -> the `jobs` column of the table in multirun_sweeps/README.md."""
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in (SWEEP_DIR / "README.md").read_text(encoding="utf-8").splitlines()
        if line.startswith("| ")
    ]
    header = next(row for row in rows if "jobs" in row)
    column = header.index("jobs")
    return {
        row[0].strip("`"): int(row[column])
        for row in rows
        if len(row) == len(header) and row[column].isdigit()
    }


def pool_size(datamodule: object, cfg: DictConfig) -> tuple[int, int, int]:
    """(classes, channels, training-pool size after long-tail subsampling) of a dataset config."""
    if hasattr(datamodule, "spec"):  # SyntheticImages: (classes, per class, test, size, channels)
        classes, per_class, _, _, channels = datamodule.spec
        num_train = classes * per_class
    else:
        classes, channels, num_train = SHIPPED[type(datamodule).__name__]
    ratio = float(cfg.dataset.imbalance_ratio)
    if ratio == 1:
        return classes, channels, num_train
    return classes, channels, sum(long_tail_counts(num_train // classes, classes, ratio))


def test_the_sweep_registry_is_the_declared_one() -> None:
    cpu_sweeps = {"fashion_mnist_cpu", "fashion_mnist_cpu_lt", "smoke"}
    assert {*TIDAL_SWEEPS, *DISPERSION_SWEEPS, *cpu_sweeps} == set(SWEEPS)


@pytest.mark.parametrize("name", SWEEPS)
def test_each_sweep_has_a_wrapper_and_a_readme_row_with_its_job_count(name: str) -> None:
    wrapper = SWEEP_DIR / f"{name}.sh"
    assert wrapper.is_file() and os.access(wrapper, os.X_OK), f"{wrapper} missing or not executable"
    assert f"+sweep={name} -m" in wrapper.read_text(encoding="utf-8")
    assert readme_jobs().get(name) == len(expand_grid(name)), "multirun_sweeps/README.md"


def covering(jobs: list[list[str]]) -> list[list[str]]:
    """Jobs of a grid, in order, until every value of every swept key has been seen."""
    seen: set[str] = set()
    picked = []
    for job in jobs:
        if not seen.issuperset(job):
            picked.append(job)
            seen.update(job)
    return picked


@pytest.mark.parametrize("scope", ["covering", pytest.param("every", marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", SWEEPS)
def test_jobs_of_the_grid_compose_and_instantiate(name: str, scope: str, tmp_path: Path) -> None:
    """`covering`: each swept value at least once (fast); `every`: the whole grid (~330 jobs)."""
    jobs = expand_grid(name)
    assert len({tuple(job) for job in jobs}) == len(jobs) > 1
    backbones: dict[str, torch.nn.Module] = {}
    for job in jobs if scope == "every" else covering(jobs):
        cfg = compose_config([f"+sweep={name}", *job], tmp_path)
        assert cfg.sweep_name == name
        validate_config(cfg)
        datamodule = instantiate(cfg.dataset)
        strategy = build_strategy(cfg.strategy)
        assert isinstance(strategy, Strategy)
        assert strategy.check_config(cfg) == [], job
        classes, channels, pool = pool_size(datamodule, cfg)
        validate_pool_sizes(cfg, pool)
        last_training = cfg.al.initial + (cfg.al.cycles - 1) * cfg.al.budget
        assert last_training <= pool, f"{job}: the pool runs out before the last cycle"
        # One backbone per distinct config: building ResNet-18 ~300 times would be slow.
        key = f"{OmegaConf.to_yaml(cfg.model.backbone, resolve=True)}{classes}/{channels}"
        if key not in backbones:
            backbones[key] = instantiate(
                cfg.model.backbone, num_classes=classes, in_channels=channels
            )
        optimizer = instantiate(cfg.model.optimizer)(backbones[key].parameters())
        instantiate(cfg.model.scheduler)(optimizer)


@pytest.mark.parametrize("name", sorted(TIDAL_SWEEPS))
def test_tidal_sweeps_are_the_paper_preset_plus_the_grid(name: str, tmp_path: Path) -> None:
    preset, ratios = TIDAL_SWEEPS[name]
    jobs = expand_grid(name)
    assert choices(jobs, "strategy") == TIDAL_STRATEGIES
    assert choices(jobs, "seed") == {"0", "1", "2"}
    if ratios != {1}:
        assert {int(r) for r in choices(jobs, "dataset.imbalance_ratio")} == ratios
    assert len(jobs) == len(TIDAL_STRATEGIES) * 3 * len(ratios)
    for job in (jobs[0], jobs[-1]):  # the grid's corners: composing every job is the slow test
        swept = compose_config([f"+sweep={name}", *job], tmp_path)
        plain = compose_config([f"+experiment={preset}", *job], tmp_path)
        for config in (swept, plain):  # the only keys a sweep adds: they change no result
            with open_dict(config):
                config.pop("sweep_name")
                config.trainer.pop("enable_progress_bar")
        assert swept == plain, job
    cfg = compose_config([f"+sweep={name}", *jobs[0]], tmp_path)
    # iNaturalist 2018: 20,000 + 20,000 per cycle, 5 trainings; five budgets scored per query
    cycles, subset = (5, 100_000) if preset == "inaturalist2018" else (10, 10_000)
    assert cfg.trainer.max_epochs == 200 and cfg.al.cycles == cycles
    assert cfg.al.pool_subset == subset
    assert cfg.model.optimizer.lr == 0.1 and list(cfg.model.scheduler.milestones) == [160]
    assert cfg.model.backbone._target_.endswith(".ResNet18")


@pytest.mark.parametrize("name", sorted(DISPERSION_SWEEPS))
def test_dispersion_sweeps_follow_the_paper_protocol(name: str, tmp_path: Path) -> None:
    jobs = expand_grid(name)
    assert choices(jobs, "strategy") == {
        "random",
        "margin",
        "bald",
        "kcenter_greedy",
        "coreset_mip",
        "vaal",
        "dispersion",
        "gt_oracle",
        "full_data",  # Table 1's "All data", which the report reads the others against
    }
    assert choices(jobs, "seed") == {"0", "1", "2"} and len(jobs) == 27
    num_train = SHIPPED[DISPERSION_SWEEPS[name]][2]
    for job in covering(jobs):
        cfg = compose_config([f"+sweep={name}", *job], tmp_path)
        assert cfg.dataset._target_.endswith(f".{DISPERSION_SWEEPS[name]}")
        assert cfg.model.backbone._target_.endswith(".ResNet18")
        assert cfg.trainer.max_epochs == 100
        assert cfg.model.optimizer.lr == 0.02
        assert list(cfg.model.scheduler.milestones) == [60, 80]
        assert cfg.model.scheduler.gamma == 0.2  # "reduce the learning rate by a factor of 5"
        assert cfg.al.initial_mode == "random" and not cfg.al.warm_start
        assert cfg.al.initial == 0.10 * num_train == 5000
        assert cfg.al.budget == 0.05 * num_train == 2500
        sizes = [cfg.al.initial + c * cfg.al.budget for c in range(cfg.al.cycles)]
        assert sizes[-1] == 0.30 * num_train, sizes  # 10%, 15%, ..., 30%
        assert cfg.al.pool_subset >= num_train - cfg.al.initial  # the whole unlabeled pool
        assert cfg.dataset.imbalance_ratio == 1


def test_the_command_line_narrows_a_declared_grid() -> None:
    """`+sweep=... -m seed=0 strategy=a,b` (README): a command-line key replaces the declared."""
    jobs = expand_grid("tidal_cifar10", "seed=0", "strategy=random,tidal_margin")
    assert sorted(map(sorted, jobs)) == [
        ["seed=0", "strategy=random"],
        ["seed=0", "strategy=tidal_margin"],
    ]
    assert len(expand_grid("tidal_cifar100_lt", "dataset.imbalance_ratio=100")) == 24


@pytest.mark.parametrize(
    ("launcher", "target"),
    [
        ("basic", "BasicLauncher"),
        ("joblib", "JoblibLauncher"),
        ("submitit_slurm", "SlurmLauncher"),
        ("submitit_local", "LocalLauncher"),
        ("slurm", "SlurmLauncher"),
    ],
)
def test_every_launcher_composes(launcher: str, target: str) -> None:
    slurm_keys = ["hydra.launcher.partition=gpu", "hydra.launcher.array_parallelism=8"]
    overrides = ["+sweep=tidal_cifar10", f"hydra/launcher={launcher}"]
    cfg = compose_with_hydra(overrides + slurm_keys if "slurm" in launcher else overrides)
    assert cfg.hydra.launcher._target_.endswith(f".{target}")
    if "slurm" in launcher:
        assert cfg.hydra.launcher.partition == "gpu"
        assert cfg.hydra.launcher.array_parallelism == 8
    if launcher == "slurm":  # the project preset over submitit_slurm
        assert cfg.hydra.launcher.gpus_per_node == 1
        assert cfg.hydra.launcher.timeout_min >= 8 * 60
        assert cfg.hydra.launcher.max_num_timeout == 3  # requeued jobs resume their last cycle


TINY_SWEEP = (
    "+experiment=smoke",
    "-m",
    "strategy=random,entropy",
    "seed=0,1",
    "al.cycles=2",
    "trainer.max_epochs=2",
)


def sweep_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, cwd=cwd)


def job_folders(sweep: Path) -> list[Path]:
    """Run folders of a sweep, wherever the launcher put them."""
    return sorted(p.parent for p in sweep.rglob("results.csv"))


@pytest.mark.slow
def test_a_sweep_through_submitit_local_reports_every_job(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    done = sweep_cli(
        *TINY_SWEEP, "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep}", cwd=tmp_path
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert len(job_folders(sweep)) == 4
    assert any((sweep / ".submitit").iterdir())  # the jobs did go through submitit
    report = build_report(sweep)
    assert report.problems == []
    assert sorted((r.strategy, r.seed) for r in report.runs) == [
        ("entropy", 0),
        ("entropy", 1),
        ("random", 0),
        ("random", 1),
    ]
    (group,) = report.groups
    assert sorted(group.strategies) == ["entropy", "random"]
    assert {len(r.num_labeled) for r in report.runs} == {2}
    assert report.learning_curves.is_file() and report.learning_curves.stat().st_size > 0


@pytest.mark.slow
def test_a_sweep_through_joblib_runs_two_jobs_at_a_time(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    done = sweep_cli(
        *TINY_SWEEP,
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in done.stdout + done.stderr
    folders = job_folders(sweep)
    assert len(folders) == 4
    for folder in folders:
        rows = (folder / "results.csv").read_text(encoding="utf-8").splitlines()
        assert len(rows) == 1 + 2  # header + 2 cycles
    jobs = {
        tuple(re.findall(r"(?:strategy|seed)=\w+", (f / ".hydra" / "overrides.yaml").read_text()))
        for f in folders
    }
    assert len(jobs) == 4
