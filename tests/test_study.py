"""The seeded study: the runner (maehelpers.study) on tiny settings, its statistics (stats) against
values worked out by hand, its report and the registered analyses (maehelpers/study/)."""
import json
import statistics
from pathlib import Path

import numpy as np

import pytest

from maehelpers import runs, study
from maehelpers.generated import replace_block
from maehelpers.study import (arms, cli, exploratory, flops, heldout, plots, records, report, run, stages, stats,
                              tables)
from maehelpers.cli import study_command

ROOT = Path(__file__).resolve().parents[1]


def test_ablation_runner_tiny_records_skip_and_report(tmp_path):
    common = ["--dataset", "synthetic", "--preset", "smoke", "--steps", "16", "--runs-root", str(tmp_path / "runs"),
              "--records", str(tmp_path / "runs.jsonl"), "--out", str(tmp_path / "out"), "--quiet"]
    study_command(["run", "--arms", "original", "lap_replicate_10x", "random", "raw_pixels", "--seeds", "0", "1",
                   *common])
    records = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert len(records) == 7 and sum(r["arm"] == "raw_pixels" for r in records) == 1   # raw pixels have no seed
    lap = next(r for r in records if r["arm"] == "lap_replicate_10x")
    assert lap["variant"] == "laplacian+laplacian_form=replicate+laplacian_weight=0.5"
    for key in ("lp_top1_cls", "lp_top1_mean", "knn_top1_cls", "knn_top1_mean", "pretrain_time_s", "git_commit",
                "overrides", "steps", "seed", "threads", "under_load"):
        assert key in lap
    study_command(["run", "--arms", "original", "--seeds", "0", "1", *common])   # finished: nothing added
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == 7
    study_command(["run", "--arms", "original", "--seeds", "0", "--ft", "--ft-epochs", "1", *common])
    first, tuned = (json.loads(x) for x in (tmp_path / "runs.jsonl").read_text().splitlines()[::7])
    assert tuned["ft_top1"] is not None and tuned["ft_epochs"] == 1
    assert "threads" not in tuned and tuned["eval_threads"] == first["threads"]  # the pretraining's stay its own
    merged = study.read_records(tmp_path / "runs.jsonl")[("original", 0, 16)]
    assert merged["git_commit"] == first["git_commit"] and merged["ft_top1"] == tuned["ft_top1"]
    ft_verify = ["verify", "--arms", "original", "--seeds", "0", "--ft", *common]   # at the record's own budget
    assert study_command(ft_verify) == 0                                          # fine-tuning reproduces too
    with open(tmp_path / "runs.jsonl", "a") as f:
        f.write(json.dumps({**tuned, "ft_top1": tuned["ft_top1"] + 1.0}) + "\n")
    assert study_command(ft_verify) == 1                                          # and a wrong one is caught
    (tmp_path / "runs.jsonl").write_text("\n".join((tmp_path / "runs.jsonl").read_text().splitlines()[:7]) + "\n")
    assert study_command(["verify", "--arms", "lap_replicate_10x", "--seeds", "1", *common]) == 0  # reproduces
    lines = (tmp_path / "runs.jsonl").read_text().splitlines()
    doctored = [json.dumps({**json.loads(x), "knn_top1_cls": 1.0}) if '"lap_replicate_10x"' in x else x for x in lines]
    (tmp_path / "runs.jsonl").write_text("\n".join(doctored) + "\n")
    assert study_command(["verify", "--arms", "lap_replicate_10x", "--seeds", "1", "--stamp", *common]) == 1  # a wrong record
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == len(lines)                 # is not stamped
    (tmp_path / "runs.jsonl").write_text("\n".join(lines) + "\n")
    assert study_command(["verify", "--arms", "lap_replicate_10x", "--seeds", "1", "--stamp", *common]) == 0
    stamp = json.loads((tmp_path / "runs.jsonl").read_text().splitlines()[-1])
    assert stamp["arm"] == "lap_replicate_10x" and stamp["seed"] == 1 and stamp["verified_metrics"] == 4
    assert study.read_records(tmp_path / "runs.jsonl")[("lap_replicate_10x", 1, 16)]["verified_git_commit"] == \
        stamp["verified_git_commit"]
    (tmp_path / "runs.jsonl").write_text("\n".join(lines) + "\n")
    summary = json.loads((tmp_path / "out" / "ablation_synthetic_smoke.json").read_text())
    row = next(r for r in summary["rows"] if r["arm"] == "lap_replicate_10x")
    assert row["seeds"] == [0, 1] and row["knn_top1_mean_vs_original"]["n"] == 2
    assert (tmp_path / "out" / "ablation_synthetic_smoke_16.png").stat().st_size > 0
    assert "| lap_replicate_10x | 16 | 2 |" in (tmp_path / "out" / "ablation_synthetic_smoke.md").read_text()


def test_fine_tuning_a_recorded_run_after_its_folder_is_gone_pretrains_it_again_identically(tmp_path):
    common = ["--dataset", "synthetic", "--preset", "smoke", "--steps", "16", "--records", str(tmp_path / "r.jsonl"),
              "--out", str(tmp_path / "out"), "--quiet", "--arms", "original", "--seeds", "0"]
    study_command(["run", "--runs-root", str(tmp_path / "a"), "--threads", "1", *common])
    first = json.loads((tmp_path / "r.jsonl").read_text())
    # the run folder is gone and the machine now runs 2 threads: the run is pretrained again with the
    # record's 1 thread, gives the same encoder, and the fine-tuning line is added
    study_command(["run", "--runs-root", str(tmp_path / "b"), "--threads", "2", "--ft", "--ft-epochs", "1", *common])
    tuned = json.loads((tmp_path / "r.jsonl").read_text().splitlines()[1])
    assert tuned["ft_top1"] is not None and tuned["threads"] == 1
    assert all(tuned[m] == first[m] for m in arms.ENCODER_METRICS)
    # a record the rerun cannot reproduce is refused, and nothing is added
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    (tmp_path / "r.jsonl").write_text(json.dumps({**first, "knn_top1_mean": first["knn_top1_mean"] + 1.0}) + "\n")
    with pytest.raises(RuntimeError, match="differs from its record"):
        study_command(["run", "--runs-root", str(tmp_path / "c"), "--ft", "--ft-epochs", "1", *common])
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 1
    assert len(lines) == 2


