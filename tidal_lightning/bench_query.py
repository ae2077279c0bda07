"""`python -m tidal_lightning.bench_query`: what a strategy's query costs on large pools.

Each (strategy, pool size, model) runs `strategy.select` once in a fresh child process on
synthetic pool outputs of the real shapes: softmax over K classes, penultimate embeddings of
the model's width D, T MC-dropout softmaxes (the strategy's own `mc_samples`), a labeled set,
and, for the strategies that run the model (NoiseStability), the model itself on random
images. The child reports the query's seconds, its resident memory before the query (the
inputs) and the peak during the query (Linux `VmHWM`, reset after the inputs are built); a
child per measurement keeps one query's peak from hiding the next one's.

Models: `small_cnn` (the CPU recipe's, D = 128, 1×28×28 images) and `resnet18` (D = 512,
3×32×32 images). Results go to `bench_query.json` (or `--out`) and a table on stdout.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from tidal_lightning.bench import SyntheticSplit, peak_rss_mb
from tidal_lightning.models.backbones import Backbone, ResNet18, SmallCNN
from tidal_lightning.models.system import ActiveLearningSystem
from tidal_lightning.strategies.base import PoolOutputs, QueryContext, Strategy
from tidal_lightning.strategies.noise_stability import NoiseStability

CONF = Path(__file__).resolve().parent.parent / "conf"
if not (CONF / "strategy").is_dir():  # a non-editable install ships conf/ inside the package
    CONF = Path(__file__).resolve().parent / "conf"

MODELS = {"small_cnn": (128, (1, 28, 28)), "resnet18": (512, (3, 32, 32))}
STRATEGIES = ("bald", "batchbald", "epig", "bait", "alfa_mix", "noise_stability")


def current_rss_mb() -> float:
    """Resident memory now (Linux `/proc/self/statm`); the peak where that is missing."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except OSError:
        return peak_rss_mb()
    return pages * resource.getpagesize() / 2**20


