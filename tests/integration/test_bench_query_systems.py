"""`python -m tidal_lightning.bench_query_systems` runs each measurement in its own process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tidal_lightning import bench_query_systems as bench_query

pytestmark = pytest.mark.slow


def test_a_small_run_writes_one_row_per_strategy_and_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # the child imports this checkout
    out = tmp_path / "bench_query_systems.json"
    bench_query.main(["--strategies", "gt_oracle", "--sizes", "1500", "--out", str(out)])
    (row,) = json.loads(out.read_text())["rows"]
    assert row["strategy"] == "gt_oracle" and row["pool"] == 1500
    assert row["peak_rss_mb"] >= row["rss_before_mb"] > 0 and row["seconds"] >= 0
    assert 0 < row["oracle_misclassified"] <= 1500
    assert "gt_oracle" in capsys.readouterr().out.splitlines()[-1]
