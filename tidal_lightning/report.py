"""`python -m tidal_lightning.report SWEEP [--out DIR]`: a multirun folder -> tables and plots.

A sweep folder is a Hydra multirun folder whose job subfolders (at any depth) are AL run folders
holding `results.csv` (one row per cycle: `cycle,num_labeled,test_acc,...`), `run_summary.json`
and `.hydra/overrides.yaml`. Only the local files are read. Runs are grouped by (dataset,
imbalance ratio) and compared across strategies over seeds. Three files are written into the
sweep folder (or `--out`):

- `report.md`: per group, test accuracy mean ± std per labeled size, the area under the learning
  curve (AULC) with a 95% interval over seeds, the relative improvement over `random`, a paired
  comparison with `random` over matching seeds; plus every missing, failed or unfinished run.
- `report.csv`: the same numbers in long format, one row per
  (dataset, imbalance_ratio, strategy, num_labeled). Columns:

  - `dataset`, `imbalance_ratio`: the group; `strategy`, `num_labeled`: the cell;
  - `n_seeds`: finished runs with a result at this labeled size;
  - `test_acc_mean`, `test_acc_std`: over those seeds (std with ddof=1);
  - `rel_improvement_over_random_pct`: 100·(mean − mean_random)/mean_random at this size;
  - per strategy, repeated on each of its rows: `aulc_n_seeds` (finished runs), `aulc_mean`,
    `aulc_ci_low`, `aulc_ci_high` (normalised AULC, mean over seeds and 95% Student-t interval);
    `aulc_diff_vs_random` (mean over matching seeds of AULC(strategy) − AULC(random)),
    `wins_vs_random` (seeds where the strategy's AULC is higher), `pairs_vs_random` (matching
    seeds), `p_value_vs_random` (paired t-test, scipy.stats.ttest_rel).

  An empty field means "undefined" (one seed, no `random` in the group, or `random` itself).
- `learning_curves.png`: one subplot per group, mean test accuracy against labeled samples per
  strategy with a ±std band.

Runs that are not finished (status still "running", i.e. killed), that completed fewer cycles
than `al.cycles`, or whose files are missing or unreadable are left out of every statistic and
listed in report.md with the reason, so nothing is dropped silently.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml
from scipy import stats

from tidal_lightning.errors import TidalError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

BASELINE = "random"
CSV_COLUMNS = [
    "dataset",
    "imbalance_ratio",
    "strategy",
    "num_labeled",
    "n_seeds",
    "test_acc_mean",
    "test_acc_std",
    "rel_improvement_over_random_pct",
    "aulc_n_seeds",
    "aulc_mean",
    "aulc_ci_low",
    "aulc_ci_high",
    "aulc_diff_vs_random",
    "wins_vs_random",
    "pairs_vs_random",
    "p_value_vs_random",
    "full_data_acc_mean",
    "rel_to_full_data_pct",
]
# Each TiDAL variant and the snapshot score its TD prediction replaces (the paper's claim).
TD_PAIRS = (("tidal_entropy", "entropy"), ("tidal_margin", "margin"))
# The full-data reference's strategy name (strategy=full_data): one training on the whole
# pool, read against, not compared with.
FULL_DATA = "full_data"
_RUN_MARKERS = ("results.csv", "run_summary.json")


class ReportError(TidalError):
    """The sweep folder cannot be reported on (missing, or holds no run folders)."""


@dataclass(frozen=True)
class Run:
    """One finished run's learning curve; `num_labeled` is sorted ascending."""

    folder: str
    overrides: tuple[str, ...] | None
    strategy: str
    seed: int
    dataset: str
    imbalance_ratio: float
    num_labeled: tuple[int, ...]
    test_acc: tuple[float, ...]
    # the last cycle's per-class test accuracy and labeled counts, and the pool's class counts
    # (empty where the files lack them): the long-tailed section reads the rarest classes
    final_class_acc: tuple[float, ...] = ()
    final_labeled_counts: tuple[int, ...] = ()
    pool_class_counts: tuple[int, ...] = ()

    @property
    def group(self) -> tuple[str, float]:
        return (self.dataset, self.imbalance_ratio)


@dataclass(frozen=True)
class Problem:
    """A job folder left out of the statistics, and why."""

    folder: str
    overrides: tuple[str, ...] | None
    issue: str


@dataclass(frozen=True)
class Cell:
    """Test accuracy over seeds at one labeled size; `std` is NaN with a single seed."""

    strategy: str
    num_labeled: int
    n_seeds: int
    mean: float
    std: float


@dataclass(frozen=True)
class AulcSummary:
    """Per-strategy AULC over seeds; the interval is NaN with a single seed."""

    strategy: str
    seeds: tuple[int, ...]
    mean: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class PairedComparison:
    """AULC(strategy) − AULC(baseline) over seeds both finished; p is NaN below 2 pairs."""

    strategy: str
    seeds: tuple[int, ...]
    mean_diff: float
    wins: int
    p_value: float
    baseline: str = "random"


