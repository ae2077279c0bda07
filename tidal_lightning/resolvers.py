"""OmegaConf resolvers the configs use; registered on import of the package entry points."""

from __future__ import annotations

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


def register() -> None:
    OmegaConf.register_new_resolver("tidal.wandb_offline", wandb_offline, replace=True)