def test_long_stage_is_the_registered_plan():
    args = cli.parse(["run", "--stage", "long", "--threads", "1"])
    assert (args.split, args.steps, args.ft, args.ft_epochs) == ("heldout", 16000, True, 20)
    todo = stages.plan(args, {})
    assert len(todo) == 15 and todo[:5] == [(a, 200, 16000) for a in
                                           ("original", "improved", "unif_umae_mean_100x", "random", "raw_pixels")]
    assert {s for _, s, _ in todo} == {200, 201, 202}
    cfg = arms.arm_config("improved", args, 200, 16000)
    assert (cfg.train.epochs, cfg.train.warmup_epochs, cfg.train.max_images) == (128, 6.4, 16000)  # its own schedule
    assert cfg.train.monitor_at[-1] == 16000 and cfg.train.monitor_queries == cfg.eval.max_test == 5000
    assert cfg.train.monitor_bank == cfg.eval.max_train  # a point is the validation k-NN of that step's encoder
    done = {(a, s, st): {"ft_epochs": 20} for a, s, st in todo[:4]}
    assert stages.plan(args, done) == todo[4:]


def test_workers_claim_different_runs_and_free_them(tmp_path):
    import argparse
    args = argparse.Namespace(runs_root=str(tmp_path), dataset="synthetic")
    todo = [("original", 0, 16), ("improved", 0, 16)]
    with stages.claim_next(args, todo) as first, stages.claim_next(args, todo) as second:
        with stages.claim_next(args, todo) as third:
            assert (first, second, third) == (todo[0], todo[1], None)
    with stages.claim_next(args, todo) as again:   # freed when the block ended
        assert again == todo[0]


def test_heldout_records_keep_fine_tuning_and_raw_pixel_bits_and_the_monitor_curve(tmp_path):
    common = ["--dataset", "synthetic", "--preset", "smoke", "--steps", "16", "--runs-root", str(tmp_path / "runs"),
              "--records", str(tmp_path / "r.jsonl"), "--out", str(tmp_path / "out"), "--quiet", "--split", "heldout",
              "--seeds", "7", "8"]
    study_command(["run", "--arms", "original", "random", "raw_pixels", "--ft", "--ft-epochs", "1", *common])
    records = study.read_records(tmp_path / "r.jsonl", split="heldout")
    bits = {(r["arm"], r["seed"]): r for r in map(json.loads, (tmp_path / "r_correct.jsonl").read_text().splitlines())}
    assert sorted(bits) == sorted((a, s) for a, s, _ in records) and len(records) == 6
    for (arm, seed, _), r in records.items():
        for m in ("knn_top1_mean", "lp_top1_mean") + (("ft_top1",) if arm != "raw_pixels" else ()):
            assert 100 * runs.unpack_bits(bits[arm, seed][m], 128).mean() == pytest.approx(r[m], abs=1e-9), (arm, m)
    raw = [records["raw_pixels", s, 16] for s in (7, 8)]
    assert raw[0]["knn_top1_mean"] == raw[1]["knn_top1_mean"]        # k-NN on pixels has no seed
    assert bits["raw_pixels", 7]["lp_top1_mean"] != bits["raw_pixels", 8]["lp_top1_mean"]  # the probe has: its own
    assert records["original", 7, 16]["monitor"][-1][0] == 16 and len(records["original", 7, 16]["monitor"]) == 8


def test_paired_difference_and_detectable_effect_hand_values():
    base = {0: 70.0, 1: 72.0, 2: 74.0}
    arm = {0: 71.0, 1: 74.0, 2: 74.0, 3: 99.0}            # seed 3 has no partner: left out
    p = stats.paired(base, arm)                       # differences 1, 2, 0: mean 1, sd 1
    assert p["n"] == 3 and p["diff"] == pytest.approx(1.0)
    assert p["ci95"] == pytest.approx(4.303 / 3 ** 0.5, rel=1e-3)          # t(0.975, 2) = 4.303
    # the detectable effect from the noncentral t (5.6535 se at 2 df), not the shortcut (4.303 + 1.061) se
    assert p["mde"] == pytest.approx(5.6535 / 3 ** 0.5, rel=1e-3)
    assert p["p"] == pytest.approx(0.2254, abs=1e-4)                      # t = sqrt(3) on 2 df, two-sided
    assert stats.paired(base, {0: 75.0}) == {"diff": 5.0, "ci95": None, "n": 1, "sd": None, "p": None, "mde": None,
                                             "seeds": [0], "diffs": [5.0], "base_mean": 70.0}
    assert p["base_mean"] == pytest.approx(72.0) and p["diffs"] == [1.0, 2.0, 0.0]
    assert stats.paired(base, {7: 75.0}) is None


def test_detectable_effect_is_what_a_t_test_detects_80_percent_of_the_time():
    """Simulated directly (no noncentral t): 2 seeds, sd 1, shift = the detectable effect; the two-sided
    5 % t test must reject in 80 % of 200,000 draws. The normal shortcut (t_0.975 + t_0.80) * se is 16 %
    too small at 2 seeds: notebook 06's 26.2 is 30.4."""
    rng = np.random.default_rng(0)
    se = 1 / 2 ** 0.5
    mde = stats.detectable(se, 1)
    draws = rng.normal(mde, 1.0, size=(200_000, 2))
    t = draws.mean(1) / (draws.std(1, ddof=1) / 2 ** 0.5)
    assert np.mean(np.abs(t) > 12.706) == pytest.approx(0.80, abs=0.005)
    assert mde / ((12.706 + 1.376) * se) == pytest.approx(30.4 / 26.2, abs=0.002)
    assert stats.detectable(1.0, 10_000) == pytest.approx(1.960 + 0.8416, abs=1e-3)   # many df: the normal one


def test_combined_interval_by_hand():
    """Seeds (-1, ... ) sd 1 over 3 seeds and an image standard error of 0.5: variance 1/3 + 1/4 = 7/12,
    df = (7/12)^2 / ((1/3)^2 / 2) = 6.125; t(0.975, 6.125) = 2.4349; half-width 2.4349 * sqrt(7/12)."""
    c = stats.combined(stats.mean_interval([1.0, 2.0, 0.0]), 0.5)
    assert c["df"] == pytest.approx(6.125) and c["se"] == pytest.approx((7 / 12) ** 0.5)
    assert c["ci95"] == pytest.approx(2.4349 * (7 / 12) ** 0.5, rel=1e-3)
    assert c["p"] == pytest.approx(0.2374, abs=2e-4)                       # t = 1 / 0.7638 = 1.309 on 6.125 df
    seeds_only = stats.combined(stats.mean_interval([1.0, 2.0, 0.0]), 0.0)
    assert seeds_only["ci95"] == pytest.approx(stats.mean_interval([1.0, 2.0, 0.0])["ci95"])


