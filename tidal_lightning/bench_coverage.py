"""Cost of the coverage strategies and quality of the SimCLR features, measured in one run.

    python -m tidal_lightning.bench_coverage query    # query seconds and peak memory per strategy
    python -m tidal_lightning.bench_coverage simclr   # SimCLR on real Fashion-MNIST: time, kNN acc

`query`: synthetic L2-normalised features (a mixture of 50 Gaussian clusters, so k-means,
the purity rule and the kernels meet structure), pool sizes 10k and 100k, D = 128 (the
CPU recipe's small CNN) and 512 (ResNet-18), 1000 labeled, a budget of 1000. Peak memory
is the resident-set high-water mark during the selection minus the size before it
(`/proc/self/clear_refs` resets the mark), each selection in a fresh process, so it counts
torch's CPU allocations too and no earlier selection's freed memory hides them.

`simclr`: trains the encoder of `features.simclr` (small CNN, width 16) on the 60k training
images, then compares 20-NN accuracy on the 10k test images (cosine, majority vote, the
training split as the reference set) of its features against raw pixels and against the
same encoder with random weights. Writes `bench_coverage.json`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from tidal_lightning.strategies.maxherding import herding_select
from tidal_lightning.strategies.probcover import probcover_select
from tidal_lightning.strategies.typiclust import typiclust_select
from tidal_lightning.strategies.uherding import min_pairwise_distance

STRATEGIES = ("typiclust", "probcover", "maxherding", "uherding")


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def measure(run: Callable[[], object]) -> tuple[float, float]:
    """(seconds, peak resident memory above the start in MB) of `run()`."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # resets VmHWM to the current RSS
    before = _rss_kb("VmRSS")
    started = time.perf_counter()
    run()
    seconds = time.perf_counter() - started
    return seconds, (_rss_kb("VmHWM") - before) / 1024


def mixture(num: int, dim: int, generator: torch.Generator, clusters: int = 50) -> Tensor:
    """`[num, dim]` unit vectors around `clusters` random centres."""
    centres = torch.randn(clusters, dim, generator=generator)
    members = torch.randint(clusters, (num,), generator=generator)
    points = centres[members] + 0.6 * torch.randn(num, dim, generator=generator)
    return F.normalize(points, dim=1)


def selections(
    pool: Tensor, known: Tensor, budget: int, uncertainty: Tensor
) -> dict[str, Callable[[], object]]:
    """Each strategy's selection on `[N, D]` pool and `[L, D]` labeled features, as a call."""
    return {
        "typiclust": lambda: typiclust_select(
            pool, known, budget, torch.Generator().manual_seed(0)
        ),
        "probcover": lambda: probcover_select(
            pool, known, budget, torch.Generator().manual_seed(0), num_classes=10
        ),
        "maxherding": lambda: herding_select(pool, known, budget, bandwidth=1.0),
        "uherding": lambda: herding_select(
            pool, known, budget, min_pairwise_distance(known), uncertainty
        ),
    }


def _one_query(
    name: str, size: int, dim: int, labeled: int, budget: int, threads: int, out: Any
) -> None:
    """Child process: features, then one timed selection; sends (seconds, peak MB) to `out`."""
    if threads:
        torch.set_num_threads(threads)
    torch.set_grad_enabled(False)
    generator = torch.Generator().manual_seed(0)
    points = mixture(size + labeled, dim, generator)
    cases = selections(points[:size], points[size:], budget, torch.rand(size, generator=generator))
    out.put(measure(cases[name]))


def query_bench(
    sizes: list[int],
    dims: list[int],
    labeled: int,
    budget: int,
    threads: int,
    strategies: list[str],
) -> list[dict[str, Any]]:
    """Each selection in a fresh process, so its memory peak is its own (not the allocator's
    leftovers from the selection before)."""
    context = multiprocessing.get_context("spawn")
    rows = []
    for dim in dims:
        for size in sizes:
            for name in strategies:
                results = context.Queue()
                child = context.Process(
                    target=_one_query, args=(name, size, dim, labeled, budget, threads, results)
                )
                child.start()
                seconds, peak_mb = results.get()
                child.join()
                row = {"strategy": name, "pool": size, "dim": dim, "seconds": seconds}
                row["peak_mb"] = peak_mb
                row["load_average"] = os.getloadavg()[0]
                rows.append(row)
                print(
                    f"{name:>10}  pool {size:>6}  D {dim:>3}  {seconds:8.1f} s  "
                    f"peak +{peak_mb:7.0f} MB  (load {row['load_average']:.1f})",
                    flush=True,
                )
    return rows


