"""The active-learning orchestrator: a fresh Trainer every cycle, in named steps.

`run` reads as the algorithm; each step is a function the analyses and the bench can call
too. Labeling by a person (the file oracle) lives in `al/labeling.py`, the run folder's
files in `al/records.py`, `al/state.py` and `al/run_folder.py`.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from tidal_lightning import distributed, preflight
from tidal_lightning.al import labeling, run_folder
from tidal_lightning.al.cycle_logger import (
    CycleStepLogger,
    close_logger,
    log_cycle,
    make_logger,
    upper_bound_steps,
)
from tidal_lightning.al.oracle import FileOracle, LabelRequest, Oracle, SimulatedOracle
from tidal_lightning.al.pool import LabelPool
from tidal_lightning.al.records import (
    RunRecords,
    format_table,
    initial_summary,
    result_row,
)
from tidal_lightning.al.scoring import pool_pass, query_diagnostics, td_agreement
from tidal_lightning.al.state import RunState, check_run_folder, restore_rng
from tidal_lightning.callbacks.epoch_line import EpochLine
from tidal_lightning.callbacks.pool_dynamics import IndexedImages, PoolDynamicsRecorder
from tidal_lightning.callbacks.training_dynamics import TrainingDynamicsTracker
from tidal_lightning.checkpoints import checkpoint_path, make_checkpoint, save_checkpoint
from tidal_lightning.config_checks import validate_config, validate_pool_sizes
from tidal_lightning.data.cache import StaleCacheError
from tidal_lightning.data.datamodules import ImageClassificationData
from tidal_lightning.data.longtail import long_tail_indices
from tidal_lightning.errors import ConfigError, TidalError
from tidal_lightning.features.cold_start import FEATURE_INITIAL_MODES, ColdStartFeatures
from tidal_lightning.models.system import ActiveLearningSystem
from tidal_lightning.seeding import derive_seed, make_generator
from tidal_lightning.strategies.base import PoolOutputs, QueryContext, Strategy, build_strategy

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> list[dict[str, Any]]:
    """Runs `cfg.al.cycles` AL cycles and returns the per-cycle result rows.

    1. **Open** the run: check the config, the data, the strategy and the run folder; a
       folder with a `state.pt` is resumed after its last completed cycle (same config
       required), a finished one is left as it is. Nothing is written before every check
       has passed.
    2. **Label the initial set**, or import the labels a person gave since the last stop.
    Then, until `stop_reason` says the run is done, one cycle:
    3. **Plan**: seed the cycle, draw the pool subset its query will score.
    4. **Train** a fresh Trainer on the labeled set.
    5. **Evaluate** on the test split; keep the cycle's checkpoint.
    6. **Query** the pool subset and **label** the picks (a person's labels: hand over, stop).
    7. **Commit**: replace `state.pt`, then rewrite the records derived from it.
    8. **Finish**: mark the run finished and print the table.
    """
    opened = open_run(cfg)
    if not isinstance(opened, Run):
        return opened  # a finished run's rows
    status, reason = "failed", None
    try:
        handover = label_initial_set(opened)
        while handover is None and (reason := stop_reason(opened)) is None:
            plan = plan_cycle(opened)
            trained = train_cycle(opened, plan)
            row = evaluate(opened, plan, trained)
            handover = query_and_label(opened, plan, trained, row)
            commit(opened, trained, row)
        if handover is not None:
            hand_over(opened, handover)
        else:
            finish(opened, reason)
        status = "success"
        return opened.state.results
    finally:
        opened.close(status)


# ---------------------------------------------------------------------------- the run
@dataclass
class Run:
    """An opened run: everything the steps share."""

    cfg: DictConfig
    run_dir: Path
    state: RunState
    datamodule: ImageClassificationData
    strategy: Strategy
    oracle: Oracle
    pool_indices: torch.Tensor
    pool: LabelPool
    records: RunRecords
    fresh: bool
    # labels a person gave since the last stop, validated, not yet accepted
    imported: tuple[LabelRequest, torch.Tensor | None] | None = None
    logger: CycleStepLogger | None = None
    log_file: logging.Handler | None = None
    stopped_early: str | None = None

    @property
    def seed(self) -> int:
        return int(self.cfg.seed)

    @property
    def targets(self) -> torch.Tensor:
        """`[N]` the training labels as the run knows them (-1: not given yet)."""
        return self.datamodule.train_targets

    @property
    def has_test(self) -> bool:
        return len(self.datamodule.test_targets) > 0

    def write_records(self) -> None:
        self.records.write(
            self.state.results,
            self.state.label_rounds,
            self.targets,
            self.state.summary,
            labeling.train_paths(self.datamodule),
        )

    def close(self, status: str) -> None:
        """Cleanup on every exit: the logger is finalised, the log file detached."""
        close_logger(self.logger, status)
        self.logger = None
        run_folder.detach_log_file(self.log_file)
        self.log_file = None


@dataclass
class CyclePlan:
    """Step 3's decisions: which cycle, and which pool samples its query scores (or None)."""

    cycle: int
    subset: torch.Tensor | None


@dataclass
class Trained:
    """Step 4's result: the trained system, its Trainer and the per-epoch recorder."""

    system: ActiveLearningSystem
    trainer: pl.Trainer
    recorder: PoolDynamicsRecorder | None
    seconds: float
    extras: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------ 1. open
def open_run(cfg: DictConfig) -> Run | list[dict[str, Any]]:
    """Step 1: every check that can fail on user input, then the run folder is written.

    Returns the opened run, or the rows of a run that is finished already. Refusals raise a
    `TidalError` with nothing written (and no folder left behind).
    """
    if not distributed.is_main_process():
        log.setLevel(logging.WARNING)  # a DDP child re-runs the whole loop; rank 0 reports it
    run_dir = Path(cfg.paths.output_dir)
    try:
        validate_config(cfg)
        config = cast("dict[str, Any]", OmegaConf.to_container(cfg, resolve=True))
        state = check_run_folder(run_dir, config)
        if state is not None and state.status == "finished":
            log.info(
                "%s holds a finished run (%d cycles): nothing to do\n%s",
                run_dir,
                state.cycles_completed,
                format_table(state.results),
            )
            return state.results
        opened = _open_data(cfg, run_dir, config, state)
    except TidalError:
        preflight.discard_new_folder(run_dir)
        raise
    opened.log_file = run_folder.begin(run_dir, opened.fresh, cfg)
    return opened


def _open_data(
    cfg: DictConfig, run_dir: Path, config: dict[str, Any], state: RunState | None
) -> Run:
    """The checks that need the data, and the run's pool and state, in memory only."""
    datamodule: ImageClassificationData = instantiate(cfg.dataset)
    try:
        datamodule.load()
    except StaleCacheError:
        if state is not None:
            # the run's own pinned file list names the change, and that the run cannot go on
            # (rebuilding the cache, as the cache's message suggests, would not help it)
            labeling.check_files(state, datamodule)
        raise
    strategy = build_strategy(cfg.strategy)
    oracle: Oracle = instantiate(cfg.oracle) if cfg.get("oracle") else SimulatedOracle()
    problems = [
        *strategy.check_config(cfg),
        *oracle.check(datamodule),
        *_unknown_label_problems(cfg, datamodule, oracle, fresh=state is None),
    ]
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
    targets = datamodule.train_targets
    pool_indices = long_tail_indices(
        targets,
        datamodule.num_classes,
        float(datamodule.imbalance_ratio),
        make_generator(int(cfg.seed), 0, "long_tail"),
    )
    imported = None
    if state is None:
        if oracle.draws_initial(datamodule) and not strategy.labels_everything:
            validate_pool_sizes(cfg, len(pool_indices))
        state = RunState(
            config=config,
            summary=initial_summary(cfg, datamodule, strategy, oracle, pool_indices),
            # W&B run ids only need to be unique, not reproducible: no seeded stream.
            logger_id=secrets.token_hex(4),
            manifest=labeling.pin_files(datamodule),
        )
    else:
        labeling.check_files(state, datamodule)
        for indices, labels in zip(state.label_rounds, state.round_labels, strict=False):
            targets[indices] = labels  # what the oracle said, even if the CSVs changed since
        if state.pending is not None:
            assert isinstance(oracle, FileOracle)  # the config check keeps the oracle
            imported = labeling.pending_import(run_dir, state, oracle, datamodule)
    pool = LabelPool(len(targets), pool_indices)
    for labeled_round in state.label_rounds:
        pool.label(labeled_round)
    return Run(
        cfg=cfg,
        run_dir=run_dir,
        state=state,
        datamodule=datamodule,
        strategy=strategy,
        oracle=oracle,
        pool_indices=pool_indices,
        pool=pool,
        records=RunRecords(run_dir, datamodule.num_classes),
        fresh=not state.label_rounds,
        imported=imported,
    )


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
    label_free = ("random", *FEATURE_INITIAL_MODES)
    if fresh and oracle.draws_initial(datamodule) and cfg.al.initial_mode not in label_free:
        problems.append(
            f"al.initial_mode={cfg.al.initial_mode}: this initial set is drawn by the labels, "
            f"and none are known; use one of {label_free} (the last ones pick on features) or "
            "give dataset.labels_csv"
        )
    return problems


# ------------------------------------------------------------- 2. the initial set
def label_initial_set(run: Run) -> LabelRequest | None:
    """Step 2: label the initial set (fresh run) or accept a person's labels (resumed run).

    Returns a label request when a person must label before any training can happen.
    """
    state, cfg = run.state, run.cfg
    if run.fresh:
        initial = run.oracle.initial_set(
            run.datamodule,
            run.pool_indices,
            len(run.pool_indices) if run.strategy.labels_everything else cfg.al.initial,
            cfg.al.initial_mode,
            make_generator(run.seed, 0, "initial"),
            # a cold start on features (no labels needed): the encoder and its settings
            features=(
                ColdStartFeatures.from_config(cfg)
                if cfg.al.initial_mode in FEATURE_INITIAL_MODES
                else None
            ),
        )
        run.pool.label(initial)
        state.label_rounds.append(initial)
        if bool((run.targets[initial] < 0).any()):
            # Cold start: nobody has labeled anything yet, so the initial set goes first.
            request = labeling.cold_start_request(initial, run.datamodule)
            _await(run, request)
            return request
        state.round_labels.append(run.targets[initial].clone())
        state.save(run.run_dir)
    else:
        log.info(
            "resuming %s after %d of %d cycles",
            run.run_dir,
            state.cycles_completed,
            cfg.al.cycles,
        )
        restore_rng(state.rng)
        if run.imported is not None:
            request, labels = run.imported
            if labels is None:  # the stop was killed before its files were written
                return request
            labeling.accept_labels(state, request, labels, run.targets, run.datamodule.num_classes)
            log.info(
                "imported %d labels for cycle %d from %s",
                len(labels),
                request.round,
                cast("FileOracle", run.oracle).labels_path(run.run_dir, request.round),
            )
            state.save(run.run_dir)
    run.write_records()
    if not run.has_test:
        log.warning(
            "no test split (an image folder without dataset.test_csv): no test runs, and "
            "test_acc and acc_class_* stay blank in results.csv"
        )
    # A resumed run whose last process died mid-cycle may have logged steps past the last
    # commit; the re-run cycle starts after them so no step is logged twice.
    offset = state.logger_step
    if not run.fresh and state.status == "running" and run.imported is None:
        offset += upper_bound_steps(
            int(cfg.trainer.max_epochs), run.pool.num_labeled, run.datamodule.batch_size
        )
    run.logger = make_logger(
        cfg, state.summary, state.logger_id, state.config, offset, keep_below=state.logger_step
    )
    return None


def stop_reason(run: Run) -> str | None:
    """The one place that decides the run is done: None while another cycle should train."""
    done, cycles = run.state.cycles_completed, int(run.cfg.al.cycles)
    if done >= cycles:
        return f"all {cycles} cycles trained"
    if done and run.strategy.labels_everything:
        return "all trained: the full-data reference trains once, on the whole training pool"
    if done and run.state.results[-1]["query_seconds"] == "":
        # the last training could not be followed by a query: another would add nothing
        return (
            f"the pool ran out: {run.pool.num_unlabeled} unlabeled samples left, fewer than "
            f"al.budget={run.cfg.al.budget}; stopping after {done} of {cycles} cycles"
        )
    return None


# ---------------------------------------------------------------------- 3. plan
def plan_cycle(run: Run) -> CyclePlan:
    """Step 3: seed the cycle's model and, when a query follows, draw the pool subset.

    Drawn before training: the per-epoch recorder (dispersion, TD oracles) must know which
    samples the query will score.
    """
    cycle = run.state.cycles_completed
    pl.seed_everything(derive_seed(run.seed, cycle, "model"), workers=True, verbose=False)
    will_query = cycle + 1 < run.cfg.al.cycles and run.pool.num_unlabeled >= run.cfg.al.budget
    subset = draw_pool_subset(run.pool, run.cfg, cycle) if will_query else None
    return CyclePlan(cycle, subset)


def draw_pool_subset(pool: LabelPool, cfg: DictConfig, cycle: int) -> torch.Tensor:
    """`[min(U, al.pool_subset)]` dataset indices of unlabeled samples the cycle's query scores."""
    unlabeled = pool.unlabeled_indices
    generator = make_generator(int(cfg.seed), cycle, "pool_subset")
    order = torch.randperm(len(unlabeled), generator=generator)
    return unlabeled[order[: cfg.al.pool_subset]]


# ---------------------------------------------------------------------- 4. train
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
        tracker = TrainingDynamicsTracker(datamodule.num_train, num_classes)
        callbacks.append(tracker)
    recorder = None
    if strategy.requires_recorder and pool_subset is not None:
        recorder = PoolDynamicsRecorder(
            # read in chunks when the recorder runs: a large pool subset never sits whole
            # on the host (iNaturalist's 100k at 64 px would be 1.2 GB)
            IndexedImages(datamodule.gather, pool_subset),
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


def train_cycle(run: Run, plan: CyclePlan) -> Trained:
    """Step 4: a fresh Trainer fits the system (fresh or warm-started) on the labeled set."""
    cfg = run.cfg
    system, callbacks, recorder = build_system(cfg, run.datamodule, run.strategy, plan.subset)
    if cfg.al.warm_start and run.state.warm_start is not None:
        system.load_state_dict(run.state.warm_start)
    if not cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(EpochLine(plan.cycle))
    run.datamodule.start_cycle(run.pool.labeled_indices, run.seed, plan.cycle)
    if run.logger is not None:
        run.logger.start_cycle(plan.cycle)
    trainer: pl.Trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=run.logger if run.logger is not None else False,
        default_root_dir=str(run.run_dir),
    )
    started = time.perf_counter()
    trainer.fit(system, datamodule=run.datamodule)
    placements = getattr(run.datamodule, "placements", None)
    if placements:  # where a cached dataset's splits were put (memory or streamed), and why
        run.state.summary["data_placement"] = placements
    return Trained(system, trainer, recorder, time.perf_counter() - started)


# ------------------------------------------------------------------- 5. evaluate
def evaluate(run: Run, plan: CyclePlan, trained: Trained) -> dict[str, Any]:
    """Step 5: test accuracy (overall and per class), the checkpoint, the cycle's result row."""
    test_acc = per_class = None
    if run.has_test:
        trained.trainer.test(trained.system, datamodule=run.datamodule, verbose=False)
        test_acc = float(trained.trainer.callback_metrics["test/acc"])
        per_class = trained.system.per_class_accuracy
    if run.logger is not None:
        run.logger.end_cycle(trained.trainer.global_step)
        run.state.logger_step = run.logger.offset
    labeled = run.pool.labeled_indices
    # Before the state commits the cycle: a kill in between re-runs the cycle, which writes
    # the same checkpoint again.
    save_cycle_checkpoint(
        run.cfg, run.run_dir, trained.system, run.datamodule, plan.cycle, len(labeled)
    )
    return result_row(
        plan.cycle,
        labeled,
        run.targets,
        run.datamodule.num_classes,
        test_acc,
        per_class,
        trained.seconds,
        trained.recorder,
    )


def save_cycle_checkpoint(
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


# ------------------------------------------------------------- 6. query and label
def query_and_label(
    run: Run, plan: CyclePlan, trained: Trained, row: dict[str, Any]
) -> LabelRequest | None:
    """Step 6: score the pool subset, pick `al.budget` samples and label them.

    A simulated oracle reveals the labels at once; a person's labels are asked for in the
    returned request (the run stops after the commit).
    """
    if plan.subset is None:
        return None
    device = trained.trainer.strategy.root_device
    queried, diagnostics, outputs, positions = query(
        run.cfg,
        run.strategy,
        trained.system,
        run.datamodule,
        run.pool,
        plan.subset,
        trained.recorder,
        plan.cycle,
        device,
    )
    row.update(diagnostics)
    run.pool.label(queried)
    run.state.label_rounds.append(queried)
    if run.oracle.reveals_labels:
        labels = run.targets[queried].clone()
        row.update(query_diagnostics(labels, run.datamodule.num_classes))
        run.state.round_labels.append(labels)
        return None
    request = labeling.query_request(
        plan.cycle + 1,
        queried,
        run.strategy,
        outputs,
        positions,
        trained.system,
        run.datamodule,
        device,
    )
    # committed with the cycle: a resumed run knows what it waits for
    run.state.pending = request.to_state()
    run.state.status = run.state.summary["status"] = "awaiting_labels"
    return request


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
    # what the strategy reports about its own query (radius, solver path, ...): extra columns
    reported = {**strategy.query_diagnostics(), **outputs.diagnostics}
    diagnostics.update({k: round(v, 6) if isinstance(v, float) else v for k, v in reported.items()})
    if "td_probs" in outputs.outputs and "pool_td" in outputs.outputs:
        agreement = td_agreement(outputs["td_probs"], outputs["pool_td"])
        diagnostics.update({k: round(v, 6) for k, v in agreement.items()})
    return queried, diagnostics, outputs, positions


# ---------------------------------------------------------------------- 7. commit
def commit(run: Run, trained: Trained, row: dict[str, Any]) -> None:
    """Step 7: the cycle is committed by replacing state.pt; the readable files follow from it."""
    state, cycle = run.state, row["cycle"]
    state.results.append(row)
    state.cycles_completed = cycle + 1
    state.summary.update(
        cycles_completed=cycle + 1, final_test_acc=row["test_acc"] if run.has_test else None
    )
    if run.cfg.al.warm_start:
        state.warm_start = {
            k: v.detach().cpu().clone() for k, v in trained.system.state_dict().items()
        }
    # The logger's files are complete before the state says the cycle is done: a run killed
    # after the save resumes past this cycle and would never log its curve again.
    log_cycle(run.logger, row)
    if run.logger is not None:
        if row["queried_class_0"] != "":
            histogram = [row[f"queried_class_{c}"] for c in range(run.datamodule.num_classes)]
            run.logger.log_class_histogram("al/queried_class_histogram", histogram)
        run.logger.flush()
    state.save(run.run_dir)
    run.write_records()
    log.info(
        "cycle %d (of 0-%d) | labeled %d | test acc %s | train %.1fs | query %s",
        cycle,
        run.cfg.al.cycles - 1,
        row["num_labeled"],
        f"{row['test_acc']:.4f}" if row["test_acc"] != "" else "-",
        row["train_seconds"],
        f"{row['query_seconds']:.1f}s" if row["query_seconds"] != "" else "-",
    )


# --------------------------------------------------------------- handing over / finish
def _await(run: Run, request: LabelRequest) -> None:
    """Commits a state that waits for `request`'s labels (the export follows in `hand_over`)."""
    run.state.pending = request.to_state()
    run.state.status = run.state.summary["status"] = "awaiting_labels"
    run.state.save(run.run_dir)
    run.write_records()


def hand_over(run: Run, request: LabelRequest) -> None:
    """The run stops until a person has labeled `request` (committed already); the files say how."""
    assert isinstance(run.oracle, FileOracle) and run.state.pending is not None
    close_logger(run.logger)
    run.logger = None
    labeling.stop_for_labels(run.run_dir, run.oracle, request, run.datamodule)
    if run.state.results:
        log.info("results so far in %s\n%s", run.run_dir, format_table(run.state.results))


def finish(run: Run, reason: str | None) -> None:
    """Step 8: the run is finished; the learning curve goes to the logger, the table to the log."""
    if reason and not reason.startswith("all "):
        log.warning(reason)
    elif reason and run.strategy.labels_everything:
        log.info(reason)
    state = run.state
    state.status = state.summary["status"] = "finished"
    state.save(run.run_dir)
    run.write_records()
    if run.logger is not None:
        run.logger.log_learning_curve(state.results)
    log.info("results in %s\n%s", run.run_dir, format_table(state.results))
