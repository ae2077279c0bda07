"""The strategy interface every query method implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from tidal_lightning.seeding import make_generator
from tidal_lightning.strategies.balance import class_balanced_selection

if TYPE_CHECKING:
    from tidal_lightning.data.datamodules import ImageClassificationData
    from tidal_lightning.models.system import ActiveLearningSystem

# What a strategy can list in `needs`, by where it comes from:
# one eval-mode pass over the scored pool subset after training,
POOL_PASS_OUTPUTS = frozenset(
    {
        "probs",
        "td_probs",
        "embeddings",
        "predicted_loss",
        "mc_probs",
        "mc_mean_probs",
        "mc_mean_entropy",
    }
)
# the same pass over the labeled set (the name minus `labeled_`),
LABELED_OUTPUTS = frozenset({"labeled_probs", "labeled_embeddings", "labeled_predicted_loss"})
# the per-epoch recorder that runs on the pool subset during training,
RECORDED_OUTPUTS = frozenset({"label_counts", "pool_td"})
# and the stored labels of the pool subset (reference strategies that read the ground truth).
TARGET_OUTPUTS = frozenset({"pool_targets"})
KNOWN_OUTPUTS = POOL_PASS_OUTPUTS | LABELED_OUTPUTS | RECORDED_OUTPUTS | TARGET_OUTPUTS


@dataclass
class QueryContext:
    """What a strategy may reach beyond the pool outputs: the trained system and the data.

    For strategies that must do more than read one pass's outputs: train a model of their
    own on the images (VAAL), perturb the trained weights (NoiseStability), or compute
    features with another encoder. Images are read with `datamodule.gather`, never
    through `datamodule.train_images`, so a datamodule that streams from disk works too.

    Attributes:
        system: the cycle's trained system (eval mode after the pool pass).
        datamodule: the run's datamodule.
        device: the scoring device.
        seed, cycle: the run's seed and the cycle; `generator` derives streams from them.
        labeled_indices: `[L]` dataset indices of the labeled set (CPU).
        pool_indices: `[N]` dataset indices of the scored pool subset (CPU).
    """

    system: ActiveLearningSystem
    datamodule: ImageClassificationData
    device: torch.device
    seed: int
    cycle: int
    labeled_indices: Tensor
    pool_indices: Tensor

    def generator(self, stream: str, device: torch.device | str | None = None) -> torch.Generator:
        """A generator for the named `stream`, seeded from (seed, cycle, stream) only."""
        return make_generator(self.seed, self.cycle, stream, device or self.device)


@dataclass
class PoolOutputs:
    """What the passes over the scored pool subset (and the labeled set) produced.

    Attributes:
        indices: `[N]` dataset indices of the scored pool samples (CPU).
        outputs: named tensors on the scoring device; pool outputs are `[N, ...]`:
            `probs` `[N, K]` (classifier softmax), `td_probs` `[N, K]` (TD module),
            `embeddings` `[N, D]` (pooled penultimate features), `predicted_loss` `[N]`
            (loss-prediction module), `mc_probs` `[N, T, K]` (softmax under each of T
            MC-dropout masks, the same masks for every sample), `mc_mean_probs` `[N, K]` /
            `mc_mean_entropy` `[N]` (their mean softmax and mean entropy), `label_counts`
            `[N, K]` int (predicted label per recorded epoch), `pool_td` `[N, K]` (mean
            softmax over recorded epochs), `pool_targets` `[N]` int64 (the stored labels;
            -1 = unknown);
            labeled-set outputs are `[L, ...]`: `labeled_probs`, `labeled_embeddings`,
            `labeled_predicted_loss`.
        labeled_targets: `[L]` int64 labels of the labeled set, in the order of the
            `labeled_*` outputs (the loop fills it in; None where nobody did).
        context: the trained system and the data, for strategies that need more than the
            outputs (see `QueryContext`); None in unit tests that pass outputs only.
        diagnostics: numbers the strategy reports about its query (solver path, radius,
            final losses), for the cycle's result row; the strategy fills it as it selects.
    """

    indices: Tensor
    outputs: dict[str, Tensor] = field(default_factory=dict)
    labeled_targets: Tensor | None = None
    context: QueryContext | None = None
    diagnostics: dict[str, float | int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, name: str) -> Tensor:
        return self.outputs[name]


class Strategy:
    """Base class of query strategies.

    A strategy declares in `needs` which outputs it reads (names in `KNOWN_OUTPUTS`); the
    AL loop computes exactly those, trains the TD module only for `td_probs`, adds what
    `system_options` returns to the system (Learning Loss's module), and runs the
    per-epoch pool recorder only for `label_counts` / `pool_td`. Score-based strategies
    implement `score` (higher = more worth labeling); set-selection strategies override
    `select`.

    A key of the config can change what one instance reads (a feature source, the shared
    `class_balance`): such an instance sets its own `needs` with `_declare_needs`, which
    shadows the class's declaration for that instance only.

    Attributes:
        mc_samples: dropout masks per pool sample for the `mc_*` outputs.
        record_every: the per-epoch recorder runs every this many epochs.
        class_balance: spread a score-based strategy's picks over the predicted classes,
            rarest labeled classes first (`strategies/balance.py`); a shared key.
        single_device: the query does work of its own that is not split across DDP ranks
            (trains a model, runs a solver); `check_config` refuses `trainer.devices > 1`.
    """

    needs: ClassVar[frozenset[str]] = frozenset({"probs"})
    single_device: ClassVar[bool] = False
    mc_samples: int = 0
    record_every: int = 1
    # The initial set is the whole training pool and the run trains once (the full-data
    # reference); `al.initial` and `al.budget` are then unused.
    labels_everything: ClassVar[bool] = False
    class_balance: bool = False

    def _declare_needs(self, needs: frozenset[str]) -> None:
        """This instance reads `needs` (names in `KNOWN_OUTPUTS`), whatever its class declares."""
        # An instance attribute shadows the ClassVar; mypy forbids assigning a ClassVar
        # through `self`, hence the instance dict.
        self.__dict__["needs"] = frozenset(needs)

    @property
    def selects_sets(self) -> bool:
        """Whether this strategy picks a set (overrides `select`) rather than ranking scores."""
        return type(self).select is not Strategy.select

    @property
    def requires_td_module(self) -> bool:
        return "td_probs" in self.needs

    @property
    def requires_recorder(self) -> bool:
        return bool(RECORDED_OUTPUTS & self.needs)

    def check_config(self, cfg: DictConfig) -> list[str]:
        """Problems with `cfg` for this strategy, each naming the key and the fix; [] if none."""
        problems = []
        if self.requires_recorder and not 1 <= self.record_every <= cfg.trainer.max_epochs:
            problems.append(
                f"strategy.record_every={self.record_every}: must be between 1 and "
                f"trainer.max_epochs={cfg.trainer.max_epochs}, or no epoch is recorded"
            )
        if not isinstance(self.class_balance, bool):
            problems.append(f"strategy.class_balance={self.class_balance!r}: must be true or false")
        elif self.class_balance and self.selects_sets:
            problems.append(
                f"strategy.class_balance=true: {type(self).__name__} selects a set rather than "
                "ranking per-sample scores, so there is no score to spread over the classes; "
                "use it with a score-based strategy (entropy, margin, tidal_margin, ...) or "
                "set strategy.class_balance=false"
            )
        devices = cfg.trainer.get("devices", 1)
        if self.single_device and devices not in (1, "1"):
            problems.append(
                f"trainer.devices={devices}: {type(self).__name__} does its query work in one "
                "process (its own training or solver is not split across devices); use "
                "trainer.devices=1"
            )
        return problems

    def query_diagnostics(self) -> dict[str, float]:
        """Numbers the last `select` chose or measured (e.g. ProbCover's radius); {} by default."""
        return {}

    def system_options(self, stage_channels: tuple[int, ...], max_epochs: int) -> dict[str, Any]:
        """Extra `ActiveLearningSystem` arguments (e.g. a head to train jointly); {} by default.

        Args:
            stage_channels: channels of the backbone's four stage maps.
            max_epochs: epochs per cycle (for schedules expressed as a fraction of training).
        """
        return {}

    def score(self, pool: PoolOutputs) -> Tensor:
        """`[N]` float scores; higher = query first."""
        raise NotImplementedError(f"{type(self).__name__} must implement score() or select()")

    def select(self, pool: PoolOutputs, budget: int, generator: torch.Generator) -> Tensor:
        """Positions (into `pool.indices`) of the `budget` samples to label, `[budget]` int64.

        Ties are broken by position (a stable sort), so selection is deterministic.
        `generator` lives on the scoring device. With `class_balance` the budget is split
        over the classifier's predicted classes first (`balance.class_balanced_selection`):
        the classifier's `probs`, also for TiDAL, whose TD module only scores.
        """
        scores = self.score(pool)
        if self.class_balance:
            probs = pool["probs"]
            if pool.labeled_targets is None:
                raise ValueError("class_balance needs PoolOutputs.labeled_targets")
            known = pool.labeled_targets[pool.labeled_targets >= 0].cpu()
            labeled_counts = torch.bincount(known, minlength=probs.shape[1])
            return class_balanced_selection(scores, probs.argmax(dim=1), labeled_counts, budget)
        order = torch.sort(scores, descending=True, stable=True).indices
        return order[:budget].cpu()


# Keys every strategy accepts, handled here rather than in each strategy's __init__.
SHARED_KEYS: dict[str, Any] = {"class_balance": False}


def build_strategy(config: DictConfig) -> Strategy:
    """The strategy `config` (the `strategy` group) names, with the shared keys applied.

    The shared keys (`SHARED_KEYS`, with their defaults) are taken out before Hydra
    instantiates the class and set as attributes after, so one key works for every
    strategy without each one's `__init__` repeating it.
    """
    own = OmegaConf.to_container(config, resolve=True)
    assert isinstance(own, dict)
    shared = {key: own.pop(key, default) for key, default in SHARED_KEYS.items()}
    strategy: Strategy = instantiate(own)
    for key, value in shared.items():
        setattr(strategy, key, value)
    if strategy.class_balance is True and not strategy.selects_sets:
        # the quotas are over the classifier's predicted classes
        strategy._declare_needs(strategy.needs | {"probs"})
    return strategy
