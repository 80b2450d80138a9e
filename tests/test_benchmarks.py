"""The study (maehelpers.study, study_report, stats) and the benchmark scripts on tiny configurations,
so they cannot rot (the real runs are not tests)."""
import json
import sys
from pathlib import Path

import pytest

from maehelpers import stats, study, study_report
from maehelpers.cli import study_command

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_ablation_runner_tiny_records_skip_and_report(tmp_path):
    common = ["--dataset", "synthetic", "--preset", "smoke", "--steps", "16", "--runs-root", str(tmp_path / "runs"),
              "--records", str(tmp_path / "runs.jsonl"), "--out", str(tmp_path / "out"), "--quiet"]
    study_command(["run", "--arms", "original", "lap_replicate_10x", "random", "raw_pixels", "--seeds", "0", "1",
                   *common])
    records = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert len(records) == 8
    lap = next(r for r in records if r["arm"] == "lap_replicate_10x")
    assert lap["variant"] == "laplacian+laplacian_form=replicate+laplacian_weight=0.5"
    for key in ("lp_top1_cls", "lp_top1_mean", "knn_top1_cls", "knn_top1_mean", "pretrain_time_s", "git_commit",
                "overrides", "steps", "seed", "threads", "under_load"):
        assert key in lap
    study_command(["run", "--arms", "original", "--seeds", "0", "1", *common])   # finished: nothing added
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == 8
    study_command(["run", "--arms", "original", "--seeds", "0", "--ft", "--ft-epochs", "1", *common])
    first, tuned = (json.loads(x) for x in (tmp_path / "runs.jsonl").read_text().splitlines()[::8])
    assert tuned["ft_top1"] is not None and tuned["ft_epochs"] == 1
    assert "threads" not in tuned and tuned["eval_threads"] == first["threads"]  # the pretraining's stay its own
    merged = study.read_records(tmp_path / "runs.jsonl")[("original", 0, 16)]
    assert merged["git_commit"] == first["git_commit"] and merged["ft_top1"] == tuned["ft_top1"]
    ft_verify = ["verify", "--arms", "original", "--seeds", "0", "--ft", "--ft-epochs", "1", *common]
    assert study_command(ft_verify) == 0                                          # fine-tuning reproduces too
    with open(tmp_path / "runs.jsonl", "a") as f:
        f.write(json.dumps({**tuned, "ft_top1": tuned["ft_top1"] + 1.0}) + "\n")
    assert study_command(ft_verify) == 1                                          # and a wrong one is caught
    (tmp_path / "runs.jsonl").write_text("\n".join((tmp_path / "runs.jsonl").read_text().splitlines()[:8]) + "\n")
    assert study_command(["verify", "--arms", "lap_replicate_10x", "--seeds", "1", *common]) == 0  # reproduces
    lines = (tmp_path / "runs.jsonl").read_text().splitlines()
    doctored = [json.dumps({**json.loads(x), "knn_top1_cls": 1.0}) if '"lap_replicate_10x"' in x else x for x in lines]
    (tmp_path / "runs.jsonl").write_text("\n".join(doctored) + "\n")
    assert study_command(["verify", "--arms", "lap_replicate_10x", "--seeds", "1", *common]) == 1  # a wrong record
    (tmp_path / "runs.jsonl").write_text("\n".join(lines) + "\n")
    summary = json.loads((tmp_path / "out" / "ablation_synthetic_smoke.json").read_text())
    row = next(r for r in summary["rows"] if r["arm"] == "lap_replicate_10x")
    assert row["seeds"] == [0, 1] and row["knn_top1_mean_vs_original"]["n"] == 2
    assert (tmp_path / "out" / "ablation_synthetic_smoke_16.png").stat().st_size > 0
    assert "| lap_replicate_10x | 16 | 2 |" in (tmp_path / "out" / "ablation_synthetic_smoke.md").read_text()


def test_paired_difference_and_detectable_effect_hand_values():
    base = {0: 70.0, 1: 72.0, 2: 74.0}
    arm = {0: 71.0, 1: 74.0, 2: 74.0, 3: 99.0}            # seed 3 has no partner: left out
    p = stats.paired(base, arm)                       # differences 1, 2, 0: mean 1, sd 1
    assert p["n"] == 3 and p["diff"] == pytest.approx(1.0)
    assert p["ci95"] == pytest.approx(4.303 / 3 ** 0.5, rel=1e-3)          # t(0.975, 2) = 4.303
    assert p["mde"] == pytest.approx((4.303 + 1.061) / 3 ** 0.5, rel=1e-3)  # + t(0.80, 2) = 1.061
    assert p["p"] == pytest.approx(0.2254, abs=1e-4)                      # t = sqrt(3) on 2 df, two-sided
    assert stats.paired(base, {0: 75.0}) == {"diff": 5.0, "ci95": None, "n": 1, "sd": None, "p": None, "mde": None,
                                             "seeds": [0]}
    assert stats.paired(base, {7: 75.0}) is None


def test_records_merge_later_lines_and_rank_arms(tmp_path):
    path = tmp_path / "r.jsonl"
    rows = [{"arm": "original", "seed": 0, "steps": 500, "knn_top1_mean": 70.0, "ft_top1": None},
            {"arm": "lowpass", "seed": 0, "steps": 500, "knn_top1_mean": 72.0},
            {"arm": "curriculum", "seed": 0, "steps": 500, "knn_top1_mean": 69.0},
            {"arm": "original", "seed": 0, "steps": 500, "ft_top1": 80.0}]   # a later fine-tuning result
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = study.read_records(path)
    assert records[("original", 0, 500)]["knn_top1_mean"] == 70.0 and records[("original", 0, 500)]["ft_top1"] == 80.0
    assert study.ranked_arms(records, 500) == [("lowpass", 72.0), ("curriculum", 69.0)]