@dataclass(frozen=True)
class RareClasses:
    """One strategy's last cycle on a long-tailed pool, mean (std) over seeds.

    `rarest` is the class with the fewest pool samples, `minority` the ⌊K/2⌋ classes with the
    fewest (as in `analysis td_separation`).
    """

    strategy: str
    n_seeds: int
    rarest_acc: tuple[float, float]
    minority_acc: tuple[float, float]
    minority_label_share: tuple[float, float]
    labeled_imbalance: tuple[float, float]


@dataclass
class GroupReport:
    """Everything reported for one (dataset, imbalance ratio) group."""

    dataset: str
    imbalance_ratio: float
    strategies: list[str]
    cells: dict[tuple[str, int], Cell]
    aulc: dict[str, AulcSummary]
    relative_improvement: dict[tuple[str, int], float]
    paired: dict[str, PairedComparison]
    notes: list[str] = field(default_factory=list)
    # TiDAL against the score it replaces, keyed by the TiDAL strategy (see `TD_PAIRS`)
    td_paired: dict[str, PairedComparison] = field(default_factory=dict)
    # long-tailed groups only: the rarest classes at the last cycle, per strategy
    rare_classes: dict[str, RareClasses] = field(default_factory=dict)
    # the full-data reference: mean and std of its test accuracy, seeds (None without one)
    full_data: Cell | None = None

    def rel_to_full_data(self, accuracy: float) -> float:
        """100 · accuracy / the full-data accuracy (Table 1's "Rel."); NaN without a reference."""
        if self.full_data is None or self.full_data.mean == 0:
            return math.nan
        return 100 * accuracy / self.full_data.mean

    @property
    def title(self) -> str:
        return f"{self.dataset}, imbalance ratio {_fmt_ratio(self.imbalance_ratio)}"


@dataclass
class SweepReport:
    """What `build_report` computed and where it wrote it."""

    sweep_dir: Path
    runs: list[Run]
    problems: list[Problem]
    groups: list[GroupReport]
    report_md: Path
    report_csv: Path
    learning_curves: Path
    notes: list[str] = field(default_factory=list)


# --- reading run folders ---------------------------------------------------------------------


