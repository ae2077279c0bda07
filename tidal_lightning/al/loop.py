"""The active-learning orchestrator: a fresh model and a fresh Trainer every cycle."""

from __future__ import annotations

import logging
import math
import secrets
import time
from pathlib import Path
from typing import Any, cast

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from tidal_lightning.al.cycle_logger import CycleStepLogger
from tidal_lightning.al.pool import LabelPool, draw_initial
from tidal_lightning.al.records import RunRecords, git_commit, package_versions
from tidal_lightning.al.scoring import (
    imbalance_ratio,
    pool_pass,
    query_diagnostics,
    td_agreement,
)
from tidal_lightning.al.state import RunState, restore_rng
from tidal_lightning.callbacks.pool_dynamics import PoolDynamicsRecorder
from tidal_lightning.callbacks.training_dynamics import TrainingDynamicsTracker
from tidal_lightning.config_checks import validate_config, validate_pool_sizes
from tidal_lightning.data.datamodules import ImageClassificationData
from tidal_lightning.data.longtail import long_tail_indices
from tidal_lightning.errors import ConfigError
from tidal_lightning.models.system import ActiveLearningSystem
from tidal_lightning.seeding import derive_seed, make_generator
from tidal_lightning.strategies.base import Strategy

log = logging.getLogger(__name__)


# results.csv columns a query fills in; blank in a cycle without one
QUERY_COLUMNS = (
    "query_seconds",
    "query_peak_mem_mb",
    "query_distinct_classes",
    "record_seconds",
    "record_overhead",
    "td_pool_kl",
    "td_pool_spearman",
)


def build_system(
    cfg: DictConfig,
    datamodule: ImageClassificationData,
    strategy: Strategy,
    pool_subset: torch.Tensor | None = None,
) -> tuple[ActiveLearningSystem, list[pl.Callback], PoolDynamicsRecorder | None]:
    """A freshly initialised system for one cycle, the callbacks it depends on, and the recorder.

    The TD module (and the tracker that feeds it) is built only for strategies that read
    its output, other heads only when the strategy asks for them (`system_options`), and
    the per-epoch pool recorder only when the strategy reads what it records and a query
    follows (`pool_subset` given), so baselines train exactly the plain classifier.

    Args:
        pool_subset: `[N]` dataset indices the cycle's query will score, or None.
    """
    num_classes = datamodule.num_classes
    backbone = instantiate(
        cfg.model.backbone, num_classes=num_classes, in_channels=datamodule.in_channels
    )
    callbacks: list[pl.Callback] = []
    td_module = tracker = None
    if strategy.requires_td_module:
        td_module = instantiate(
            cfg.model.td_module, stage_channels=backbone.stage_channels, num_classes=num_classes
        )
        tracker = TrainingDynamicsTracker(len(datamodule.train_targets), num_classes)
        callbacks.append(tracker)
    recorder = None
    if strategy.requires_recorder and pool_subset is not None:
        recorder = PoolDynamicsRecorder(
            datamodule.train_images[pool_subset],
            datamodule.normalize,
            num_classes,
            batch_size=datamodule.eval_batch_size,
            every_n_epochs=strategy.record_every,
            record_probs="pool_td" in strategy.needs,
        )
        callbacks.append(recorder)
    scheduler = instantiate(cfg.model.scheduler) if cfg.model.get("scheduler") else None
    system = ActiveLearningSystem(
        backbone,
        num_classes,
        optimizer=instantiate(cfg.model.optimizer),
        scheduler=scheduler,
        td_module=td_module,
        td_tracker=tracker,
        td_weight=float(cfg.model.td_weight),
        **strategy.system_options(backbone.stage_channels, int(cfg.trainer.max_epochs)),
    )
    return system, callbacks, recorder


def _plot_al_metrics_against_labels(logger: Any) -> None:
    """Makes W&B chart `al/*` against `al/num_labeled` (Lightning's loggers otherwise use steps)."""
    define_metric = getattr(getattr(logger, "experiment", None), "define_metric", None)
    if callable(define_metric):
        define_metric("al/num_labeled")
        define_metric("al/*", step_metric="al/num_labeled")


