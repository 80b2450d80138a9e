"""The benchmark scripts on a tiny configuration, so they cannot rot (the real runs are not tests)."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_ablation_script_tiny(tmp_path):
    import ablation
    ablation.main(["--dataset", "synthetic", "--preset", "smoke", "--seeds", "0", "1", "--variants", "original",
                   "laplacian", "--runs-root", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--quiet"])
    summary = json.loads((tmp_path / "out" / "ablation_synthetic.json").read_text())
    assert [r["run"] for r in summary["rows"]] == ["original", "laplacian", "random encoder", "raw pixels"]
    lap = summary["rows"][1]
    assert {"lp_top1", "lp_top1_sd", "lp_top1_diff", "lp_top1_ci95", "knn_top1_diff", "psnr_masked"} <= set(lap)
    assert summary["seeds"] == [0, 1] and "knn_top1" in summary["original_vs_random"]
    assert (tmp_path / "out" / "ablation_synthetic.png").stat().st_size > 0
    assert "| laplacian |" in (tmp_path / "out" / "ablation_synthetic.md").read_text()


def test_paired_difference_hand_values():
    import ablation
    m, half = ablation.paired_diff([70.0, 72.0, 74.0], [71.0, 74.0, 74.0])   # diffs 1, 2, 0
    assert m == pytest.approx(1.0) and half == pytest.approx(4.303 * 1.0 / 3 ** 0.5)


def test_speed_script_quick(tmp_path):
    pytest.importorskip("transformers")
    import speed
    speed.main(["--quick", "--no-compile", "--out", str(tmp_path)])
    res = json.loads((tmp_path / "speed.json").read_text())
    step = res["steps"][0]
    assert len(step["ratio_per_pair"]) == 2 and step["gflop_per_step"] > 0 and res["sgemm_gflop_s"] > 0
    assert res["data"][0]["median_ratio"] > 0 and res["probe"]["speedup"] > 0
    assert "HF ViTMAE" in (tmp_path / "speed.md").read_text()
