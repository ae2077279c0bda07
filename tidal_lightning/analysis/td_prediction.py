"""`td_prediction` (TiDAL paper §5.4): how well the TD module predicts the pool's actual TD.

Runs the AL loop with a strategy that trains TiDAL's TD module *and* records the actual
training dynamics of the scored pool subset every epoch (`strategy=td_margin_oracle` by
default: it trains exactly like TiDAL-M; `td_entropy_oracle` trains like TiDAL-H). At every
query the loop compares the module's one-pass prediction with the recorded mean softmax and
writes `td_pool_kl` (mean KL(actual ‖ predicted)) and `td_pool_spearman` (rank correlation of
the two entropies over the pool subset) into results.csv. The AL run lives in `al_run/` inside
the analysis folder: re-running the command resumes a killed run and reuses a finished one.
Writes `td_prediction.png` (KL and rank correlation per cycle) and `td_prediction.json`.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from tidal_lightning.al import loop
from tidal_lightning.analysis import common
from tidal_lightning.errors import ConfigError
from tidal_lightning.strategies.base import Strategy, build_strategy

SUMMARY = (
    "KL and rank correlation of predicted vs actual pool TD per AL cycle (TiDAL §5.4);\n"
    "    runs the AL loop, strategy=td_margin_oracle unless strategy=td_entropy_oracle is given"
)
DEFAULT_OVERRIDES = ("strategy=td_margin_oracle",)
RUN_FOLDER = "al_run"
# What a strategy must read for the loop to compare predicted and recorded TD.
TD_OUTPUTS = frozenset({"td_probs", "pool_td"})
# results.csv columns reported per cycle; the margin one only where the loop writes it.
COLUMNS = ("td_pool_kl", "td_pool_spearman", "td_pool_margin_spearman")


@dataclasses.dataclass
class Options:
    """No settings of its own: the AL run is configured with the usual overrides."""


def read_query_rows(results_csv: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The results.csv rows of cycles with a query, and which TD columns the file has.

    Returns:
        Rows `{cycle, num_labeled, test_acc, <TD columns>}` (numbers), and the column names.
    """
    with open(results_csv, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        present = [c for c in COLUMNS if c in (reader.fieldnames or [])]
        rows = [
            {
                "cycle": int(row["cycle"]),
                "num_labeled": int(row["num_labeled"]),
                "test_acc": float(row["test_acc"]),
                **{c: float(row[c]) for c in present},
            }
            for row in reader
            if row["td_pool_kl"] != ""
        ]
    return rows, present


def run(
    cfg: DictConfig, options: Options, request: common.Request, out_dir: Path
) -> dict[str, Any]:
    strategy: Strategy = build_strategy(cfg.strategy)
    strategy_name = type(strategy).__module__.rsplit(".", 1)[-1]
    if TD_OUTPUTS - strategy.needs:
        raise ConfigError(
            f"strategy={strategy_name} does not train the TD module and record the pool's "
            "training dynamics, so there is nothing to compare; use strategy=td_margin_oracle "
            "(the default, trains like tidal_margin) or strategy=td_entropy_oracle "
            "(trains like tidal_entropy)"
        )
    common.require(
        cfg.al.cycles >= 2,
        f"al.cycles={cfg.al.cycles}: the TD numbers come from each cycle's query and the last "
        "cycle has none, so td_prediction needs al.cycles >= 2",
    )
    run_dir = out_dir / RUN_FOLDER
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
    loop.run(cfg)

    rows, columns = read_query_rows(run_dir / "results.csv")
    margin = "td_pool_margin_spearman" in columns
    result: dict[str, Any] = {
        "analysis": "td_prediction",
        "config": {
            "strategy": strategy_name,
            "dataset": cfg.dataset._target_.rsplit(".", 1)[-1],
            "imbalance_ratio": float(cfg.dataset.imbalance_ratio),
            "backbone": cfg.model.backbone._target_.rsplit(".", 1)[-1],
            "max_epochs": int(cfg.trainer.max_epochs),
            "record_every": int(strategy.record_every),
            "al": {k: cfg.al[k] for k in ("initial", "budget", "cycles", "pool_subset")},
            "overrides": request.computing_overrides,
        },
        "seed": int(cfg.seed),
        "run_dir": str(run_dir),
        "columns": {
            "num_labeled": "labeled samples the cycle's model was trained on",
            "td_pool_kl": "mean over the scored pool subset of KL(actual TD ‖ predicted TD)",
            "td_pool_spearman": "Spearman correlation of entropy(predicted TD) and "
            "entropy(actual TD) over the pool subset",
        },
        "cycles": rows,
    }
    if margin:
        result["columns"]["td_pool_margin_spearman"] = (
            "Spearman correlation of the margin uncertainties of predicted and actual TD"
        )
    else:
        result["margin_rank_correlation"] = (
            "not reported: the loop records only the entropy rank correlation, and the "
            "predicted and recorded TD are not kept after the query"
        )
    _plot(rows, margin, result, out_dir / "td_prediction.png")
    common.write_json(out_dir / "td_prediction.json", result)
    return result


def _plot(rows: list[dict[str, Any]], margin: bool, result: dict[str, Any], path: Path) -> None:
    figure, axes = common.new_figure(1, 2, (10.0, 4.0))
    labeled = [r["num_labeled"] for r in rows]
    kl_axis, rank_axis = axes[0]
    kl_axis.plot(labeled, [r["td_pool_kl"] for r in rows], marker="o", color="C0")
    kl_axis.set_title("KL(actual TD ‖ predicted TD), pool mean")
    kl_axis.set_ylabel("KL (nats)")
    rank_axis.plot(
        labeled, [r["td_pool_spearman"] for r in rows], marker="o", color="C1", label="entropy"
    )
    if margin:
        rank_axis.plot(
            labeled,
            [r["td_pool_margin_spearman"] for r in rows],
            marker="s",
            color="C2",
            label="margin",
        )
    rank_axis.set_title("rank correlation, predicted vs actual TD uncertainty")
    rank_axis.set_ylabel("Spearman ρ")
    rank_axis.legend(fontsize="small")
    for axis in (kl_axis, rank_axis):
        axis.set_xlabel("labeled samples")
        axis.grid(alpha=0.3)
    config = result["config"]
    figure.suptitle(f"{config['strategy']} on {config['dataset']}, seed {result['seed']}")
    common.save_figure(figure, path)


def report(result: dict[str, Any]) -> str:
    lines = [f"{'cycle':>5} {'labeled':>8} {'test_acc':>9} {'KL':>8} {'spearman':>9}"]
    lines += [
        f"{r['cycle']:>5} {r['num_labeled']:>8} {r['test_acc']:>9.4f} "
        f"{r['td_pool_kl']:>8.4f} {r['td_pool_spearman']:>9.4f}"
        for r in result["cycles"]
    ]
    return "\n".join(lines)