def test_records_merge_later_lines_and_rank_arms(tmp_path):
    path = tmp_path / "r.jsonl"
    rows = [{"arm": "original", "seed": 0, "steps": 500, "knn_top1_mean": 70.0, "ft_top1": None},
            {"arm": "lowpass", "seed": 0, "steps": 500, "knn_top1_mean": 72.0},
            {"arm": "curriculum", "seed": 0, "steps": 500, "knn_top1_mean": 69.0},
            {"arm": "original", "seed": 0, "steps": 500, "ft_top1": 80.0}]   # a later fine-tuning result
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = study.read_records(path)
    assert records[("original", 0, 500)]["knn_top1_mean"] == 70.0 and records[("original", 0, 500)]["ft_top1"] == 80.0
    assert stages.ranked_arms(records, 500) == [("lowpass", 72.0), ("curriculum", 69.0)]


def test_fine_tuning_is_redone_at_other_epochs_only():
    import argparse
    args = argparse.Namespace(arms=["original", "random"], seeds=[0], steps=500, stage="dose", ft=True, ft_epochs=10)
    records = {("original", 0, 500): {"ft_top1": 41.0, "ft_epochs": 2}, ("random", 0, 500): {"ft_top1": 30.0, "ft_epochs": 10}}
    assert stages.plan(args, records) == [("original", 0, 500)]   # 2 epochs is not the asked-for 10
    args.ft = False
    assert stages.plan(args, records) == []                       # without --ft both are finished


def test_compute_matched_reading_by_hand(monkeypatch, tmp_path):
    cost = {"curriculum": 2.0, "original": 1.0}  # the curriculum costs twice: original at 1000 steps
    monkeypatch.setattr(flops, "pretrain_flops", lambda arm, settings, steps: cost[arm] * steps)
    K = "knn_top1_mean"
    records = {("original", 0, 500): {K: 70.0}, ("original", 0, 2000): {K: 76.0}, ("original", 0, 4000): {K: 90.0},
               ("original", 1, 500): {K: 72.0}, ("original", 1, 2000): {K: 80.0}, ("original", 1, 4000): {K: 83.0},
               ("curriculum", 0, 500): {K: 72.0}, ("curriculum", 1, 500): {K: 73.0},
               ("curriculum", 2, 500): {K: 99.0}}                  # seed 2 has no curve of original: left out
    m = flops.compute_matched(records, None)
    assert m["seeds"] == [0, 1] and m["original_steps_at_equal_flops"] == 1000
    # log-linear between 500 and 2000 (1000 is half-way in log steps): seed 0 reads 73, seed 1 reads 76
    assert m["linear"]["diffs"] == pytest.approx([72 - 73, 73 - 76]) and m["linear"]["diff"] == pytest.approx(-2.0)
    assert m["linear"]["ci95"] == pytest.approx(12.706, rel=1e-3)   # diffs -1, -3: se sqrt(2) / sqrt(2), t(0.975, 1)
    # the quadratic in x = log2(steps / 500) through (0, 70), (2, 76), (3, 90) is 70 - 13/3 x + 11/3 x^2, at
    # x = 1: 69 1/3; through (0, 72), (2, 80), (3, 83) it is 72 + 14/3 x - 1/3 x^2 (concave), at x = 1: 76 1/3
    assert m["quadratic"]["diffs"] == pytest.approx([72 - 208 / 3, 73 - 229 / 3])
    assert m["at_equal_steps"]["diffs"] == pytest.approx([2.0, 1.0])
    line = tables.matched_markdown(m)
    assert "-2.00 [" in line and "+0.50 [-0.50, +1.50]" not in line and "2 seeds" in line
    one_budget = {k: v for k, v in records.items() if k[2] == 500}
    assert flops.compute_matched(one_budget, None) is None  # no curve to read
    rows = tables.summarise(records)
    assert plots.plot_budget(rows, tmp_path / "budget.png") and (tmp_path / "budget.png").stat().st_size > 0


def test_pretrain_flops_follow_the_visible_patches():
    import argparse
    import torch
    from maehelpers.checkpoints import build_model
    args = argparse.Namespace(preset="smoke", dataset="synthetic")  # 16 patches
    cfg = arms.arm_config("original", args, 0, 8)
    model, imgs = build_model(cfg), torch.zeros(1, 3, cfg.model.img_size, cfg.model.img_size)
    f = {k: flops.flops_per_step(lambda: model(imgs, 1 - k / 16)[0].backward()) for k in (8, 7, 6, 5, 4)}
    batch = cfg.train.batch_size
    assert flops.pretrain_flops("original", args, 8) == 8 * batch * f[4]  # ratio 0.75: 4 visible
    # curriculum 0.5 -> 0.75 over the first half of 8 steps: 8, 7, 6, 5 visible, then 4 for steps 4-7
    assert flops.pretrain_flops("curriculum", args, 8) == batch * (f[8] + f[7] + f[6] + f[5] + 4 * f[4])
    # the count is read off a quadratic through three keeps (12, 8 and 4 here): 7, 6 and 5 are not among them
    assert [flops.image_step_flops(cfg)(k) for k in (7, 6, 5)] == [f[7], f[6], f[5]]
    # a random ratio in [0.6, 0.9] counts its expectation: 16 evenly spaced draws per step
    u = [(i + 0.5) / 16 for i in range(16)]
    keeps = [int(16 * (1 - (0.6 + 0.3 * x))) for x in u]      # 6, 6, 6, 5, 5, ... visible of 16
    counts = {k: flops.flops_per_step(lambda: model(imgs, 1 - (k + 0.5) / 16)[0].backward()) for k in set(keeps)}
    assert flops.pretrain_flops("random_ratio", args, 8) == pytest.approx(8 * batch * np.mean([counts[k] for k in keeps]))


def test_docs_study_blocks_are_the_committed_records():
    """docs/study.md's generated blocks are what `report --doc` writes from the committed records: a
    record changed without the report rerun, or a hand edit inside a block, fails here."""
    from maehelpers.generated import block
    from maehelpers.study.long import report as long_report
    from maehelpers.study.records import first_dates
    from maehelpers.study.settings import StudySettings
    settings = StudySettings()
    found = study.read_records(settings.records, "fashion_mnist", "ablation")
    doc = ROOT / "docs" / "study.md"
    rows = tables.summarise(found)
    ratios = flops.flops_ratios([r for r in rows if r["steps"] == 500], settings)
    for marks, text in ((report.TABLES_MARKS, tables.readme_tables(rows, ratios)),
                        (report.ANALYSES_MARKS, exploratory.analyses_markdown(found, settings, first_dates(settings.records))),
                        (report.HELDOUT_MARKS, report.heldout_report(settings)[0])):
        assert block(doc, marks) == text.strip()
    assert block(doc, report.LONG_MARKS).startswith(long_report(settings)[0].strip())

