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
