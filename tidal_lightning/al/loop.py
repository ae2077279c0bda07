"""The active-learning orchestrator: a fresh model and a fresh Trainer every cycle."""

from __future__ import annotations

import logging
import math
import secrets
import shlex
import time
from pathlib import Path
from typing import Any, cast

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from tidal_lightning import distributed
from tidal_lightning.al.cycle_logger import CycleStepLogger
from tidal_lightning.al.oracle import (
    FileOracle,
    LabelRequest,
    Oracle,
    SimulatedOracle,
    query_scores,
)
from tidal_lightning.al.pool import LabelPool
from tidal_lightning.al.records import RunRecords, git_commit, package_versions
from tidal_lightning.al.scoring import (
    imbalance_ratio,
    model_pass,
    pool_pass,
    query_diagnostics,
    td_agreement,
)
from tidal_lightning.al.state import RunState, restore_rng
from tidal_lightning.callbacks.pool_dynamics import PoolDynamicsRecorder
from tidal_lightning.callbacks.training_dynamics import TrainingDynamicsTracker
from tidal_lightning.checkpoints import checkpoint_path, make_checkpoint, save_checkpoint
from tidal_lightning.config_checks import is_multirun, validate_config, validate_pool_sizes
from tidal_lightning.data.datamodules import ImageClassificationData
from tidal_lightning.data.longtail import long_tail_indices
from tidal_lightning.errors import ConfigError
from tidal_lightning.models.system import ActiveLearningSystem
from tidal_lightning.seeding import derive_seed, make_generator
from tidal_lightning.strategies.base import PoolOutputs, QueryContext, Strategy, build_strategy

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
    "td_pool_margin_spearman",
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
            datamodule.gather(pool_subset, "cpu"),
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
        # blank without a test split (an image folder without dataset.test_csv)
        test_acc = f"{r['test_acc']:>9.4f}" if r["test_acc"] != "" else f"{'-':>9}"
        lines.append(
            f"{r['cycle']:>5} {r['num_labeled']:>8} {test_acc} {r['train_seconds']:>8.1f} {query}"
        )
    return "\n".join(lines)