def test_readme_tables_replace_only_their_block(tmp_path):
    lines = [{"arm": "original", "seed": 0, "steps": 500, "knn_top1_mean": 69.0, "ft_top1": 80.0, "ft_epochs": 10},
             {"arm": "original", "seed": 1, "steps": 500, "knn_top1_mean": 71.0},            # not fine-tuned
             {"arm": "random", "seed": 0, "steps": 500, "knn_top1_mean": 57.0, "ft_top1": 60.0, "ft_epochs": 10},
             {"arm": "original", "seed": 0, "steps": 500, "ft_top1": 85.0, "ft_epochs": 20}]  # a later, longer budget
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    records = study.read_records(tmp_path / "r.jsonl")
    text = tables.readme_tables(tables.summarise(records), {("random", 500): 1.0})
    assert "| original | 2 | 70.00 ± 1.41 |" in text                         # sd of 69 and 71
    assert "| original | 500 | 10 | 1 | 80.00 |  | layer-wise decay |" in text  # 1 of its 2 seeds tuned
    assert "| original | 500 | 20 | 1 | 85.00 |  | layer-wise decay |" in text  # each budget keeps its own
    assert "| random | 500 | 10 | 1 | 60.00 | -20.00 (1 seed) | scratch, no layer-wise decay |" in text
    assert "| random | 500 | 20 |" not in text and " 1.000x |" in text
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{report.TABLES_MARKS[0]}\nstale\n{report.TABLES_MARKS[1]}\nafter\n")
    replace_block(readme, text, report.TABLES_MARKS)
    page = readme.read_text()
    assert page.startswith("before\n") and page.endswith(f"{report.TABLES_MARKS[1]}\nafter\n")
    assert "stale" not in page and text.strip() in page
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="no block"):
        replace_block(readme, text, report.TABLES_MARKS)
    assert readme.read_text() == "no markers\n"   # left as it was


# ----------------------------------------------------------------------------- statistics by hand
def test_holm_by_hand():
    # sorted 0.01, 0.02, 0.03, 0.04 times 4, 3, 2, 1: 0.04, 0.06, 0.06 (kept non-decreasing), 0.06
    adjusted = stats.holm({"a": 0.03, "b": 0.01, "c": 0.04, "d": 0.02, "none": None})
    assert adjusted == pytest.approx({"b": 0.04, "d": 0.06, "a": 0.06, "c": 0.06})
    assert stats.holm({"x": 0.6, "y": 0.5}) == pytest.approx({"y": 1.0, "x": 1.0})   # capped at 1


def test_bootstrap_over_images_by_hand():
    base = {0: np.array([1, 0, 1, 0], bool), 1: np.array([1, 1, 0, 0], bool)}
    same = stats.bootstrap_paired(base, base)
    assert same == (0.0, 0.0)                                          # identical predictions: no difference
    better = {0: np.array([1, 1, 1, 0], bool), 1: np.array([1, 1, 1, 0], bool)}
    # per image the mean over seeds of (arm - base) is 0, 0.5, 0.5, 0: resampled means lie in [0, 50] points
    lo, hi = stats.bootstrap_paired(base, better, n_boot=4000)
    assert 0.0 <= lo < 25.0 < hi <= 50.0
    everywhere = {0: np.ones(4, bool), 1: np.ones(4, bool)}
    none = {0: np.zeros(4, bool), 1: np.zeros(4, bool)}
    assert stats.bootstrap_paired(none, everywhere) == (100.0, 100.0)  # right on every image, every resample
    assert stats.bootstrap_paired(base, {5: everywhere[0]}) is None     # no shared seed


def test_slope_over_seeds_by_hand():
    # seed 0: y = 1 + 2x exactly (slope 2); seed 1: points (0, 0), (1, 1), (2, 5): slope (sum dx dy / sum dx^2) = 5/2
    res = stats.slope({0: [(0, 1), (1, 3), (2, 5)], 1: [(0, 0), (1, 1), (2, 5)], 2: [(1, 4)]})
    assert res["slopes"] == pytest.approx([2.0, 2.5]) and res["n"] == 2 and res["diff"] == pytest.approx(2.25)
    assert res["ci95"] == pytest.approx(12.706 * 0.25, rel=1e-3)     # sd of (2, 2.5) 0.354, se 0.25, t(0.975, 1)


def test_seeds_needed_by_hand():
    # sd 1, half-width 1: n = 7 gives t(0.975, 6) / sqrt 7 = 2.447 / 2.646 = 0.925; n = 6 gives 2.571 / 2.449 = 1.05
    assert stats.seeds_needed(1.0, half_width=1.0) == 7
    # effect 2 with sd 1: n = 5: (2.776 + 0.941) / sqrt 5 = 1.66 <= 2; n = 4: (3.182 + 0.978) / 2 = 2.08 > 2
    assert stats.seeds_needed(1.0, effect=2.0) == 5
    with pytest.raises(ValueError, match="exactly one"):
        stats.seeds_needed(1.0)


# ----------------------------------------------------------------------------- the held-out analysis
def test_factorial_contrasts_by_hand():
    # values = 70 + 2 C + 1 L + 3 U - 1 (C and U together) + seed noise that cancels in every contrast
    values = {}
    for arm, (c, l, u) in heldout.FACTORIAL.items():
        values[arm] = {s: 70 + 2 * c + l + 3 * u - c * u + 0.1 * s for s in (0, 1, 2)}
    f = heldout.factorial(values)
    e = {k: v["diff"] for k, v in f["effects"].items()}
    # main effect C = mean over cells with C minus without: 2 - 0.5 (the interaction, half of the cells) = 1.5
    assert e == pytest.approx({"C": 1.5, "L": 1.0, "U": 2.5, "CxL": 0.0, "CxU": -0.5, "LxU": 0.0, "CxLxU": 0.0})
    # improved - original = 2 + 1 + 3 - 1 = 5; the parts alone add to 6: the sum is 1 less than its parts
    assert f["sum_less_than_parts"]["diff"] == pytest.approx(-1.0) and f["seeds"] == [0, 1, 2]
    values["improved"].pop(2)
    assert heldout.factorial(values)["seeds"] == [0, 1]       # seeds with every cell only


