"""The sweep report on fake multirun folders: hand-chosen accuracies, hand-computed stats."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

import pytest

from tidal_lightning.report import build_report, main, plot_learning_curves, strategy_styles

SIZES = (100, 200, 300)


def write_run(
    job_dir: Path,
    strategy: str,
    seed: int,
    accs: Sequence[float],
    *,
    sizes: Sequence[int] = SIZES,
    status: str = "finished",
    planned: int | None = None,
    dataset: str = "Fashion-MNIST",
    imbalance_ratio: float = 1,
    class_acc: Sequence[float] | None = None,
    labeled: Sequence[int] | None = None,
    pool_counts: Sequence[int] | None = None,
) -> Path:
    """A run folder as the AL loop leaves it: results.csv, run_summary.json, .hydra/.

    `class_acc` and `labeled`: every row's `acc_class_<k>` and `labeled_class_<k>`.
    """
    (job_dir / ".hydra").mkdir(parents=True)
    (job_dir / ".hydra" / "overrides.yaml").write_text(
        f"- strategy={strategy}\n- seed={seed}\n", encoding="utf-8"
    )
    class_acc = class_acc or [0.5]
    k = range(len(class_acc))
    lines = [
        ",".join(
            ["cycle", "num_labeled", "test_acc", *(f"acc_class_{c}" for c in k)]
            + ["train_seconds", "query_seconds"]
            + [f"labeled_class_{c}" for c in range(len(labeled or []))]
        )
    ]
    for cycle, (n, acc) in enumerate(zip(sizes, accs, strict=False)):
        query = "" if cycle == len(accs) - 1 else 0.2
        cells = [cycle, n, acc, *class_acc, 1.0, query, *(labeled or [])]
        lines.append(",".join(str(c) for c in cells))
    (job_dir / "results.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    summary = {
        "status": status,
        "strategy_name": strategy,
        "strategy": "SomeClass",
        "seed": seed,
        "dataset": dataset,
        "imbalance_ratio": imbalance_ratio,
        "cycles_completed": len(accs),
        "config": {"seed": seed, "al": {"cycles": planned if planned is not None else len(sizes)}},
    }
    if pool_counts is not None:
        summary["train_pool_class_counts"] = list(pool_counts)
    (job_dir / "run_summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return job_dir


def read_csv(path: Path) -> dict[tuple[str, int], dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return {(r["strategy"], int(r["num_labeled"])): r for r in csv.DictReader(handle)}


def constant(value: float) -> list[float]:
    return [value] * len(SIZES)


def test_aulc_of_a_hand_made_curve(tmp_path: Path) -> None:
    write_run(tmp_path / "0", "random", 0, [0.5, 0.7, 0.8])
    write_run(tmp_path / "1", "entropy", 0, constant(0.62))
    report = build_report(tmp_path)
    # (0.6·100 + 0.75·100) / 200; a constant curve gives its constant
    assert report.groups[0].aulc["random"].mean == pytest.approx(0.675)
    assert report.groups[0].aulc["entropy"].mean == pytest.approx(0.62)
    rows = read_csv(tmp_path / "report.csv")
    assert float(rows[("random", 300)]["aulc_mean"]) == pytest.approx(0.675)
    # one seed: no interval, and the report says so rather than inventing one
    assert rows[("random", 100)]["aulc_ci_low"] == rows[("random", 100)]["aulc_ci_high"] == ""
    assert "undefined (one seed)" in (tmp_path / "report.md").read_text(encoding="utf-8")


def test_cell_mean_std_and_relative_improvement(tmp_path: Path) -> None:
    write_run(tmp_path / "0", "random", 0, [0.5, 0.6, 0.7])
    write_run(tmp_path / "1", "random", 1, [0.6, 0.6, 0.8])
    write_run(tmp_path / "2", "entropy", 0, [0.6, 0.7, 0.7])
    write_run(tmp_path / "3", "entropy", 1, [0.7, 0.8, 0.8])
    build_report(tmp_path)
    rows = read_csv(tmp_path / "report.csv")
    cell = rows[("random", 100)]
    assert cell["dataset"] == "Fashion-MNIST" and cell["imbalance_ratio"] == "1"
    assert int(cell["n_seeds"]) == 2
    assert float(cell["test_acc_mean"]) == pytest.approx(0.55)
    # sample std over seeds: sqrt((0.05² + 0.05²) / (2 − 1))
    assert float(cell["test_acc_std"]) == pytest.approx(math.sqrt(0.005), abs=1e-6)
    assert float(rows[("random", 200)]["test_acc_std"]) == pytest.approx(0.0)
    # 100·(0.65 − 0.55)/0.55 at 100 labels; 100·(0.75 − 0.6)/0.6 at 200
    improvement = "rel_improvement_over_random_pct"
    assert float(rows[("entropy", 100)][improvement]) == pytest.approx(18.1818, abs=1e-3)
    assert float(rows[("entropy", 200)][improvement]) == pytest.approx(25.0, abs=1e-3)
    assert rows[("random", 100)][improvement] == ""
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "0.5500 ± 0.0707 (n=2)" in text
    assert "+18.18" in text


def test_paired_comparison_with_random(tmp_path: Path) -> None:
    # constant curves, so each run's AULC is its constant
    for seed, (ours, theirs) in enumerate([(0.55, 0.5), (0.58, 0.6), (0.75, 0.7)]):
        write_run(tmp_path / f"random_{seed}", "random", seed, constant(theirs))
        write_run(tmp_path / f"margin_{seed}", "margin", seed, constant(ours))
    write_run(tmp_path / "margin_7", "margin", 7, constant(0.9))  # no random partner
    report = build_report(tmp_path)
    paired = report.groups[0].paired["margin"]
    # differences +0.05, −0.02, +0.05
    assert paired.seeds == (0, 1, 2)
    assert paired.wins == 2
    assert paired.mean_diff == pytest.approx(0.08 / 3)
    # t = mean / (sd/√3) = 8/7 with 2 degrees of freedom, where p = 1 − t/√(2 + t²)
    t = 8 / 7
    assert paired.p_value == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-6)
    # random's AULCs 0.5, 0.6, 0.7: 0.6 ± t_{0.975,2}·0.1/√3, t_{0.975,2} = 0.95/√(2·0.975·0.025)
    half = 0.95 / math.sqrt(2 * 0.975 * 0.025) * 0.1 / math.sqrt(3)
    rows = read_csv(tmp_path / "report.csv")
    assert float(rows[("random", 100)]["aulc_ci_low"]) == pytest.approx(0.6 - half, abs=1e-6)
    assert float(rows[("random", 100)]["aulc_ci_high"]) == pytest.approx(0.6 + half, abs=1e-6)
    margin = rows[("margin", 200)]
    assert (margin["wins_vs_random"], margin["pairs_vs_random"]) == ("2", "3")
    assert margin["aulc_n_seeds"] == "4"
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| `margin` | 3 | +0.0267 | 2/3 |" in text
    assert "`random` has no finished run for seed(s) 7" in text


def test_paired_comparison_is_undefined_with_one_pair(tmp_path: Path) -> None:
    write_run(tmp_path / "0", "random", 0, constant(0.5))
    write_run(tmp_path / "1", "entropy", 0, constant(0.5))
    report = build_report(tmp_path)
    assert math.isnan(report.groups[0].paired["entropy"].p_value)
    assert report.groups[0].paired["entropy"].wins == 0  # a tie is not a win
    assert read_csv(tmp_path / "report.csv")[("entropy", 100)]["p_value_vs_random"] == ""
    assert "undefined (1 pair)" in (tmp_path / "report.md").read_text(encoding="utf-8")


def test_two_strategies_two_seeds_table_and_plot(tmp_path: Path) -> None:
    for job, (strategy, seed) in enumerate(
        [("random", 0), ("random", 1), ("tidal_margin", 0), ("tidal_margin", 1)]
    ):
        write_run(tmp_path / str(job), strategy, seed, [0.5 + 0.01 * job, 0.6, 0.7])
    report = build_report(tmp_path)
    rows = read_csv(tmp_path / "report.csv")
    assert set(rows) == {(s, n) for s in ("random", "tidal_margin") for n in SIZES}
    assert all(r["n_seeds"] == "2" and r["aulc_n_seeds"] == "2" for r in rows.values())
    assert len(report.runs) == 4 and report.problems == []
    png = tmp_path / "learning_curves.png"
    assert png.stat().st_size > 1000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "## Fashion-MNIST, imbalance ratio 1" in text
    assert "| labeled | `random` | `tidal_margin` |" in text


def test_groups_by_dataset_and_imbalance_ratio(tmp_path: Path) -> None:
    write_run(tmp_path / "a" / "0", "random", 0, constant(0.5))
    write_run(tmp_path / "b" / "deep" / "0", "random", 0, constant(0.3), imbalance_ratio=100)
    report = build_report(tmp_path)
    assert [(g.dataset, g.imbalance_ratio) for g in report.groups] == [
        ("Fashion-MNIST", 1.0),
        ("Fashion-MNIST", 100.0),
    ]
    assert [g.aulc["random"].mean for g in report.groups] == pytest.approx([0.5, 0.3])
    assert "imbalance ratio 100" in (tmp_path / "report.md").read_text(encoding="utf-8")


def test_crashed_unfinished_and_short_runs_are_listed_not_counted(tmp_path: Path) -> None:
    write_run(tmp_path / "0", "random", 0, constant(0.5))
    write_run(tmp_path / "1", "random", 1, [0.1, 0.1], status="running")
    write_run(tmp_path / "2", "random", 2, [0.2, 0.2], planned=3)  # stopped early
    crashed = tmp_path / "3" / ".hydra"
    crashed.mkdir(parents=True)
    (crashed / "overrides.yaml").write_text("- strategy=entropy\n- seed=4\n", encoding="utf-8")
    report = build_report(tmp_path)
    assert [r.folder for r in report.runs] == ["0"]
    assert {p.folder for p in report.problems} == {"1", "2", "3"}
    rows = read_csv(tmp_path / "report.csv")
    assert rows[("random", 100)]["n_seeds"] == "1"
    assert float(rows[("random", 100)]["test_acc_mean"]) == pytest.approx(0.5)
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    problems = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| `")}
    assert "no results.csv" in problems["| `3`"]
    assert "`strategy=entropy` `seed=4`" in problems["| `3`"]
    assert "'running'" in problems["| `1`"] and "2 of 3 planned cycles" in problems["| `1`"]
    assert "2 of 3 planned cycles" in problems["| `2`"]
    assert "4 job folder(s): 1 finished run(s) used, 3 listed" in text


def test_duplicate_seed_is_listed_and_counted_once(tmp_path: Path) -> None:
    write_run(tmp_path / "0", "random", 0, constant(0.5))
    write_run(tmp_path / "1", "random", 0, constant(0.9))
    report = build_report(tmp_path)
    assert report.groups[0].aulc["random"].mean == pytest.approx(0.5)
    assert [p.folder for p in report.problems] == ["1"]
    assert "duplicate of `0`" in report.problems[0].issue
    # the duplicate's own overrides, read from its .hydra/overrides.yaml
    assert report.problems[0].overrides == ("strategy=random", "seed=0")


def test_without_random_there_is_no_comparison(tmp_path: Path) -> None:
    write_run(tmp_path / "0", "entropy", 0, constant(0.5))
    write_run(tmp_path / "1", "margin", 0, constant(0.6))
    report = build_report(tmp_path)
    assert report.groups[0].relative_improvement == {} and report.groups[0].paired == {}
    rows = read_csv(tmp_path / "report.csv")
    assert rows[("margin", 100)]["rel_improvement_over_random_pct"] == ""
    assert "no comparison with random" in (tmp_path / "report.md").read_text(encoding="utf-8")


def test_cli_writes_into_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_run(tmp_path / "sweep" / "0", "random", 0, constant(0.5))
    main([str(tmp_path / "sweep"), "--out", str(tmp_path / "out")])
    for name in ("report.md", "report.csv", "learning_curves.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
        assert not (tmp_path / "sweep" / name).exists()
    assert "1 finished run(s)" in capsys.readouterr().out


def test_cli_refuses_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "nowhere")])
    assert isinstance(exit_info.value.code, str)
    assert exit_info.value.code.startswith("error:") and "does not exist" in exit_info.value.code


def test_cli_refuses_a_folder_without_runs(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello", encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    message = str(exit_info.value.code)
    assert message.startswith("error:") and "no run folders" in message
    assert "results.csv" in message


def test_p_value_is_undefined_when_every_difference_is_equal(tmp_path: Path) -> None:
    for seed, base in enumerate([0.5, 0.6, 0.7]):
        write_run(tmp_path / f"r{seed}", "random", seed, constant(base))
        write_run(tmp_path / f"e{seed}", "entropy", seed, constant(base + 0.1))
    report = build_report(tmp_path)
    assert math.isnan(report.groups[0].paired["entropy"].p_value)
    assert report.groups[0].paired["entropy"].wins == 3
    assert "undefined (all differences equal)" in (tmp_path / "report.md").read_text("utf-8")


def test_up_to_25_strategies_get_distinct_styles_and_the_legend_sits_outside(
    tmp_path: Path,
) -> None:
    names = ["random", "tidal_entropy", "tidal_margin", "dispersion"]
    names += [f"baseline_{k:02d}" for k in range(21)]
    for job, name in enumerate(names):
        write_run(tmp_path / str(job), name, 0, [0.5 + 0.001 * job, 0.6, 0.7])
    report = build_report(tmp_path)
    styles = strategy_styles(report.groups[0].strategies)
    pairs = {(s["color"], s["marker"]) for s in styles.values()}
    assert len(pairs) == len(names) == 25  # no two strategies look alike
    assert styles["random"]["color"] == "black" and styles["random"]["linestyle"] == "--"
    heavy = {n for n, s in styles.items() if s["linewidth"] > 2}
    assert heavy == {"tidal_entropy", "tidal_margin", "dispersion"}  # the papers' methods
    figure = plot_learning_curves(report.groups, tmp_path / "again.png")
    renderer = figure.canvas.get_renderer()
    (legend,) = figure.legends
    box, axes_box = legend.get_window_extent(renderer), figure.axes[0].get_window_extent(renderer)
    assert box.x0 >= axes_box.x1 - 3  # beside the axes (its frame may touch), covering no curve
    assert len(legend.get_texts()) == 25


def test_tidal_is_paired_with_the_score_it_replaces(tmp_path: Path) -> None:
    """TiDAL-M against margin and TiDAL-H against entropy, over the seeds both have."""
    curves = {
        "margin": (0.60, 0.62, 0.64),
        "tidal_margin": (0.63, 0.61, 0.68),  # differences +0.03, -0.01, +0.04
        "entropy": (0.50, 0.50),
        "tidal_entropy": (0.52, 0.52, 0.9),  # seed 2 has no entropy partner: +0.02, +0.02
    }
    for strategy, values in curves.items():
        for seed, value in enumerate(values):
            write_run(tmp_path / f"{strategy}_{seed}", strategy, seed, constant(value))
    group = build_report(tmp_path).groups[0]
    margin = group.td_paired["tidal_margin"]
    assert (margin.baseline, margin.seeds, margin.wins) == ("margin", (0, 1, 2), 2)
    assert margin.mean_diff == pytest.approx(0.02)
    # differences 0.03, -0.01, 0.04: sd = sqrt(((0.01)² + (0.03)² + (0.02)²) / 2) = sqrt(0.0007)
    t = 0.02 / (math.sqrt(0.0007) / math.sqrt(3))
    assert margin.p_value == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-6)
    entropy = group.td_paired["tidal_entropy"]
    assert (entropy.seeds, entropy.wins, entropy.mean_diff) == ((0, 1), 2, pytest.approx(0.02))
    assert math.isnan(entropy.p_value)  # equal differences
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| `tidal_margin` − `margin` | 3 | +0.0200 | 2/3 |" in text
    assert "| `tidal_entropy` − `entropy` | 2 | +0.0200 | 2/2 | undefined" in text


def test_long_tailed_groups_report_the_rarest_classes(tmp_path: Path) -> None:
    """Rarest = fewest pool samples (class 3), minority = the two rarest (3 and 1)."""
    pool = (100, 10, 50, 5)
    runs = {
        0: ((0.9, 0.2, 0.8, 0.1), (40, 20, 30, 10)),
        1: ((0.9, 0.4, 0.8, 0.3), (40, 10, 40, 10)),
    }
    for seed, (acc, labeled) in runs.items():
        write_run(
            tmp_path / f"margin_{seed}",
            "margin",
            seed,
            constant(0.5),
            imbalance_ratio=20,
            class_acc=acc,
            labeled=labeled,
            pool_counts=pool,
        )
    write_run(tmp_path / "balanced", "margin", 0, constant(0.5), class_acc=(0.5, 0.5))
    groups = {g.imbalance_ratio: g for g in build_report(tmp_path).groups}
    assert groups[1].rare_classes == {}  # balanced pools have no rarest classes
    rare = groups[20].rare_classes["margin"]
    assert rare.n_seeds == 2
    assert rare.rarest_acc == pytest.approx((0.2, math.sqrt(0.02)))  # 0.1 and 0.3
    assert rare.minority_acc[0] == pytest.approx((0.15 + 0.35) / 2)  # means of (3, 1)
    assert rare.minority_label_share[0] == pytest.approx((30 / 100 + 20 / 100) / 2)
    assert rare.labeled_imbalance[0] == pytest.approx((4 + 4) / 2)
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "### Rarest classes and what was labeled" in text
    row = "| `margin` | 2 | 0.2000 ± 0.1414 | 0.2500 ± 0.1414 | 0.250 ± 0.071 | 4.0 ± 0.0 |"
    assert row in text