def _log_cycle(logger: Any, row: dict[str, Any]) -> None:
    """Logs the row's numeric per-cycle values as `al/<column>`; blanks and inf are skipped."""
    if logger is None:
        return
    metrics = {
        f"al/{name}": float(value)
        for name, value in row.items()
        if name != "cycle" and isinstance(value, int | float) and math.isfinite(value)
    }
    logger.log_metrics({**metrics, "al/cycle": row["cycle"]})


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
        # the strategy's file (and yaml) name, e.g. `tidal_margin`: what sweeps and reports use
        "strategy_name": type(strategy).__module__.rsplit(".", 1)[-1],
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
    recorder: PoolDynamicsRecorder | None,
) -> dict[str, Any]:
    """One results.csv row; the query columns stay blank until (unless) a query runs."""
    num_classes = len(per_class)
    counts = torch.bincount(targets[labeled], minlength=num_classes)
    row: dict[str, Any] = {
        "cycle": cycle,
        "num_labeled": len(labeled),
        "test_acc": round(test_acc, 6),
        **{f"acc_class_{c}": round(a, 6) for c, a in enumerate(per_class.tolist())},
        "train_seconds": round(train_seconds, 3),
        "labeled_imbalance_ratio": round(imbalance_ratio(counts), 4),
        **{f"labeled_class_{c}": int(n) for c, n in enumerate(counts.tolist())},
        **dict.fromkeys(QUERY_COLUMNS, ""),
        **{f"queried_class_{c}": "" for c in range(num_classes)},
    }
    if recorder is not None:
        # The recorder runs inside fit, so train_seconds includes it; its overhead is
        # relative to the training it was added to.
        row["record_seconds"] = round(recorder.seconds, 3)
        row["record_overhead"] = round(recorder.seconds / (train_seconds - recorder.seconds), 4)
    return row


def run(cfg: DictConfig) -> list[dict[str, Any]]:
    """Runs `cfg.al.cycles` AL cycles and returns the per-cycle result rows.

    Every check that can fail on user input runs before the first training, and
    before anything is written to the run folder. A folder with a `state.pt` is resumed
    after its last completed cycle (same config required); a finished one is left as is.
    """
    validate_config(cfg)
    run_dir = Path(cfg.paths.output_dir)
    config = cast("dict[str, Any]", OmegaConf.to_container(cfg, resolve=True))
    state = RunState.load(run_dir)
    if state is None:
        RunRecords.check_fresh(run_dir)
    else:
        state.check_same_config(config, run_dir)
        if state.status == "finished":
            log.info(
                "%s holds a finished run (%d cycles): nothing to do\n%s",
                run_dir,
                state.cycles_completed,
                _format_table(state.results),
            )
            return state.results
    seed = int(cfg.seed)

    datamodule: ImageClassificationData = instantiate(cfg.dataset)
    datamodule.load()
    strategy: Strategy = instantiate(cfg.strategy)
    problems = strategy.check_config(cfg)
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
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
    if state is None:
        initial = draw_initial(
            targets,
            pool_indices,
            cfg.al.initial,
            num_classes,
            cfg.al.initial_mode,
            make_generator(seed, 0, "initial"),
        )
        state = RunState(
            config=config,
            label_rounds=[initial],
            summary=_initial_summary(cfg, datamodule, strategy, pool_indices),
            # W&B run ids only need to be unique, not reproducible: no seeded stream.
            logger_id=secrets.token_hex(4),
        )
        state.save(run_dir)
    else:
        log.info(
            "resuming %s after %d of %d cycles", run_dir, state.cycles_completed, cfg.al.cycles
        )
        restore_rng(state.rng)
    pool = LabelPool(len(targets), pool_indices)
    for labeled_round in state.label_rounds:
        pool.label(labeled_round)
    records.write(state.results, state.label_rounds, targets, state.summary)

    logger = _make_logger(cfg, state)
    for cycle in range(state.cycles_completed, cfg.al.cycles):
        pl.seed_everything(derive_seed(seed, cycle, "model"), workers=True, verbose=False)
        will_query = cycle + 1 < cfg.al.cycles and pool.num_unlabeled >= cfg.al.budget
        # Drawn before training: the per-epoch recorder (dispersion, TD oracles) must know
        # which samples the query will score.
        subset = draw_pool_subset(pool, cfg, cycle) if will_query else None
        system, callbacks, recorder = build_system(cfg, datamodule, strategy, subset)
        if cfg.al.warm_start and state.warm_start is not None:
            system.load_state_dict(state.warm_start)
        datamodule.start_cycle(pool.labeled_indices, seed, cycle)
        if logger is not None:
            logger.start_cycle(cycle)
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
        if logger is not None:
            logger.end_cycle(trainer.global_step)
            state.logger_step = logger.offset

        labeled = pool.labeled_indices
        row = _result_row(cycle, labeled, targets, test_acc, per_class, train_seconds, recorder)
        stop_reason = None
        if subset is not None:
            queried, diagnostics = query(
                cfg,
                strategy,
                system,
                datamodule,
                pool,
                subset,
                recorder,
                cycle,
                trainer.strategy.root_device,
            )
            row.update(diagnostics)
            pool.label(queried)
            state.label_rounds.append(queried)
        elif cycle + 1 < cfg.al.cycles:
            stop_reason = (
                f"the pool ran out: {pool.num_unlabeled} unlabeled samples left, fewer than "
                f"al.budget={cfg.al.budget}; stopping after {cycle + 1} of {cfg.al.cycles} cycles"
            )
        # The cycle is committed by replacing state.pt; the readable files follow from it.
        state.results.append(row)
        state.cycles_completed = cycle + 1
        state.summary.update(cycles_completed=cycle + 1, final_test_acc=row["test_acc"])
        if cfg.al.warm_start:
            state.warm_start = {k: v.detach().cpu().clone() for k, v in system.state_dict().items()}
        state.save(run_dir)
        records.write(state.results, state.label_rounds, targets, state.summary)
        _log_cycle(logger, row)
        if logger is not None and subset is not None:
            histogram = [row[f"queried_class_{c}"] for c in range(num_classes)]
            logger.log_class_histogram("al/queried_class_histogram", histogram)
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

    state.status = state.summary["status"] = "finished"
    state.save(run_dir)
    records.write(state.results, state.label_rounds, targets, state.summary)
    if logger is not None:
        logger.log_learning_curve(state.results)
        logger.finalize("success")
        # Lightning leaves W&B runs open until interpreter exit; close it so the run's files
        # (summary included) are complete when `run` returns, e.g. between sweep jobs.
        finish = getattr(logger.experiment, "finish", None)
        if callable(finish):
            finish()
    log.info("results in %s\n%s", run_dir, _format_table(state.results))
    return state.results