def test_heldout_claims_follow_the_registered_wording():
    assert heldout.claim(0.01, {"diff": 2.0, "ci95": 1.0}) == "detected (+)"
    assert heldout.claim(0.2, {"diff": 0.5, "ci95": 1.5}) == \
        "not detected; an effect larger than 2.00 is ruled out (95 %)"
    assert heldout.claim(None, {"diff": 0.5, "ci95": None}) == "one seed: screening only"


def test_heldout_records_before_the_registration_are_refused(tmp_path):
    prereg = tmp_path / "p.md"
    prereg.write_text("# x\n\nregistered: 2026-12-02 04:00 UTC\n\nregistered (long budget): 2026-12-07 03:17 UTC\n")
    when = records.registered_at(prereg)
    assert when == "2026-12-02 04:00" and records.registered_at(prereg, "long") == "2026-12-07 03:17"
    # a record first written before the registration and added to after it (fine-tuning, days later)
    # was made before: its FIRST line decides, not the merged record's last date
    lines = [{"arm": "original", "seed": 100, "steps": 500, "split": "heldout", "date": "2026-12-01 23:59"},
             {"arm": "original", "seed": 100, "steps": 500, "split": "heldout", "date": "2026-12-03 10:00", "ft_top1": 1.0},
             {"arm": "improved", "seed": 100, "steps": 500, "split": "heldout", "date": "2026-12-02 05:00"}]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    first = records.first_dates(tmp_path / "r.jsonl", split="heldout")
    assert first == {("original", 100, 500): "2026-12-01 23:59", ("improved", 100, 500): "2026-12-02 05:00"}
    assert study.read_records(tmp_path / "r.jsonl", split="heldout")[("original", 100, 500)]["date"] == "2026-12-03 10:00"
    records.check_registered({k: v for k, v in first.items() if k[0] == "improved"}, when)
    with pytest.raises(ValueError, match="first written before their registration"):
        records.check_registered(first, when)

def test_heldout_analysis_from_records_and_bits():
    rng = np.random.default_rng(0)
    records, correct = {}, {}
    for arm in heldout.FACTORIAL:
        for s in (100, 101, 102):
            bits = rng.random(200) < (0.7 + (0.05 if arm == "improved" else 0.0))
            records[(arm, s, 500)] = {"knn_top1_mean": 100 * bits.mean(), "lp_top1_mean": 100 * bits.mean()}
            correct[(arm, s)] = {"knn_top1_mean": bits, "lp_top1_mean": bits}
    a = heldout.heldout_analysis(records, correct)["knn_top1_mean"]
    by_hand = np.mean([records[("improved", s, 500)]["knn_top1_mean"] - records[("original", s, 500)]["knn_top1_mean"]
                       for s in (100, 101, 102)])
    assert a["vs_original"]["improved"]["diff"] == pytest.approx(by_hand)
    lo, hi = a["vs_original"]["improved"]["bootstrap95"]
    assert lo < by_hand < hi
    assert set(a["vs_original"]) == {"improved", "unif_wi_mean_1x"}       # the family arms present
    assert a["factorial"]["seeds"] == [100, 101, 102] and set(a["leave_one_out"]) == {"curriculum", "Laplacian",
                                                                                        "uniformity"}
    assert "Family 2" in heldout.heldout_markdown({"knn_top1_mean": a}, "2026-12-02 04:00")


def test_heldout_verdict_words_each_claim_with_its_interval_and_holm_correction():
    iv = lambda d, ci, p: {"diff": d, "ci95": ci, "p": p, "n": 10}  # noqa: E731
    # improved: detected over seeds (Holm 0.02); with the test images as a sample too, p 0.04 -> Holm 0.08
    vs = heldout.family({"improved": {**iv(1.0, 0.5, 0.01), "combined": iv(1.0, 0.9, 0.04)},
                         "lowpass": {**iv(-0.2, 0.6, 0.5), "combined": iv(-0.2, 0.9, 0.6)}})  # Holm: 0.02, 0.5
    effects = {"C": iv(0.1, 0.2, 0.3), "L": iv(-0.3, 0.2, 0.01), "U": iv(1.0, 0.3, 0.001), "CxL": iv(0.05, 0.1, 0.4),
               "CxU": iv(-0.2, 0.15, 0.02), "LxU": iv(0.0, 0.1, 0.9), "CxLxU": iv(0.1, 0.12, 0.1)}
    factorial = {"seeds": list(range(100, 110)), "effects": heldout.family(effects),
                 "sum_less_than_parts": iv(-0.5, 1.0, 0.3)}
    metric = {"vs_original": vs, "factorial": factorial}
    lines = heldout.heldout_verdict({"knn_top1_mean": metric, "lp_top1_mean": metric})
    assert lines[0].startswith("- **H1, the improved variant**, against `original` over 10 seeds: "
                               "k-NN +1.00 [+0.50, +1.50] over seeds (Holm p 0.020): detected (+); seeds and images "
                               "+1.00 [+0.10, +1.90] (Holm p 0.080: does not survive)")
    assert "k-NN -0.20 [-0.80, +0.40] over seeds (Holm p 0.500): not detected; an effect larger than 0.80 is ruled out" \
        in lines[1]
    # Holm over 7: U 0.001 x 7 = 0.007 is detected; L 0.01 x 6 = 0.06 is not; no interaction is
    assert "the uniformity term +1.00 [+0.70, +1.30] over seeds (Holm p 0.007): detected (+)" in lines[2]
    assert "the Laplacian loss -0.30 [-0.50, -0.10] over seeds (Holm p 0.060): not detected" in lines[2]
    assert "none detected (an interaction larger than 0.35 is ruled out for each, 95 %)" in lines[2]  # CxU: 0.2 + 0.15
    assert "Is the sum less than its parts? -0.50 [-1.50, +0.50]" in lines[2]
    effects["CxU"] = iv(-0.2, 0.15, 0.002)                      # now 0.002 x 6 = 0.012 after Holm
    factorial["effects"] = heldout.family(effects)
    line = heldout.heldout_verdict({"knn_top1_mean": metric, "lp_top1_mean": metric})[2]
    assert "Interactions: detected for CxU" in line and "-0.40 points larger with the other" in line  # 2 x the contrast


