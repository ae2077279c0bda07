"""The run folder's record of how it was started: `.hydra/` and the log file.

Hydra would write both before the run's code runs, so a refused run would still leave (or
rewrite) them. The project's Hydra config turns that off (`hydra.output_subdir: null`, a
console-only `job_logging`), and the loop writes them here once every check has passed.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from tidal_lightning import distributed
from tidal_lightning.al.records import atomic_write_text

LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


def begin(run_dir: Path, fresh: bool, cfg: DictConfig) -> logging.Handler:
    """Makes the folder, records the command (a fresh run only) and starts its log file.

    Under DDP only rank 0 makes and records; every rank logs to its own file (Lightning names
    the other ranks' jobs `train_ddp_process_<r>`), in the folder rank 0 made.

    Returns the log file's handler.
    """
    if distributed.is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        if fresh:
            write_hydra_record(run_dir, cfg)
    return attach_log_file(run_dir)


def _hydra_config() -> object | None:
    try:
        from hydra.core.hydra_config import HydraConfig
    except ImportError:  # pragma: no cover - hydra is a dependency
        return None
    return HydraConfig.get() if HydraConfig.initialized() else None


def write_hydra_record(run_dir: Path, cfg: DictConfig) -> None:
    """`.hydra/config.yaml`, `hydra.yaml` and `overrides.yaml`, as Hydra itself writes them.

    The first start's record: a resumed run (or one importing labels) keeps it, since the
    config that computes the results cannot have changed (`RunState.check_same_config`).
    """
    hydra = _hydra_config()
    if hydra is None:
        return
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    folder = run_dir / ".hydra"
    folder.mkdir(exist_ok=True)
    overrides = OmegaConf.create(OmegaConf.to_container(hydra_cfg.overrides.task))
    atomic_write_text(folder / "config.yaml", OmegaConf.to_yaml(cfg))
    atomic_write_text(
        folder / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_cfg}))
    )
    atomic_write_text(folder / "overrides.yaml", OmegaConf.to_yaml(overrides))


def attach_log_file(run_dir: Path) -> logging.Handler:
    """Appends the root logger's records to `<run folder>/<job name>.log` from now on."""
    hydra = _hydra_config()
    name = str(getattr(getattr(hydra, "job", None), "name", None) or "run")
    handler = logging.FileHandler(run_dir / f"{name}.log", mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.setLevel(logging.INFO)
    logging.getLogger().addHandler(handler)
    return handler


def detach_log_file(handler: logging.Handler | None) -> None:
    if handler is None:
        return
    logging.getLogger().removeHandler(handler)
    handler.close()
