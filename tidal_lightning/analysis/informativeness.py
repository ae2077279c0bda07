"""`informativeness` (label-dispersion paper §3.2): how wrong is the model on what each
strategy would query?

One AL cycle as the loop runs cycle 0: the initial labeled set (`al.initial`, drawn by
`draw_initial` from the `initial` stream), the pool subset (`draw_pool_subset`), and one model
trained on the labeled set with TiDAL's TD module and the per-epoch pool recorder (the system
`strategy=td_margin_oracle` trains), so every strategy that reads class probabilities,
embeddings, TD-module output, recorded label counts or recorded TD can rank the same subset
with the same model. For x = 1..50 % the JSON and the PNG give the model's accuracy (argmax of
its softmax against the true label) on the top x % of the subset each strategy ranks first:
the lower, the more of the model's mistakes the strategy finds. Score strategies are ranked by
score; set strategies (random, coreset, badge) run `select` once for 50 % and their picks,
which come in pick order, are cut at each x (greedy k-center and k-means++ seeding are
sequential, so the first k picks are the selection of size k). bald and lloss need another
system (query-time dropout / a loss-prediction head) and are left out.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from tidal_lightning.al.loop import build_system, draw_pool_subset
from tidal_lightning.al.pool import LabelPool, draw_initial
from tidal_lightning.al.scoring import pool_pass
from tidal_lightning.analysis import common
from tidal_lightning.analysis.common import AnalysisError
from tidal_lightning.analysis.metrics import accuracy_at_top, top_sizes
from tidal_lightning.config_checks import validate_pool_sizes
from tidal_lightning.seeding import make_generator
from tidal_lightning.strategies.base import RECORDED_OUTPUTS, Strategy

log = logging.getLogger(__name__)

SUMMARY = "accuracy of the model on the top x% each strategy would query (dispersion §3.2)"
PERCENTS = list(range(1, 51))
# The strategy whose training recipe the one model follows: TD module + per-epoch recorder.
HOST_STRATEGY = "td_margin_oracle"
DEFAULT_STRATEGIES = (
    "random",
    "entropy",
    "margin",
    "least_confidence",
    "tidal_entropy",
    "tidal_margin",
    "dispersion",
    "cal",
    "coreset",
    "badge",
    "td_entropy_oracle",
    "td_margin_oracle",
)
# Outputs the host system cannot give: MC dropout needs the strategy's query-time dropout
# (its system_options), the predicted loss a loss-prediction head trained with the model.
_MC = "MC dropout needs the strategy's query-time dropout, which the host system lacks"
UNAVAILABLE_OUTPUTS = {
    "mc_probs": _MC,
    "mc_mean_probs": _MC,
    "mc_mean_entropy": _MC,
    "predicted_loss": "needs Learning Loss's loss-prediction head trained with the model",
}
NOT_SCORED = {
    "bald": UNAVAILABLE_OUTPUTS["mc_mean_probs"],
    "lloss": UNAVAILABLE_OUTPUTS["predicted_loss"],
}


@dataclasses.dataclass
class Options:
    strategies: list[str] = dataclasses.field(
        default_factory=lambda: list(DEFAULT_STRATEGIES),
        metadata={"help": "the strategies to rank the pool subset with (conf/strategy/ names)"},
    )


def load_strategy(name: str) -> Strategy:
    """The strategy `strategy=<name>` would run, from its yaml in the config folder."""
    from tidal_lightning.__main__ import config_dir

    path = Path(config_dir()) / "strategy" / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise AnalysisError(f"no strategy {name!r} (conf/strategy/{name}.yaml); known: {known}")
    node = OmegaConf.load(path)
    # `# @package _global_` strategy files (bald) put the strategy under `strategy:`
    if isinstance(node, DictConfig) and "strategy" in node:
        node = node.strategy
    strategy: Strategy = instantiate(node)
    return strategy


def is_set_strategy(strategy: Strategy) -> bool:
    """It chooses a set (overrides `select`) instead of scoring samples one by one."""
    return type(strategy).select is not Strategy.select


def run(
    cfg: DictConfig, options: Options, request: common.Request, out_dir: Path
) -> dict[str, Any]:
    common.reject_strategy_override(
        request,
        "it ranks the pool with every strategy in analysis.strategies (set that instead)",
    )
    names = list(options.strategies)
    common.require(bool(names), "analysis.strategies is empty: name at least one strategy")
    common.require(len(set(names)) == len(names), f"analysis.strategies={names} repeats a name")
    strategies = {name: load_strategy(name) for name in names}
    problems = [
        f"{name}: {UNAVAILABLE_OUTPUTS[need]}"
        for name, strategy in strategies.items()
        for need in sorted(strategy.needs & UNAVAILABLE_OUTPUTS.keys())
    ]
    if problems:
        raise AnalysisError(
            "informativeness trains one model with the TD module and scores every strategy "
            "with it; these need another model:\n  " + "\n  ".join(problems)
        )
    seed = int(cfg.seed)
    datamodule, pool_indices = common.load_data(cfg, float(cfg.dataset.imbalance_ratio))
    validate_pool_sizes(cfg, len(pool_indices))
    targets = datamodule.train_targets
    initial = draw_initial(
        targets,
        pool_indices,
        cfg.al.initial,
        datamodule.num_classes,
        cfg.al.initial_mode,
        make_generator(seed, 0, "initial"),
    )
    pool = LabelPool(len(targets), pool_indices)
    pool.label(initial)
    common.require(
        pool.num_unlabeled >= 2,
        f"only {pool.num_unlabeled} unlabeled pool samples are left after al.initial="
        f"{cfg.al.initial}; lower al.initial",
    )
    subset = draw_pool_subset(pool, cfg, 0)

    host = load_strategy(HOST_STRATEGY)
    common.seed_model(cfg)
    system, callbacks, recorder = build_system(cfg, datamodule, host, subset)
    assert recorder is not None and system.td_module is not None
    log.info(
        "informativeness: training on %d labeled samples, scoring %d", pool.num_labeled, len(subset)
    )
    trainer, test_acc = common.train(
        cfg, system, callbacks, datamodule, pool.labeled_indices, out_dir
    )
    device = trainer.strategy.root_device
    needs = frozenset().union(*(s.needs for s in strategies.values())) | {"probs"}
    outputs = pool_pass(
        system, datamodule, subset, pool.labeled_indices, needs - RECORDED_OUTPUTS, device
    )
    outputs.outputs.update(recorder.outputs())
    correct = outputs["probs"].argmax(dim=1) == targets[subset].to(device)

    sizes = top_sizes(len(subset), PERCENTS)
    table = {}
    for name, strategy in strategies.items():
        # positions in the order the strategy would query them (score order, or pick order)
        order = strategy.select(outputs, sizes[-1], make_generator(seed, 0, "select", device))
        table[name] = accuracy_at_top(order, correct, sizes)

    result: dict[str, Any] = {
        "analysis": "informativeness",
        "config": {
            **common.config_summary(cfg, datamodule),
            "imbalance_ratio": float(cfg.dataset.imbalance_ratio),
            "al": {k: cfg.al[k] for k in ("initial", "initial_mode", "pool_subset")},
            "trained_as": HOST_STRATEGY,
            "td_weight": float(cfg.model.td_weight),
            "overrides": request.computing_overrides,
            "options": dataclasses.asdict(options),
        },
        "seed": seed,
        "num_labeled": pool.num_labeled,
        "subset_size": len(subset),
        "test_acc": test_acc,
        "subset_acc": float(correct.double().mean()),
        "percents": PERCENTS,
        "top_sizes": sizes,
        "accuracy": table,
        "ranking": {
            name: "prefixes of one select() run in pick order"
            if is_set_strategy(strategy)
            else "score, highest first"
            for name, strategy in strategies.items()
        },
        "not_scored": {k: v for k, v in NOT_SCORED.items() if k not in strategies},
        "note": "one model (trained with the TD module, as td_margin_oracle trains) ranks the "
        "pool subset for every strategy; accuracy = argmax of its softmax vs the true label "
        "on the top ceil(x% of the subset) samples",
    }
    _plot(table, result, out_dir / "informativeness.png")
    common.write_json(out_dir / "informativeness.json", result)
    return result


def _plot(table: dict[str, list[float]], result: dict[str, Any], path: Path) -> None:
    figure, axes = common.new_figure(1, 1, (8.0, 5.0))
    axis = axes[0, 0]
    for index, (name, accuracies) in enumerate(table.items()):
        style = "--" if name.startswith("td_") else "-"
        axis.plot(PERCENTS, accuracies, style, color=f"C{index % 10}", label=name)
    axis.axhline(result["subset_acc"], color="black", lw=0.8, ls=":", label="whole subset")
    axis.set_xlabel("top x % of the pool subset the strategy ranks first")
    axis.set_ylabel("model accuracy on those samples")
    axis.set_xlim(1, PERCENTS[-1])
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small", ncol=2)
    config = result["config"]
    axis.set_title(
        f"{config['dataset']}: {result['num_labeled']} labeled, {result['subset_size']} scored "
        "(lower = more informative)"
    )
    common.save_figure(figure, path)


def report(result: dict[str, Any]) -> str:
    shown = [5, 10, 25, 50]
    lines = [f"{'strategy':18s}" + "".join(f"{f'top {x}%':>9}" for x in shown)]
    for name, accuracies in result["accuracy"].items():
        lines.append(f"{name:18s}" + "".join(f"{accuracies[x - 1]:9.4f}" for x in shown))
    lines.append(
        f"subset accuracy {result['subset_acc']:.4f}, test accuracy {result['test_acc']:.4f}"
    )
    return "\n".join(lines)