def test_contrasts_carry_the_image_bootstrap_and_the_combined_interval():
    """Two arms, three seeds, four images: the per-image difference averaged over seeds is (25, 25, 0, 0)
    points... by hand: arm right on images 0, 1 (all seeds), base right on none of 0-3 but image 2 at seed 0."""
    import numpy as np
    bits = {"a": {s: np.array([1, 1, 0, 0], bool) for s in (0, 1, 2)},
            "o": {0: np.array([0, 0, 1, 0], bool), 1: np.zeros(4, bool), 2: np.zeros(4, bool)}}
    values = {a: {s: 100 * b.mean() for s, b in by.items()} for a, by in bits.items()}
    c = heldout.contrast(values, bits, {"a": 1, "o": -1})
    assert c["diffs"] == pytest.approx([25.0, 50.0, 50.0]) and c["diff"] == pytest.approx(125 / 3)
    # per image: (100, 100, -100/3, 0); the bootstrap's mean of those is the seed mean, its spread is the images'
    assert c["bootstrap95"][0] < c["diff"] < c["bootstrap95"][1]
    assert c["combined"]["ci95"] > c["ci95"] and c["combined"]["se_images"] > 0
    assert heldout.contrast(values, {}, {"a": 1, "o": -1}).get("combined") is None   # no bits: seeds only

def test_a_study_over_a_term_of_your_own_records_it_and_reproduces(tmp_path):
    import torch.nn.functional as F
    from maehelpers.losses import TERMS, register_term
    from maehelpers.runs import read_results
    register_term("test_spread_floor")(lambda x: F.relu(1.0 - x.pooled("mean").std(dim=0)).mean())
    arm = ("original", {"variant.extra_terms": [["test_spread_floor", 0.5]]})
    where = {"records": tmp_path / "r.jsonl", "runs_root": tmp_path / "runs"}
    try:
        res = study.compare({"floor": arm}, seeds=(0, 1), steps=16, dataset="synthetic", preset="smoke", **where)
        assert res["floor"]["knn_top1_mean"]["n"] == 2 and res["floor"]["knn_top1_mean"]["seeds"] == [0, 1]
        record = study.read_records(where["records"])[("floor", 1, 16)]
        assert record["overrides"] == {"variant.extra_terms": [["test_spread_floor", 0.5]]}
        assert record["variant"] == "original+extra_terms=(('test_spread_floor', 0.5),)"
        run = read_results(tmp_path / "runs" / "synthetic" / "floor_s1_16")
        assert run["config"]["variant"]["extra_terms"] == [["test_spread_floor", 0.5]]
        (tmp_path / "arms.json").write_text(json.dumps({"floor": arm}))
        common = ["--dataset", "synthetic", "--preset", "smoke", "--steps", "16", "--records", str(where["records"]),
                  "--arms-file", str(tmp_path / "arms.json"), "--quiet"]
        assert study_command(["verify", "--arms", "floor", "--seeds", "1", *common]) == 0    # reproduces
    finally:
        TERMS.pop("test_spread_floor")
    with pytest.raises(ValueError, match="registered loss terms"):   # without the term: said before any work
        study_command(["verify", "--arms", "floor", "--seeds", "1", *common])


def _records(tmp_path, rows):
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps({"dataset": "fashion_mnist", "preset": "ablation", "steps": 500, **r}) + "\n"
                            for r in rows))
    return path


def test_noise_check_places_one_difference_on_the_studys_seeds(tmp_path):
    from maehelpers.study import verdict
    rows = [{"arm": a, "seed": s, "knn_top1_mean": v} for s, (o, i) in enumerate([(70, 71), (70, 69), (70, 72)])
            for a, v in (("original", o), ("improved", i))]
    rows += [{"arm": a, "seed": 100, "split": "heldout", "knn_top1_mean": v} for a, v in (("original", 70), ("improved", 70))]
    path = _records(tmp_path, rows)
    # differences +1, -1, +2 (validation) and 0 (held-out): sd of [1, -1, 2, 0] = 1.2910
    inside = verdict.noise_check(2.0, "fashion_mnist", "ablation", records=path)
    assert inside["sd"] == pytest.approx(1.2910, abs=1e-4) and inside["band"] == pytest.approx(1.96 * 1.2910, abs=1e-3)
    assert inside["inside"] and "cannot tell it from noise" in inside["text"]
    outside = verdict.noise_check(-3.0, "stl10", "paper", records=path)
    assert not outside["inside"] and "screening only" in outside["text"] and outside["text"].startswith("The study ran on")
    assert verdict.study_paired("improved", "heldout", records=path)["diffs"] == [0.0]


def test_verdict_lines_come_from_the_records(tmp_path):
    from maehelpers.study import verdict
    rows = [{"arm": a, "seed": s, "knn_top1_mean": 70.0 + (a == "improved") * d}
            for s, d in enumerate([1.0, 2.0, 3.0]) for a in ("original", "improved", "unif_umae_mean_100x")]
    rows += [{"arm": "original", "seed": 100, "split": "heldout", "knn_top1_mean": 70.0}]
    v = verdict.verdict(records=_records(tmp_path, rows))
    assert v["paired"]["improved"]["validation"]["diff"] == pytest.approx(2.0)
    assert "+2.00 ± 2.48 over 3 seeds" in v["lines"][0]
    assert "+0.00" in v["lines"][1] and v["paired"]["unif_umae_mean_100x"]["heldout"] is None
    assert v["lines"][2].startswith("The preregistered held-out confirmation has 1 of its 100 runs")


def test_verdict_states_the_registered_claims_once_the_heldout_stage_is_complete(tmp_path):
    import torch
    from maehelpers.study import verdict
    rng = np.random.default_rng(1)
    rows, bits = [], []
    for arm in arms.HELDOUT_ARMS:
        for s in arms.HELDOUT_SEEDS:
            ok = rng.random(400) < (0.78 if arm == "unif_umae_mean_100x" else 0.70)   # one arm clearly better
            acc = 100.0 * ok.mean()
            rows.append({"arm": arm, "seed": s, "split": "heldout", "date": "2026-12-02 05:00",
                         "knn_top1_mean": acc, "lp_top1_mean": acc})
            packed = runs.pack_bits(torch.from_numpy(ok))
            bits.append({"arm": arm, "seed": s, "n": 400, "knn_top1_mean": packed, "lp_top1_mean": packed})
    path = _records(tmp_path, rows)
    records.correct_path(path).write_text("".join(json.dumps({"dataset": "fashion_mnist", "preset": "ablation",
                                                            "steps": 500, **b}) + "\n" for b in bits))
    v = verdict.verdict(records=path)
    assert v["heldout_done"] == 100
    umae = v["lines"][1]
    assert "held-out (preregistered)" in umae and "detected (+) (Holm p <0.001;" in umae and "interim" not in umae
    assert "with the test images as a sample too" in umae                  # the combined interval beside the claim
    assert "no claim" not in " ".join(v["lines"]) and "registered, Holm-corrected" in v["lines"][2]
    # a validation difference is never worded as a finding: exploratory, with its uncorrected p
    rows = [{**r, "split": "validation", "seed": r["seed"] - 100} for r in rows if r["arm"] in ("original", "unif_umae_mean_100x")]
    (tmp_path / "v").mkdir()
    path = _records(tmp_path / "v", rows)
    line = verdict.verdict(records=path)["lines"][1]
    assert "exploratory (nominal p <0.001, uncorrected" in line and "detected" not in line.split("held-out")[0]


