from dataclasses import replace
import json
import math
import os
from pathlib import Path
import pickle
import signal
import subprocess
import sys

import pytest
import torch

from maehelpers.config import make_config
from maehelpers.data import load_dataset
import maehelpers.losses as L
from maehelpers.masking import mask_ratio_at
from maehelpers.model import MAE
import maehelpers.pretrain as P
from maehelpers.checkpoints import load_encoder
from maehelpers.devices import amp_dtype
from maehelpers.optim import lr_at
from maehelpers.pretrain import pretrain
from maehelpers.train_log import NonFiniteLossError
from maehelpers.runs import CheckpointError, epoch_rows, load_torch, merge_results, read_jsonl, run_lock, save_torch


def test_model_can_learn_a_fixed_batch():
    torch.manual_seed(0)
    model = MAE(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, decoder_embed_dim=32,
                decoder_depth=1, decoder_num_heads=2, norm_pix_loss=False)
    imgs = torch.rand(8, 3, 32, 32)
    noise = torch.rand(8, 16)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(300):
        loss, _, _ = model(imgs, 0.75, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]


def test_resume_is_exact(tmp_path, smoke_cfg):
    data = load_dataset("synthetic", "pretrain")
    full = pretrain(smoke_cfg, tmp_path / "full", data=data, progress=False)
    assert full["status"] == "done" and full["pretrain_steps"] == 16
    part = pretrain(smoke_cfg, tmp_path / "split", data=data, progress=False, stop_at_epoch=1)
    assert part == {"status": "paused", "step": 8, "total_steps": 16}
    assert not (tmp_path / "split" / "encoder_pretrained.pt").exists()
    resumed = pretrain(smoke_cfg, tmp_path / "split", data=data, progress=False)
    a = load_torch(tmp_path / "full" / "checkpoint_last.pt")
    b = load_torch(tmp_path / "split" / "checkpoint_last.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["step"] == b["step"] == 16
    assert [r["step"] for r in read_jsonl(tmp_path / "split" / "log_steps.jsonl")] == list(range(1, 17))
    assert resumed["pretrain_time_s"] >= part_time(tmp_path)  # summed over both segments
    enc = load_torch(tmp_path / "split" / "encoder_pretrained.pt")["model"]
    assert "blocks.0.attn.qkv.weight" in enc and not any(k.startswith(("decoder", "mask_token")) for k in enc)


def part_time(tmp_path):
    rows = epoch_rows(tmp_path / "split")
    return rows[0]["seconds"]


def test_results_json_records_the_run(tmp_path):
    cfg = make_config("improved", "smoke", "synthetic", seed=3)
    res = pretrain(cfg, tmp_path / "run", progress=False)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved == res
    for key in ("pretrain_time_s", "config", "seed", "torch", "device", "git_commit", "variant"):
        assert key in saved
    assert saved["seed"] == 3 and saved["config"]["variant"]["laplacian_weight"] == 0.05
    steps = read_jsonl(tmp_path / "run" / "log_steps.jsonl")
    assert steps[0]["mask_ratio"] == 0.5 and steps[-1]["mask_ratio"] == 0.75   # curriculum logged
    assert {"mse", "laplacian", "uniformity", "lr"} <= set(steps[0])


def test_resume_refuses_a_different_config(tmp_path, smoke_cfg):
    pretrain(smoke_cfg, tmp_path / "run", progress=False, stop_at_epoch=1)
    other = replace(smoke_cfg, train=replace(smoke_cfg.train, epochs=3))
    with pytest.raises(CheckpointError, match=r"train.epochs: 2 -> 3"):
        pretrain(other, tmp_path / "run", progress=False)
    with pytest.raises(CheckpointError, match="resume"):
        pretrain(smoke_cfg, tmp_path / "run", progress=False, resume=False)
    bigger = make_config("original", "smoke", "synthetic", overrides={"model.img_size": 48})
    with pytest.raises(CheckpointError, match="interpolates the position embeddings"):
        pretrain(bigger, tmp_path / "run", progress=False)


def test_load_encoder_at_another_size(tmp_path, smoke_cfg):
    pretrain(smoke_cfg, tmp_path / "run", progress=False)
    model, cfg = load_encoder(tmp_path / "run" / "encoder_pretrained.pt", img_size=48)
    assert cfg.model.img_size == 48 and model.pos_embed.shape == (1, 37, 32)
    assert model.forward_features(torch.randn(2, 3, 48, 48)).shape == (2, 32)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_checkpoint_loading_is_weights_only(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"model": Evil()}, f)
    with pytest.raises(CheckpointError, match="not executed"):
        load_torch(tmp_path / "evil.pt")
    assert not marker.exists()
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="not a loadable checkpoint"):
        load_torch(tmp_path / "junk.pt")
    src = Path(__file__).parents[1] / "maehelpers"
    loads = [line for p in src.rglob("*.py") for line in p.read_text().splitlines() if "torch.load(" in line]
    assert loads and all("weights_only=True" in line for line in loads)


