"""`python -m tidal_lightning.bench_query_systems`: what a query of the heavier strategies costs.

For each strategy and pool size, one fresh process builds synthetic inputs of the
Fashion-MNIST shape and runs the strategy's `select` once, as the loop does after the pool
pass: wall time, CPU time (user + system, which other processes on the same cores inflate
far less), the RSS before the query and the largest RSS sampled while it runs. The pool pass
itself (the classifier over the pool) is not included; it is the same for every strategy and
`make bench` measures it.

Inputs (seeded): 1000 labeled samples, a budget of 1000, and
- embeddings (`kcenter_greedy`, `coreset_mip`): 512-d (ResNet-18's penultimate layer), drawn
  around 10 class centers;
- images (`vaal`, `ta_vaal`): 1×28×28 uint8 from `SyntheticImages`, read through `gather`;
  VAAL trains `--vaal-iterations` iterations (its default is 100 epochs · (L + N) / 128:
  8 593 at 10k, 78 906 at 100k) and then scores the whole pool; the table gives seconds per
  iteration and for the pool scoring, so a full query is `iterations × per-iteration + scoring`;
- softmax outputs and labels (`gt_oracle`).

Each run prints one JSON line; the parent prints the table and writes `bench_query_systems.json`.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

LABELED = 1000
BUDGET = 1000
DIMENSION = 512
CLASSES = 10
STRATEGIES = ("kcenter_greedy", "coreset_mip", "vaal", "ta_vaal", "gt_oracle")


def rss_mb() -> float:
    """This process's resident set size now (Linux `/proc/self/statm`)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


