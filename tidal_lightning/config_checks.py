"""Validation of the composed config, once, before any data is read or anything written."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from tidal_lightning.errors import ConfigError
from tidal_lightning.features.cold_start import FEATURE_INITIAL_MODES
from tidal_lightning.features.settings import MODEL_FREE_SOURCES, FeatureSettings

INITIAL_MODES = ("random", "one_per_class", "class_balanced", *FEATURE_INITIAL_MODES)
CHECKPOINT_CHOICES = ("all", "last", "none")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_config(cfg: DictConfig, multirun: bool | None = None) -> None:
    """Raises `ConfigError` listing every bad key, its value and what is allowed.

    Args:
        multirun: whether the config is a job of a sweep; None asks Hydra.
    """
    al = cfg.al
    problems = [
        f"{key}: must be set (e.g. dataset.root=<your image folder> with dataset=image_folder)"
        for key in sorted(OmegaConf.missing_keys(cfg))
    ]
    for key, minimum in (("initial", 1), ("budget", 1), ("cycles", 1), ("pool_subset", 1)):
        value = al.get(key)
        if not _is_int(value) or value < minimum:
            problems.append(f"al.{key}={value!r}: must be an integer >= {minimum}")
    budget, subset = al.get("budget"), al.get("pool_subset")
    if _is_int(budget) and _is_int(subset) and 0 < subset < budget:
        problems.append(
            f"al.pool_subset={subset} is smaller than al.budget={budget}: the scored subset must "
            "hold at least one budget of samples; raise al.pool_subset or lower al.budget"
        )
    if al.get("initial_mode") not in INITIAL_MODES:
        problems.append(
            f"al.initial_mode={al.get('initial_mode')!r}: must be one of {INITIAL_MODES}"
        )
    elif al.get("initial_mode") in FEATURE_INITIAL_MODES:
        problems += _cold_start_problems(cfg)
    if al.get("checkpoints", "all") not in CHECKPOINT_CHOICES:
        problems.append(
            f"al.checkpoints={al.get('checkpoints')!r}: must be one of {CHECKPOINT_CHOICES}"
        )
    if not isinstance(al.get("warm_start"), bool):
        problems.append(f"al.warm_start={al.get('warm_start')!r}: must be true or false")
    ratio = cfg.dataset.get("imbalance_ratio")
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or ratio < 1:
        problems.append(
            f"dataset.imbalance_ratio={ratio!r}: must be a number >= 1 "
            "(n_max / n_min; 1 = balanced)"
        )
    if not _is_int(cfg.get("seed")):
        problems.append(f"seed={cfg.get('seed')!r}: must be an integer")
    epochs = cfg.trainer.get("max_epochs")
    if not _is_int(epochs) or epochs < 1:
        problems.append(f"trainer.max_epochs={epochs!r}: must be an integer >= 1")
    td_weight = cfg.model.get("td_weight")
    if isinstance(td_weight, bool) or not isinstance(td_weight, int | float) or td_weight < 0:
        problems.append(f"model.td_weight={td_weight!r}: must be a number >= 0")
    problems += data_root_problems(cfg)
    problems += _ddp_problems(cfg, is_multirun() if multirun is None else multirun)
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


def data_root_problems(cfg: DictConfig) -> list[str]:
    """`dataset.root` must be a folder, unless it is (inside) the default data folder.

    A mistyped root would otherwise be created and filled with a fresh copy (or download) of
    the dataset, and the run would look as if it had found its data.
    """
    root = cfg.dataset.get("root")
    default = cfg.get("paths", {}).get("data_dir")
    if root is None or OmegaConf.is_missing(cfg.dataset, "root") or Path(str(root)).is_dir():
        return []
    # The default data folder and the datasets' default folders inside it are the project's
    # own: a missing one is the dataset's to report (with how to get its files).
    if default is not None and Path(str(root)).resolve().is_relative_to(
        Path(str(default)).resolve()
    ):
        return []
    return [
        f"dataset.root={root}: no such folder. Point it at the folder that holds the dataset, "
        f"or create it first (mkdir -p {root}) to download into it; the default data folder "
        f"(paths.data_dir={default}) is created when missing"
    ]


def _cold_start_problems(cfg: DictConfig) -> list[str]:
    """A feature-based initial mode needs a model-free source and sound `features` settings."""
    source = cfg.al.get("initial_features", "simclr")
    mode = cfg.al.initial_mode
    if source not in MODEL_FREE_SOURCES:
        return [
            f"al.initial_features={source!r}: al.initial_mode={mode} picks before any model is "
            f"trained, so the features must come from one of {MODEL_FREE_SOURCES}"
        ]
    try:
        settings = FeatureSettings.from_config(cfg.get("features"))
    except ConfigError as bad:
        return [str(bad)]
    problems = settings.problems(source, "al.initial_features")
    if source == "timm" and not problems:
        from tidal_lightning.features.timm_source import timm_model

        try:
            timm_model(settings.timm)
        except ConfigError as refused:
            problems.append(str(refused))
    return problems


def validate_pool_sizes(cfg: DictConfig, pool_size: int) -> None:
    """Checks that need the dataset: the initial set must fit in the training pool."""
    if cfg.al.initial > pool_size:
        raise ConfigError(
            f"al.initial={cfg.al.initial} is larger than the training pool ({pool_size} samples "
            "after long-tail subsampling with "
            f"dataset.imbalance_ratio={cfg.dataset.imbalance_ratio}); "
            "lower al.initial"
        )


# Strategies that start their processes inside `trainer.fit`: the loop builds a fresh
# Trainer every cycle, so they would start (and lose) a new set of processes each cycle.
SPAWNING_STRATEGIES = ("ddp_spawn", "ddp_fork", "ddp_notebook")


def _ddp_problems(cfg: DictConfig, multirun: bool) -> list[str]:
    """Multi-device runs: Lightning DDP with its script launcher, a single run, simulated labels.

    Rank 0 starts the other ranks at the first `trainer.fit`; each re-runs the command,
    resumes from the `state.pt` rank 0 has written, and from then on keeps the same state
    in memory while only rank 0 writes (`distributed.is_main_process`).
    """
    devices = cfg.trainer.get("devices", 1)
    if devices in (1, "1"):
        return []
    problems = []
    strategy = cfg.trainer.get("strategy", "auto")
    if str(strategy).startswith(SPAWNING_STRATEGIES):
        problems.append(
            f"trainer.strategy={strategy}: with trainer.devices={devices} the AL loop needs "
            "trainer.strategy=ddp (processes started once, kept for every cycle's Trainer)"
        )
    oracle = cfg.get("oracle")
    if oracle is not None and "FileOracle" in str(oracle.get("_target_", "")):
        problems.append(
            f"oracle=file with trainer.devices={devices}: runs that stop for labels train on one "
            "device; use trainer.devices=1"
        )
    if multirun:
        problems.append(
            f"trainer.devices={devices} in a sweep (-m): Lightning's DDP launcher re-runs the "
            "command line, sweep included; run each multi-device job on its own, or sweep with "
            "trainer.devices=1 (one job per device)"
        )
    return problems


def is_multirun() -> bool:
    """Whether this process is a job of a Hydra sweep (`-m`)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:  # pragma: no cover - hydra is a dependency
        return False
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