def test_merge_results_keeps_earlier_keys(tmp_path):
    merge_results(tmp_path, {"a": 1, "nested": {"x": 1}})
    merge_results(tmp_path, {"b": 2, "nested": {"y": 2}})
    assert json.loads((tmp_path / "results.json").read_text()) == {"a": 1, "b": 2, "nested": {"x": 1, "y": 2}}


def test_cli_pretrain_and_clear_errors(tmp_path):
    cmd = [sys.executable, "-m", "maehelpers", "pretrain", "--variant", "improved", "--preset", "smoke",
           "--dataset", "synthetic", "--runs-root", str(tmp_path), "--seed", "1", "--no-progress"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "improved" / "encoder_pretrained.pt").exists()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "--resume" in again.stderr
    bad = subprocess.run(cmd[:5] + ["nope"] + cmd[6:], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "valid variants" in bad.stderr
    offline = subprocess.run(cmd[:9] + ["stl10", "--data-root", str(tmp_path / "d"), "--run-name", "x"] + cmd[10:],
                             capture_output=True, text=True, timeout=300)
    assert offline.returncode == 2 and "stl10_binary" in offline.stderr


ROOT = Path(__file__).resolve().parents[1]


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
    whole, cut = epoch_rows(tmp_path / "whole"), epoch_rows(tmp_path / "cut")
    assert [r["step"] for r in cut] == [8, 16]
    assert [r["loss"] for r in cut] == pytest.approx([r["loss"] for r in whole], rel=1e-9)


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


def test_mixed_precision_choice_follows_compute_capability():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert amp_dtype(cuda, True, (7, 5)) == torch.float16      # T4: bf16 would be emulated
    assert amp_dtype(cuda, True, (7, 0)) == torch.float16      # V100
    assert amp_dtype(cuda, True, (8, 0)) == torch.bfloat16     # A100
    assert amp_dtype(cuda, True, (9, 0)) == torch.bfloat16     # H100
    assert amp_dtype(cuda, False, (9, 0)) is None              # switched off: fp32
    assert amp_dtype(cpu, True, (9, 0)) is None                # never on CPU


def test_non_finite_loss_advice_can_be_followed(tmp_path):
    cfg = make_config("original", "smoke", "synthetic", overrides={"train.blr": 1e30})
    with pytest.raises(NonFiniteLossError, match="new run folder with a lower train.blr") as e:
        pretrain(cfg, tmp_path / "run", progress=False)
    assert "fp32" not in str(e.value)  # on CPU it already is


def test_fractional_warmup_follows_the_official_formula(tmp_path):
    # 10 steps per epoch, warmup 0.25 epochs = 2.5 steps: lr at step 1 is 1 / 2.5 of the peak
    # (truncating the warmup to 2 steps would give 1 / 2)
    assert lr_at(1, 100, 0.25 * 10, 1e-3) == pytest.approx(4e-4)
    assert lr_at(2.5, 100, 2.5, 1e-3) == pytest.approx(1e-3)
    cfg = make_config("original", "smoke", "synthetic", overrides={"train.warmup_epochs": 0.3})  # 2.4 steps
    pretrain(cfg, tmp_path / "run", progress=False)
    lrs = [r["lr"] for r in read_jsonl(tmp_path / "run" / "log_steps.jsonl")]
    assert lrs[:3] == pytest.approx([0.0, cfg.train.lr / 2.4, cfg.train.lr * 2 / 2.4])


def test_torch_floor_admits_what_the_code_uses():
    # torch.amp.GradScaler("cuda", ...) exists from torch 2.3
    for text in ((ROOT / "requirements.txt").read_text(), (ROOT / "pyproject.toml").read_text()):
        assert "torch>=2.3" in text and "torch>=2.1" not in text


def test_checking_every_n_steps_logs_the_same_and_catches_a_nan(tmp_path):
    """The CUDA path (loss checked and logged every N steps, not every step) gives the same run."""
    cfg = make_config("improved", "smoke", "synthetic")
    pretrain(cfg, tmp_path / "every1", progress=False)
    lazy = make_config("improved", "smoke", "synthetic", overrides={"train.log_every": 5})
    pretrain(lazy, tmp_path / "every5", progress=False)
    assert read_jsonl(tmp_path / "every1" / "log_steps.jsonl") == read_jsonl(tmp_path / "every5" / "log_steps.jsonl")
    assert epoch_rows(tmp_path / "every1")[-1]["loss"] == \
        epoch_rows(tmp_path / "every5")[-1]["loss"]
    a = load_torch(tmp_path / "every1" / "checkpoint_last.pt")["model"]
    b = load_torch(tmp_path / "every5" / "checkpoint_last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    bad = make_config("original", "smoke", "synthetic", overrides={"train.blr": 1e30, "train.log_every": 5})
    with pytest.raises(NonFiniteLossError, match=r"at step \d+; found when checking every 5 steps"):
        pretrain(bad, tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad" / "checkpoint_last.pt").exists()


def test_training_uses_the_scheduled_lr_and_mask_ratio_at_every_step(tmp_path, monkeypatch):
    cfg = make_config("curriculum", "smoke", "synthetic")
    used = []
    real_loss, real_step = L.pretrain_loss, torch.optim.AdamW.step

    def loss(model, imgs, ratio, variant, noise=None):
        total, parts, pred, mask = real_loss(model, imgs, ratio, variant, noise)
        used.append({"removed": mask.sum(1).tolist(), "noise": noise.clone(), "imgs": imgs.clone()})
        return total, parts, pred, mask

    def step(self, *a, **k):
        used[-1]["lr"] = [g["lr"] for g in self.param_groups]
        return real_step(self, *a, **k)
    monkeypatch.setattr(P, "pretrain_loss", loss)
    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    pretrain(cfg, tmp_path / "run", progress=False)
    total, warmup, lr = 16, 8.0, cfg.train.lr          # smoke: 8 steps per epoch, 2 epochs, 1 warmup epoch
    for s, u in enumerate(used):
        ratio = 0.5 + 0.25 * min(s / total / 0.5, 1.0)  # the curriculum, by hand
        assert u["removed"] == [16 - int(16 * (1 - ratio))] * 16
        expected_lr = lr * s / warmup if s < warmup else lr * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup)))
        assert u["lr"] == pytest.approx([expected_lr, expected_lr])
    assert len({tuple(u["noise"][0].tolist()) for u in used}) == 16          # fresh masks every step
    assert not torch.equal(used[0]["imgs"], used[8]["imgs"])                # fresh crops / order per epoch
    assert mask_ratio_at(0.25, cfg.variant) == pytest.approx(0.625) and lr_at(4, 16, 8, 1.0) == 0.5


def test_tensorboard_logs_are_written_and_read_back_and_runs_go_on_without_the_package(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    pretrain(make_config("improved", "smoke", "synthetic"), tmp_path / "run", progress=False)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    for key in ("loss", "mse", "laplacian", "uniformity", "lr", "mask_ratio"):
        assert f"train/{key}" in tags["scalars"], key
    steps = [e.step for e in events.Scalars("train/loss")]
    assert steps == list(range(1, 17))                                        # every step of the smoke run
    logged = {r["step"]: r["loss"] for r in read_jsonl(tmp_path / "run" / "log_steps.jsonl")}
    assert all(abs(e.value - logged[e.step]) < 1e-6 for e in events.Scalars("train/loss"))
    assert [e.step for e in events.Images("reconstructions")] == [8, 16]     # one grid per epoch
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)        # the package missing
    res = pretrain(make_config("original", "smoke", "synthetic"), tmp_path / "without", progress=False)
    assert res["status"] == "done" and not (tmp_path / "without" / "tensorboard").exists()
