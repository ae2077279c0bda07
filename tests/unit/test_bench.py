"""`python -m tidal_lightning.bench --quick`: the bookkeeping of bench.json, never a timing."""

import json
import statistics
from pathlib import Path

import pytest
import torch

from tidal_lightning import bench


def test_median_ratio_is_the_median_of_per_repeat_ratios() -> None:
    # per repeat: 2/1, 3/1, 10/2 -> median of (2, 3, 5) is 3; not median(a) / median(b) = 3 / 1
    assert bench.median_ratio([2.0, 3.0, 10.0], [1.0, 1.0, 2.0]) == 3.0
    assert bench.median_ratio([1.0, 4.0], [2.0, 2.0]) == 1.25


@pytest.mark.slow
def test_quick_run_writes_bench_json_with_consistent_ratios(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "b.json"
    assert bench.main(["--quick", "--device", "cpu", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    times = results["epoch_seconds"]
    repeats = results["settings"]["repeats"]
    assert set(times) == set(bench.VARIANTS)
    assert all(len(v) == repeats and all(t > 0 for t in v) for v in times.values())

    def ratio(num: str, den: str) -> float:
        return statistics.median(a / b for a, b in zip(times[num], times[den], strict=True))

    # section 1: lockstep epochs on the paper's model (the target) and on the run's model
    section = results["td_overhead"]
    assert section["paper"]["model"] == "resnet18" and section["run_model"]["model"] == "small_cnn"
    for entry, names in ((section["paper"], bench.PAPER_VARIANTS), (section["run_model"], None)):
        paired = entry["epoch_seconds"]
        assert set(paired) == set(names or bench.PAIRED_VARIANTS)
        assert all(len(v) == entry["epochs"] and all(t > 0 for t in v) for v in paired.values())
    paper_times = section["paper"]["epoch_seconds"]
    own_times = section["run_model"]["epoch_seconds"]
    assert results["td_overhead_ratio"] == pytest.approx(
        bench.median_ratio(paper_times["td"], paper_times["plain"])
    )
    assert results["td_overhead_ratio_run_model"] == pytest.approx(
        bench.median_ratio(own_times["td"], own_times["plain"])
    )
    assert results["td_tracker_ratio"] == pytest.approx(
        bench.median_ratio(own_times["tracker"], own_times["plain"])
    )
    assert results["lightning_vs_raw_ratio"] == pytest.approx(ratio("td", "raw_td"))
    assert results["data_path_ratio"] == pytest.approx(ratio("premade_td", "td"))
    record = results["record_seconds_per_epoch"]
    fractions = [r / (t - r) for r, t in zip(record, times["dispersion"], strict=True)]
    assert results["dispersion_pool_pass_fraction"] == pytest.approx(statistics.median(fractions))
    for key, target in results["targets"].items():
        value, verdict = results[key], results["pass"][key]
        assert isinstance(value, float) and isinstance(verdict, bool)
        assert verdict == (
            value <= target["value"] if target["op"] == "<=" else value >= target["value"]
        )
    for size in results["settings"]["scoring_sizes"]:
        entry = results["scoring"][str(size)]
        assert entry["samples_per_s"] == pytest.approx(size / entry["seconds"])
        assert entry["peak_rss_mb"] > 0
    data = results["old_vs_new"]
    n = results["settings"]["labeled"]
    assert data["pil_images_per_s"] == pytest.approx(
        n / statistics.median(data["pil_epoch_seconds"])
    )
    assert data["speedup"] == pytest.approx(
        statistics.median(
            a / b
            for a, b in zip(data["pil_epoch_seconds"], data["device_epoch_seconds"], strict=True)
        )
    )
    streaming = results["streaming"]
    epochs = streaming["epoch_seconds"]
    assert results["streaming_ratio"] == pytest.approx(
        bench.median_ratio(epochs["memory"], epochs["stream"])
    )
    assert {s: p["cpu"]["placement"] for s, p in streaming["placements"].items()} == {
        "memory": "memory",
        "stream": "stream",
    }
    build = streaming["build"]
    assert build["build_images_per_s"] == pytest.approx(build["images"] / build["build_seconds"])
    bounded = streaming["bounded"]
    # the cache was 4x the memory allowed; a copy in memory was refused, streaming went on
    assert bounded["cache_mb"] == pytest.approx(4 * bounded["allowance_mb"], rel=1e-3)
    assert bounded["in_memory_copy"].startswith("refused")
    assert bounded["placement_auto"] == "stream" and bounded["train_steps"] == 20
    for size, entry in streaming["scoring"].items():
        assert entry["samples_per_s"] == pytest.approx(int(size) / entry["seconds"])
    machine = results["machine"]
    assert {"device_name", "torch", "threads", "device"} <= set(machine)
    settings = results["settings"]
    assert settings["model"] == "small_cnn" and settings["image_shape"] == [1, 28, 28]
    if not torch.cuda.is_available():
        assert "skipped" in results["gpu_extra"]
    table = capsys.readouterr().out
    assert "PASS" in table or "FAIL" in table
    assert f"{results['td_overhead_ratio']:.3f}" in table
    assert f"{results['td_overhead_ratio_run_model']:.3f}" in table


def test_paper_model_section_needs_at_least_one_batch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "b.json"
    assert bench.main(["--quick", "--td-labeled", "8", "--device", "cpu", "--out", str(out)]) == 1
    assert "--td-labeled=8" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for CUDA where there is none")
def test_cuda_without_a_gpu_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench.main(["--device", "cuda", "--out", str(tmp_path / "b.json")]) == 1
    assert "no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()


def test_official_style_loop_reports_images_per_second(tmp_path: Path) -> None:
    from tidal_lightning import bench_official

    out = tmp_path / "official.json"
    args = ["--device", "cpu", "--labeled", "48", "--epochs", "1", "--batch-size", "16"]
    assert bench_official.main([*args, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert len(result["epoch_seconds"]) == 2  # warm-up + 1 timed
    assert result["images_per_s"] == pytest.approx(48 / result["epoch_seconds"][1])


def test_short_form_keeps_the_gpu_checks_sections() -> None:
    settings = bench.default_settings(bench.parse_args(["--short", "--device", "cpu"]))
    assert settings.short and settings.variants == bench.SHORT_VARIANTS == ("td", "raw_td")
    assert not settings.pil_section and settings.scoring_sizes == (10_000, 100_000)
    assert settings.repeats == 3
    # on a CPU (the check's tiny mode) the speed options run without compiling
    assert settings.grid == bench.SHORT_CPU_GRID
    assert all(not compiled for _, _, compiled in settings.grid)
    full = bench.default_settings(bench.parse_args(["--device", "cpu"]))
    assert full.grid == () and full.variants == bench.VARIANTS and full.pil_section
    assert len(bench.FULL_GRID) == 8 and set(bench.SHORT_GRID) < set(bench.FULL_GRID)


def test_verdicts_cover_only_the_measures_taken() -> None:
    assert bench.verdicts({"td_overhead_ratio": 1.01, "lightning_vs_raw_ratio": 1.2}) == {
        "td_overhead_ratio": True,
        "lightning_vs_raw_ratio": False,
    }