def test_health_pairs_are_paired_with_original_by_seed():
    rec = {("original", 0, 500): {"effective_rank": 10.0, "knn_top1_mean": 70.0},
           ("original", 1, 500): {"effective_rank": 12.0, "knn_top1_mean": 71.0},
           ("umae", 0, 500): {"effective_rank": 15.0, "knn_top1_mean": 72.0},
           ("umae", 1, 500): {"effective_rank": 11.0, "knn_top1_mean": 70.5},
           ("umae", 2, 500): {"effective_rank": 20.0, "knn_top1_mean": 75.0},     # no original at seed 2
           ("lowpass", 0, 500): {"knn_top1_mean": 69.0}}                         # no health recorded
    assert plots.health_pairs(rec) == {"umae": [(5.0, 2.0), (-1.0, -0.5)]}


def test_a_run_records_its_last_epochs_feature_health(tmp_path):
    (tmp_path / "log_epochs.jsonl").write_text('{"epoch": 1, "effective_rank": 3.0, "uniformity_wi": -1.0, '
                                               '"uniformity_umae": 0.5}\n{"epoch": 2, "effective_rank": 4.0, '
                                               '"uniformity_wi": -2.0, "uniformity_umae": 0.25}\n')
    assert run.last_health(tmp_path) == {"effective_rank": 4.0, "uniformity_wi": -2.0, "uniformity_umae": 0.25}
    assert run.last_health(tmp_path / "elsewhere") == {}


# ----------------------------------------------------------------------------- registration 2: the long-budget stage
def test_records_of_the_running_stage_stay_readable():
    """The long stage's first record and its bits, as its registered commit (8c36deb) wrote them while
    this code moved: the current code reads the record, its monitor curve, its first date and its
    per-image bits, and the stage's analysis takes them."""
    path = ROOT / "tests" / "data" / "registered_stage_record.jsonl"
    rec = study.read_records(path, "fashion_mnist", "ablation", "heldout")[("original", 200, 16000)]
    assert rec["git_commit"].startswith("8c36deb") and rec["ft_epochs"] == 20
    assert [p[0] for p in rec["monitor"]] == [500, 1000, 2000, 4000, 6000, 8000, 12000, 16000]
    assert records.first_dates(path, split="heldout") == {("original", 200, 16000): rec["date"]}
    bits = records.read_correct(records.correct_path(path), "fashion_mnist", "ablation", 16000)[("original", 200)]
    for m in ("knn_top1_mean", "lp_top1_mean", "knn_top1_cls", "lp_top1_cls", "ft_top1"):
        assert 100 * bits[m].mean() == pytest.approx(rec[m], abs=1e-4), m   # the record: a float32 mean
    from maehelpers.study import long
    held = study.read_records(path, "fashion_mnist", "ablation", "heldout")
    assert long.last_doubling(held, "original")["diff"] == pytest.approx(rec["monitor"][7][1] - rec["monitor"][5][1])
    assert long.progress(held) == (1, 15)

def _long_records(knn: dict, lp: dict, ft: dict, rng_seed: int = 0):
    """Held-out records and bits of the long stage: three seeds, 2,000 test images; each arm's k-NN,
    probe and fine-tuning accuracy near the values given, made from per-image bits."""
    import numpy as np
    rng = np.random.default_rng(rng_seed)
    held, correct = {}, {}
    for s in (200, 201, 202):
        for arm in ("original", "improved", "unif_umae_mean_100x", "random", "raw_pixels"):
            rec, bits = {"monitor": [[8000, 70.0 + s - 200, 0], [16000, 71.0 + s - 200, 0]]}, {}
            for m, table in (("knn_top1_mean", knn), ("lp_top1_mean", lp), ("ft_top1", ft)):
                if arm in table:
                    b = rng.random(2000) < table[arm] / 100 + 0.01 * (s - 201)
                    bits[m], rec[m] = b, 100 * b.mean()
            held[(arm, s, 16000)], correct[(arm, s)] = rec, bits
    return held, correct


def test_long_stage_analysis_tests_seven_hypotheses_with_the_combined_interval_and_words_the_verdict():
    from maehelpers.study import long
    knn = {"original": 78.0, "improved": 78.2, "unif_umae_mean_100x": 86.0, "raw_pixels": 80.5}
    lp = {"original": 70.0, "improved": 71.0, "unif_umae_mean_100x": 76.0, "raw_pixels": 81.5}
    ft = {"original": 75.0, "improved": 75.0, "unif_umae_mean_100x": 75.0, "random": 75.0}
    held, correct = _long_records(knn, lp, ft)
    a = long.analysis(held, correct)
    h = a["hypotheses"]
    assert list(h) == ["L1", "L2", "L3", "L4", "L5", "L6", "L7"]
    assert all(v["combined"]["se"] > v["combined"]["se_seeds"] > 0 for v in h.values())   # the images add variance
    assert h["L3"]["diff"] == pytest.approx(statistics.fmean(held[("original", s, 16000)]["knn_top1_mean"] -
                                                             held[("raw_pixels", s, 16000)]["knn_top1_mean"]
                                                             for s in (200, 201, 202)))
    ps = sorted(v["combined"]["p"] for v in h.values())
    assert min(v["p_holm"] for v in h.values()) == pytest.approx(min(1.0, 7 * ps[0]))   # Holm over the seven
    text = "\n".join(long.verdict(a))
    assert "Does `original` pass raw pixels at 16,000 steps?** On k-NN it falls short" in text
    assert "on the linear probe it falls short" in text
    assert "the best arm (`unif_umae_mean_100x`) pass raw pixels at 16,000 steps?** On k-NN it passes" in text
    assert "The paper's MAE (`original`) does not pass raw pixels on k-NN within 16,000 steps" in text
    assert "+1.00 [+1.00, +1.00]" in text
    assert "Does the improved variant's gain survive at 16,000 steps?** Not detected" in text
    assert "No advantage detected" in text
    assert a["slope"]["original"]["diffs"] == [1.0, 1.0, 1.0]
    tie = long.analysis(*_long_records({**knn, "unif_umae_mean_100x": 80.5}, {**lp, "unif_umae_mean_100x": 81.5}, ft))
    said = "\n".join(long.verdict(tie))   # an unresolved question shows the Holm p that left it so
    assert "(`unif_umae_mean_100x`) pass raw pixels at 16,000 steps?** On k-NN it is not resolved (" in said
    v = tie["hypotheses"]["L5"]
    assert f"it is not resolved ({tables.fmt_interval(v['combined'])}, Holm p {tables._p(v['p_holm'])})" in said
    assert long.shown(h["L3"]) == tables.fmt_interval(h["L3"]["combined"])   # a detected one needs no p
    assert long.answer(h["L7"], "scratch is ahead", "no advantage detected") == "no advantage detected"
    assert long.answer(h["L3"], "it falls short") == "no: it falls short (detected)"
    assert long.answer(h["L5"], "it falls short") == "yes, detected"
    assert "ended above it" not in text   # the best arm fixed in advance stays first here
    flipped = long.verdict(long.analysis(*_long_records({**knn, "improved": 88.0}, lp, ft)))
    assert "`improved` (" in "\n".join(flipped) and "ended above it (" in "\n".join(flipped)