class PeakRSS:
    """The largest RSS seen while the `with` block runs, sampled every 5 ms by a thread.

    `ru_maxrss` is the peak of the whole process, setup included (VAAL's synthetic images
    are built in float before they are stored as uint8), so it cannot show what the query
    itself needed.
    """

    def __enter__(self) -> PeakRSS:
        self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def cpu_seconds() -> float:
    """User + system CPU time of this process: less sensitive than wall time to other
    processes sharing the cores (on a busy machine wall time can be many times larger)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def embeddings(count: int, generator: torch.Generator) -> torch.Tensor:
    centers = torch.randn(CLASSES, DIMENSION, generator=torch.Generator().manual_seed(0)) * 2
    labels = torch.randint(0, CLASSES, (count,), generator=generator)
    return centers[labels] + torch.randn(count, DIMENSION, generator=generator)


def measure(name: str, pool_size: int, vaal_iterations: int) -> dict[str, Any]:
    """One query of `name` on a pool of `pool_size`, in this process."""
    from tidal_lightning.strategies.base import PoolOutputs, QueryContext, Strategy

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    device = torch.device("cpu")
    row: dict[str, Any] = {"strategy": name, "pool": pool_size}
    strategy: Strategy
    if name in ("kcenter_greedy", "coreset_mip"):
        from tidal_lightning.strategies.coreset_mip import CoreSetMIP
        from tidal_lightning.strategies.kcenter_greedy import KCenterGreedy

        outputs = {
            "embeddings": embeddings(pool_size, generator),
            "labeled_embeddings": embeddings(LABELED, generator),
        }
        strategy = KCenterGreedy() if name == "kcenter_greedy" else CoreSetMIP()
        pool = PoolOutputs(torch.arange(pool_size), outputs)
    elif name == "gt_oracle":
        from tidal_lightning.strategies.gt_oracle import GroundTruthOracle

        logits = torch.randn(pool_size, CLASSES, generator=generator)
        outputs = {
            "probs": logits.softmax(dim=1),
            "pool_targets": torch.randint(0, CLASSES, (pool_size,), generator=generator),
        }
        strategy = GroundTruthOracle()
        pool = PoolOutputs(torch.arange(pool_size), outputs)
    else:
        from tidal_lightning.data.datamodules import SyntheticImages
        from tidal_lightning.strategies.ta_vaal import TAVAAL
        from tidal_lightning.strategies.vaal import VAAL

        per_class = -(-(pool_size + LABELED) // CLASSES)
        data = SyntheticImages(
            num_classes=CLASSES, train_per_class=per_class, test_per_class=1, image_size=28,
            channels=1, eval_batch_size=1024,
        )  # fmt: skip
        data.load()
        order = torch.randperm(data.num_train, generator=generator)
        labeled, unlabeled = order[:LABELED], order[LABELED : LABELED + pool_size]
        context = QueryContext(
            system=None,  # type: ignore[arg-type]  # VAAL does not read the classifier
            datamodule=data,
            device=device,
            seed=0,
            cycle=1,
            labeled_indices=labeled,
            pool_indices=unlabeled,
        )
        outputs = {
            "predicted_loss": torch.randn(pool_size, generator=generator),
            "labeled_predicted_loss": torch.randn(LABELED, generator=generator),
        }
        strategy = (VAAL if name == "vaal" else TAVAAL)(iterations=vaal_iterations)
        pool = PoolOutputs(torch.arange(pool_size), outputs, context=context)
        _time_vaal_parts(strategy, pool, row)
    gc.collect()
    row["rss_before_mb"] = round(rss_mb(), 1)
    with PeakRSS() as memory:
        started, cpu_started = time.perf_counter(), cpu_seconds()
        picks = strategy.select(pool, BUDGET, torch.Generator().manual_seed(2))
        row["seconds"] = round(time.perf_counter() - started, 2)
        row["cpu_seconds"] = round(cpu_seconds() - cpu_started, 2)
    row["peak_rss_mb"] = round(memory.peak, 1)
    assert len(set(picks.tolist())) == BUDGET
    row.update(pool.diagnostics)
    return row


def _time_vaal_parts(strategy: Any, pool: Any, row: dict[str, Any]) -> None:
    """Splits a VAAL query into training and pool scoring by timing `train_networks` and
    `pool_logits` as `select` calls them."""
    train, score = strategy.train_networks, strategy.pool_logits

    def timed_train(*args: Any, **kwargs: Any) -> Any:
        started, cpu_started = time.perf_counter(), cpu_seconds()
        result = train(*args, **kwargs)
        row["train_seconds"] = round(time.perf_counter() - started, 2)
        row["seconds_per_iteration"] = round(row["train_seconds"] / strategy.iterations, 2)
        row["cpu_seconds_per_iteration"] = round(
            (cpu_seconds() - cpu_started) / strategy.iterations, 2
        )
        return result

    def timed_score(*args: Any, **kwargs: Any) -> Any:
        started, cpu_started = time.perf_counter(), cpu_seconds()
        result = score(*args, **kwargs)
        row["scoring_seconds"] = round(time.perf_counter() - started, 2)
        row["scoring_cpu_seconds"] = round(cpu_seconds() - cpu_started, 2)
        return result

    strategy.train_networks, strategy.pool_logits = timed_train, timed_score


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--sizes", nargs="+", type=int, default=[10_000, 100_000])
    parser.add_argument("--vaal-iterations", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=Path("bench_query_systems.json"))
    parser.add_argument("--one", nargs=2, metavar=("STRATEGY", "POOL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.vaal_iterations)))
        return
    rows = []
    for size in args.sizes:
        for name in args.strategies:
            done = subprocess.run(
                [
                    sys.executable, "-m", "tidal_lightning.bench_query_systems",
                    "--one", name, str(size),
                    "--vaal-iterations", str(args.vaal_iterations), "--threads", str(args.threads),
                ],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
            # after every row: a long run stopped half-way keeps what it measured
            args.out.write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=1))
    print(
        f"\n{'strategy':<16}{'pool':>8}{'query s':>9}{'CPU s':>9}{'RSS before':>12}"
        f"{'query peak':>12}  notes"
    )
    for row in rows:
        notes = ""
        if "seconds_per_iteration" in row:
            notes = (
                f"{row['seconds_per_iteration']} s/iteration "
                f"({row['cpu_seconds_per_iteration']} CPU s), pool scoring "
                f"{row['scoring_seconds']} s ({row['scoring_cpu_seconds']} CPU s)"
            )
        elif "coreset_mip" in row:
            notes = (
                f"{'MIP' if row['coreset_mip'] else 'greedy fallback'}, "
                f"{row['coreset_mip_solves']} solves, {row['coreset_mip_pairs']} pairs"
            )
        print(
            f"{row['strategy']:<16}{row['pool']:>8}{row['seconds']:>9}{row['cpu_seconds']:>9}"
            f"{row['rss_before_mb']:>10.0f}MB{row['peak_rss_mb']:>10.0f}MB  {notes}"
        )


if __name__ == "__main__":
    main()
