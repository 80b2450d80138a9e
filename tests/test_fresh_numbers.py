"""Every number shown is right and fresh: metric floors, the scratch recipe, keyed (never stale)
evaluations, resume refusals, run-folder locks, precision choice, and bad input refused up front."""
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import maehelpers.evaluate as ev
import maehelpers.losses as L
import maehelpers.pretrain as P
from maehelpers.config import make_config
from maehelpers.data import IMAGENET_STD, DataError, ImageSet, denormalize, load_dataset
from maehelpers.evaluate import cached_features, evaluate_run, make_scratch_run
from maehelpers.losses import laplacian_loss, pretrain_loss, uniformity_umae
from maehelpers.metrics import masked_psnr, reconstruction_metrics, to_display
from maehelpers.model import MAE
from maehelpers.pretrain import NonFiniteLossError, amp_dtype, lr_at, pretrain
from maehelpers.runs import CheckpointError, load_torch, read_jsonl, read_results, run_lock, save_torch
from maehelpers.viz import draw_curves, draw_results

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- metrics
def test_psnr_floor_is_the_patch_mean_hand_value():
    # a 2x2 patch whose normalised pixels (all channels) are a checkerboard of -1 and +1: a decoder
    # that outputs zeros is filled with the patch mean 0, so every pixel is off by 1 in normalised
    # space, i.e. by the channel's std in display space: MSE = mean(std^2), PSNR = -10 log10 of it
    model = MAE(img_size=2, patch_size=2, embed_dim=8, depth=1, num_heads=1, decoder_embed_dim=8,
                decoder_depth=1, decoder_num_heads=1)
    imgs = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).expand(1, 3, 2, 2)
    mask = torch.ones(1, 1)
    original, _, floor, _, pm = to_display(model, imgs, torch.zeros(1, 1, 12), mask)
    assert torch.allclose(floor, denormalize(torch.zeros(1, 3, 2, 2)), atol=1e-6)
    std2 = sum(s * s for s in IMAGENET_STD) / 3
    assert masked_psnr(floor, original, pm).item() == pytest.approx(-10 * math.log10(std2), abs=1e-3)


def test_zero_decoder_scores_exactly_the_floor():
    """A decoder that outputs zeros (norm-pix space) is the patch-mean predictor: its PSNR equals
    the reported floor, and its masked loss is the target's variance, (n - 1) / n per patch."""
    torch.manual_seed(0)
    model = MAE(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16,
                decoder_depth=1, decoder_num_heads=2)
    torch.nn.init.zeros_(model.decoder_pred.weight)
    torch.nn.init.zeros_(model.decoder_pred.bias)
    images = load_dataset("synthetic", "test").images[:16]
    m = reconstruction_metrics(model, images, 32)
    assert m["psnr_masked"] == pytest.approx(m["psnr_masked_floor"], abs=1e-3)
    assert m["hf_error_masked"] == pytest.approx(m["hf_error_floor"], abs=1e-5)
    n = 8 * 8 * 3  # unbiased per-patch variance: mean of squares of a normalised patch = (n - 1) / n
    assert m["nmse_masked"] == pytest.approx((n - 1) / n, abs=2e-3)


# ----------------------------------------------------------------------------- scratch recipe
def test_scratch_fine_tunes_without_layer_decay(tmp_path, monkeypatch):
    seen = []
    real = ev.param_groups_lrd
    monkeypatch.setattr(ev, "param_groups_lrd", lambda m, wd, decay: seen.append(decay) or real(m, wd, decay))
    cfg = make_config("original", "smoke", "synthetic")
    pretrain(cfg, tmp_path / "original", progress=False)
    scratch = make_scratch_run(cfg, tmp_path / "scratch")
    evaluate_run(tmp_path / "original", steps=("ft",), progress=False)
    evaluate_run(scratch, steps=("ft",), progress=False)
    assert seen == [0.75, 1.0]
    assert "no layer-wise" in read_results(scratch)["ft"]["recipe"]
    assert read_results(scratch)["ft"]["layer_decay"] == 1.0


# ----------------------------------------------------------------------------- staleness
def _cli(*args, cwd):
    out = subprocess.run([sys.executable, "-m", "maehelpers", *args], capture_output=True, text=True,
                         timeout=600, cwd=cwd)
    assert out.returncode == 0, out.stderr
    return out.stdout + out.stderr


