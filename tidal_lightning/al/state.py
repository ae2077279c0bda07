"""The run's resumable state, `state.pt`: the one file whose replacement commits a cycle.

results.csv, queries.csv and run_summary.json are derived from it and rewritten after it,
so a kill at any moment leaves either the previous state or the new one; resuming rewrites
the derived files from the state and continues with the next cycle.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor

from tidal_lightning import distributed
from tidal_lightning.al.records import atomic_torch_save
from tidal_lightning.errors import RunFolderError

STATE_FILE = "state.pt"

# Keys whose values may change between the killed run and its resumption without changing
# what the run computes: where files live, how progress is shown, where metrics go.
RESUME_IGNORED_KEYS = (
    "paths",
    "logger",
    "sweep_name",
    "dataset.root",
    "dataset.download",
    # how a cached dataset's images reach the device, and where its cache lives
    "dataset.storage",
    "dataset.cache_dir",
    "dataset.cache_rebuild",
    "dataset.cache_workers",
    "dataset.prefetch",
    "dataset.progress",
    "trainer.enable_progress_bar",
    # which file the labels are imported from, and where Label Studio serves images from
    "oracle.labels",
    "oracle.document_root",
    # which cycles' checkpoints are kept: files beside the run, not what it computes
    "al.checkpoints",
    # where the feature encoders are cached (their training is keyed by what they compute)
    "features.cache_dir",
)

# Keys added after runs were already started: a saved config without one ran as this value.
ADDED_KEY_DEFAULTS = {
    "oracle._target_": "tidal_lightning.al.oracle.SimulatedOracle",
    "al.checkpoints": "all",
    "strategy.class_balance": False,
    "al.initial_features": "simclr",
}
# Config blocks added after runs were already started; a saved config without one ran without
# anything that reads it (the feature encoders serve strategies that did not exist then).
ADDED_BLOCKS = ("features",)


@dataclass
class RunState:
    """Everything needed to continue a run after the last completed cycle.

    Attributes:
        config: the resolved config the run started with (checked on resume).
        cycles_completed: trainings finished (and queried after, where a query followed).
        label_rounds: `[B_r]` dataset indices labeled in each round, round 0 the initial set.
        results: results.csv rows so far.
        summary: run_summary.json as last written.
        status: `running` or `finished`.
        warm_start: the last model's weights when `al.warm_start` is on.
        rng: torch, numpy and Python RNG states at the end of the last completed cycle.
        logger_id: the W&B run id, so a resumed run logs into the same W&B run.
        logger_step: where the next cycle's logged steps start (steps increase across cycles).
        round_labels: `[B_r]` the labels of `label_rounds[r]` as the oracle gave them; a
            round awaiting labels has none yet (runs from before this field have none).
        pending: the label request the run stopped for (`oracle=file`), see
            `LabelRequest.to_state`; its samples are the last label round. None: none.
        manifest: the training files the dataset indices refer to (image folders), see
            `data.manifest.Manifest.to_state`; None for datasets that are not files.
    """

    config: dict[str, Any]
    cycles_completed: int = 0
    label_rounds: list[Tensor] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    status: str = "running"
    warm_start: dict[str, Tensor] | None = None
    rng: dict[str, Any] = field(default_factory=dict)
    logger_id: str = ""
    logger_step: int = 0
    round_labels: list[Tensor] = field(default_factory=list)
    pending: dict[str, Any] | None = None
    manifest: dict[str, Any] | None = None

    def save(self, run_dir: Path) -> None:
        """Writes `state.pt` to a temp file, fsyncs and renames it into place.

        Only the main process writes (under DDP every rank keeps the same state in memory).
        """
        if not distributed.is_main_process():
            return
        self.rng = capture_rng()
        atomic_torch_save(run_dir / STATE_FILE, asdict(self))

    @classmethod
    def load(cls, run_dir: Path) -> RunState | None:
        """The saved state, or None when the folder has none."""
        path = run_dir / STATE_FILE
        if not path.exists():
            return None
        try:
            # weights_only: a state file is data, never code, even in a shared folder.
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several types for a damaged file
            raise RunFolderError(
                f"{path} cannot be read ({error}); move the run folder away to start afresh"
            ) from error
        return cls(**saved)

    def check_same_config(self, config: dict[str, Any], run_dir: Path) -> None:
        """Refuses to resume with a config that would compute something else."""
        before, now = _flatten(self.config), _flatten(config)
        # A key added since the run started (or that this config does not set) means its default.
        for flat in (before, now):
            for key, default in ADDED_KEY_DEFAULTS.items():
                if not any(k == key or k.startswith(key + ".") for k in flat):
                    flat[key] = default
        missing_blocks = [b for b in ADDED_BLOCKS if not any(k.startswith(b + ".") for k in before)]
        changed = sorted(
            key
            for key in before.keys() | now.keys()
            if before.get(key) != now.get(key)
            and not _ignored(key)
            and not any(key.startswith(b + ".") for b in missing_blocks)
        )
        if changed:
            shown = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:5])
            raise RunFolderError(
                f"{run_dir} holds a run with a different config ({shown}"
                f"{', ...' if len(changed) > 5 else ''}); resuming it would mix two "
                "experiments. Use the original settings to resume, or another hydra.run.dir."
            )


def check_run_folder(run_dir: Path, config: dict[str, Any]) -> RunState | None:
    """The state a run of `config` in `run_dir` resumes, after checking that it may.

    Refuses (`RunFolderError`) a folder holding another config's run, or results that no
    state records; reads nothing but `state.pt` and writes nothing.

    Returns:
        The saved state (possibly finished), or None for a fresh start.
    """
    state = RunState.load(run_dir)
    if state is None:
        taken = [p.name for p in (run_dir / "results.csv", run_dir / "queries.csv") if p.exists()]
        if taken:
            raise RunFolderError(
                f"{run_dir} already holds {', '.join(taken)} from an earlier run that left no "
                "state.pt to resume from; pick another hydra.run.dir (or move those files "
                "away) so they are not overwritten."
            )
        return None
    state.check_same_config(config, run_dir)
    return state


def _ignored(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESUME_IGNORED_KEYS)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        flat: dict[str, Any] = {}
        for key, value in tree.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: tree}


def capture_rng() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and Python RNG states, in types `weights_only` loads."""
    name, keys, position, has_gauss, cached = cast(
        "tuple[str, np.ndarray, int, int, float]", np.random.get_state(legacy=True)
    )
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "python": list(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Puts back what `capture_rng` took (no-op for an empty dict)."""
    if not state:
        return
    torch.set_rng_state(state["torch"])
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
