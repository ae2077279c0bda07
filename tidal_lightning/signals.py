"""How the CLI ends on SIGTERM, and which repeated notices it keeps quiet."""

from __future__ import annotations

import logging
import signal
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

# Lightning's loggers of one-line notices, repeated by every cycle's fresh Trainer
# ("GPU available: ...", "TPU available: ...", tips).
NOTICE_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero")
# Warnings that say nothing about this project's runs: the loop logs once per epoch on
# purpose, and its loaders gather index batches in memory (no worker processes to add).
IRRELEVANT_WARNINGS = (
    r".*smaller than the logging interval.*",
    r".*does not have many workers.*",
)


class Terminated(BaseException):
    """SIGTERM arrived: unwinds the run (no `except Exception` catches it) to exit 143.

    Raised from wherever the process was; every file the run writes is replaced atomically
    and each cycle is committed by `state.pt`, so unwinding at any point leaves a run that
    the same command resumes.
    """


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated


@contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """SIGTERM raises `Terminated` inside the block (Lightning's own handler still runs first).

    Lightning turns SIGTERM into a `SystemExit` with no code, so `timeout`, `docker stop`,
    a SLURM time limit or CI would see a run that was stopped half-way exit 0.
    """
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _OncePerProcess(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


def quiet_repeats() -> None:
    """Each of Lightning's notices and each warning once per process; irrelevant ones never."""
    for name in NOTICE_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _OncePerProcess) for f in logger.filters):
            logger.addFilter(_OncePerProcess())
    warnings.filterwarnings("once")
    for message in IRRELEVANT_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