def knn_accuracy(
    reference: Tensor, reference_labels: Tensor, queries: Tensor, labels: Tensor, k: int = 20
) -> float:
    """Majority vote of the `k` most cosine-similar references, in blocks of 1024 queries."""
    reference = F.normalize(reference.float(), dim=1)
    queries = F.normalize(queries.float(), dim=1)
    correct = 0
    for start in range(0, len(queries), 1024):
        nearest = (queries[start : start + 1024] @ reference.T).topk(k, dim=1).indices
        votes = torch.mode(reference_labels[nearest], dim=1).values
        correct += int((votes == labels[start : start + 1024]).sum())
    return correct / len(queries)


def simclr_bench(epochs: int, root: str, cache_dir: str) -> dict[str, Any]:
    from tidal_lightning.data.datamodules import FashionMNIST
    from tidal_lightning.features import simclr
    from tidal_lightning.features.settings import SimCLRSettings

    data = FashionMNIST(root=root, download=False, system_dir="/usr/share/datasets/fashion-mnist")
    data.load()
    settings = SimCLRSettings(
        encoder={"_target_": "tidal_lightning.models.backbones.SmallCNN", "width": 16},
        epochs=epochs,
    )
    device = torch.device("cpu")
    train = torch.arange(data.num_train)
    started = time.perf_counter()
    encoder = simclr.load_or_train(settings, data, train, device, cache_dir)
    train_seconds = time.perf_counter() - started
    test_images = data.test_images

    @torch.inference_mode()
    def embed(model: torch.nn.Module, images: Tensor) -> Tensor:
        blocks = [
            model.embed(data.normalize(images[s : s + 1024]))[0]  # type: ignore[operator]
            for s in range(0, len(images), 1024)
        ]
        return torch.cat(blocks)

    random_encoder = simclr.build_encoder(settings, data.in_channels, seed=1).eval()
    results = {
        "epochs": epochs,
        "threads": torch.get_num_threads(),
        "train_seconds": train_seconds,
        "load_average": os.getloadavg(),
        "knn20_simclr": knn_accuracy(
            embed(encoder, data.train_images),
            data.train_targets,
            embed(encoder, test_images),
            data.test_targets,
        ),
        "knn20_random_encoder": knn_accuracy(
            embed(random_encoder, data.train_images),
            data.train_targets,
            embed(random_encoder, test_images),
            data.test_targets,
        ),
        "knn20_pixels": knn_accuracy(
            data.train_images.flatten(1).float(),
            data.train_targets,
            test_images.flatten(1).float(),
            data.test_targets,
        ),
    }
    print(json.dumps(results, indent=2), flush=True)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("section", choices=["query", "simclr"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--labeled", type=int, default=1000)
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--root", default="data")
    parser.add_argument("--cache-dir", default="data/feature_cache")
    parser.add_argument("--out", default="bench_coverage.json")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        # on a shared, oversubscribed CPU one thread avoids the pool's spin-waits
        torch.set_num_threads(args.threads)
    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()}", flush=True)
    torch.set_grad_enabled(args.section == "simclr")
    if args.section == "query":
        result: Any = query_bench(
            args.sizes, args.dims, args.labeled, args.budget, args.threads, args.strategies
        )
        for name in args.strategies:
            times = [r["seconds"] for r in result if r["strategy"] == name]
            print(f"{name}: median {statistics.median(times):.1f} s over {len(times)} settings")
    else:
        result = simclr_bench(args.epochs, args.root, args.cache_dir)
    path = Path(args.out)
    previous = json.loads(path.read_text()) if path.exists() else {}
    previous[args.section] = result
    path.write_text(json.dumps(previous, indent=2) + "\n")


if __name__ == "__main__":
    main()
