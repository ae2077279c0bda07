"""`python -m tidal_lightning [overrides]`: check the command, compose the config, run the loop."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from tidal_lightning import resolvers
from tidal_lightning.errors import TidalError
from tidal_lightning.signals import Terminated, quiet_repeats, terminate_on_sigterm

MULTIRUN_FLAGS = ("-m", "--multirun")
# A process ended by SIGTERM exits 128 + 15, as the shell reports it.
SIGTERM_EXIT = 143


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
    from tidal_lightning import preflight

    try:
        # every job of the command, checked before Hydra makes a folder or a job trains
        preflight.check(config_dir(), sys.argv[1:])
    except TidalError as error:
        sys.exit(f"error: {error}")
    quiet_repeats()
    try:
        with terminate_on_sigterm():
            _task()
    except Terminated:
        # Committed cycles are in state.pt; the same command resumes after the last one.
        print("terminated (SIGTERM): run the same command to resume", file=sys.stderr)
        sys.exit(SIGTERM_EXIT)


if __name__ == "__main__":
    main()