def _make_logger(cfg: DictConfig, state: RunState) -> CycleStepLogger | None:
    """The configured logger wrapped so steps keep increasing across cycles, or None.

    Keys the logger config leaves null are filled in from the run: for W&B the run `id`
    (kept in the state, so a resumed run logs into the same W&B run rather than a new
    one), a `name` and `tags` from strategy, dataset, imbalance ratio and seed.
    """
    if not cfg.get("logger"):
        return None
    summary = state.summary
    filled = {
        "id": state.logger_id,
        "name": f"{summary['strategy_name']}-{summary['dataset']}"
        f"-ir{summary['imbalance_ratio']:g}-seed{summary['seed']}",
        "tags": [
            str(summary["dataset"]),
            f"imbalance_ratio={summary['imbalance_ratio']:g}",
            str(summary["strategy_name"]),
            f"seed={summary['seed']}",
        ],
    }
    extra = {k: v for k, v in filled.items() if k in cfg.logger and cfg.logger[k] is None}
    logger = CycleStepLogger(instantiate(cfg.logger, **extra), offset=state.logger_step)
    logger.log_hyperparams(state.config)
    _plot_al_metrics_against_labels(logger)
    return logger


def draw_pool_subset(pool: LabelPool, cfg: DictConfig, cycle: int) -> torch.Tensor:
    """`[min(U, al.pool_subset)]` dataset indices of unlabeled samples the cycle's query scores."""
    unlabeled = pool.unlabeled_indices
    generator = make_generator(int(cfg.seed), cycle, "pool_subset")
    order = torch.randperm(len(unlabeled), generator=generator)
    return unlabeled[order[: cfg.al.pool_subset]]


def query(
    cfg: DictConfig,
    strategy: Strategy,
    system: ActiveLearningSystem,
    datamodule: ImageClassificationData,
    pool: LabelPool,
    subset: torch.Tensor,
    recorder: PoolDynamicsRecorder | None,
    cycle: int,
    device: torch.device,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Scores `subset` (`[N]` dataset indices) and picks the samples to label.

    Returns:
        `[budget]` dataset indices to label, and the query's diagnostics (result columns).
    """
    seed = int(cfg.seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    outputs = pool_pass(
        system,
        datamodule,
        subset,
        pool.labeled_indices,
        strategy.needs,
        device,
        mc_samples=strategy.mc_samples,
        generator=make_generator(seed, cycle, "mc_dropout", device),
    )
    if recorder is not None:
        outputs.outputs.update(recorder.outputs())
    positions = strategy.select(
        outputs, cfg.al.budget, make_generator(seed, cycle, "select", device)
    )
    queried = subset[positions.cpu()]
    diagnostics: dict[str, Any] = {"query_seconds": round(time.perf_counter() - started, 3)}
    if device.type == "cuda":
        diagnostics["query_peak_mem_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    if "td_probs" in outputs.outputs and "pool_td" in outputs.outputs:
        agreement = td_agreement(outputs["td_probs"], outputs["pool_td"])
        diagnostics.update({k: round(v, 6) for k, v in agreement.items()})
    diagnostics.update(query_diagnostics(datamodule.train_targets[queried], datamodule.num_classes))
    return queried, diagnostics
