"""`python -m tidal_lightning [overrides]`: compose the config, run the AL loop."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from tidal_lightning import resolvers
from tidal_lightning.errors import TidalError

MULTIRUN_FLAGS = ("-m", "--multirun")


def config_dir() -> str:
    """`conf/` beside the package in a source checkout, else the copy shipped inside it."""
    package = Path(__file__).resolve().parent
    checkout = package.parent / "conf"
    return str(checkout if (checkout / "config.yaml").exists() else package / "conf")


def multirun_flag_first(argv: list[str]) -> list[str]:
    """Moves `-m/--multirun` before the overrides.

    Hydra's argparse parser stops collecting overrides at the first flag, so the
    documented form `python -m tidal_lightning +experiment=x -m seed=0,1,2` would
    otherwise reject everything after `-m`.
    """
    flags = [a for a in argv if a in MULTIRUN_FLAGS]
    return flags[:1] + [a for a in argv if a not in MULTIRUN_FLAGS]


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def _task(cfg: DictConfig) -> None:
    from tidal_lightning.al.loop import run  # torch imports stay out of --help

    try:
        run(cfg)
    except TidalError as error:
        sys.exit(f"error: {error}")


def main() -> None:
    resolvers.register()
    sys.argv[1:] = multirun_flag_first(sys.argv[1:])
    _task()


if __name__ == "__main__":
    main()
