"""The active-learning orchestrator: a fresh model and a fresh Trainer every cycle."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from tidal_lightning.al.pool import LabelPool, draw_initial
from tidal_lightning.al.records import RunRecords, git_commit, package_versions
from tidal_lightning.al.scoring import pool_pass
from tidal_lightning.callbacks.training_dynamics import TrainingDynamicsTracker
from tidal_lightning.config_checks import validate_config, validate_pool_sizes
from tidal_lightning.data.datamodules import ImageClassificationData
from tidal_lightning.data.longtail import long_tail_indices
from tidal_lightning.models.system import ActiveLearningSystem
from tidal_lightning.seeding import derive_seed, make_generator
from tidal_lightning.strategies.base import Strategy

log = logging.getLogger(__name__)


def build_system(
    cfg: DictConfig, datamodule: ImageClassificationData, strategy: Strategy
) -> tuple[ActiveLearningSystem, list[pl.Callback]]:
    """A freshly initialised system for one cycle, plus the callbacks it depends on.

    The TD module (and the tracker that feeds it) is built only for strategies that
    read its output, so baselines train exactly the plain classifier.
    """
    num_classes = datamodule.num_classes
    backbone = instantiate(
        cfg.model.backbone, num_classes=num_classes, in_channels=datamodule.in_channels
    )
    td_module = tracker = None
    if strategy.requires_td_module:
        td_module = instantiate(
            cfg.model.td_module, stage_channels=backbone.stage_channels, num_classes=num_classes
        )
        tracker = TrainingDynamicsTracker(len(datamodule.train_targets), num_classes)
    scheduler = instantiate(cfg.model.scheduler) if cfg.model.get("scheduler") else None
    system = ActiveLearningSystem(
        backbone,
        num_classes,
        optimizer=instantiate(cfg.model.optimizer),
        scheduler=scheduler,
        td_module=td_module,
        td_tracker=tracker,
        td_weight=float(cfg.model.td_weight),
    )
    return system, [tracker] if tracker is not None else []


def _plot_al_metrics_against_labels(logger: Any) -> None:
    """Makes W&B chart `al/*` against `al/num_labeled` (Lightning's loggers otherwise use steps)."""
    define_metric = getattr(getattr(logger, "experiment", None), "define_metric", None)
    if callable(define_metric):
        define_metric("al/num_labeled")
        define_metric("al/*", step_metric="al/num_labeled")


def _log_cycle(logger: Any, metrics: dict[str, float]) -> None:
    if logger is not None:
        logger.log_metrics(metrics)


def _format_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'cycle':>5} {'labeled':>8} {'test_acc':>9} {'train_s':>8} {'query_s':>8}"]
    for r in rows:
        query = f"{r['query_seconds']:8.1f}" if r["query_seconds"] != "" else f"{'-':>8}"
        lines.append(
            f"{r['cycle']:>5} {r['num_labeled']:>8} {r['test_acc']:>9.4f} "
            f"{r['train_seconds']:>8.1f} {query}"
        )
    return "\n".join(lines)


