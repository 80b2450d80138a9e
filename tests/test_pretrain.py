import json
import pickle
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from maehelpers.config import make_config
from maehelpers.data import load_dataset
from maehelpers.model import MAE
from maehelpers.pretrain import load_encoder, pretrain
from maehelpers.runs import CheckpointError, load_torch, merge_results, read_jsonl


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
    rows = read_jsonl(tmp_path / "split" / "log_epochs.jsonl")
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
