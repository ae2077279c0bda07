"""Shared fixtures: compose the real config (as the CLI does) with outputs under tmp_path."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from tidal_lightning import resolvers
from tidal_lightning.__main__ import config_dir

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = Path(config_dir())
STRATEGIES = sorted(p.stem for p in (CONF_DIR / "strategy").glob("*.yaml"))
# strategies that pick samples (all but the full-data reference, which trains once on everything)
ACQUISITION_STRATEGIES = [s for s in STRATEGIES if s != "full_data"]
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))

resolvers.register()


def compose_config(overrides: list[str], output_dir: Path) -> DictConfig:
    """The config `python -m tidal_lightning <overrides>` would run, writing to `output_dir`."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


@pytest.fixture
def smoke_config(tmp_path: Path) -> Callable[..., DictConfig]:
    """`smoke_config("strategy=entropy", run="a")` -> the smoke experiment writing to tmp_path/a."""

    def make(*overrides: str, run: str = "run") -> DictConfig:
        return compose_config(["+experiment=smoke", *overrides], tmp_path / run)

    return make


@pytest.fixture(autouse=True)
def _offline_wandb(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")


@pytest.fixture(autouse=True, scope="session")
def _image_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Image caches (image_folder, iNaturalist) go to one tmp folder, not data/cache.

    One for the session, as users share theirs between runs: a run that finds its cache
    built by an earlier one reads it (and logs no build).
    """
    previous = os.environ.get("TIDAL_CACHE_DIR")
    os.environ["TIDAL_CACHE_DIR"] = str(tmp_path_factory.mktemp("image_cache"))
    yield
    if previous is None:
        os.environ.pop("TIDAL_CACHE_DIR", None)
    else:
        os.environ["TIDAL_CACHE_DIR"] = previous


def run_cli(
    *args: str,
    cwd: Path,
    entry: Sequence[str] = ("-m", "tidal_lightning"),
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`python <entry> <args>` in a subprocess, as a user runs it, importing this checkout.

    W&B's service address is dropped from the environment: a W&B run earlier in the pytest
    process leaves it set, and a child would otherwise share that service (which keeps a killed
    child's run id in use).
    """
    inherited = {k: v for k, v in os.environ.items() if "WANDB_SERVICE" not in k}
    return subprocess.run(
        [sys.executable, *entry, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**inherited, "PYTHONPATH": str(REPO), **(env or {})},
    )
