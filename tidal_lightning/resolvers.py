"""OmegaConf resolvers the configs use; registered on import of the package entry points."""

from __future__ import annotations

import hashlib
import netrc
import os
import re
import sys

from omegaconf import OmegaConf


def wandb_offline() -> bool:
    """True unless W&B credentials are present (an API key in the environment or ~/.netrc)."""
    if os.environ.get("WANDB_MODE") in {"online", "run"} or os.environ.get("WANDB_API_KEY"):
        return False
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is None
    except (OSError, netrc.NetrcParseError):
        return True


# Characters a run folder keeps: a shell and Hydra's override grammar read them as they are.
_UNSAFE = re.compile(r"[^A-Za-z0-9._+@%-]")
# Hydra's `override_dirname` item separator, as conf/hydra/default.yaml sets it.
ITEM_SEP = "\x1f"


def dirname(overrides: str) -> str:
    """A run folder name from Hydra's `override_dirname` (`seed=1<US>strategy=entropy`).

    Each override `key=value` becomes `key-value` (a leading `+`/`~` dropped), joined by
    `__`: `seed-1__strategy-entropy`. Any character a shell or Hydra would read specially
    (`= , [ ] ' " *` spaces, ...) becomes `_`, so the folder can be pasted into
    `hydra.run.dir=` and a shell as it is. No overrides gives `defaults`; a name too long for
    a file system keeps its start plus a hash of the whole, so it stays unique.
    """
    parts = []
    for item in filter(None, overrides.split(ITEM_SEP)):
        key, _, value = item.partition("=")
        key = key.lstrip("+~").replace("/", ".")
        parts.append(f"{_UNSAFE.sub('_', key)}-{_UNSAFE.sub('_', value)}")
    name = "__".join(parts) or "defaults"
    if len(name) > 200:
        digest = hashlib.blake2b(overrides.encode(), digest_size=6).hexdigest()
        name = f"{name[:180]}-{digest}"
    return name


def isatty() -> bool:
    """Whether standard output is a terminal (progress bars only there)."""
    return sys.stdout.isatty()


def register() -> None:
    OmegaConf.register_new_resolver("tidal.wandb_offline", wandb_offline, replace=True)
    OmegaConf.register_new_resolver("tidal.dirname", dirname, replace=True)
    OmegaConf.register_new_resolver("tidal.isatty", isatty, replace=True)
