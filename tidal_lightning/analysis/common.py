"""What every analysis shares: the command line's parts, the config, the data, one training."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf, open_dict

from tidal_lightning.errors import ConfigError, TidalError

if TYPE_CHECKING:
    import pytorch_lightning as pl
    import torch
    from matplotlib.figure import Figure

    from tidal_lightning.data.datamodules import ImageClassificationData
    from tidal_lightning.models.system import ActiveLearningSystem

# The analyses' own settings are `analysis.<name>=<value>` on the command line (a leading
# `+` is accepted too); everything else goes to Hydra as a config override.
KNOB_PREFIX = "analysis."
OUTPUT_DIR_KEY = "paths.output_dir"
OUTPUT_ROOT = Path("outputs") / "analysis"


class AnalysisError(TidalError):
    """The analysis command line names something that does not exist or cannot be used."""


@dataclasses.dataclass
class Request:
    """One analysis command line, split.

    Attributes:
        name: the analysis.
        hydra_overrides: the config overrides, as given.
        knobs: the `analysis.*` assignments without the prefix (`train_size=2000`).
    """

    name: str
    hydra_overrides: list[str]
    knobs: list[str]

    @classmethod
    def parse(cls, name: str, arguments: Sequence[str]) -> Request:
        hydra_overrides, knobs = [], []
        for argument in arguments:
            bare = argument.removeprefix("+")
            if bare.startswith(KNOB_PREFIX):
                if "=" not in bare:
                    raise AnalysisError(f"{argument!r}: write analysis settings as key=value")
                knobs.append(bare.removeprefix(KNOB_PREFIX))
            else:
                hydra_overrides.append(argument)
        return cls(name, hydra_overrides, knobs)

    @property
    def computing_overrides(self) -> list[str]:
        """The overrides minus `paths.output_dir` (where results go, not what they are)."""
        return [o for o in self.hydra_overrides if not _sets(o, OUTPUT_DIR_KEY)]

    def folder_name(self, excluded: Sequence[str] = ()) -> str:
        """The run-folder name: the sorted overrides and settings, named as run folders are.

        Args:
            excluded: keys left out of the name (Hydra's `override_dirname.exclude_keys`:
                settings that do not change what is computed, such as the progress bar).
        """
        from tidal_lightning.resolvers import ITEM_SEP, dirname

        named = [o for o in self.computing_overrides if _key(o) not in excluded]
        named += [KNOB_PREFIX + k for k in self.knobs]
        return dirname(ITEM_SEP.join(sorted(named)))

    def sets(self, key: str) -> bool:
        """The overrides assign `key` (with or without `+`/`++`)."""
        return any(_sets(o, key) for o in self.hydra_overrides)


def _key(override: str) -> str:
    """`+a.b=1` -> `a.b`."""
    return override.lstrip("+~").split("=", 1)[0]


def _sets(override: str, key: str) -> bool:
    return _key(override) == key


def parse_options(options_type: type[Any], knobs: list[str], analysis: str) -> Any:
    """`analysis.*` assignments -> an instance of the analysis's options dataclass.

    Raises:
        AnalysisError: an unknown setting or a value of the wrong type, naming the allowed ones.
    """
    schema = OmegaConf.structured(options_type)
    try:
        merged = OmegaConf.merge(schema, OmegaConf.from_dotlist(knobs))
    except Exception as error:  # OmegaConf's key, validation and grammar errors alike
        allowed = ", ".join(f"{KNOB_PREFIX}{f.name}" for f in dataclasses.fields(options_type))
        raise AnalysisError(
            f"bad analysis setting for {analysis} ({str(error).splitlines()[0]}); "
            f"its settings: {allowed or 'none'}"
        ) from error
    return OmegaConf.to_object(merged)


def options_help(options_type: type[Any]) -> list[str]:
    """Two lines per setting of an options dataclass: `analysis.<name>=<default>`, its help."""
    lines = []
    for option in dataclasses.fields(options_type):
        default = (
            option.default_factory()
            if option.default_factory is not dataclasses.MISSING
            else option.default
        )
        # written as an override would be: [a,b] and null
        default_text = (
            f"[{','.join(map(str, default))}]" if isinstance(default, list) else json.dumps(default)
        )
        lines.append(f"    {KNOB_PREFIX}{option.name}={default_text}")
        lines.append(f"        {option.metadata.get('help', '')}")
    return lines


def compose(request: Request, defaults: Sequence[str] = ()) -> DictConfig:
    """The config `python -m tidal_lightning <defaults> <overrides>` would run, with
    `paths.output_dir` set to the analysis folder (`outputs/analysis/<name>/<overrides>`
    unless overridden). `defaults` are the analysis's own defaults (not in the folder name).

    Raises:
        AnalysisError: Hydra rejected an override (its message says which and why).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    from tidal_lightning import resolvers
    from tidal_lightning.__main__ import config_dir
    from tidal_lightning.config_checks import validate_config

    resolvers.register()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=config_dir()):
            cfg = hydra_compose(
                "config",
                overrides=[*defaults, *request.hydra_overrides],
                return_hydra_config=True,
            )
    except HydraException as error:
        raise AnalysisError(f"bad override: {error}") from error
    # Named as `python -m tidal_lightning` names run folders, then the hydra node goes: the
    # rest of the config is what a run sees.
    excluded = list(cfg.hydra.job.config.override_dirname.exclude_keys)
    with open_dict(cfg):
        del cfg["hydra"]
        if not request.sets(OUTPUT_DIR_KEY):
            folder = request.folder_name(excluded)
            cfg.paths.output_dir = str(OUTPUT_ROOT / request.name / folder)
    validate_config(cfg)
    return cfg