def test_retrained_run_is_evaluated_again_not_shown_stale(tmp_path):
    common = ["--preset", "smoke", "--dataset", "synthetic", "--runs-root", str(tmp_path / "runs")]
    _cli("pretrain", *common, "--seed", "0", "--no-progress", cwd=tmp_path)
    _cli("evaluate", *common, "--steps", "lp,knn", cwd=tmp_path)
    run = tmp_path / "runs" / "original"
    first = read_results(run)
    for f in ("checkpoint_last.pt", "encoder_pretrained.pt"):
        (run / f).unlink()
    _cli("pretrain", *common, "--seed", "1", "--no-progress", cwd=tmp_path)
    assert "lp_top1" not in read_results(run)          # the old encoder's scores are gone at once
    out = _cli("evaluate", *common, "--steps", "lp,knn", cwd=tmp_path)
    second = read_results(run)
    assert "original: lp reused" not in out
    assert second["lp"]["key"]["encoder"] == ev.file_key(run / "encoder_pretrained.pt") != first["lp"]["key"]["encoder"]
    assert second["knn_top1_cls"] != first["knn_top1_cls"] or second["lp_top1_cls"] != first["lp_top1_cls"]
    again = _cli("evaluate", *common, "--steps", "lp,knn", cwd=tmp_path)
    assert "original: lp reused" in again and "original: knn reused" in again
    changed = evaluate_run(run, steps=("lp",), progress=False, overrides={"eval.lp_epochs": 2})
    assert changed["lp"]["key"]["epochs"] == 2          # a changed setting recomputes


def test_cached_features_are_keyed_by_the_images_not_their_count(tmp_path):
    cfg = make_config("original", "smoke", "synthetic")
    pretrain(cfg, tmp_path / "run", progress=False)
    a = ImageSet(torch.zeros(8, 3, 32, 32, dtype=torch.uint8), torch.zeros(8, dtype=torch.long), [], "folder")
    b = ImageSet(torch.full((8, 3, 32, 32), 200, dtype=torch.uint8), torch.zeros(8, dtype=torch.long), [], "folder")
    fa = cached_features(tmp_path / "run", a, "train", progress=False)
    fb = cached_features(tmp_path / "run", b, "train", progress=False)
    assert not torch.allclose(fa["cls"], fb["cls"])


def test_mean_pool_excludes_the_cls_token():
    torch.manual_seed(0)
    model = MAE(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16,
                decoder_depth=1, decoder_num_heads=2).eval()
    imgs = torch.randn(2, 3, 32, 32)
    feats = ev.extract_features(model, (imgs.clamp(-2, 2) * 50 + 128).to(torch.uint8), 32, progress=False)
    tokens = model.forward_tokens(ev.prepare((imgs.clamp(-2, 2) * 50 + 128).to(torch.uint8), 32, "cpu"))
    assert torch.allclose(feats["mean"], tokens[:, 1:].mean(1), atol=1e-6)
    assert torch.allclose(feats["cls"], tokens[:, 0], atol=1e-6)


# ----------------------------------------------------------------------------- resume
def test_resume_refuses_other_data_size_and_other_precision(tmp_path):
    cfg = make_config("original", "smoke", "synthetic")
    data = load_dataset("synthetic", "pretrain")
    pretrain(cfg, tmp_path / "run", data=data.head(128), progress=False, stop_at_epoch=1)
    with pytest.raises(CheckpointError, match=r"128 images \(8 steps per epoch\).*96 \(6\)"):
        pretrain(cfg, tmp_path / "run", data=data.head(96), progress=False)
    ckpt = load_torch(tmp_path / "run" / "checkpoint_last.pt")
    assert ckpt["precision"] == "fp32" and ckpt["n_images"] == 128
    save_torch({**ckpt, "precision": "bf16"}, tmp_path / "run" / "checkpoint_last.pt")
    with pytest.raises(CheckpointError, match="trained in bf16 but this resume would run in fp32"):
        pretrain(cfg, tmp_path / "run", data=data.head(128), progress=False)


def test_epoch_loss_after_a_mid_epoch_resume_covers_the_whole_epoch(tmp_path, monkeypatch):
    cfg = make_config("original", "smoke", "synthetic")
    pretrain(cfg, tmp_path / "whole", progress=False)
    real, calls = P.mask_ratio_at, [0]

    def interrupt_at_step_3(*a, **k):  # Ctrl-C during step 3 of epoch 1 (8 steps per epoch)
        calls[0] += 1
        if calls[0] == 3:
            signal.raise_signal(signal.SIGINT)
        return real(*a, **k)
    monkeypatch.setattr(P, "mask_ratio_at", interrupt_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg, tmp_path / "cut", progress=False)
    monkeypatch.setattr(P, "mask_ratio_at", real)
    pretrain(cfg, tmp_path / "cut", progress=False)
    whole, cut = read_jsonl(tmp_path / "whole" / "log_epochs.jsonl"), read_jsonl(tmp_path / "cut" / "log_epochs.jsonl")
    assert [r["step"] for r in cut] == [8, 16]
    assert [r["loss"] for r in cut] == pytest.approx([r["loss"] for r in whole], rel=1e-9)


