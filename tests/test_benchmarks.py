"""The benchmark scripts on tiny settings, so they cannot rot (their real runs are not tests)."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_speed_script_quick(tmp_path):
    pytest.importorskip("transformers")
    import speed
    speed.main(["--quick", "--no-compile", "--out", str(tmp_path)])
    res = json.loads((tmp_path / "speed.json").read_text())
    step = res["steps"][0]
    assert len(step["ratio_per_pair"]) == 2 and step["gflop_per_step"] > 0 and res["sgemm_gflop_s"] > 0
    assert res["data"][0]["median_ratio"] > 0 and res["probe"]["speedup"] > 0
    assert "HF ViTMAE" in (tmp_path / "speed.md").read_text()


def test_gpu_check_runs_through_on_the_cpu(tmp_path):
    """The script the first GPU session runs: every check runs or says why it is skipped."""
    import gpu_check
    gpu_check.main(["--quick", "--device", "cpu", "--out", str(tmp_path)])
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    assert not [k for k, v in res.items() if isinstance(v, dict) and "error" in v]
    assert res["fp16"]["skipped"] and res["two_gpus"]["skipped"]
    assert res["throughput"][0]["img_s"] > 0 and res["raw_pixels"]["peak_host_mb"] > 0
    assert res["tf32"]["matmul_precision"] == "highest"            # on the CPU nothing is changed


def test_series_time_quick_writes_durations_and_leaves_the_committed_ones(tmp_path):
    import series_time
    before = (ROOT / "maehelpers" / "measured_durations.json").read_text()
    out = series_time.main(["--quick", "--out", str(tmp_path / "d.json")])
    assert out["series"]["smoke"]["total_s"] > 0 and out["projected_cpu"]["smoke"]["pretrain_step_s"] > 0
    # the projection counts what it says: 2 variants x epochs x steps per epoch x seconds per step, ...
    p, steps = out["projected_cpu"]["smoke"], 100_000 // 16
    assert p["pretrain_s"] == pytest.approx(2 * 2 * steps * p["pretrain_step_s"], rel=0.01, abs=2)
    assert json.loads((tmp_path / "d.json").read_text()) == out
    assert (ROOT / "maehelpers" / "measured_durations.json").read_text() == before


def test_ft_curve_chooses_the_smallest_budget_that_passes_both_probes():
    import ft_curve
    line = lambda arm, epochs, ft, recipe="pretrained": {"arm": arm, "ft_epochs": epochs, "ft_top1": ft,  # noqa: E731
                                                          "recipe": recipe, "lp_top1_mean": 70.0, "lp_top1_cls": 71.0}
    lines = [line("original", 10, 70.5), line("original", 40, 73.0), line("original", 20, 71.5),
             line("random", 5, 90.0, "scratch")]
    assert ft_curve.passing_budget(lines)["ft_epochs"] == 20     # 70.5 passes the mean-pool probe, not the cls one
    assert ft_curve.passing_budget(lines[:1]) is None
    lines.append(line("random", 20, 72.0, "scratch"))
    assert ft_curve.scratch_gap(lines) == " Pretrained minus scratch at the same budget: -0.50 at 20 epochs (one seed each)."


def test_readme_quotes_the_committed_fine_tuning_curve():
    import ft_curve
    curve = json.loads((ROOT / "benchmarks" / "results" / "ft_curve.json").read_text())
    readme = (ROOT / "README.md").read_text()
    assert curve["verdict"] in readme and ft_curve.README_MARKS[0] in readme
    assert curve["chosen"] == ft_curve.passing_budget(curve["lines"])
