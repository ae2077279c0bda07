"""A coverage strategy with a SimCLR feature source under 2-process DDP (gloo, CPU)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tests.conftest import run_cli


@pytest.mark.slow
def test_typiclust_on_simclr_features_runs_under_ddp(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = run_cli(
        "+experiment=smoke",
        "strategy=typiclust",
        "trainer.devices=2",
        "al.cycles=2",
        f"hydra.run.dir={out}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    with (out / "queries.csv").open(newline="") as handle:
        queries = list(csv.DictReader(handle))
    assert [sum(q["cycle"] == str(c) for q in queries) for c in range(2)] == [24, 16]
    assert len({q["index"] for q in queries}) == 40
    # both ranks asked for the encoder; the file lock let one of them train it
    logs = (out / "__main__.log").read_text() + (out / "train_ddp_process_1.log").read_text()
    assert logs.count("training a SimCLR encoder") == 1
    assert len(list((out / "feature_cache").glob("simclr-*/encoder.pt"))) == 1