def find_run_folders(sweep_dir: Path) -> list[Path]:
    """Folders under `sweep_dir` (itself included) that hold a run's files or a `.hydra/` folder.

    A job that crashed before its first cycle leaves only `.hydra/`, and it must still be found
    so it can be listed. Hidden folders are not entered (`.hydra/`, `.submitit/`).
    """
    found = []
    for root, dirs, files in os.walk(sweep_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        folder = Path(root)
        if any(m in files for m in _RUN_MARKERS) or (folder / ".hydra").is_dir():
            found.append(folder)
    return sorted(found)


def read_overrides(run_dir: Path) -> tuple[str, ...] | None:
    """The job's Hydra overrides (`strategy=entropy`, ...), or None when unknown."""
    path = run_dir / ".hydra" / "overrides.yaml"
    try:
        overrides = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(overrides, list):
        return None
    return tuple(str(o) for o in overrides)


def _planned_cycles(summary: dict[str, Any]) -> int | None:
    config = summary.get("config")
    al = config.get("al") if isinstance(config, dict) else None
    cycles = al.get("cycles") if isinstance(al, dict) else None
    return int(cycles) if isinstance(cycles, int | float) else None


def _read_curve(path: Path) -> tuple[list[tuple[int, float]], list[str]]:
    """(num_labeled, test_acc) pairs from results.csv, plus what is wrong with the file."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, csv.Error, UnicodeDecodeError) as error:
        return [], [f"results.csv is unreadable ({error})"]
    if rows and not {"num_labeled", "test_acc"} <= set(rows[0]):
        return [], ["results.csv lacks the num_labeled or test_acc column"]
    points = []
    for line, row in enumerate(rows, start=2):
        try:
            points.append((int(row["num_labeled"]), float(row["test_acc"])))
        except (TypeError, ValueError):
            return [], [f"results.csv line {line} has no numeric num_labeled/test_acc"]
    labeled = [n for n, _ in points]
    if len(set(labeled)) != len(labeled):
        return [], ["results.csv repeats a num_labeled value"]
    return sorted(points), []


# `hydra.sweep.subdir` of this project's sweeps (named from the overrides) and Hydra's default.
_NAMED_SUBDIR = "${tidal.dirname:${hydra.job.override_dirname}}"
_NUMBERED_SUBDIR = "${hydra.job.num}"


def declared_jobs(sweep_dir: Path) -> tuple[dict[str, tuple[str, ...]], str | None]:
    """The job folders the sweep's grid (its `multirun.yaml`) declares, with their overrides.

    Hydra writes `multirun.yaml` before the first job starts, so jobs that never started
    (a sweep killed early) are known from it. Returns `{folder: overrides}` and a note when
    the grid cannot be read (no such file, or job folders named in a way not known here).
    """
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return {}, None
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        hydra = raw["hydra"]
        params = hydra["sweeper"].get("params") or {}
        task = [str(o) for o in hydra["overrides"]["task"]]
        subdir = str(hydra["sweep"]["subdir"])
        naming = hydra["job"]["config"]["override_dirname"]
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError) as error:
        return {}, f"the sweep's grid in {path} cannot be read ({error}); missing jobs not checked"
    from tidal_lightning.preflight import expand_grid, job_folder_name

    jobs = expand_grid(params, task)
    if subdir == _NUMBERED_SUBDIR:
        return {str(n): tuple(job) for n, job in enumerate(jobs)}, None
    if subdir != _NAMED_SUBDIR:
        return {}, f"job folders are named by hydra.sweep.subdir={subdir}: missing jobs not checked"
    exclude = [str(k) for k in naming.get("exclude_keys") or []]
    if naming.get("item_sep") == "\x1f":
        return {job_folder_name(job, exclude): tuple(job) for job in jobs}, None
    # sweeps from before the folder names became shell-safe: `a=1,b=2`, `/` as `_`
    from hydra.core.override_parser.overrides_parser import OverridesParser

    names = {}
    for job in jobs:
        kept = sorted(
            str(o.input_line)
            for o in OverridesParser.create().parse_overrides(job)
            if not o.key_or_group.startswith("hydra") and o.key_or_group not in exclude
        )
        names[",".join(kept).replace("/", "_") or "defaults"] = tuple(job)
    return names, None


def read_run(run_dir: Path, sweep_dir: Path) -> Run | Problem:
    """One job folder as a finished `Run`, or as a `Problem` that says what is wrong with it."""
    folder = run_dir.relative_to(sweep_dir).as_posix() or "."
    overrides = read_overrides(run_dir)
    results_path = run_dir / "results.csv"
    summary_path = run_dir / "run_summary.json"
    if not results_path.is_file():
        what = "no results.csv" + ("" if summary_path.is_file() else " and no run_summary.json")
        return Problem(folder, overrides, f"{what}: the job crashed before its first cycle ended")
    if not summary_path.is_file():
        return Problem(folder, overrides, "results.csv but no run_summary.json")
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return Problem(folder, overrides, f"run_summary.json is unreadable ({error})")
    if not isinstance(summary, dict):
        return Problem(folder, overrides, "run_summary.json is not a JSON object")

    points, issues = _read_curve(results_path)
    strategy = summary.get("strategy_name") or summary.get("strategy")
    lacking = [k for k in ("seed", "dataset", "imbalance_ratio") if summary.get(k) is None]
    if not strategy:
        lacking.insert(0, "strategy_name")
    if lacking:
        issues.append(f"run_summary.json lacks {', '.join(lacking)}")
    status = summary.get("status")
    planned = _planned_cycles(summary)
    done = len(points)
    progress = f"{done} of {planned} planned cycles" if planned is not None else f"{done} cycles"
    if status != "finished":
        issues.append(f"status is {status!r}, not 'finished' (killed or still running), {progress}")
    elif planned is not None and done < planned and strategy != FULL_DATA:
        issues.append(f"finished after only {progress}")
    elif not issues and done == 0:
        issues.append("results.csv has no rows")
    if issues:
        return Problem(folder, overrides, "; ".join(issues))
    try:
        seed = int(summary["seed"])
        ratio = float(summary["imbalance_ratio"])
    except (TypeError, ValueError):
        return Problem(folder, overrides, "run_summary.json has a non-numeric seed/imbalance_ratio")
    class_acc, labeled_counts = _final_class_columns(results_path)
    pool_counts = summary.get("train_pool_class_counts") or []
    return Run(
        folder=folder,
        overrides=overrides,
        strategy=str(strategy),
        seed=seed,
        dataset=str(summary["dataset"]),
        imbalance_ratio=ratio,
        num_labeled=tuple(n for n, _ in points),
        test_acc=tuple(a for _, a in points),
        final_class_acc=class_acc,
        final_labeled_counts=labeled_counts,
        pool_class_counts=tuple(int(c) for c in pool_counts),
    )


def _final_class_columns(path: Path) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """The largest labeled size's `acc_class_<k>` and `labeled_class_<k>`; () where blank."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    last = max(rows, key=lambda r: int(r["num_labeled"]))
    k = 0
    while f"acc_class_{k}" in last:
        k += 1
    try:
        acc = tuple(float(last[f"acc_class_{c}"]) for c in range(k))
        counts = tuple(int(last[f"labeled_class_{c}"]) for c in range(k))
    except (KeyError, TypeError, ValueError):
        return (), ()
    return acc, counts


# --- statistics ------------------------------------------------------------------------------


def normalised_aulc(num_labeled: Sequence[float], test_acc: Sequence[float]) -> float:
    """Trapezoid area under test_acc(num_labeled) divided by the x-range, so it lies in [0, 1].

    A constant accuracy `a` gives exactly `a`. With a single point there is no range; the
    limit of the normalised area, that point's accuracy, is returned.
    """
    order = np.argsort(num_labeled)
    x = np.asarray(num_labeled, dtype=float)[order]
    y = np.asarray(test_acc, dtype=float)[order]
    if len(x) == 1:
        return float(y[0])
    span = x[-1] - x[0]
    if span <= 0:
        raise ValueError("num_labeled must span a positive range")
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / span)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1: seeds are a sample); std is NaN for one value."""
    array = np.asarray(values, dtype=float)
    std = float(array.std(ddof=1)) if len(array) > 1 else math.nan
    return float(array.mean()), std


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval for the mean; NaN bounds with one value (no spread to estimate)."""
    array = np.asarray(values, dtype=float)
    if len(array) < 2:
        return math.nan, math.nan
    mean = float(array.mean())
    half = float(stats.t.ppf((1 + confidence) / 2, len(array) - 1)) * float(
        array.std(ddof=1) / math.sqrt(len(array))
    )
    return mean - half, mean + half