def test_fine_tuning_is_redone_at_other_epochs_only():
    import argparse
    args = argparse.Namespace(arms=["original", "random"], seeds=[0], steps=500, stage="dose", ft=True, ft_epochs=10)
    records = {("original", 0, 500): {"ft_top1": 41.0, "ft_epochs": 2}, ("random", 0, 500): {"ft_top1": 30.0, "ft_epochs": 10}}
    assert study.plan(args, records) == [("original", 0, 500)]   # 2 epochs is not the asked-for 10
    args.ft = False
    assert study.plan(args, records) == []                       # without --ft both are finished


def test_compute_matched_reading_by_hand(monkeypatch, tmp_path):
    flops = {"curriculum": 2.0, "original": 1.0}  # the curriculum costs twice: original at 1000 steps
    monkeypatch.setattr(study_report, "pretrain_flops", lambda arm, args, steps: flops[arm] * steps)
    rows = [{"arm": "original", "steps": 500, "seeds": [0, 1], "knn_top1_mean": 70.0},
            {"arm": "original", "steps": 2000, "seeds": [0, 1], "knn_top1_mean": 76.0},
            {"arm": "original", "steps": 4000, "seeds": [0, 1], "knn_top1_mean": 90.0},
            {"arm": "curriculum", "steps": 500, "seeds": [0, 1], "knn_top1_mean": 72.0,
             "knn_top1_mean_vs_original": {"diff": 2.0}}]
    m = study_report.compute_matched(rows, None)
    assert m["interpolated_between"] == [500, 2000]          # the budgets around 1000 steps
    assert m["original_at_equal_flops"] == pytest.approx(73.0)  # 70 + 6 * log(2) / log(4)
    assert m["diff_at_equal_flops"] == pytest.approx(-1.0) and m["diff_at_equal_steps"] == 2.0
    assert study_report.compute_matched(rows[:1] + rows[3:], None) is None  # one budget: no curve to read
    assert study_report.plot_budget(rows, tmp_path / "budget.png") and (tmp_path / "budget.png").stat().st_size > 0


def test_pretrain_flops_follow_the_visible_patches():
    import argparse
    import torch
    from maehelpers.pretrain import build_model
    args = argparse.Namespace(preset="smoke", dataset="synthetic")  # 16 patches
    cfg = study.arm_config("original", args, 0, 8)
    model, imgs = build_model(cfg), torch.zeros(1, 3, cfg.model.img_size, cfg.model.img_size)
    f = {k: study_report.flops_per_step(lambda: model(imgs, 1 - k / 16)[0].backward()) for k in (8, 7, 6, 5, 4)}
    batch = cfg.train.batch_size
    assert study_report.pretrain_flops("original", args, 8) == 8 * batch * f[4]  # ratio 0.75: 4 visible
    # curriculum 0.5 -> 0.75 over the first half of 8 steps: 8, 7, 6, 5 visible, then 4 for steps 4-7
    assert study_report.pretrain_flops("curriculum", args, 8) == batch * (f[8] + f[7] + f[6] + f[5] + 4 * f[4])


def test_readme_tables_are_the_committed_records():
    """The README's study tables are what `report --readme` writes from the committed records: a
    number edited by hand, or records added without regenerating the tables, fails here."""
    records = study.read_records(ROOT / "benchmarks" / "results" / "ablation_runs.jsonl", "fashion_mnist", "ablation")
    readme = (ROOT / "README.md").read_text()
    start, end = (readme.index(m) for m in study_report.README_MARKS)
    assert readme[start + len(study_report.README_MARKS[0]):end].strip() == study_report.readme_tables(study_report.summarise(records)).strip()


def test_readme_tables_replace_only_their_block(tmp_path):
    records = {("original", 0, 500): {"knn_top1_mean": 69.0, "ft_top1": 80.0, "ft_epochs": 10},
               ("original", 1, 500): {"knn_top1_mean": 71.0},                  # not fine-tuned
               ("random", 0, 500): {"knn_top1_mean": 57.0, "ft_top1": 60.0, "ft_epochs": 10}}
    tables = study_report.readme_tables(study_report.summarise(records))
    assert "| original | 2 | 70.00 ± 1.41 |" in tables                         # sd of 69 and 71
    assert "| original | 500 | 1 | 80.00 |  | layer-wise decay, 10 epochs |" in tables  # 1 of its 2 seeds tuned
    assert "| random | 500 | 1 | 60.00 | -20.00 (1 seed) | scratch, no layer-wise decay, 10 epochs |" in tables
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{study_report.README_MARKS[0]}\nstale\n{study_report.README_MARKS[1]}\nafter\n")
    study_report.replace_readme_tables(readme, tables)
    text = readme.read_text()
    assert text.startswith("before\n") and text.endswith(f"{study_report.README_MARKS[1]}\nafter\n")
    assert "stale" not in text and tables in text
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="no block"):
        study_report.replace_readme_tables(readme, tables)
    assert readme.read_text() == "no markers\n"   # left as it was


def test_speed_script_quick(tmp_path):
    pytest.importorskip("transformers")
    import speed
    speed.main(["--quick", "--no-compile", "--out", str(tmp_path)])
    res = json.loads((tmp_path / "speed.json").read_text())
    step = res["steps"][0]
    assert len(step["ratio_per_pair"]) == 2 and step["gflop_per_step"] > 0 and res["sgemm_gflop_s"] > 0
    assert res["data"][0]["median_ratio"] > 0 and res["probe"]["speedup"] > 0
    assert "HF ViTMAE" in (tmp_path / "speed.md").read_text()