def test_long_stage_report_waits_for_every_record_and_refuses_early_ones(tmp_path):
    from maehelpers.study import long
    from maehelpers.study.settings import StudySettings
    held, correct = _long_records({"original": 78.0, "improved": 78.0, "unif_umae_mean_100x": 80.0, "raw_pixels": 80.0},
                                  {"original": 70.0, "improved": 70.0, "unif_umae_mean_100x": 72.0, "raw_pixels": 81.0},
                                  {"original": 75.0, "improved": 75.0, "unif_umae_mean_100x": 75.0, "random": 74.0})
    lines, bits = [], []
    for (arm, s, st), r in held.items():
        lines.append({"dataset": "fashion_mnist", "preset": "ablation", "split": "heldout", "arm": arm, "seed": s,
                      "steps": st, "date": "2026-12-07 09:00", **{k: v for k, v in r.items()},
                      **({"ft_epochs": 20} if "ft_top1" in r else {})})
        bits.append({"dataset": "fashion_mnist", "preset": "ablation", "split": "heldout", "arm": arm, "seed": s,
                     "steps": st, "n": 2000, **{m: runs.pack_bits(b) for m, b in correct[(arm, s)].items()}})
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines[:-1]))
    records.correct_path(path).write_text("".join(json.dumps(x) + "\n" for x in bits))
    settings = StudySettings(records=str(path))
    text, analysis = long.report(settings)
    assert analysis is None and "14 of 15 registered records" in text
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    text, analysis = long.report(settings)
    assert analysis and "**The registered family**" in text and "Does `original` pass raw pixels" in text
    rows = report.findings(settings)   # the front page says the same, on both probes
    assert "| Does the paper's MAE pass raw pixels at 16,000 steps? | k-NN: falls short; probe: falls short |" in rows
    h = analysis["hypotheses"]
    assert (f"| Does the arm that ranked first pass raw pixels at 16,000 steps? | k-NN: {long.passes(h['L5'])}; "
            f"probe: {long.passes(h['L6'])} | {long.shown(h['L5'])}; {long.shown(h['L6'])} |") in rows
    assert "| Does the improved variant's gain survive at 16,000 steps? (k-NN) | not detected; an effect larger than" in rows
    path.write_text("".join(json.dumps({**x, "date": "2026-12-07 03:00"} if i == 0 else x) + "\n" for i, x in enumerate(lines)))
    with pytest.raises(ValueError, match="first written before their registration"):
        long.report(settings)


def test_the_long_stage_picture_leaves_a_notebooks_backend_alone():
    """plot_long is drawn inside notebooks (nb.show_long_stage): switching matplotlib to Agg there hid
    that figure, and every later one in the kernel. It draws on whatever backend the session has."""
    import matplotlib
    import matplotlib.pyplot as plt
    from maehelpers.study.plots import plot_long
    held, _ = _long_records({"original": 78.0, "raw_pixels": 80.0}, {}, {})
    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        fig = plot_long({}, held)
        assert fig is not None and matplotlib.get_backend() == "svg"
        plt.close(fig)
    finally:
        matplotlib.use(before)


def test_audit_arithmetic_by_hand():
    """The differences the audit recomputed, by hand: a paired difference is the mean of per-seed
    differences, not a difference of rounded means; the winner's curse counts only the arms screened
    before the winner was chosen."""
    ft = lambda v: {"ft_by_epochs": {20: v}}  # noqa: E731
    records = {("unif_umae_mean_100x", s, 500): ft(v) for s, v in zip((0, 1, 2), (76.08, 75.50, 75.12))}
    records.update({("random", s, 500): ft(v) for s, v in zip((0, 1, 2), (75.80, 73.90, 75.34))})
    records.update({("original", s, 500): ft(v) for s, v in zip((0, 1, 2), (74.40, 74.20, 73.62))})
    pairs = exploratory.fine_tuning_pairs(records)
    # (0.28 + 1.60 - 0.22) / 3 = 0.5533: +0.55; the rounded means 75.57 - 75.01 would say +0.56
    assert f"{pairs['umae_vs_scratch']['diff']:+.2f}" == "+0.55"
    assert pairs["umae_vs_original_without_0"]["seeds"] == [1, 2]
    K = "knn_top1_mean"
    screen = {(a, 0, 500): {K: v} for a, v in (("unif_umae_mean_100x", 80.0), ("lowpass", 75.0), ("original_pixels", 70.0),
                                               ("original", 70.0))}
    screen.update({(a, s, 500): {K: 70.0 + s + (a != "original")} for a in ("unif_umae_mean_100x", "original") for s in (1, 2, 3)})
    first = {k: "2026-11-29 08:00" for k in screen}
    first[("original_pixels", 0, 500)] = "2026-12-02 07:16"      # run three days after the winner's seed 1
    first.update({("unif_umae_mean_100x", s, 500): "2026-11-29 09:50" for s in (1, 2, 3)})
    assert exploratory.winners_curse(screen)["screened"] == 3
    w = exploratory.winners_curse(screen, first=first)
    assert w["screened"] == 2 and w["p_bonferroni"] == pytest.approx(min(1.0, 2 * w["p"]))
