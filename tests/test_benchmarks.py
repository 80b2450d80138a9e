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
    """The script the first GPU session runs: every part runs or says why it is skipped."""
    import gpu_check
    gpu_check.main(["--quick", "--device", "cpu", "--out", str(tmp_path)])
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    names = [name for name, _, _ in gpu_check.parts(tmp_path, None, True)]
    assert all(name in res for name in names)
    assert not [k for k in names if "error" in res[k]]
    assert all("skipped" in res[k] for k in ("fp16_overflow", "resume", "uniformity_memory", "ddp_one", "ddp_two", "compile"))
    assert all(res[k]["img_s"] > 0 and res[k]["tflop_s"] > 0 for k in ("pretrain_96", "improved_96", "finetune_224"))
    assert res["raw_pixels"]["peak_host_mb"] > 0


def test_gpu_check_skips_what_does_not_fit_its_budget_and_keeps_its_record_when_killed(tmp_path):
    import gpu_check
    gpu_check.main(["--quick", "--device", "cpu", "--out", str(tmp_path), "--budget-seconds", "40"])
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    assert "img_s" in res["pretrain_96"] and "skipped" in res["ddp_two"] and "budget" in res["ddp_two"]["skipped"]
    # killed midway: the parts done are in the file, which is whole JSON
    import os, signal, subprocess, time
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--quick", "--device", "cpu",
                             "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:  # kill it once the part after pretrain_96 is written (however long a loaded machine takes to get there)
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "gpu_check.json").exists() and "improved_96" in (out / "gpu_check.json").read_text():
                break
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    res = json.loads((out / "gpu_check.json").read_text())
    assert "img_s" in res["pretrain_96"] and "ddp_two" not in res


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


def test_docs_quote_the_committed_fine_tuning_curve():
    import ft_curve
    from maehelpers.generated import block
    curve = json.loads((ROOT / "benchmarks" / "results" / "ft_curve.json").read_text())
    assert curve["verdict"] in block(ROOT / "docs" / "study.md", ft_curve.DOC_MARKS)
    assert curve["chosen"] == ft_curve.passing_budget(curve["lines"])


def test_performance_docs_quote_the_committed_speed_and_monitor_cost():
    import monitor_cost
    import speed
    from maehelpers.generated import block
    doc = ROOT / "docs" / "performance.md"
    results = ROOT / "benchmarks" / "results"
    assert block(doc, speed.DOC_MARKS) == speed.table(json.loads((results / "speed.json").read_text())).strip()
    assert block(doc, monitor_cost.DOC_MARKS) == monitor_cost.summary(json.loads((results / "monitor_cost.json").read_text()))


def test_monitor_cost_reports_its_share_of_the_run():
    import monitor_cost
    out = monitor_cost.main(["--quick", "--off"])
    assert out["with_monitor"]["points"] == 8 and out["without_monitor"]["points"] == 0
    assert 0 < out["with_monitor"]["monitor_s"] < out["with_monitor"]["pretrain_s"]
    assert out["share_of_pretraining"] == round(out["with_monitor"]["monitor_s"] / out["with_monitor"]["pretrain_s"], 4)
