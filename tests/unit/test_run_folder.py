"""Run folder names, resume checks and quoting: what a shell and Hydra read back."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

from tidal_lightning.al.labeling import hydra_value
from tidal_lightning.al.state import RunState
from tidal_lightning.errors import RunFolderError
from tidal_lightning.resolvers import ITEM_SEP, dirname


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        (["+experiment=smoke", "strategy=entropy"], "experiment-smoke__strategy-entropy"),
        (["dataset.classes=[cat,dog]", "seed=1"], "dataset.classes-_cat_dog___seed-1"),
        (["dataset.root=/data/my photos"], "dataset.root-_data_my_photos"),
        (["al.budget=-5"], "al.budget--5"),
        ([], "defaults"),
    ],
)
def test_run_folder_names_keep_only_safe_characters(overrides: list[str], name: str) -> None:
    assert dirname(ITEM_SEP.join(overrides)) == name


def test_a_long_name_is_cut_and_stays_unique() -> None:
    first = dirname(ITEM_SEP.join(["dataset.root=" + "a" * 300, "seed=1"]))
    second = dirname(ITEM_SEP.join(["dataset.root=" + "a" * 300, "seed=2"]))
    assert len(first) <= 200 and first != second


@pytest.mark.parametrize(
    "path",
    ["/tmp/runs/plain-name_1.0", "/tmp/my runs/a=b,c", "/tmp/it's [here]", "/tmp/x\\y", "/tmp/z\\"],
)
def test_a_pinned_run_folder_reads_back_through_bash_and_hydra(path: str) -> None:
    override = f"hydra.run.dir={hydra_value(path)}"
    (as_bash_passes_it,) = shlex.split(shlex.quote(override))  # what the program receives
    (parsed,) = OverridesParser.create().parse_overrides([as_bash_passes_it])
    assert parsed.value() == path


def test_resume_ignores_which_checkpoints_are_kept_but_not_the_seed(tmp_path: Path) -> None:
    def config(seed: int, checkpoints: str) -> dict[str, object]:
        oracle = {"_target_": "tidal_lightning.al.oracle.SimulatedOracle"}
        return {"seed": seed, "oracle": oracle, "al": {"checkpoints": checkpoints, "cycles": 3}}

    state = RunState(config=config(0, "all"))
    state.check_same_config(config(0, "last"), tmp_path)
    with pytest.raises(RunFolderError, match=r"seed: 0 -> 1"):
        state.check_same_config(config(1, "all"), tmp_path)


def test_class_balanced_runs_get_their_own_strategy_name() -> None:
    """The report groups by this name: balanced and plain runs of one strategy stay apart."""
    from omegaconf import OmegaConf

    from tidal_lightning.al.records import strategy_name

    def config(balance: bool) -> DictConfig:
        target = "tidal_lightning.strategies.margin.Margin"
        return OmegaConf.create({"strategy": {"_target_": target, "class_balance": balance}})

    assert strategy_name(config(False)) == "margin"
    assert strategy_name(config(True)) == "margin+class_balance"