def reject_strategy_override(request: Request, why: str) -> None:
    """For analyses that choose their own models: a `strategy=` override would do nothing."""
    if request.sets("strategy"):
        raise AnalysisError(f"{request.name} takes no strategy= override: {why}")


def config_summary(cfg: DictConfig, datamodule: ImageClassificationData) -> dict[str, Any]:
    """The settings a reader of the JSON needs to know what was computed."""
    return {
        "dataset": datamodule.dataset_name,
        "num_classes": datamodule.num_classes,
        "train_split_size": len(datamodule.train_targets),
        "backbone": cfg.model.backbone._target_.rsplit(".", 1)[-1],
        "max_epochs": int(cfg.trainer.max_epochs),
        "batch_size": int(cfg.dataset.batch_size),
        "seed": int(cfg.seed),
    }


def load_data(
    cfg: DictConfig, imbalance_ratio: float
) -> tuple[ImageClassificationData, torch.Tensor]:
    """The dataset and the AL loop's training pool: `[M]` dataset indices.

    The pool is drawn exactly as the loop draws it (`long_tail_indices` with the
    `long_tail` stream of cycle 0), so the same config gives the same pool.
    """
    from hydra.utils import instantiate

    from tidal_lightning.data.longtail import long_tail_indices
    from tidal_lightning.seeding import make_generator

    datamodule: ImageClassificationData = instantiate(cfg.dataset)
    datamodule.load()
    unknown = int((datamodule.train_targets < 0).sum())
    require(
        unknown == 0,
        f"{unknown} training samples of {datamodule.dataset_name} have no label: the analyses "
        "compare the model with the true labels, so every training label must be known",
    )
    pool_indices = long_tail_indices(
        datamodule.train_targets,
        datamodule.num_classes,
        imbalance_ratio,
        make_generator(int(cfg.seed), 0, "long_tail"),
    )
    return datamodule, pool_indices


def train(
    cfg: DictConfig,
    system: ActiveLearningSystem,
    callbacks: list[pl.Callback],
    datamodule: ImageClassificationData,
    train_indices: torch.Tensor,
    out_dir: Path,
) -> tuple[pl.Trainer, float]:
    """Fits `system` on `train_indices` with a fresh Trainer (the config's recipe, no logger,
    cycle 0's shuffle and augmentation streams) and tests it.

    The caller seeds the model's initialisation before building `system`.

    Returns:
        The trainer (for its device) and the test accuracy.
    """
    from hydra.utils import instantiate

    datamodule.start_cycle(train_indices, int(cfg.seed), 0)
    trainer: pl.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=False, default_root_dir=str(out_dir)
    )
    # The analyses read per-sample buffers that one process fills (the snapshot softmax of
    # td_separation is kept per rank), so they run on one device.
    require(
        trainer.world_size == 1,
        f"the analyses train on one device; trainer.devices={cfg.trainer.devices} starts "
        f"{trainer.world_size} processes: set trainer.devices=1",
    )
    trainer.fit(system, datamodule=datamodule)
    trainer.test(system, datamodule=datamodule, verbose=False)
    return trainer, float(trainer.callback_metrics["test/acc"])


def seed_model(cfg: DictConfig) -> None:
    """Seeds every global RNG as the loop does before building cycle 0's model."""
    import pytorch_lightning as pl

    from tidal_lightning.seeding import derive_seed

    pl.seed_everything(derive_seed(int(cfg.seed), 0, "model"), workers=True, verbose=False)


def new_figure(rows: int, columns: int, size: tuple[float, float]) -> tuple[Figure, Any]:
    """A matplotlib figure on an Agg canvas (no pyplot state, no display) and its axes grid."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots(rows, columns, squeeze=False)


def save_figure(figure: Figure, path: Path) -> None:
    """Writes a PNG through a temp file, so a kill never leaves half an image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    figure.savefig(partial, format="png", dpi=120)
    os.replace(partial, path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    from tidal_lightning.al.records import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2, allow_nan=True) + "\n")


def require(condition: bool, message: str) -> None:
    """Raises `ConfigError(message)` unless `condition`."""
    if not condition:
        raise ConfigError(message)
