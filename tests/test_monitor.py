"""The k-NN monitor: its steps, that it leaves training untouched, and that its numbers are the k-NN
of the encoder at that step."""
from dataclasses import replace

import torch

from maehelpers.config import apply_overrides
from maehelpers.data import load_dataset
from maehelpers.evaluate import load_eval_data
from maehelpers.probes import extract_features, knn_top1
from maehelpers.monitor import MONITOR_KEYS, monitor_curve, monitor_steps
from maehelpers.checkpoints import load_mae
from maehelpers.pretrain import pretrain
from maehelpers.runs import load_torch, read_jsonl


def test_monitor_steps_by_hand():
    assert monitor_steps(500, 8) == [62, 125, 188, 250, 312, 375, 438, 500]  # round half to even at 62.5, 312.5
    assert monitor_steps(16, 8) == [2, 4, 6, 8, 10, 12, 14, 16]
    assert monitor_steps(3, 8) == [1, 2, 3]  # fewer steps than points: each step once
    assert monitor_steps(500, 0) == []
    assert monitor_steps(16000, 8, (500, 1000, 2000, 16000, 32000)) == [500, 1000, 2000, 16000]  # past the end: dropped


def _cfg(smoke_cfg, **train):
    return apply_overrides(smoke_cfg, {f"train.{k}": v for k, v in train.items()})


def test_monitor_leaves_the_encoder_bit_identical_and_measures_the_encoder_of_its_step(tmp_path, smoke_cfg):
    data = load_dataset("synthetic", "pretrain")
    pretrain(_cfg(smoke_cfg, monitor_points=0), tmp_path / "off", data=data, progress=False)
    pretrain(smoke_cfg, tmp_path / "on", data=data, progress=False)
    off, on = (load_torch(tmp_path / name / "checkpoint_last.pt")["model"] for name in ("off", "on"))
    for key in off:
        assert torch.equal(off[key], on[key]), key
    assert not any(MONITOR_KEYS[0] in r for r in read_jsonl(tmp_path / "off" / "log_epochs.jsonl"))

    curve = monitor_curve(read_jsonl(tmp_path / "on" / "log_epochs.jsonl"))
    assert [c[0] for c in curve] == [2, 4, 6, 8, 10, 12, 14, 16]
    # the last point is the k-NN of the final encoder on the monitor's bank and queries, computed here
    # independently: the first monitor_bank probe-training images, the first monitor_queries validation ones
    t = smoke_cfg.train
    bank, queries = load_eval_data(smoke_cfg, "data", "validation")
    bank, queries = bank.head(t.monitor_bank), queries.head(t.monitor_queries)
    model, _ = load_mae(tmp_path / "on")
    fb, fq = (extract_features(model, d.images, smoke_cfg.model.img_size, progress=False) for d in (bank, queries))
    for pool, value in zip(("mean", "cls"), curve[-1][1:]):
        want = knn_top1(fb[pool], bank.labels, fq[pool], queries.labels, smoke_cfg.eval.knn_k, smoke_cfg.eval.knn_t)
        assert abs(value - want) < 1e-3, pool


def test_a_resumed_run_logs_the_same_monitor_curve(tmp_path, smoke_cfg):
    data = load_dataset("synthetic", "pretrain")
    cfg = _cfg(smoke_cfg, monitor_at=(3, 8, 11, 16))  # 8 is also the end of epoch 1, where the pause falls
    pretrain(cfg, tmp_path / "whole", data=data, progress=False)
    pretrain(cfg, tmp_path / "cut", data=data, progress=False, stop_at_epoch=1)
    pretrain(cfg, tmp_path / "cut", data=data, progress=False)
    whole, cut = (monitor_curve(read_jsonl(tmp_path / n / "log_epochs.jsonl")) for n in ("whole", "cut"))
    assert [c[0] for c in whole] == [3, 8, 11, 16]
    assert whole == cut


def test_monitor_settings_do_not_block_a_resume(tmp_path, smoke_cfg):
    data = load_dataset("synthetic", "pretrain")
    pretrain(smoke_cfg, tmp_path / "run", data=data, progress=False, stop_at_epoch=1)
    more = replace(smoke_cfg, train=replace(smoke_cfg.train, monitor_points=0, monitor_bank=32))
    assert pretrain(more, tmp_path / "run", data=data, progress=False)["status"] == "done"