def _initial_summary(
    cfg: DictConfig,
    datamodule: ImageClassificationData,
    strategy: Strategy,
    pool_indices: torch.Tensor,
) -> dict[str, Any]:
    """run_summary.json before the first cycle; the loop updates progress and accuracy."""
    pool_targets = datamodule.train_targets[pool_indices]
    return {
        "status": "running",
        "dataset": datamodule.dataset_name,
        "num_classes": datamodule.num_classes,
        "classes": datamodule.classes,
        "imbalance_ratio": datamodule.imbalance_ratio,
        "train_split_size": len(datamodule.train_targets),
        "train_pool_class_counts": torch.bincount(
            pool_targets, minlength=datamodule.num_classes
        ).tolist(),
        "test_size": len(datamodule.test_targets),
        "strategy": type(strategy).__name__,
        "seed": int(cfg.seed),
        "cycles_completed": 0,
        "final_test_acc": None,
        "git_commit": git_commit(),
        "package_versions": package_versions(),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


def _result_row(
    cycle: int,
    labeled: torch.Tensor,
    targets: torch.Tensor,
    test_acc: float,
    per_class: torch.Tensor,
    train_seconds: float,
) -> dict[str, Any]:
    """One results.csv row; `query_seconds` is filled in once the query has run."""
    counts = torch.bincount(targets[labeled], minlength=len(per_class))
    return {
        "cycle": cycle,
        "num_labeled": len(labeled),
        "test_acc": round(test_acc, 6),
        **{f"acc_class_{c}": round(a, 6) for c, a in enumerate(per_class.tolist())},
        "train_seconds": round(train_seconds, 3),
        "query_seconds": "",
        **{f"labeled_class_{c}": int(n) for c, n in enumerate(counts.tolist())},
    }


def run(cfg: DictConfig) -> list[dict[str, Any]]:
    """Runs `cfg.al.cycles` AL cycles and returns the per-cycle result rows.

    Every check that can fail on user input runs before the first training, and
    before anything is written to the run folder.
    """
    validate_config(cfg)
    run_dir = Path(cfg.paths.output_dir)
    RunRecords.check_fresh(run_dir)
    seed = int(cfg.seed)

    datamodule: ImageClassificationData = instantiate(cfg.dataset)
    datamodule.load()
    strategy: Strategy = instantiate(cfg.strategy)
    targets = datamodule.train_targets
    num_classes = datamodule.num_classes
    pool_indices = long_tail_indices(
        targets,
        num_classes,
        float(datamodule.imbalance_ratio),
        make_generator(seed, 0, "long_tail"),
    )
    validate_pool_sizes(cfg, len(pool_indices))

    run_dir.mkdir(parents=True, exist_ok=True)
    records = RunRecords(run_dir, num_classes)
    pool = LabelPool(len(targets), pool_indices)
    initial = draw_initial(
        targets,
        pool_indices,
        cfg.al.initial,
        num_classes,
        cfg.al.initial_mode,
        make_generator(seed, 0, "initial"),
    )
    pool.label(initial)
    records.add_queries(0, initial, targets[initial])
    summary = _initial_summary(cfg, datamodule, strategy, pool_indices)
    records.write_summary(summary)

    logger = instantiate(cfg.logger) if cfg.get("logger") else None
    _plot_al_metrics_against_labels(logger)
    previous_state: dict[str, torch.Tensor] | None = None
    for cycle in range(cfg.al.cycles):
        pl.seed_everything(derive_seed(seed, cycle, "model"), workers=True, verbose=False)
        system, callbacks = build_system(cfg, datamodule, strategy)
        if cfg.al.warm_start and previous_state is not None:
            system.load_state_dict(previous_state)
        datamodule.start_cycle(pool.labeled_indices, seed, cycle)
        trainer: pl.Trainer = instantiate(
            cfg.trainer,
            callbacks=callbacks,
            logger=logger if logger is not None else False,
            default_root_dir=str(run_dir),
        )
        started = time.perf_counter()
        trainer.fit(system, datamodule=datamodule)
        train_seconds = time.perf_counter() - started
        trainer.test(system, datamodule=datamodule, verbose=False)
        test_acc = float(trainer.callback_metrics["test/acc"])
        per_class = system.per_class_accuracy
        assert per_class is not None
        if cfg.al.warm_start:
            previous_state = {k: v.detach().clone() for k, v in system.state_dict().items()}

        labeled = pool.labeled_indices
        row = _result_row(cycle, labeled, targets, test_acc, per_class, train_seconds)
        stop_reason = None
        if cycle + 1 < cfg.al.cycles:
            if pool.num_unlabeled < cfg.al.budget:
                stop_reason = (
                    f"the pool ran out: {pool.num_unlabeled} unlabeled samples left, fewer than "
                    f"al.budget={cfg.al.budget}; stopping after {cycle + 1} of "
                    f"{cfg.al.cycles} cycles"
                )
            else:
                started = time.perf_counter()
                queried = query(
                    cfg, strategy, system, datamodule, pool, cycle, trainer.strategy.root_device
                )
                row["query_seconds"] = round(time.perf_counter() - started, 3)
                pool.label(queried)
                records.add_queries(cycle + 1, queried, targets[queried])
        records.add_result(row)
        summary.update(cycles_completed=cycle + 1, final_test_acc=row["test_acc"])
        records.write_summary(summary)
        _log_cycle(
            logger, {"al/test_acc": test_acc, "al/num_labeled": len(labeled), "al/cycle": cycle}
        )
        log.info(
            "cycle %d/%d | labeled %d | test acc %.4f | train %.1fs | query %s",
            cycle + 1,
            cfg.al.cycles,
            len(labeled),
            test_acc,
            train_seconds,
            f"{row['query_seconds']:.1f}s" if row["query_seconds"] != "" else "-",
        )
        if stop_reason:
            log.warning(stop_reason)
            break

    summary["status"] = "finished"
    records.write_summary(summary)
    if logger is not None:
        logger.finalize("success")
        # Lightning leaves W&B runs open until interpreter exit; close it so the run's files
        # (summary included) are complete when `run` returns, e.g. between sweep jobs.
        finish = getattr(getattr(logger, "experiment", None), "finish", None)
        if callable(finish):
            finish()
    log.info("results in %s\n%s", run_dir, _format_table(records.results))
    return records.results


def query(
    cfg: DictConfig,
    strategy: Strategy,
    system: ActiveLearningSystem,
    datamodule: ImageClassificationData,
    pool: LabelPool,
    cycle: int,
    device: torch.device,
) -> torch.Tensor:
    """Draws the cycle's pool subset, scores it and returns `[budget]` dataset indices to label."""
    seed = int(cfg.seed)
    unlabeled = pool.unlabeled_indices
    order = torch.randperm(len(unlabeled), generator=make_generator(seed, cycle, "pool_subset"))
    subset = unlabeled[order[: cfg.al.pool_subset]]
    outputs = pool_pass(system, datamodule, subset, strategy.needs, device)
    positions = strategy.select(outputs, cfg.al.budget, make_generator(seed, cycle, "select"))
    return subset[positions.cpu()]