# ----------------------------------------------------------------------------- run folder
def test_a_run_folder_in_use_is_refused_naming_the_other_process(tmp_path):
    cfg = make_config("original", "smoke", "synthetic")
    run = tmp_path / "run"
    run.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / ".lock").write_text(json.dumps({"pid": other.pid, "host": os.uname().nodename, "since": 0}))
        with pytest.raises(CheckpointError, match=f"in use by process {other.pid}"):
            pretrain(cfg, run, progress=False)
        assert not (run / "checkpoint_last.pt").exists()
    finally:
        other.kill()
        other.wait()
    pretrain(cfg, run, progress=False)  # its process is gone: the stale lock is taken over
    assert not (run / ".lock").exists()
    with run_lock(run):
        with run_lock(run):  # the same process may nest
            pass


def test_checkpoints_save_where_chmod_is_refused(tmp_path, monkeypatch):
    def refuse(fd, mode):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(os, "fchmod", refuse)
    save_torch({"x": torch.ones(2)}, tmp_path / "a.pt")
    assert torch.equal(load_torch(tmp_path / "a.pt")["x"], torch.ones(2))


# ----------------------------------------------------------------------------- precision
def test_mixed_precision_choice_follows_compute_capability():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert amp_dtype(cuda, True, (7, 5)) == torch.float16      # T4: bf16 would be emulated
    assert amp_dtype(cuda, True, (7, 0)) == torch.float16      # V100
    assert amp_dtype(cuda, True, (8, 0)) == torch.bfloat16     # A100
    assert amp_dtype(cuda, True, (9, 0)) == torch.bfloat16     # H100
    assert amp_dtype(cuda, False, (9, 0)) is None              # switched off: fp32
    assert amp_dtype(cpu, True, (9, 0)) is None                # never on CPU


def test_loss_terms_are_computed_in_fp32_under_autocast(monkeypatch):
    torch.manual_seed(0)
    model = MAE(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16,
                decoder_depth=1, decoder_num_heads=2)
    variant = make_config("improved", "smoke", "synthetic", overrides={"variant.uniformity_form": "umae"}).variant
    imgs, noise = torch.randn(8, 3, 32, 32), torch.rand(8, 16)
    seen = {}
    monkeypatch.setitem(L.UNIFORMITY, "umae", lambda f: seen.setdefault("f", f) is f and uniformity_umae(f))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, parts, pred, mask = pretrain_loss(model, imgs, 0.75, variant, noise)
    target = model.target(imgs)
    exact = laplacian_loss(pred.float(), target, mask, 8, 3)  # outside autocast: fp32 throughout
    assert parts["laplacian"].dtype == torch.float32
    assert parts["laplacian"].item() == pytest.approx(exact.item(), rel=1e-6)
    assert parts["uniformity"].item() == pytest.approx(uniformity_umae(seen["f"].float()).item(), rel=1e-6)


def test_non_finite_loss_advice_can_be_followed(tmp_path):
    cfg = make_config("original", "smoke", "synthetic", overrides={"train.blr": 1e30})
    with pytest.raises(NonFiniteLossError, match="new run folder with a lower train.blr") as e:
        pretrain(cfg, tmp_path / "run", progress=False)
    assert "fp32" not in str(e.value)  # on CPU it already is


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("overrides, message", [
    ({"variant.uniformity_weight": 0.01, "train.batch_size": 1}, "batch_size must be >= 2"),
    ({"variant.mask_ratio": 0.0, "variant.mask_ratio_start": 0.0}, "masks no patch"),
    ({"train.warmup_epochs": 2}, "warmup_epochs .* must be shorter"),
])
def test_bad_settings_are_refused_before_any_work(overrides, message):
    with pytest.raises(ValueError, match=message):
        make_config("original", "smoke", "synthetic", overrides=overrides)


def test_fractional_warmup_follows_the_official_formula(tmp_path):
    # 10 steps per epoch, warmup 0.25 epochs = 2.5 steps: lr at step 1 is 1 / 2.5 of the peak
    # (truncating the warmup to 2 steps would give 1 / 2)
    assert lr_at(1, 100, 0.25 * 10, 1e-3) == pytest.approx(4e-4)
    assert lr_at(2.5, 100, 2.5, 1e-3) == pytest.approx(1e-3)
    cfg = make_config("original", "smoke", "synthetic", overrides={"train.warmup_epochs": 0.3})  # 2.4 steps
    pretrain(cfg, tmp_path / "run", progress=False)
    lrs = [r["lr"] for r in read_jsonl(tmp_path / "run" / "log_steps.jsonl")]
    assert lrs[:3] == pytest.approx([0.0, cfg.train.lr / 2.4, cfg.train.lr * 2 / 2.4])


