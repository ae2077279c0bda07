"""The whole AL loop on 2 CPU processes (Lightning DDP, gloo), run as a user runs it.

Rank 0 starts rank 1 at the first `trainer.fit`; rank 1 re-runs the command, resumes from
the `state.pt` rank 0 wrote, keeps the same state from then on, and writes nothing. The
checks: the run completes with one consistent set of files, rank 1 really trained, the picks
are valid, and the same command gives the same picks again (determinism on the CPU).
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tests.conftest import run_cli

DDP_RUN = ("+experiment=smoke", "strategy=dispersion", "trainer.devices=2", "al.cycles=3")


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_two_process_run_writes_once_and_repeats_its_picks(tmp_path: Path) -> None:
    outs, consoles = {}, {}
    for name in ("a", "b"):
        out = tmp_path / name
        result = run_cli(*DDP_RUN, f"hydra.run.dir={out}", cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-4000:]
        outs[name], consoles[name] = out, result.stdout + result.stderr
    out = outs["a"]
    # rank 1 joined the group (Lightning's line on the console), and only rank 0 reported
    # cycles: rank 1's own log file holds its warnings only (none here)
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in consoles["a"]
    assert "cycle 0 (of 0-2)" not in (out / "train_ddp_process_1.log").read_text()
    assert "cycle 0 (of 0-2)" in (out / "__main__.log").read_text()
    # one set of files, written once: 24 initial + 2 queries of 16, distinct
    queries = _rows(out / "queries.csv")
    assert [sum(q["cycle"] == str(c) for q in queries) for c in range(3)] == [24, 16, 16]
    assert len({q["index"] for q in queries}) == 56
    results = _rows(out / "results.csv")
    assert [r["num_labeled"] for r in results] == ["24", "40", "56"]
    # the dispersion recorder ran on the pool in both processes' epochs
    assert all(float(r["record_seconds"]) > 0 for r in results[:2])
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "cycle_0.pt",
        "cycle_1.pt",
        "cycle_2.pt",
    ]
    assert '"status": "finished"' in (out / "run_summary.json").read_text()
    # the same command, the same picks and accuracies
    assert (out / "queries.csv").read_bytes() == (outs["b"] / "queries.csv").read_bytes()
    assert [r["test_acc"] for r in results] == [
        r["test_acc"] for r in _rows(outs["b"] / "results.csv")
    ]


def test_multi_device_sweep_is_refused(tmp_path: Path) -> None:
    result = run_cli(
        "+experiment=smoke",
        "trainer.devices=2",
        "-m",
        "seed=0",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "trainer.devices=2 in a sweep (-m)" in result.stderr
    assert not list(tmp_path.glob("sweep/*/state.pt"))
