"""Checks of the whole command before Hydra runs anything.

Hydra makes a job's folder (and a sweep's `multirun.yaml`) before the job's code runs, and a
sweep composes each job only when it starts. So the CLI composes every job of the command
itself first, exactly as Hydra's basic sweeper will (declared `hydra.sweeper.params` first,
then the command line), and checks each one: the config's values, the strategy's settings,
and the run folder it would write to. Any problem in any job stops the command here, with
every bad job's overrides named, before a folder exists or a job trains.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from tidal_lightning.errors import ConfigError, TidalError

# Flags after which Hydra prints something and runs no job: nothing to check.
INFO_FLAGS = frozenset(
    {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc"}
)
# Flags that change which config is composed; the check then leaves it to Hydra.
CONFIG_FLAGS = frozenset(
    {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun"}
)
MULTIRUN_FLAGS = frozenset({"-m", "--multirun"})
# Run folders the check saw missing: a run refused later (by a check that needs the data)
# removes the empty folder Hydra made for it. Inherited by launcher subprocesses.
NEW_FOLDERS_ENV = "TIDAL_NEW_RUN_FOLDERS"


@dataclass
class Job:
    """One job of the command: its overrides, its composed config and its run folder."""

    overrides: list[str]
    config: DictConfig
    run_dir: Path


def split_argv(argv: list[str]) -> tuple[list[str], bool] | None:
    """`(overrides, multirun)` of a command line; None if it runs no job or picks other configs."""
    if any(a in INFO_FLAGS or a in CONFIG_FLAGS or (a.startswith("--") and "=" in a) for a in argv):
        return None
    overrides = [a for a in argv if a not in MULTIRUN_FLAGS]
    if any(a.startswith("-") for a in overrides):
        return None  # a flag we do not know: Hydra reports it
    return overrides, any(a in MULTIRUN_FLAGS for a in argv)


def job_overrides(config_dir: str, overrides: list[str], multirun: bool) -> list[list[str]]:
    """The overrides of each job the command launches, as Hydra's basic sweeper expands them."""
    if not multirun:
        return [overrides]
    parsed = OverridesParser.create().parse_overrides(overrides)
    fixed = [str(o.input_line) for o in parsed if not o.is_sweep_override()]
    with initialize_config_dir(version_base="1.3", config_dir=config_dir):
        master = compose("config", overrides=fixed, return_hydra_config=True)
    return expand_grid(master.hydra.sweeper.get("params") or {}, overrides)


def expand_grid(params: Mapping[str, Any], overrides: Sequence[str]) -> list[list[str]]:
    """Each job's overrides: the declared `hydra.sweeper.params`, then the command line's."""
    declared = [f"{key}={value}" for key, value in params.items()]
    parsed = OverridesParser.create().parse_overrides([*declared, *overrides])
    (jobs,) = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return [list(job) for job in jobs]


def job_folder_name(overrides: Sequence[str], exclude_keys: Sequence[str]) -> str:
    """The folder name Hydra gives a job of these overrides (`hydra.sweep.subdir`)."""
    from hydra._internal.config_loader_impl import get_overrides_dirname

    from tidal_lightning.resolvers import ITEM_SEP, dirname

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    task = [o for o in parsed if not o.key_or_group.startswith("hydra")]
    return dirname(get_overrides_dirname(task, list(exclude_keys), ITEM_SEP, "="))


def compose_job(config_dir: str, overrides: list[str], multirun: bool) -> Job:
    """The config a job runs, with `paths.output_dir` set to the folder Hydra will give it."""
    with initialize_config_dir(version_base="1.3", config_dir=config_dir):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    hydra = cfg.hydra
    run_dir = Path(hydra.sweep.dir) / hydra.sweep.subdir if multirun else Path(hydra.run.dir)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
        del cfg["hydra"]
    return Job(overrides, cfg, run_dir)


def job_problems(job: Job, multirun: bool) -> list[str]:
    """Everything wrong with one job that can be told without reading its data."""
    from tidal_lightning.al.state import check_run_folder
    from tidal_lightning.config_checks import validate_config
    from tidal_lightning.strategies.base import build_strategy

    try:
        validate_config(job.config, multirun=multirun)
    except ConfigError as error:
        return _lines(error)
    problems = []
    try:
        strategy = build_strategy(job.config.strategy)
        problems += strategy.check_config(job.config)
    except (TidalError, HydraException, OmegaConfBaseException, TypeError, ValueError) as error:
        problems.append(f"strategy: {error}")
    try:
        config = OmegaConf.to_container(job.config, resolve=True)
        assert isinstance(config, dict)
        check_run_folder(job.run_dir, cast("dict[str, Any]", config))
    except TidalError as error:
        problems.append(str(error))
    return problems


def check(config_dir: str, argv: list[str]) -> None:
    """Raises `ConfigError` naming every bad job of the command; records new run folders."""
    split = split_argv(argv)
    if split is None:
        return
    overrides, multirun = split
    try:
        jobs = [
            compose_job(config_dir, job, multirun)
            for job in job_overrides(config_dir, overrides, multirun)
        ]
    except (HydraException, OmegaConfBaseException):
        return  # a composition error: Hydra reports it in its own words, before any job
    bad = {}
    for number, job in enumerate(jobs):
        problems = job_problems(job, multirun)
        if problems:
            bad[number] = (job, problems)
    if bad:
        if multirun:
            blocks = [
                f"job {n} of {len(jobs)} ({' '.join(job.overrides) or 'no overrides'}):\n    "
                + "\n    ".join(problems)
                for n, (job, problems) in bad.items()
            ]
            raise ConfigError(
                f"{len(bad)} of the sweep's {len(jobs)} jobs cannot run; nothing was started:\n  "
                + "\n  ".join(blocks)
            )
        ((_, problems),) = bad.values()
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
    record_new_folders([job.run_dir for job in jobs])


def record_new_folders(run_dirs: list[Path]) -> None:
    """Remembers, for each run folder that does not exist yet, its topmost missing ancestor."""
    new: dict[str, str] = {}
    for run_dir in run_dirs:
        folder = run_dir.resolve()
        if folder.exists():
            continue
        top = folder
        while not top.parent.exists():
            top = top.parent
        new[str(folder)] = str(top)
    os.environ[NEW_FOLDERS_ENV] = json.dumps(new)


def discard_new_folder(run_dir: Path) -> None:
    """Removes `run_dir` and the parents made with it, if this command made them and they are empty.

    For a run refused after Hydra made its folder (by a check that needs the data): a
    refused run leaves no folder behind.
    """
    try:
        new: dict[str, Any] = json.loads(os.environ.get(NEW_FOLDERS_ENV, "{}"))
    except json.JSONDecodeError:
        return
    folder = run_dir.resolve()
    top = new.get(str(folder))
    if top is None:
        return
    while True:
        try:
            folder.rmdir()  # only an empty folder
        except OSError:
            return
        if str(folder) == top:
            return
        folder = folder.parent


def _lines(error: ConfigError) -> list[str]:
    text = str(error).removeprefix("invalid config:")
    return [line.strip() for line in text.splitlines() if line.strip()]
