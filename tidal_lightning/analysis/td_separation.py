"""`td_separation` (TiDAL paper §3.1, Figure 2): do training dynamics tell minority-class
samples from majority-class ones better than the final snapshot does?

One model (the config's model and trainer recipe, a plain classifier: no TD module) is trained
on the long-tailed training pool. For every training sample it keeps the softmax of the last
epoch (the *snapshot*) and the running mean of the softmax over all epochs (the *training
dynamics*, TD), both taken in the training step as TiDAL's tracker takes them. Four
uncertainty scores follow: entropy and negative margin (`-(p1 - p2)`) of each. The AUROC of a
score at separating minority samples (positive) from majority samples says how well higher
uncertainty points to the minority. Writes `td_separation.png` (2×2 KDE panels) and
`td_separation.json`.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch import Tensor

from tidal_lightning.al.loop import build_system
from tidal_lightning.analysis import common
from tidal_lightning.analysis.metrics import auroc, density_curve, minority_classes
from tidal_lightning.callbacks.training_dynamics import TrainingDynamicsTracker
from tidal_lightning.seeding import make_generator
from tidal_lightning.strategies import scores
from tidal_lightning.strategies.base import Strategy

log = logging.getLogger(__name__)

SUMMARY = "minority vs majority: AUROC of snapshot and TD entropy/margin (TiDAL Fig. 2)"
MINORITY_DEFINITION = (
    "minority = the floor(K/2) classes with the fewest samples in the long-tailed training "
    "pool (ties: the higher class index); majority = the other ceil(K/2) classes"
)
# the panels' order
SCORES = ("snapshot_entropy", "snapshot_margin", "td_entropy", "td_margin")


@dataclasses.dataclass
class Options:
    train_size: int | None = dataclasses.field(
        default=None,
        metadata={
            "help": "train on a seeded random subset of this many pool samples "
            "(default null: the whole long-tailed pool)"
        },
    )
    default_imbalance_ratio: float = dataclasses.field(
        default=100.0,
        metadata={"help": "the ratio used when dataset.imbalance_ratio is 1 (balanced)"},
    )


class SnapshotTracker(TrainingDynamicsTracker):
    """The TD tracker plus each sample's softmax from the latest epoch it was trained in.

    Every training sample is seen once per epoch, so after `fit` `last_probs` holds the final
    epoch's softmax, and `mean_probs` the running mean over all epochs. Both stay on the
    module's device (`index_copy_`, no host transfer per batch).
    """

    def __init__(self, num_samples: int, num_classes: int) -> None:
        super().__init__(num_samples, num_classes)
        self.last_probs = torch.zeros(num_samples, num_classes)  # [N, K]

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self.last_probs = self.last_probs.to(pl_module.device)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self.last_probs.index_copy_(0, outputs["indices"], outputs["probs"].float())

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "last_probs": self.last_probs}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.last_probs = state_dict["last_probs"].to(self.last_probs.device)


def uncertainty_scores(snapshot: Tensor, dynamics: Tensor) -> dict[str, Tensor]:
    """The four scores, `[N, K], [N, K] -> [N]` each; higher = more uncertain."""
    return {
        "snapshot_entropy": scores.entropy(snapshot),
        "snapshot_margin": scores.negative_margin(snapshot),
        "td_entropy": scores.entropy(dynamics),
        "td_margin": scores.negative_margin(dynamics),
    }


def run(
    cfg: DictConfig, options: Options, request: common.Request, out_dir: Path
) -> dict[str, Any]:
    common.reject_strategy_override(
        request, "it trains a plain classifier (no query) and scores its training samples"
    )
    seed = int(cfg.seed)
    configured_ratio = float(cfg.dataset.imbalance_ratio)
    ratio = configured_ratio if configured_ratio != 1 else float(options.default_imbalance_ratio)
    common.require(
        ratio > 1,
        f"analysis.default_imbalance_ratio={options.default_imbalance_ratio}: must be > 1, "
        "the analysis compares minority and majority classes",
    )
    datamodule, pool_indices = common.load_data(cfg, ratio)
    targets = datamodule.train_targets
    num_classes = datamodule.num_classes
    common.require(num_classes >= 2, "td_separation needs at least two classes")
    pool_counts = torch.bincount(targets[pool_indices], minlength=num_classes)
    train_indices = pool_indices
    if options.train_size is not None:
        common.require(
            2 <= options.train_size <= len(pool_indices),
            f"analysis.train_size={options.train_size}: must be between 2 and the pool size "
            f"{len(pool_indices)} (dataset.imbalance_ratio={ratio:g})",
        )
        # A uniform draw keeps the pool's long-tailed profile, up to sampling noise.
        order = torch.randperm(len(pool_indices), generator=make_generator(seed, 0, "train_subset"))
        train_indices = torch.sort(pool_indices[order[: options.train_size]]).values
    minority = minority_classes(pool_counts)
    is_minority = minority[targets[train_indices]]
    common.require(
        bool(is_minority.any()) and not bool(is_minority.all()),
        f"no training sample in one of the groups (pool class counts {pool_counts.tolist()}): "
        "lower dataset.imbalance_ratio or raise analysis.train_size",
    )

    common.seed_model(cfg)
    system, callbacks, _ = build_system(cfg, datamodule, Strategy())
    tracker = SnapshotTracker(len(targets), num_classes)
    log.info(
        "td_separation: training on %d samples (imbalance ratio %g)", len(train_indices), ratio
    )
    _, test_acc = common.train(
        cfg, system, [*callbacks, tracker], datamodule, train_indices, out_dir
    )
    device = tracker.prob_sums.device
    on_device = train_indices.to(device)
    score_values = uncertainty_scores(tracker.last_probs[on_device], tracker.mean_probs(on_device))
    score_values = {name: values.cpu() for name, values in score_values.items()}
    aurocs = {name: auroc(values, is_minority) for name, values in score_values.items()}

    train_counts = torch.bincount(targets[train_indices], minlength=num_classes)
    result: dict[str, Any] = {
        "analysis": "td_separation",
        "config": {
            **common.config_summary(cfg, datamodule),
            "imbalance_ratio": ratio,
            "imbalance_ratio_configured": configured_ratio,
            "train_size": len(train_indices),
            "overrides": request.computing_overrides,
            "options": dataclasses.asdict(options),
        },
        "seed": seed,
        "test_acc": test_acc,
        "minority_definition": MINORITY_DEFINITION,
        "minority_classes": torch.nonzero(minority).flatten().tolist(),
        "majority_classes": torch.nonzero(~minority).flatten().tolist(),
        "pool_class_counts": pool_counts.tolist(),
        "train_class_counts": train_counts.tolist(),
        "n_minority": int(is_minority.sum()),
        "n_majority": int((~is_minority).sum()),
        "auroc": aurocs,
        "mean_score": {
            name: {
                "minority": float(values[is_minority].mean()),
                "majority": float(values[~is_minority].mean()),
            }
            for name, values in score_values.items()
        },
        "scores": {
            "snapshot": "softmax of the final epoch, from the training step",
            "td": "mean softmax over all epochs, from the training step",
            "entropy": "sum_k -p_k ln p_k",
            "margin": "-(p_top1 - p_top2): higher = more uncertain",
            "auroc": "minority = positive; higher score taken as more likely minority",
        },
    }
    if configured_ratio == 1:
        result["imbalance_ratio_note"] = (
            f"dataset.imbalance_ratio is 1 (balanced), so the analysis used "
            f"analysis.default_imbalance_ratio={ratio:g}"
        )
    _plot(score_values, is_minority, aurocs, result, out_dir / "td_separation.png")
    common.write_json(out_dir / "td_separation.json", result)
    return result


def _plot(
    score_values: dict[str, Tensor],
    is_minority: Tensor,
    aurocs: dict[str, float],
    result: dict[str, Any],
    path: Path,
) -> None:
    titles = {
        "snapshot_entropy": "snapshot entropy",
        "snapshot_margin": "snapshot margin (−(p1−p2))",
        "td_entropy": "TD entropy",
        "td_margin": "TD margin (−(p1−p2))",
    }
    figure, axes = common.new_figure(2, 2, (9.5, 7.0))
    groups = {"majority": ~is_minority.numpy(), "minority": is_minority.numpy()}
    for axis, name in zip(axes.ravel(), SCORES, strict=True):
        values = score_values[name].double().numpy()
        low, high = float(values.min()), float(values.max())
        pad = 0.05 * (high - low) or 0.05
        grid = np.linspace(low - pad, high + pad, 256)
        for (group, members), colour in zip(groups.items(), ("C0", "C3"), strict=True):
            density = density_curve(values[members], grid)
            axis.plot(grid, density, color=colour, label=f"{group} (n={int(members.sum())})")
            axis.fill_between(grid, density, color=colour, alpha=0.2)
        axis.set_title(f"{titles[name]}: AUROC {aurocs[name]:.3f}")
        axis.set_xlabel("uncertainty")
        axis.set_ylabel("density")
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    config = result["config"]
    figure.suptitle(
        f"{config['dataset']}, imbalance ratio {config['imbalance_ratio']:g}, "
        f"{config['train_size']} training samples, {config['max_epochs']} epochs"
    )
    common.save_figure(figure, path)


def report(result: dict[str, Any]) -> str:
    lines = [f"AUROC minority vs majority (n={result['n_minority']} vs {result['n_majority']}):"]
    lines += [f"  {name:17s} {value:.4f}" for name, value in result["auroc"].items()]
    return "\n".join(lines)