def reset_peak_rss() -> bool:
    """Restarts the kernel's peak-RSS count (`VmHWM`, Linux >= 4.0); False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_since_reset_mb() -> float:
    """`VmHWM`: the peak RSS since `reset_peak_rss` (the process's peak where it is missing)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return peak_rss_mb()
    line = next((row for row in status.splitlines() if row.startswith("VmHWM:")), None)
    return int(line.split()[1]) / 2**10 if line else peak_rss_mb()


def load_strategy(name: str) -> Strategy:
    node = OmegaConf.load(CONF / "strategy" / f"{name}.yaml")
    assert isinstance(node, DictConfig)
    strategy: Strategy = instantiate(node)
    return strategy


def backbone_for(model: str, num_classes: int) -> Backbone:
    if model == "small_cnn":
        return SmallCNN(num_classes=num_classes, in_channels=1, width=16)
    return ResNet18(num_classes=num_classes, in_channels=3)


def synthetic_pool(
    strategy: Strategy, size: int, model: str, num_classes: int, num_labeled: int
) -> PoolOutputs:
    """Pool outputs of realistic shape and spread: confident and unsure samples, T masks."""
    dim, image_shape = MODELS[model]
    generator = torch.Generator().manual_seed(0)
    logits = 3.0 * torch.randn(size + num_labeled, num_classes, generator=generator)
    probs = logits.softmax(dim=1)
    embeddings = torch.randn(size + num_labeled, dim, generator=generator).relu()
    outputs = {
        "probs": probs[:size],
        "embeddings": embeddings[:size],
        "labeled_probs": probs[size:],
        "labeled_embeddings": embeddings[size:],
    }
    if strategy.mc_samples:
        noise = torch.randn(size, strategy.mc_samples, num_classes, generator=generator)
        mc_probs = (logits[:size, None, :] + noise).softmax(dim=2)
        outputs["mc_probs"] = mc_probs
        outputs["mc_mean_probs"] = mc_probs.mean(dim=1)
        outputs["mc_mean_entropy"] = torch.special.entr(mc_probs).sum(dim=2).mean(dim=1)
        del mc_probs, noise
    outputs = {name: value for name, value in outputs.items() if name in strategy.needs}
    if "probs" in strategy.needs:
        outputs["probs"] = probs[:size].clone()
    targets = torch.randint(num_classes, (num_labeled,), generator=generator)
    backbone = backbone_for(model, num_classes).eval()
    system = ActiveLearningSystem(backbone, num_classes, optimizer=torch.optim.SGD)
    data = SyntheticSplit(
        size, image_shape, num_classes, (0.5,) * image_shape[0], (0.25,) * image_shape[0],
        batch_size=64, eval_batch_size=1024, pad=0, flip=False,
    )  # fmt: skip
    if isinstance(strategy, NoiseStability):  # the one that runs the model on the images
        data.load()
    context = QueryContext(
        system=system,
        datamodule=data,
        device=torch.device("cpu"),
        seed=0,
        cycle=0,
        labeled_indices=torch.arange(size, size + num_labeled),
        pool_indices=torch.arange(size),
    )
    return PoolOutputs(torch.arange(size), outputs, labeled_targets=targets, context=context)


@torch.no_grad()
def measure(name: str, size: int, model: str, budget: int, num_classes: int) -> dict[str, Any]:
    """One query, in this process: seconds, RSS before and peak RSS."""
    strategy = load_strategy(name)
    pool = synthetic_pool(strategy, size, model, num_classes, num_labeled=1000)
    gc.collect()
    # the inputs' own temporaries are behind us: the peak from here on is the query's
    query_peak_only = reset_peak_rss()
    before = current_rss_mb()
    started = time.perf_counter()
    picked = strategy.select(pool, budget, torch.Generator().manual_seed(0))
    seconds = time.perf_counter() - started
    assert len(picked) == budget and len(set(picked.tolist())) == budget
    return {
        "strategy": name,
        "pool": size,
        "model": model,
        "dim": MODELS[model][0],
        "classes": num_classes,
        "mc_samples": strategy.mc_samples,
        "budget": budget,
        "seconds": round(seconds, 2),
        "rss_before_mb": round(before, 1),
        "peak_rss_mb": round(peak_rss_since_reset_mb(), 1),
        "peak_since_inputs": query_peak_only,
        "process_peak_rss_mb": round(peak_rss_mb(), 1),
        "threads": torch.get_num_threads(),
        "load_average": [round(x, 1) for x in os.getloadavg()],
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--pools", default="10000,100000", help="pool sizes, comma-separated")
    parser.add_argument("--models", default="small_cnn,resnet18")
    parser.add_argument("--budget", type=int, default=100)
    parser.add_argument(
        "--budget-for",
        default="batchbald=5",
        help="per-strategy budgets, name=B,... (BatchBALD's joint entropy costs O(N·M·T·K) "
        "per pick: 5 picks stay in the exact regime)",
    )
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--skip", default="noise_stability@resnet18", help="name@model,...")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads in each child (0: torch's default)"
    )
    parser.add_argument("--out", type=Path, default=Path("bench_query.json"))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child: name,size,model,budget
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one:
        name, size, model, budget = args.one.split(",")
        if args.threads:
            torch.set_num_threads(args.threads)
        row = measure(name, int(size), model, int(budget), args.classes)
        print(json.dumps(row))
        return 0
    budgets = dict(item.split("=") for item in args.budget_for.split(",") if item)
    skip = set(args.skip.split(","))
    results = []
    print(f"{'strategy':16} {'model':9} {'pool':>7} {'B':>4} {'T':>4} {'s':>8} {'MB before':>10} "
          f"{'MB peak':>8}")  # fmt: skip
    for model in args.models.split(","):
        for name in args.strategies.split(","):
            if f"{name}@{model}" in skip:
                continue
            for size in (int(s) for s in args.pools.split(",")):
                budget = int(budgets.get(name, args.budget))
                one = f"{name},{size},{model},{budget}"
                command = [sys.executable, "-m", "tidal_lightning.bench_query", "--one", one]
                command += ["--classes", str(args.classes), "--threads", str(args.threads)]
                done = subprocess.run(command, capture_output=True, text=True, check=False)
                if done.returncode:
                    print(f"{name} {model} {size}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
                    return 1
                row = json.loads(done.stdout.strip().splitlines()[-1])
                results.append(row)
                print(f"{name:16} {model:9} {size:>7} {budget:>4} {row['mc_samples']:>4} "
                      f"{row['seconds']:>8.2f} {row['rss_before_mb']:>10.0f} "
                      f"{row['peak_rss_mb']:>8.0f}", flush=True)  # fmt: skip
                args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