def _strategy_order(names: set[str]) -> list[str]:
    # The baseline first, so every table reads "random, then the methods compared with it".
    return sorted(names, key=lambda s: (s != BASELINE, s))


def _group_notes(runs: list[Run], strategies: list[str]) -> list[str]:
    """Seeds some strategies have and others lack, and labeled sizes that differ between runs."""
    seeds: dict[str, set[int]] = defaultdict(set)
    sizes: dict[tuple[int, ...], list[str]] = defaultdict(list)
    for run in runs:
        seeds[run.strategy].add(run.seed)
        sizes[run.num_labeled].append(f"{run.strategy}/seed {run.seed}")
    every_seed = set().union(*seeds.values())
    notes = []
    for strategy in strategies:
        missing = sorted(every_seed - seeds[strategy])
        if missing:
            others = [s for s in strategies if s != strategy and seeds[s] & set(missing)]
            notes.append(
                f"`{strategy}` has no finished run for seed(s) {', '.join(map(str, missing))} "
                f"(present for {', '.join(f'`{s}`' for s in others)})"
            )
    if len(sizes) > 1:
        variants = sorted(sizes.items(), key=lambda item: -len(item[1]))
        described = "; ".join(f"{list(n)} in {', '.join(names)}" for n, names in variants[1:])
        notes.append(
            f"runs do not share the same labeled sizes (most use {list(variants[0][0])}; "
            f"others: {described}); AULCs over different ranges are not comparable"
        )
    return notes


def full_data_cell(runs: list[Run]) -> Cell | None:
    """The full-data reference of a group: its final test accuracy over seeds."""
    finals = [r.test_acc[-1] for r in runs if r.strategy == FULL_DATA]
    if not finals:
        return None
    mean, std = mean_std(finals)
    labeled = max(r.num_labeled[-1] for r in runs if r.strategy == FULL_DATA)
    return Cell(FULL_DATA, labeled, len(finals), mean, std)


def analyse_group(runs: list[Run], references: list[Run] | None = None) -> GroupReport:
    """The statistics of one (dataset, imbalance ratio) group of finished, de-duplicated runs.

    Full-data runs (in `runs` or `references`) are the group's reference, not a strategy.
    """
    dataset, ratio = runs[0].group
    reference = full_data_cell([*runs, *(references or [])])
    runs = [r for r in runs if r.strategy != FULL_DATA]
    strategies = _strategy_order({r.strategy for r in runs})
    by_strategy: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_strategy[run.strategy].append(run)

    cells: dict[tuple[str, int], Cell] = {}
    aulc: dict[str, AulcSummary] = {}
    per_seed_aulc: dict[str, dict[int, float]] = {}
    for strategy in strategies:
        accs: dict[int, list[float]] = defaultdict(list)
        for run in by_strategy[strategy]:
            for n, acc in zip(run.num_labeled, run.test_acc, strict=True):
                accs[n].append(acc)
        for n in sorted(accs):
            mean, std = mean_std(accs[n])
            cells[(strategy, n)] = Cell(strategy, n, len(accs[n]), mean, std)
        per_seed_aulc[strategy] = {
            r.seed: normalised_aulc(r.num_labeled, r.test_acc) for r in by_strategy[strategy]
        }
        values = list(per_seed_aulc[strategy].values())
        low, high = t_interval(values)
        aulc[strategy] = AulcSummary(
            strategy, tuple(sorted(per_seed_aulc[strategy])), float(np.mean(values)), low, high
        )

    relative: dict[tuple[str, int], float] = {}
    paired: dict[str, PairedComparison] = {}
    if BASELINE in by_strategy:
        for (strategy, n), cell in cells.items():
            base = cells.get((BASELINE, n))
            if strategy != BASELINE and base is not None and base.mean != 0:
                relative[(strategy, n)] = 100 * (cell.mean - base.mean) / base.mean
        for strategy in strategies:
            if strategy != BASELINE:
                paired[strategy] = paired_comparison(strategy, BASELINE, per_seed_aulc)
    td_paired = {
        tidal: paired_comparison(tidal, base, per_seed_aulc)
        for tidal, base in TD_PAIRS
        if tidal in per_seed_aulc and base in per_seed_aulc
    }
    rare = rare_classes(by_strategy) if ratio > 1 else {}

    return GroupReport(
        dataset=dataset,
        imbalance_ratio=ratio,
        strategies=strategies,
        cells=cells,
        aulc=aulc,
        relative_improvement=relative,
        paired=paired,
        notes=_group_notes(runs, strategies),
        full_data=reference,
        td_paired=td_paired,
        rare_classes=rare,
    )


