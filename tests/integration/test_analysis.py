"""`python -m tidal_lightning.analysis` on the smoke data, as a user runs it."""

from __future__ import annotations

import csv
import json
import logging
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import compose_config, run_cli
from tidal_lightning.al.loop import run as run_loop
from tidal_lightning.analysis.__main__ import main

pytestmark = pytest.mark.slow
ENTRY = ("-m", "tidal_lightning.analysis")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def analysis(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, cwd=cwd, entry=ENTRY)


def check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    width, height = struct.unpack(">II", data[16:24])  # IHDR, right after the signature
    assert width >= 500 and height >= 300
    assert len(data) > 10_000  # curves were drawn, not an empty canvas


def outputs(folder: Path, name: str) -> dict[str, Any]:
    check_png(folder / f"{name}.png")
    result: dict[str, Any] = json.loads((folder / f"{name}.json").read_text())
    return result


def test_td_separation_uses_ratio_100_for_a_balanced_config(tmp_path: Path) -> None:
    done = analysis("td_separation", "+experiment=smoke", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = outputs(tmp_path / "outputs/analysis/td_separation/experiment-smoke", "td_separation")
    assert result["config"]["imbalance_ratio"] == 100
    assert "analysis.default_imbalance_ratio=100" in result["imbalance_ratio_note"]
    # 60 per class, ratio 100 over 4 classes: int(60 * 100 ** (-c / 3))
    assert result["pool_class_counts"] == result["train_class_counts"] == [60, 12, 2, 0]
    assert result["minority_classes"] == [2, 3] and result["majority_classes"] == [0, 1]
    assert (result["n_minority"], result["n_majority"]) == (2, 72)
    assert set(result["auroc"]) == {
        "snapshot_entropy",
        "snapshot_margin",
        "td_entropy",
        "td_margin",
    }
    assert all(0.0 <= a <= 1.0 for a in result["auroc"].values())
    assert "AUROC minority vs majority" in done.stdout


def test_td_separation_on_a_seeded_subset(tmp_path: Path) -> None:
    out = tmp_path / "sep"
    done = analysis(
        "td_separation",
        "+experiment=smoke",
        "dataset.imbalance_ratio=10",
        "analysis.train_size=80",
        f"paths.output_dir={out}",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = outputs(out, "td_separation")
    assert "imbalance_ratio_note" not in result
    assert result["pool_class_counts"] == [60, 27, 12, 6]
    assert sum(result["train_class_counts"]) == result["config"]["train_size"] == 80
    assert result["n_minority"] + result["n_majority"] == 80
    # the smoke classes are easy and the minority is rare: uncertainty points to it
    assert all(0.5 < a <= 1.0 for a in result["auroc"].values())


def test_td_prediction_reports_every_cycle_with_a_query(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "outputs/analysis/td_prediction/experiment-smoke"
    done = analysis("td_prediction", "+experiment=smoke", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = outputs(folder, "td_prediction")
    assert result["config"]["strategy"] == "td_margin_oracle"
    with open(folder / "al_run/results.csv", newline="") as handle:
        queried = [r for r in csv.DictReader(handle) if r["query_seconds"] != ""]
    assert len(queried) == 2  # smoke: 3 cycles, the last has no query
    rows = result["cycles"]
    assert [(r["cycle"], r["num_labeled"]) for r in rows] == [(0, 24), (1, 40)]
    for row, written in zip(rows, queried, strict=True):
        assert row["td_pool_kl"] == float(written["td_pool_kl"]) >= 0
        assert -1 <= row["td_pool_spearman"] == float(written["td_pool_spearman"]) <= 1
    # a second call reuses the finished AL run and gives the same numbers
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO)
    main(["td_prediction", "+experiment=smoke"])
    assert "holds a finished run" in caplog.text
    assert json.loads((folder / "td_prediction.json").read_text())["cycles"] == rows


def test_informativeness_table_and_determinism(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    done = analysis("informativeness", "+experiment=smoke", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    first = outputs(
        tmp_path / "outputs/analysis/informativeness/experiment-smoke", "informativeness"
    )
    # again, in this process (other global RNG state), into another folder
    monkeypatch.chdir(tmp_path)
    main(["informativeness", "+experiment=smoke", f"paths.output_dir={tmp_path / 'again'}"])
    assert outputs(tmp_path / "again", "informativeness") == first  # same config, same numbers
    assert first["percents"] == list(range(1, 51))
    assert first["subset_size"] == 80 and first["num_labeled"] == 24
    assert first["top_sizes"][0] == 1 and first["top_sizes"][-1] == 40
    expected = {
        "random", "entropy", "margin", "least_confidence", "tidal_entropy", "tidal_margin",
        "dispersion", "cal", "coreset", "badge", "td_entropy_oracle", "td_margin_oracle",
    }  # fmt: skip
    assert set(first["accuracy"]) == expected
    for accuracies in first["accuracy"].values():
        assert len(accuracies) == 50 and all(0.0 <= a <= 1.0 for a in accuracies)
    assert set(first["not_scored"]) == {"bald", "lloss"}
    assert first["ranking"]["coreset"].startswith("prefixes")
    assert first["ranking"]["entropy"].startswith("score")

    # The one model is the AL loop's cycle-0 model of td_margin_oracle: same initial set,
    # same seeds, same recipe, so the same test accuracy.
    cfg = compose_config(["+experiment=smoke", "strategy=td_margin_oracle"], tmp_path / "loop")
    assert first["test_acc"] == pytest.approx(run_loop(cfg)[0]["test_acc"], abs=1e-6)


def test_bad_analysis_name_exits_1_with_the_choices(tmp_path: Path) -> None:
    done = analysis("nope", "+experiment=smoke", cwd=tmp_path)
    assert done.returncode == 1
    assert "error: no analysis 'nope'; choose one of td_separation, td_prediction" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["td_separation", "+experiment=smoke", "analysis.bogus=1"], "analysis.train_size,"),
        (["td_separation", "+experiment=smoke", "al.nope=1"], "bad override"),
        (["td_separation", "+experiment=smoke", "strategy=entropy"], "takes no strategy="),
        (["td_separation", "+experiment=smoke", "analysis.train_size=1"], "between 2 and"),
        (["td_prediction", "+experiment=smoke", "strategy=entropy"], "strategy=td_margin_oracle"),
        (["td_prediction", "+experiment=smoke", "al.cycles=1"], "al.cycles >= 2"),
        (["informativeness", "+experiment=smoke", "analysis.strategies=[bald]"], "bald: MC"),
        (["informativeness", "+experiment=smoke", "analysis.strategies=[nope]"], "known:"),
        (["informativeness", "+experiment=smoke", "al.initial=1000"], "lower al.initial"),
    ],
)
def test_bad_input_exits_with_a_message_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert str(exited.value.code).startswith("error: ")
    assert message in str(exited.value.code)
    assert not (tmp_path / "outputs").exists()
