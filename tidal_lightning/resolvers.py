"""OmegaConf resolvers the configs use; registered on import of the package entry points."""

from __future__ import annotations

import hashlib
import netrc
import os

from omegaconf import OmegaConf


def wandb_offline() -> bool:
    """True unless W&B credentials are present (an API key in the environment or ~/.netrc)."""
    if os.environ.get("WANDB_MODE") in {"online", "run"} or os.environ.get("WANDB_API_KEY"):
        return False
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is None
    except (OSError, netrc.NetrcParseError):
        return True


def dirname(overrides: str) -> str:
    """A run folder name from Hydra's `override_dirname` (`seed=1,strategy=entropy`).

    No overrides gives `defaults`; `/` (paths, groups) becomes `_`; a name too long for a
    file system keeps its start plus a hash of the whole, so it stays unique.
    """
    name = overrides.replace("/", "_") or "defaults"
    if len(name) > 200:
        digest = hashlib.blake2b(name.encode(), digest_size=6).hexdigest()
        name = f"{name[:180]}-{digest}"
    return name


def register() -> None:
    OmegaConf.register_new_resolver("tidal.wandb_offline", wandb_offline, replace=True)
    OmegaConf.register_new_resolver("tidal.dirname", dirname, replace=True)