def paired_comparison(
    strategy: str, baseline: str, per_seed_aulc: dict[str, dict[int, float]]
) -> PairedComparison:
    """AULC(strategy) − AULC(baseline) over the seeds both have, with a paired t-test."""
    seeds = sorted(set(per_seed_aulc[strategy]) & set(per_seed_aulc[baseline]))
    ours = np.array([per_seed_aulc[strategy][s] for s in seeds])
    theirs = np.array([per_seed_aulc[baseline][s] for s in seeds])
    diff = ours - theirs
    p_value = math.nan
    # Equal differences have no spread to test against; checked here because float noise
    # would otherwise make ttest_rel return a meaningless p instead of NaN.
    if len(seeds) >= 2 and np.ptp(diff) > 1e-12:
        p_value = float(stats.ttest_rel(ours, theirs).pvalue)
    return PairedComparison(
        strategy,
        tuple(seeds),
        float(diff.mean()) if len(seeds) else math.nan,
        int(np.sum(diff > 0)),
        p_value,
        baseline,
    )


def rare_classes(by_strategy: dict[str, list[Run]]) -> dict[str, RareClasses]:
    """Per strategy, the last cycle's accuracy on the rarest pool classes and their label share."""
    out = {}
    for strategy, runs in by_strategy.items():
        values: dict[str, list[float]] = defaultdict(list)
        for run in runs:
            counts = run.pool_class_counts
            k = len(counts)
            if k < 2 or len(run.final_class_acc) != k or len(run.final_labeled_counts) != k:
                continue
            order = sorted(range(k), key=lambda c: (counts[c], c))  # fewest pool samples first
            minority = order[: k // 2]
            labeled = np.array(run.final_labeled_counts, dtype=float)
            values["rarest"].append(run.final_class_acc[order[0]])
            values["minority"].append(float(np.mean([run.final_class_acc[c] for c in minority])))
            values["share"].append(float(labeled[minority].sum() / labeled.sum()))
            values["imbalance"].append(
                float(labeled.max() / labeled.min()) if labeled.min() > 0 else math.inf
            )
        if values:
            out[strategy] = RareClasses(
                strategy,
                len(values["rarest"]),
                *(mean_std(values[key]) for key in ("rarest", "minority", "share", "imbalance")),
            )
    return out


def _drop_duplicates(runs: list[Run]) -> tuple[list[Run], list[Problem]]:
    """Keeps the first run (by folder) per (group, strategy, seed): a seed counted twice would
    shrink the interval without adding information. The others are listed as problems."""
    kept: dict[tuple[str, float, str, int], Run] = {}
    problems = []
    for run in sorted(runs, key=lambda r: r.folder):
        key = (*run.group, run.strategy, run.seed)
        if key in kept:
            problems.append(
                Problem(
                    run.folder,
                    run.overrides,
                    f"duplicate of `{kept[key].folder}` (same dataset, imbalance ratio, strategy "
                    f"`{run.strategy}` and seed {run.seed}); only the first is used",
                )
            )
        else:
            kept[key] = run
    return list(kept.values()), problems


# --- writing ---------------------------------------------------------------------------------


def _fmt_ratio(ratio: float) -> str:
    return f"{ratio:g}"


def _fmt(value: float, spec: str = ".4f") -> str:
    return "" if math.isnan(value) else format(value, spec)


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def _group_markdown(group: GroupReport) -> list[str]:
    strategies = group.strategies
    sizes = sorted({n for _, n in group.cells})
    lines = [f"## {group.title}", ""]

    lines += ["### Test accuracy (mean ± std over seeds, n = seeds)", ""]
    rows = []
    for n in sizes:
        row = [str(n)]
        for strategy in strategies:
            cell = group.cells.get((strategy, n))
            if cell is None:
                row.append("–")
            elif math.isnan(cell.std):
                row.append(f"{cell.mean:.4f} (n={cell.n_seeds})")
            else:
                row.append(f"{cell.mean:.4f} ± {cell.std:.4f} (n={cell.n_seeds})")
        rows.append(row)
    lines += _md_table(["labeled", *(f"`{s}`" for s in strategies)], rows)

    lines += ["### Area under the learning curve (normalised to [0, 1])", ""]
    full = group.full_data
    if full is not None:
        spread = "" if math.isnan(full.std) else f" ± {full.std:.4f}"
        lines += [
            f"Full-data reference (`{FULL_DATA}`, {full.num_labeled} labels, "
            f"{full.n_seeds} seed(s)): test accuracy {full.mean:.4f}{spread}. "
            '"rel." is a strategy\'s final accuracy relative to it (Table 1 of the '
            "label-dispersion paper).",
            "",
        ]
    rows = []
    last = max(sizes) if sizes else 0
    for strategy in strategies:
        a = group.aulc[strategy]
        interval = (
            f"[{a.ci_low:.4f}, {a.ci_high:.4f}]"
            if not math.isnan(a.ci_low)
            else "undefined (one seed)"
        )
        row = [f"`{strategy}`", str(len(a.seeds)), f"{a.mean:.4f}", interval]
        if full is not None:
            final = group.cells.get((strategy, last))
            row += (
                [f"{final.mean:.4f}", f"{group.rel_to_full_data(final.mean):.2f}%"]
                if final is not None
                else ["–", "–"]
            )
        rows.append(row)
    header = ["strategy", "seeds", "mean AULC", "95% t-interval"]
    if full is not None:
        header += [f"acc @ {last}", "rel. to full data"]
    lines += _md_table(header, rows)

    lines += _td_pairs_markdown(group) + _rare_classes_markdown(group)
    if BASELINE not in strategies:
        lines += [f"No `{BASELINE}` runs in this group: no comparison with random sampling.", ""]
        return lines
    others = [s for s in strategies if s != BASELINE]
    if not others:
        return lines
    lines += [
        f"### Relative improvement over `{BASELINE}` (%): 100·(mean − mean_random)/mean_random",
        "",
    ]
    rows = []
    for n in sizes:
        values = [group.relative_improvement.get((s, n), math.nan) for s in others]
        rows.append([str(n), *(_fmt(v, "+.2f") or "–" for v in values)])
    lines += _md_table(["labeled", *(f"`{s}`" for s in others)], rows)

    lines += [f"### Paired comparison with `{BASELINE}` (AULC over matching seeds)", ""]
    rows = [_paired_row(group.paired[s]) for s in others]
    lines += _md_table(
        ["strategy", "pairs", "mean AULC difference", "wins", "p (paired t-test)"], rows
    )
    return lines


def _paired_row(p: PairedComparison, against: bool = False) -> list[str]:
    pairs = len(p.seeds)
    if pairs < 2:
        p_text = f"undefined ({pairs} pair{'s' * (pairs != 1)})"
    elif math.isnan(p.p_value):
        p_text = "undefined (all differences equal)"
    else:
        p_text = f"{p.p_value:.4f}"
    name = f"`{p.strategy}` − `{p.baseline}`" if against else f"`{p.strategy}`"
    return [name, str(pairs), _fmt(p.mean_diff, "+.4f") or "–", f"{p.wins}/{pairs}", p_text]


def _td_pairs_markdown(group: GroupReport) -> list[str]:
    if not group.td_paired:
        return []
    lines = [
        "### TiDAL against the score it replaces (AULC over matching seeds)",
        "",
        "The paper's claim: the TD module's prediction inside entropy (margin) beats the "
        "snapshot softmax inside it.",
        "",
    ]
    rows = [_paired_row(p, against=True) for p in group.td_paired.values()]
    return lines + _md_table(
        ["comparison", "pairs", "mean AULC difference", "wins", "p (paired t-test)"], rows
    )


def _rare_classes_markdown(group: GroupReport) -> list[str]:
    if not group.rare_classes:
        return []
    lines = [
        "### Rarest classes and what was labeled (last cycle, mean ± std over seeds)",
        "",
        "Rarest = the class with the fewest pool samples; minority = the ⌊K/2⌋ classes with "
        "the fewest. Label share = the minority classes' part of the labeled set; labeled "
        "imbalance = its largest / smallest class count.",
        "",
    ]

    def cell(value: tuple[float, float], spec: str = ".4f") -> str:
        mean, std = value
        return f"{mean:{spec}}" + ("" if math.isnan(std) else f" ± {std:{spec}}")

    rows = [
        [
            f"`{s}`",
            str(r.n_seeds),
            cell(r.rarest_acc),
            cell(r.minority_acc),
            cell(r.minority_label_share, ".3f"),
            cell(r.labeled_imbalance, ".1f"),
        ]
        for s in group.strategies
        if (r := group.rare_classes.get(s)) is not None
    ]
    header = [
        "strategy",
        "seeds",
        "rarest class acc",
        "minority acc",
        "minority label share",
        "labeled imbalance",
    ]
    return lines + _md_table(header, rows)


def render_markdown(report: SweepReport, run_folders: int) -> str:
    """report.md: a summary line, the missing/failed runs, then one section per group."""
    lines = [
        f"# Active-learning sweep report: `{report.sweep_dir}`",
        "",
        f"{run_folders} job folder(s): {len(report.runs)} finished run(s) used, "
        f"{len(report.problems)} listed below as missing, failed or unfinished.",
        "",
        "## Missing, failed or unfinished runs (excluded from the statistics)",
        "",
    ]
    lines += [f"Note: {note}." for note in report.notes]
    if report.problems:
        rows = [
            [
                f"`{p.folder}`",
                " ".join(f"`{o}`" for o in p.overrides) if p.overrides is not None else "unknown",
                p.issue,
            ]
            for p in report.problems
        ]
        lines += _md_table(["folder", "overrides", "problem"], rows)
    else:
        lines += ["None.", ""]
    for group in report.groups:
        lines += _group_markdown(group)
        if group.notes:
            lines += ["### Incomplete cells", "", *(f"- {note}" for note in group.notes), ""]
    return "\n".join(lines)


def render_csv(groups: list[GroupReport]) -> str:
    """report.csv in the long layout described in the module docstring."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for group in groups:
        for (strategy, n), cell in sorted(
            group.cells.items(), key=lambda item: (group.strategies.index(item[0][0]), item[0][1])
        ):
            a = group.aulc[strategy]
            p = group.paired.get(strategy)
            writer.writerow(
                [
                    group.dataset,
                    _fmt_ratio(group.imbalance_ratio),
                    strategy,
                    n,
                    cell.n_seeds,
                    _fmt(cell.mean, ".6f"),
                    _fmt(cell.std, ".6f"),
                    _fmt(group.relative_improvement.get((strategy, n), math.nan), ".4f"),
                    len(a.seeds),
                    _fmt(a.mean, ".6f"),
                    _fmt(a.ci_low, ".6f"),
                    _fmt(a.ci_high, ".6f"),
                    _fmt(p.mean_diff, ".6f") if p else "",
                    p.wins if p else "",
                    len(p.seeds) if p else "",
                    _fmt(p.p_value, ".6g") if p else "",
                    _fmt(group.full_data.mean, ".6f") if group.full_data else "",
                    _fmt(group.rel_to_full_data(cell.mean), ".4f"),
                ]
            )
    return buffer.getvalue()


# Okabe & Ito's colour-blind-safe palette (black kept for the baseline) and markers: strategy i
# gets colour i mod 7 and marker i mod 9, so the first 63 strategies differ in the pair.
_COLOURS = ("#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#B8A400")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h")
# The methods the two papers propose, drawn heavier than the baselines.
HIGHLIGHTED = frozenset({"tidal_entropy", "tidal_margin", "dispersion"})


def strategy_styles(names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Matplotlib line styles per strategy: distinct colour-marker pairs, random black dashed."""
    styles: dict[str, dict[str, Any]] = {}
    others = [n for n in names if n != BASELINE]
    for i, name in enumerate(others):
        highlighted = name in HIGHLIGHTED
        styles[name] = {
            "color": _COLOURS[i % len(_COLOURS)],
            "marker": _MARKERS[i % len(_MARKERS)],
            "linestyle": "-" if highlighted else (0, (4, 1.5)) if i % 2 else "-.",
            "linewidth": 2.6 if highlighted else 1.3,
            "markersize": 6 if highlighted else 4.5,
            "zorder": 3 if highlighted else 2,
        }
    if BASELINE in names:
        styles[BASELINE] = {
            "color": "black",
            "marker": "o",
            "linestyle": "--",
            "linewidth": 1.8,
            "markersize": 4.5,
            "zorder": 2.5,
        }
    return styles


def plot_learning_curves(groups: list[GroupReport], path: Path) -> Figure:
    """One subplot per group: mean test accuracy per strategy against labeled size, ±std band.

    Each strategy keeps one style (colour-blind-safe colour, marker, line) in every subplot;
    the papers' methods are drawn heavier; one legend sits outside the axes.
    """
    # The object API with an explicit Agg canvas: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = _strategy_order({s for g in groups for s in g.strategies})
    # the legend: the baseline, the papers' methods, then the rest; 16 entries a column
    names = sorted(names, key=lambda s: (s != BASELINE, s not in HIGHLIGHTED, s))
    legend_columns = max(1, math.ceil(len(names) / 16))
    legend_rows = math.ceil(len(names) / legend_columns)
    columns = min(3, max(1, len(groups)))
    rows = max(1, math.ceil(len(groups) / columns))
    figure = Figure(
        figsize=(5.2 * columns + 2.4 * legend_columns, max(4.0 * rows, 0.26 * legend_rows + 1)),
        layout="constrained",
    )
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    styles = strategy_styles(names)
    handles: dict[str, Any] = {}
    for axis, group in zip(axes, groups, strict=False):
        for strategy in group.strategies:
            cells = sorted(
                (c for (s, _), c in group.cells.items() if s == strategy),
                key=lambda c: c.num_labeled,
            )
            x = np.array([c.num_labeled for c in cells])
            mean = np.array([c.mean for c in cells])
            std = np.array([c.std for c in cells])
            style = styles[strategy]
            (line,) = axis.plot(x, mean, **style)
            axis.fill_between(
                x, mean - std, mean + std, color=style["color"], alpha=0.1, linewidth=0
            )
            handles[strategy] = line
        if group.full_data is not None:
            line = axis.axhline(group.full_data.mean, color="grey", linestyle=":", linewidth=1.5)
            handles[FULL_DATA] = line
        axis.set_title(group.title)
        axis.set_xlabel("labeled samples")
        axis.set_ylabel("test accuracy")
        axis.grid(alpha=0.3)
    for axis in axes[len(groups) :]:
        axis.set_axis_off()
    if not groups:
        axes[0].text(0.5, 0.5, "no finished runs", ha="center", va="center")
    if handles:
        seeds = {
            s: max(len(g.aulc[s].seeds) for g in groups if s in g.aulc)
            for s in handles
            if s != FULL_DATA
        }
        seeds[FULL_DATA] = max((g.full_data.n_seeds for g in groups if g.full_data), default=0)
        shown = [s for s in [*names, FULL_DATA] if s in handles]
        figure.legend(
            [handles[s] for s in shown],
            [f"{s} (n={seeds[s]})" for s in shown],
            loc="outside right upper",
            fontsize="small",
            title="strategy (seeds)",
            ncols=legend_columns,
        )
    figure.savefig(path, dpi=120)
    return figure


def build_report(
    sweep_dir: Path, out_dir: Path | None = None, full_data: Sequence[Path] = ()
) -> SweepReport:
    """Reads every run folder under `sweep_dir`, writes report.md, report.csv and
    learning_curves.png into `out_dir` (default: `sweep_dir`) and returns what it computed.

    Raises:
        ReportError: `sweep_dir` is not a folder, or holds no run folders.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ReportError(f"sweep folder {sweep_dir} does not exist or is not a folder")
    folders = find_run_folders(sweep_dir)
    if not folders and not (sweep_dir / "multirun.yaml").is_file():
        raise ReportError(
            f"{sweep_dir} holds no run folders: expected a Hydra multirun folder whose job "
            "subfolders (e.g. 0/, 1/) hold results.csv and run_summary.json (or at least .hydra/)"
        )
    runs: list[Run] = []
    problems: list[Problem] = []
    for folder in folders:
        result = read_run(folder, sweep_dir)
        if isinstance(result, Run):
            runs.append(result)
        else:
            problems.append(result)
    runs, duplicates = _drop_duplicates(runs)
    declared, grid_note = declared_jobs(sweep_dir)
    present = {folder.relative_to(sweep_dir).as_posix() for folder in folders}
    never_started = [
        Problem(name, job, "in the sweep's grid (multirun.yaml) but never started: no folder")
        for name, job in declared.items()
        if name not in present
    ]
    problems = sorted(problems + duplicates + never_started, key=lambda p: p.folder)

    by_group: dict[tuple[str, float], list[Run]] = defaultdict(list)
    for run in runs:
        by_group[run.group].append(run)
    references: dict[tuple[str, float], list[Run]] = defaultdict(list)
    for folder in full_data:
        if not Path(folder).is_dir():
            raise ReportError(f"--full-data {folder}: no such folder")
        for run_dir in find_run_folders(Path(folder)):
            found = read_run(run_dir, Path(folder))
            if isinstance(found, Run) and found.strategy == FULL_DATA:
                references[found.group].append(found)
    groups = [analyse_group(by_group[key], references.get(key)) for key in sorted(by_group)]

    out_dir = sweep_dir if out_dir is None else Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = SweepReport(
        sweep_dir=sweep_dir,
        runs=sorted(runs, key=lambda r: r.folder),
        problems=problems,
        groups=groups,
        report_md=out_dir / "report.md",
        report_csv=out_dir / "report.csv",
        learning_curves=out_dir / "learning_curves.png",
        notes=[grid_note] if grid_note else [],
    )
    report.report_md.write_text(render_markdown(report, len(folders)), encoding="utf-8")
    report.report_csv.write_text(render_csv(groups), encoding="utf-8")
    plot_learning_curves(groups, report.learning_curves).clear()
    return report


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point: `python -m tidal_lightning.report SWEEP [--out DIR]`."""
    parser = argparse.ArgumentParser(
        prog="python -m tidal_lightning.report",
        description="Summarise a Hydra multirun folder of AL runs into report.md, report.csv "
        "and learning_curves.png.",
    )
    parser.add_argument("sweep_dir", type=Path, help="the multirun folder (holds job folders)")
    parser.add_argument(
        "--out", type=Path, default=None, help="where to write the report (default: sweep_dir)"
    )
    parser.add_argument(
        "--full-data",
        type=Path,
        action="append",
        default=[],
        help="a run folder (or folder of runs) of strategy=full_data to read the sweep against "
        "(the sweep's own full_data jobs are used anyway); may be repeated",
    )
    args = parser.parse_args(argv)
    try:
        report = build_report(args.sweep_dir, args.out, args.full_data)
    except ReportError as error:
        sys.exit(f"error: {error}")
    print(f"{len(report.runs)} finished run(s) in {len(report.groups)} group(s); wrote")
    for path in (report.report_md, report.report_csv, report.learning_curves):
        print(f"  {path}")
    if report.problems:
        print(
            f"warning: {len(report.problems)} job folder(s) missing, failed or unfinished; "
            f"see {report.report_md}",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