def _initial_summary(
    cfg: DictConfig,
    datamodule: ImageClassificationData,
    strategy: Strategy,
    oracle: Oracle,
    pool_indices: torch.Tensor,
) -> dict[str, Any]:
    """run_summary.json before the first cycle; the loop updates progress and accuracy."""
    pool_targets = datamodule.train_targets[pool_indices]
    # counts of the labels known at the start (all of them, unless a person labels as it goes)
    known = pool_targets[pool_targets >= 0]
    return {
        "status": "running",
        "dataset": datamodule.dataset_name,
        "num_classes": datamodule.num_classes,
        "classes": datamodule.classes,
        "imbalance_ratio": datamodule.imbalance_ratio,
        "train_split_size": len(datamodule.train_targets),
        "train_pool_class_counts": torch.bincount(known, minlength=datamodule.num_classes).tolist(),
        "train_pool_unlabeled": len(pool_targets) - len(known),
        "test_size": len(datamodule.test_targets),
        "strategy": type(strategy).__name__,
        # the strategy's file (and yaml) name, e.g. `tidal_margin`: what sweeps and reports use
        "strategy_name": type(strategy).__module__.rsplit(".", 1)[-1],
        "oracle": type(oracle).__name__,
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
    num_classes: int,
    test_acc: float | None,
    per_class: torch.Tensor | None,
    train_seconds: float,
    recorder: PoolDynamicsRecorder | None,
) -> dict[str, Any]:
    """One results.csv row; the query columns stay blank until (unless) a query runs.

    Without a test split `test_acc` and `per_class` are None and their columns blank.
    """
    counts = torch.bincount(targets[labeled], minlength=num_classes)
    accuracies = per_class.tolist() if per_class is not None else [None] * num_classes
    row: dict[str, Any] = {
        "cycle": cycle,
        "num_labeled": len(labeled),
        "test_acc": round(test_acc, 6) if test_acc is not None else "",
        **{
            f"acc_class_{c}": round(a, 6) if a is not None else "" for c, a in enumerate(accuracies)
        },
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

    With `oracle=file` the run stops (returning the rows so far) whenever samples need a
    person's labels; the next run imports them, validated as a whole before anything is
    written, and goes on.
    """
    validate_config(cfg)
    if not distributed.is_main_process():
        # a DDP child re-runs the whole loop; rank 0 reports it
        log.setLevel(logging.WARNING)
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
    strategy: Strategy = build_strategy(cfg.strategy)
    # a config composed without the oracle group (older code paths) means the simulated one
    oracle: Oracle = instantiate(cfg.oracle) if cfg.get("oracle") else SimulatedOracle()
    problems = [
        *strategy.check_config(cfg),
        *oracle.check(datamodule),
        *_unknown_label_problems(cfg, datamodule, oracle, fresh=state is None),
    ]
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
    if state is None and oracle.draws_initial(datamodule):
        validate_pool_sizes(cfg, len(pool_indices))

    imported = None
    if state is not None:
        for indices, labels in zip(state.label_rounds, state.round_labels, strict=False):
            targets[indices] = labels  # what the oracle said, even if the CSVs changed since
        if state.pending is not None:
            assert isinstance(oracle, FileOracle)  # the config check keeps the oracle
            request = _pending_request(state, datamodule)
            source = oracle.labels_path(run_dir, request.round)
            if oracle.labels is None and not source.exists():
                # the stop was killed before its files were written: write them now
                return _stop_for_labels(run_dir, oracle, request, datamodule, state, None)
            # Validated as a whole, before anything is written: a bad file changes nothing.
            imported = (request, oracle.collect(run_dir, request, datamodule.classes))

    run_dir.mkdir(parents=True, exist_ok=True)
    records = RunRecords(run_dir, num_classes)
    if state is None:
        initial = oracle.initial_set(
            datamodule,
            pool_indices,
            cfg.al.initial,
            cfg.al.initial_mode,
            make_generator(seed, 0, "initial"),
        )
        state = RunState(
            config=config,
            label_rounds=[initial],
            summary=_initial_summary(cfg, datamodule, strategy, oracle, pool_indices),
            # W&B run ids only need to be unique, not reproducible: no seeded stream.
            logger_id=secrets.token_hex(4),
        )
        if bool((targets[initial] < 0).any()):
            assert isinstance(oracle, FileOracle)  # a simulated oracle needs every label
            # Cold start: nobody has labeled anything yet, so the initial set goes first.
            request = LabelRequest(
                round=0,
                indices=initial,
                paths=_paths(datamodule, initial),
                predicted=torch.full((len(initial),), -1, dtype=torch.long),
                scores=torch.full((len(initial),), math.nan, dtype=torch.float64),
                score_kind="none",
            )
            state.pending = request.to_state()
            state.status = state.summary["status"] = "awaiting_labels"
            state.save(run_dir)
            records.write(state.results, state.label_rounds, targets, state.summary)
            return _stop_for_labels(run_dir, oracle, request, datamodule, state, None)
        state.round_labels.append(targets[initial].clone())
        state.save(run_dir)
    else:
        log.info(
            "resuming %s after %d of %d cycles", run_dir, state.cycles_completed, cfg.al.cycles
        )
        restore_rng(state.rng)
        if imported is not None:
            request, labels = imported
            _accept_labels(state, request, labels, targets, num_classes)
            log.info(
                "imported %d labels for cycle %d from %s",
                len(labels),
                request.round,
                cast("FileOracle", oracle).labels_path(run_dir, request.round),
            )
            state.save(run_dir)
    pool = LabelPool(len(targets), pool_indices)
    for labeled_round in state.label_rounds:
        pool.label(labeled_round)
    records.write(state.results, state.label_rounds, targets, state.summary)
    has_test = len(datamodule.test_targets) > 0
    if not has_test:
        log.warning(
            "no test split (an image folder without dataset.test_csv): no test runs, and "
            "test_acc and acc_class_* stay blank in results.csv"
        )

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
        test_acc = per_class = None
        if has_test:
            trainer.test(system, datamodule=datamodule, verbose=False)
            test_acc = float(trainer.callback_metrics["test/acc"])
            per_class = system.per_class_accuracy
            assert per_class is not None
        if logger is not None:
            logger.end_cycle(trainer.global_step)
            state.logger_step = logger.offset

        labeled = pool.labeled_indices
        # Before the state commits the cycle: a kill in between re-runs the cycle, which
        # writes the same checkpoint again.
        _save_cycle_checkpoint(cfg, run_dir, system, datamodule, cycle, len(labeled))
        row = _result_row(
            cycle, labeled, targets, num_classes, test_acc, per_class, train_seconds, recorder
        )
        stop_reason = None
        pending: LabelRequest | None = None
        if subset is not None:
            device = trainer.strategy.root_device
            queried, diagnostics, outputs, positions = query(
                cfg, strategy, system, datamodule, pool, subset, recorder, cycle, device
            )
            row.update(diagnostics)
            pool.label(queried)
            state.label_rounds.append(queried)
            if oracle.reveals_labels:
                labels = targets[queried].clone()
                row.update(query_diagnostics(labels, num_classes))
                state.round_labels.append(labels)
            else:
                pending = _label_request(
                    cycle + 1, queried, strategy, outputs, positions, system, datamodule, device
                )
                state.pending = pending.to_state()
                state.status = state.summary["status"] = "awaiting_labels"
        elif cycle + 1 < cfg.al.cycles:
            stop_reason = (
                f"the pool ran out: {pool.num_unlabeled} unlabeled samples left, fewer than "
                f"al.budget={cfg.al.budget}; stopping after {cycle + 1} of {cfg.al.cycles} cycles"
            )
        # The cycle is committed by replacing state.pt; the readable files follow from it.
        state.results.append(row)
        state.cycles_completed = cycle + 1
        state.summary.update(
            cycles_completed=cycle + 1, final_test_acc=row["test_acc"] if has_test else None
        )
        if cfg.al.warm_start:
            state.warm_start = {k: v.detach().cpu().clone() for k, v in system.state_dict().items()}
        state.save(run_dir)
        records.write(state.results, state.label_rounds, targets, state.summary)
        _log_cycle(logger, row)
        if logger is not None and subset is not None and pending is None:
            histogram = [row[f"queried_class_{c}"] for c in range(num_classes)]
            logger.log_class_histogram("al/queried_class_histogram", histogram)
        log.info(
            "cycle %d/%d | labeled %d | test acc %s | train %.1fs | query %s",
            cycle + 1,
            cfg.al.cycles,
            len(labeled),
            f"{test_acc:.4f}" if test_acc is not None else "-",
            train_seconds,
            f"{row['query_seconds']:.1f}s" if row["query_seconds"] != "" else "-",
        )
        if pending is not None:
            assert isinstance(oracle, FileOracle)
            return _stop_for_labels(run_dir, oracle, pending, datamodule, state, logger)
        if stop_reason:
            log.warning(stop_reason)
            break

    state.status = state.summary["status"] = "finished"
    state.save(run_dir)
    records.write(state.results, state.label_rounds, targets, state.summary)
    if logger is not None:
        logger.log_learning_curve(state.results)
    _close_logger(logger)
    log.info("results in %s\n%s", run_dir, _format_table(state.results))
    return state.results


def _close_logger(logger: CycleStepLogger | None) -> None:
    if logger is None:
        return
    logger.finalize("success")
    # Lightning leaves W&B runs open until interpreter exit; close it so the run's files
    # (summary included) are complete when `run` returns, e.g. between sweep jobs.
    finish = getattr(logger.experiment, "finish", None)
    if callable(finish):
        finish()


def _unknown_label_problems(
    cfg: DictConfig, datamodule: ImageClassificationData, oracle: Oracle, fresh: bool
) -> list[str]:
    """Settings that need every training label, while some are not known yet."""
    unknown = int((datamodule.train_targets < 0).sum())
    if not unknown:
        return []
    problems = []
    if float(datamodule.imbalance_ratio) != 1:
        problems.append(
            f"dataset.imbalance_ratio={datamodule.imbalance_ratio}: long-tail subsampling needs "
            f"every training label, and {unknown} are unknown; use dataset.imbalance_ratio=1"
        )
    if fresh and oracle.draws_initial(datamodule) and cfg.al.initial_mode != "random":
        problems.append(
            f"al.initial_mode={cfg.al.initial_mode}: a class-balanced initial set needs the "
            "labels it balances, and none are known; use al.initial_mode=random or give "
            "dataset.labels_csv"
        )
    return problems


def _paths(datamodule: ImageClassificationData, indices: torch.Tensor) -> list[str]:
    paths: list[str] = datamodule.train_paths  # type: ignore[attr-defined]
    return [paths[i] for i in indices.tolist()]


def _pending_request(state: RunState, datamodule: ImageClassificationData) -> LabelRequest:
    assert state.pending is not None
    indices = state.label_rounds[-1]
    return LabelRequest.from_state(state.pending, indices, _paths(datamodule, indices))


def _accept_labels(
    state: RunState,
    request: LabelRequest,
    labels: torch.Tensor,
    targets: torch.Tensor,
    num_classes: int,
) -> None:
    """Records validated `labels` (`[B]`) for the pending request in the state and the targets."""
    targets[request.indices] = labels
    state.round_labels.append(labels.clone())
    state.pending = None
    state.status = state.summary["status"] = "running"
    if request.round > 0:  # the query after cycle `round - 1`: its class histogram
        state.results[request.round - 1].update(query_diagnostics(labels, num_classes))


def _label_request(
    round_: int,
    queried: torch.Tensor,
    strategy: Strategy,
    outputs: PoolOutputs,
    positions: torch.Tensor,
    system: ActiveLearningSystem,
    datamodule: ImageClassificationData,
    device: torch.device,
) -> LabelRequest:
    """What the person is shown for the `[B]` queried samples: the model's guess and the score.

    Only inference after the query: no random stream is drawn, so the run goes on exactly
    as with a simulated oracle.
    """
    if "probs" in outputs.outputs:
        probs = outputs["probs"][positions.to(outputs["probs"].device)]
    else:
        probs = model_pass(system, datamodule, queried, frozenset({"probs"}), device)["probs"]
    scores, kind = query_scores(strategy, outputs, positions)
    return LabelRequest(
        round=round_,
        indices=queried,
        paths=_paths(datamodule, queried),
        predicted=probs.argmax(dim=1).cpu(),
        scores=scores,
        score_kind=kind,
    )


def _stop_for_labels(
    run_dir: Path,
    oracle: FileOracle,
    request: LabelRequest,
    datamodule: ImageClassificationData,
    state: RunState,
    logger: CycleStepLogger | None,
) -> list[dict[str, Any]]:
    """Writes the to_label files (the state is committed already) and says how to go on."""
    oracle.export(run_dir, request, datamodule)
    _close_logger(logger)
    to_label = run_dir / "to_label"
    same, other = _continue_commands(run_dir)
    log.warning(
        "cycle %d (as results.csv and queries.csv count; the next training) needs labels: "
        "%d images wait in %s\n"
        "  Fill its `label` column with one of: %s\n"
        "  (or label %s in Label Studio with the labeling config %s, serving the images with "
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=%s, "
        "and export the project as JSON).\n"
        "Then continue with the same command:\n  %s\n"
        "or, to import another file (e.g. the Label Studio export):\n  %s",
        request.round,
        len(request.indices),
        oracle.csv_path(run_dir, request.round),
        ", ".join(datamodule.classes),
        oracle.tasks_path(run_dir, request.round),
        to_label / "label_studio_config.xml",
        oracle.document_root or Path(datamodule.root).resolve(),
        same,
        other,
    )
    if state.results:
        log.info("results so far in %s\n%s", run_dir, _format_table(state.results))
    return state.results


def _continue_commands(run_dir: Path) -> tuple[str, str]:
    """The command that continues the run, and the same reading `oracle.labels=<file>`.

    The second pins `hydra.run.dir`: run folders are named from the overrides, so an added
    override would otherwise start a new run elsewhere.
    """
    overrides: list[str] | None = None
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            overrides = list(HydraConfig.get().overrides.task)
    except (ImportError, ValueError):
        overrides = None
    multirun = is_multirun()
    command = "python -m tidal_lightning"
    kept = [o for o in overrides or [] if not o.startswith(("oracle.labels=", "hydra.run.dir="))]
    pinned = [*kept, f"hydra.run.dir={run_dir.resolve()}"]
    other = " ".join(
        [command, *map(shlex.quote, [*kept, "oracle.labels=<file>"]), shlex.quote(pinned[-1])]
    )
    if overrides is None:
        same = f"{command} <the overrides you ran with>"
    elif multirun:
        same = " ".join([command, *map(shlex.quote, pinned)])
    else:
        same = " ".join([command, *map(shlex.quote, overrides)])
    return same, other


def _save_cycle_checkpoint(
    cfg: DictConfig,
    run_dir: Path,
    system: ActiveLearningSystem,
    datamodule: ImageClassificationData,
    cycle: int,
    num_labeled: int,
) -> None:
    """`checkpoints/cycle_<k>.pt` as `al.checkpoints` says (all | last | none); rank 0 only."""
    keep = cfg.al.get("checkpoints", "all")
    if keep == "none" or not distributed.is_main_process():
        return
    checkpoint = make_checkpoint(
        system,
        cast("dict[str, Any]", OmegaConf.to_container(cfg.model.backbone, resolve=True)),
        datamodule.classes,
        datamodule.image_shape,
        tuple(datamodule.mean),
        tuple(datamodule.std),
        cycle,
        num_labeled,
    )
    save_checkpoint(checkpoint, checkpoint_path(run_dir, cycle))
    if keep == "last":
        for earlier in range(cycle):
            checkpoint_path(run_dir, earlier).unlink(missing_ok=True)


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
) -> tuple[torch.Tensor, dict[str, Any], PoolOutputs, torch.Tensor]:
    """Scores `subset` (`[N]` dataset indices) and picks the samples to label.

    Returns:
        `[budget]` dataset indices to label, the query's diagnostics (result columns; the
        queried class histogram follows once the labels are known), the pool outputs the
        strategy read, and `[budget]` positions of the picks in `subset`.
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
        context=QueryContext(
            system=system,
            datamodule=datamodule,
            device=device,
            seed=seed,
            cycle=cycle,
            labeled_indices=pool.labeled_indices,
            pool_indices=subset,
        ),
    )
    if recorder is not None:
        outputs.outputs.update(recorder.outputs())
    positions = strategy.select(
        outputs, cfg.al.budget, make_generator(seed, cycle, "select", device)
    )
    if distributed.is_distributed():
        # Every rank selected from the same gathered outputs; rank 0's picks are the run's,
        # so float differences between devices cannot split the ranks' labeled sets.
        positions = distributed.broadcast_(positions.to(device).contiguous())
    queried = subset[positions.cpu()]
    diagnostics: dict[str, Any] = {"query_seconds": round(time.perf_counter() - started, 3)}
    if device.type == "cuda":
        diagnostics["query_peak_mem_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    if "td_probs" in outputs.outputs and "pool_td" in outputs.outputs:
        agreement = td_agreement(outputs["td_probs"], outputs["pool_td"])
        diagnostics.update({k: round(v, 6) for k, v in agreement.items()})
    return queried, diagnostics, outputs, positions