def test_a_changed_variant_gets_a_name_of_its_own():
    cfg = make_config("laplacian", "smoke", "synthetic", overrides={"variant.laplacian_weight": 0.5})
    assert cfg.variant.name == "laplacian+laplacian_weight=0.5"
    named = make_config("laplacian", "smoke", "synthetic",
                        overrides={"variant.laplacian_weight": 0.5, "variant.name": "lap10"})
    assert named.variant.name == "lap10"


def test_empty_stl10_label_file_is_a_clear_error(stl10_root):
    root, _ = stl10_root
    (root / "stl10_binary" / "train_y.bin").write_bytes(b"")
    with pytest.raises(DataError, match="0 labels for 40 images"):
        load_dataset("stl10", "train", root, download=False)


def test_pictures_beside_class_folders_are_refused_for_labelled_splits(tmp_path):
    from PIL import Image
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / cls / "a.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "loose.png")
    with pytest.raises(DataError, match="loose.png.*no class"):
        load_dataset("folder", "train", tmp_path)
    assert len(load_dataset("folder", "pretrain", tmp_path)) == 3


def test_torch_floor_admits_what_the_code_uses():
    # torch.amp.GradScaler("cuda", ...) exists from torch 2.3
    for text in ((ROOT / "requirements.txt").read_text(), (ROOT / "pyproject.toml").read_text()):
        assert "torch>=2.3" in text and "torch>=2.1" not in text


# ----------------------------------------------------------------------------- pictures and tables
def test_curves_compare_the_shared_term_and_keep_extra_terms_apart(tmp_path):
    for variant in ("original", "improved"):
        pretrain(make_config(variant, "smoke", "synthetic"), tmp_path / variant, progress=False)
    fig = draw_curves([tmp_path / "original", tmp_path / "improved"])
    shared, extra = fig.axes[0], fig.axes[1]
    mse = [r["mse"] for r in read_jsonl(tmp_path / "improved" / "log_steps.jsonl")]
    assert list(shared.lines[1].get_ydata()) == mse       # the masked MSE, not the total
    assert sorted(line.get_label() for line in extra.lines) == ["improved: laplacian", "improved: uniformity"]


def test_results_chart_draws_no_bar_for_a_missing_metric_and_shows_seed_spread():
    rows = [{"variant": "original", "seeds": [0, 1], "lp_top1": 60.0, "lp_top1_sd": 2.0, "ft_top1": None},
            {"variant": "improved", "seeds": [0], "lp_top1": 62.0, "ft_top1": 70.0}]
    fig = draw_results(rows, metrics=("lp_top1", "ft_top1"))
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert heights[:2] == [60.0, 62.0] and np.isnan(heights[2]) and heights[3] == 70.0
    assert "2 seeds" in ax.get_xticklabels()[0].get_text() and "1 seed" in ax.get_xticklabels()[1].get_text()


def test_compare_table_shows_spread_over_seeds_and_blanks(tmp_path):
    runs = []
    for seed in (0, 1):
        cfg = make_config("original", "smoke", "synthetic", seed=seed)
        pretrain(cfg, tmp_path / f"original_s{seed}", progress=False)
        evaluate_run(tmp_path / f"original_s{seed}", steps=("knn",), progress=False)
        runs.append(tmp_path / f"original_s{seed}")
    rows = ev.compare_runs(runs, tmp_path / "compare")
    vals = [read_results(r)["knn_top1"] for r in runs]
    assert rows[0]["seeds"] == [0, 1] and rows[0]["knn_top1"] == pytest.approx(sum(vals) / 2)
    table = (tmp_path / "compare" / "compare.md").read_text()
    assert f"{sum(vals) / 2:.2f} ± " in table and "| - |" in table  # spread shown; ft not measured: blank


def test_checking_every_n_steps_logs_the_same_and_catches_a_nan(tmp_path):
    """The CUDA path (loss checked and logged every N steps, not every step) gives the same run."""
    cfg = make_config("improved", "smoke", "synthetic")
    pretrain(cfg, tmp_path / "every1", progress=False)
    lazy = make_config("improved", "smoke", "synthetic", overrides={"train.log_every": 5})
    pretrain(lazy, tmp_path / "every5", progress=False)
    assert read_jsonl(tmp_path / "every1" / "log_steps.jsonl") == read_jsonl(tmp_path / "every5" / "log_steps.jsonl")
    assert read_jsonl(tmp_path / "every1" / "log_epochs.jsonl")[-1]["loss"] == \
        read_jsonl(tmp_path / "every5" / "log_epochs.jsonl")[-1]["loss"]
    a = load_torch(tmp_path / "every1" / "checkpoint_last.pt")["model"]
    b = load_torch(tmp_path / "every5" / "checkpoint_last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    bad = make_config("original", "smoke", "synthetic", overrides={"train.blr": 1e30, "train.log_every": 5})
    with pytest.raises(NonFiniteLossError, match=r"at step \d+; found when checking every 5 steps"):
        pretrain(bad, tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad" / "checkpoint_last.pt").exists()
