"""The GPU path (CUDA, mixed precision, torchrun), proved on the CPU wherever a CPU can show it.
What only a GPU can show is in benchmarks/gpu_check.py, which states the outcome it expects."""
import json
import math
from pathlib import Path
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import maehelpers.evaluate as ev
import maehelpers.finetune as ft
import maehelpers.pretrain as P
import maehelpers.probes as probes
from maehelpers.checkpoints import build_model
from maehelpers.devices import pick_device
from maehelpers.distributed import World
from maehelpers.train_log import NonFiniteLossError, StepLog
from maehelpers.config import make_config
from maehelpers.data import ImageSet, augment, load_dataset, prepare
from maehelpers.losses import uniformity_wang_isola
from maehelpers.runs import CheckpointError, load_torch

from test_distributed import TOLERANCE, max_difference, torchrun


# ----------------------------------------------------------------------------- uniformity from one matmul
def test_wang_isola_uniformity_from_one_matmul_has_the_pairwise_values_and_gradients():
    # e1, e2, -e1: squared distances 2 (e1,e2), 4 (e1,-e1), 2 (e2,-e1); t = 2
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    expected = math.log((math.exp(-4) + math.exp(-8) + math.exp(-4)) / 3)
    assert uniformity_wang_isola(z).item() == pytest.approx(expected, abs=1e-6)
    torch.manual_seed(0)                          # the pairwise-distance form it replaces (O(n^2 d) on CUDA)
    x, y = torch.randn(50, 16, requires_grad=True), torch.randn(50, 16, requires_grad=True)
    with torch.no_grad():
        y.copy_(x)
    reference = torch.pdist(F.normalize(y, dim=-1)).pow(2).mul(-2.0).exp().mean().log()
    mine = uniformity_wang_isola(x)
    assert mine.item() == pytest.approx(reference.item(), abs=1e-5)
    mine.backward()
    reference.backward()
    assert torch.allclose(x.grad, y.grad, atol=1e-6)


# ----------------------------------------------------------------------------- gradient accumulation
def test_accumulation_trains_what_one_batch_trains_and_bad_settings_are_refused(tmp_path):
    data = load_dataset("synthetic", "pretrain")
    one = make_config("original", "smoke", "synthetic")
    P.pretrain(one, tmp_path / "one", data=data, progress=False)
    four = make_config("original", "smoke", "synthetic", 0, {"train.accum_iter": 4})
    res = P.pretrain(four, tmp_path / "four", data=data, progress=False)
    assert res["config"]["train"]["accum_iter"] == 4
    assert max_difference(tmp_path / "one" / "checkpoint_last.pt", tmp_path / "four" / "checkpoint_last.pt") < TOLERANCE
    log_one, log_four = (json.loads((tmp_path / n / "log_steps.jsonl").read_text().splitlines()[0]) for n in ("one", "four"))
    assert log_four["loss"] == pytest.approx(log_one["loss"], abs=1e-5)   # the step's loss, not a micro-batch's
    with pytest.raises(ValueError, match="divide train.batch_size"):
        make_config("original", "smoke", "synthetic", 0, {"train.accum_iter": 3})
    with pytest.raises(ValueError, match="micro-batches that never meet"):
        make_config("improved", "smoke", "synthetic", 0, {"train.accum_iter": 2})


def test_accumulated_micro_batch_gradients_add_up_to_the_whole_batch_gradient():
    """Adam hides a gradient off by a constant factor (it normalises), so the gradients themselves
    are compared: 4 micro-batches against the whole batch, the step taken by a zero-lr SGD."""
    cfg = make_config("original", "smoke", "synthetic")
    torch.manual_seed(0)
    imgs, noise = torch.randn(16, 3, 32, 32), torch.rand(16, 16)
    grads = {}
    for accum in (1, 4):
        torch.manual_seed(0)
        model = build_model(cfg)
        micro = 16 // accum
        inputs = lambda k: (imgs[k * micro:(k + 1) * micro], noise[k * micro:(k + 1) * micro], 0.75)  # noqa: E731
        log = type("Log", (), {"every": 0})()
        P._train_step(P._Objective(model, cfg.variant), torch.optim.SGD(model.parameters(), lr=0.0),
                      torch.amp.GradScaler("cuda", enabled=False), inputs, accum, 0.0, None, log, 0, World())
        grads[accum] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    assert torch.allclose(grads[1], grads[4], atol=1e-6)


def test_a_rank_or_micro_batch_resamples_only_its_rows_with_the_whole_batchs_crops():
    x = torch.randint(0, 256, (8, 3, 12, 12), dtype=torch.uint8)
    whole = augment(x, 8, generator=torch.Generator().manual_seed(3))
    part = augment(x[2:6], 8, generator=torch.Generator().manual_seed(3), rows=slice(2, 6), batch=8)
    assert torch.equal(whole[2:6], part)


# ----------------------------------------------------------------------------- mixed precision
def _checkpoint_as(tmp_path, precision: str, scaler: dict) -> tuple:
    cfg = make_config("original", "smoke", "synthetic")
    P.pretrain(cfg, tmp_path / "run", progress=False, stop_at_epoch=1)
    ckpt = load_torch(tmp_path / "run" / "checkpoint_last.pt")
    return cfg, {**ckpt, "precision": precision, "scaler": scaler}


def test_fp16_and_bf16_checkpoints_resume_across_and_record_it_but_fp32_does_not(tmp_path):
    cfg, ckpt = _checkpoint_as(tmp_path, "fp16", {"scale": 1024.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                                                  "growth_interval": 2000, "_growth_tracker": 0})
    run = {"n_images": ckpt["n_images"], "steps_per_epoch": ckpt["steps_per_epoch"], "precision": "bf16",
           "device": "cuda"}
    P._check_resumable(ckpt, cfg, tmp_path / "c.pt", run)                       # T4 -> A100: allowed
    model, scaler = build_model(cfg), torch.amp.GradScaler("cuda", enabled=False)
    state = P._restore(ckpt, model, P._optimizer(model, cfg.train, torch.device("cpu")), scaler,
                       torch.device("cpu"), "bf16")
    assert state.precision_changes == ({"step": 8, "from": "fp16", "to": "bf16"},)
    with pytest.raises(CheckpointError, match="trained in fp16 but this resume would run in fp32"):
        P._check_resumable(ckpt, cfg, tmp_path / "c.pt", {**run, "precision": "fp32"})


def _log(tmp_path, every=1):
    state = P._State()
    bar = type("Bar", (), {"update": lambda *a: None, "set_postfix": lambda *a, **k: None, "close": lambda *a: None})()
    return StepLog(tmp_path, state, every, bar, tmp_path / "checkpoint_last.pt", True, World(), {"hit": False})


def test_a_collapsing_fp16_loss_scale_stops_the_run_and_skipped_steps_are_counted(tmp_path):
    log, one = _log(tmp_path), torch.tensor(1.0)
    row = lambda s: {"step": s, "lr": 1e-3, "mask_ratio": 0.75}  # noqa: E731
    for step, scale in enumerate([65536.0, 65536.0, 32768.0, 32768.0, 16384.0], start=1):
        log.add(row(step), one, {"mse": one}, torch.tensor(scale))
    assert log.state.skipped == 2
    assert json.loads((tmp_path / "log_steps.jsonl").read_text().splitlines()[-1])["loss_scale"] == 16384.0
    with pytest.raises(NonFiniteLossError, match="loss scale fell to 0.5 at step 6.*train.amp false"):
        log.add(row(6), one, {"mse": one}, torch.tensor(0.5))
    log.close()


def test_an_epoch_of_mostly_skipped_steps_stops_the_run(tmp_path):
    log, one = _log(tmp_path), torch.tensor(1.0)
    scale = 2.0 ** 30
    for step in range(1, 5):                      # 3 of 4 steps skipped, the loss still looks fine
        log.add({"step": step, "lr": 1e-3, "mask_ratio": 0.75}, one, {"mse": one}, torch.tensor(scale))
        scale /= 2
    with pytest.raises(NonFiniteLossError, match="skipped 3 of the 4 steps of epoch 1"):
        log.end_epoch(4, 1, 1.0)
    log.close()


def test_evaluation_follows_train_amp(tmp_path, monkeypatch):
    P.pretrain(make_config("original", "smoke", "synthetic", 0, {"train.amp": False}), tmp_path / "run", progress=False)
    asked = []
    real = probes.amp_dtype
    spy = lambda device, enabled=True, *a: asked.append(enabled) or real(device, enabled)  # noqa: E731
    monkeypatch.setattr(probes, "amp_dtype", spy)
    monkeypatch.setattr(ft, "amp_dtype", spy)
    ev.evaluate_run(tmp_path / "run", steps=("lp", "knn", "ft"), progress=False,
                    overrides={"eval.ft_epochs": 1, "eval.lp_epochs": 1})
    assert asked and not any(asked)               # features and fine-tuning: fp32, as the run asked


def test_tf32_on_cuda_only(monkeypatch):
    asked = []
    monkeypatch.setattr(torch, "set_float32_matmul_precision", asked.append)
    pick_device("cpu")
    assert asked == []
    assert pick_device("cuda").type == "cuda" and asked == ["high"]


# ----------------------------------------------------------------------------- devices pinned
def test_cpu_benchmarks_stay_on_the_cpu_where_a_gpu_exists(monkeypatch, tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import speed
    real = pick_device

    def pinned(device=None):                      # "auto" would pick CUDA on such a machine
        assert device not in (None, "", "auto"), "a CPU measurement left its device to the automatic choice"
        return real(device)
    for module in (P, ev, probes):
        monkeypatch.setattr(module, "pick_device", pinned)
    assert speed.bench_probe(16, 32, 1, measured_reencode_epochs=1, device=torch.device("cpu"))["device"] == "cpu"
    cfg = make_config("original", "smoke", "synthetic", 0, {"eval.lp_epochs": 1})
    data = (load_dataset("synthetic", "train", max_images=40), load_dataset("synthetic", "test", max_images=40))
    assert probes.raw_pixel_baseline(cfg, *data, device="cpu")["lp_top1"] >= 0


# ----------------------------------------------------------------------------- the raw-pixel baseline, streamed
def test_streamed_raw_pixels_give_the_whole_matrix_numbers():
    g = torch.Generator().manual_seed(0)
    make = lambda n: ImageSet(torch.randint(0, 256, (n, 1, 12, 12), generator=g, dtype=torch.uint8),  # noqa: E731
                              torch.arange(n) % 3, [], "t")
    train, test = make(60), make(50)
    whole_tr, whole_te = (prepare(d.images, 16).flatten(1) for d in (train, test))
    lazy_tr, lazy_te = (probes.PixelFeatures(d.images, 16, "cpu") for d in (train, test))
    assert torch.equal(lazy_tr[torch.tensor([3, 7])], whole_tr[[3, 7]]) and lazy_tr.shape == whole_tr.shape
    assert torch.equal(probes.knn_predict(whole_tr, train.labels, whole_te, k=5),
                       probes.knn_predict(lazy_tr, train.labels, lazy_te, k=5, chunk=16, train_chunk=7))  # merged chunks
    a = probes.linear_probe(whole_tr, train.labels, whole_te, test.labels, epochs=3, batch_size=16, progress=False)
    b = probes.linear_probe(lazy_tr, train.labels, lazy_te, test.labels, epochs=3, batch_size=16, progress=False)
    assert a["top1"] == b["top1"] and a["curve"] == b["curve"]


# ----------------------------------------------------------------------------- torchrun
def test_world_takes_its_backend_from_the_device_asked_for_not_from_the_machine(monkeypatch):
    import maehelpers.distributed as D
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)      # a machine with one GPU
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.append(("set_device", i)))
    monkeypatch.setattr(D.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(D.dist, "init_process_group", lambda backend, **kw: calls.append((backend, kw)))
    monkeypatch.setattr(D.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(D.dist, "get_world_size", lambda: 2)
    assert D.world(torch.device("cpu")) == D.World(1, 2, 1, group=True)
    assert calls == [("gloo", {"device_id": None})]                     # --device cpu: gloo, no GPU touched
    with pytest.raises(ValueError, match="local rank 1 has no GPU of its own: this machine has 1"):
        D.world(torch.device("cuda"))                                   # more ranks than GPUs: said, not a crash
    monkeypatch.setenv("LOCAL_RANK", "0")
    calls.clear()
    D.world(torch.device("cuda"))
    assert calls == [("set_device", 0), ("nccl", {"device_id": torch.device("cuda", 0)})]


FIRST_DOWNLOADS = textwrap.dedent("""
    import os, sys, time
    import maehelpers.pretrain as P
    from maehelpers.config import make_config
    real = P.load_dataset
    def load(*a, **k):
        rank = os.environ["RANK"]
        open(sys.argv[2] + f"/start{rank}", "w").write(repr(time.time()))
        if not os.path.exists(sys.argv[2] + "/downloaded"):
            time.sleep(6)                         # the first to come downloads: twice the group's timeout
            open(sys.argv[2] + "/downloaded", "w").write(rank)
        open(sys.argv[2] + f"/end{rank}", "w").write(repr(time.time()))
        return real(*a, **k)
    P.load_dataset = load
    P.pretrain(make_config("original", "smoke", "synthetic"), sys.argv[1], progress=False)
""")


def test_one_process_per_machine_downloads_and_the_others_wait_outside_any_collective(tmp_path, monkeypatch):
    """Rank 0 downloads for 6 s under a 3 s process-group timeout: a rank waiting in a collective
    meanwhile would time out (NCCL's 10 minutes against STL-10's 2.6 GB, on a GPU machine)."""
    monkeypatch.setenv("MAEHELPERS_PG_TIMEOUT_S", "3")
    driver = tmp_path / "driver.py"
    driver.write_text(FIRST_DOWNLOADS)
    out = torchrun([str(driver), str(tmp_path / "run"), str(tmp_path)])
    assert out.returncode == 0, out.stderr[-3000:]
    first = (tmp_path / "downloaded").read_text()
    other = "1" if first == "0" else "0"
    t = {n: float((tmp_path / n).read_text()) for n in (f"end{first}", f"start{other}")}
    assert t[f"start{other}"] >= t[f"end{first}"]   # the other found the files: one download per machine


UNSHARED_FOLDER = textwrap.dedent("""
    import os, sys
    import maehelpers.pretrain as P
    from maehelpers.config import make_config
    run = sys.argv[1] if os.environ["RANK"] == "0" else sys.argv[2]   # rank 1 does not see rank 0's folder
    P.pretrain(make_config("original", "smoke", "synthetic"), run, progress=False)
""")


def test_ranks_that_see_different_checkpoints_refuse_together_instead_of_diverging(tmp_path):
    P.pretrain(make_config("original", "smoke", "synthetic"), tmp_path / "shared", progress=False, stop_at_epoch=1)
    driver = tmp_path / "driver.py"
    driver.write_text(UNSHARED_FOLDER)
    out = torchrun([str(driver), str(tmp_path / "shared"), str(tmp_path / "elsewhere")], timeout=120)
    assert out.returncode != 0
    assert "every machine must see the same run folder" in out.stderr
    assert out.stderr.count("every machine must see the same run folder") >= 2   # both ranks say it
    assert load_torch(tmp_path / "shared" / "checkpoint_last.pt")["step"] == 8     # nothing trained or written


# ----------------------------------------------------------------------------- no host waits (second pass)
def test_fine_tuning_copies_labels_to_the_device_once_not_per_step(monkeypatch):
    """On CUDA each `labels[idx].to(device)` is a blocking copy: the labels move once, then are indexed
    on the device. Counted here as calls of Tensor.to on label tensors (integers 0-9) during fine-tuning:
    all 128 training labels, or a batch of 64 of them."""
    moved, real = [], torch.Tensor.to

    def spy(self, *a, **k):
        if self.dtype == torch.int64 and self.dim() == 1 and len(self) in (128, 64) and int(self.max()) < 10:
            moved.append(len(self))
        return real(self, *a, **k)
    cfg = make_config("original", "smoke", "synthetic", 0, {"eval.ft_epochs": 3})
    train = load_dataset("synthetic", "train", max_images=128)
    monkeypatch.setattr(torch.Tensor, "to", spy)
    res, _ = ft.finetune(cfg, train, load_dataset("synthetic", "test", max_images=16), None, progress=False)
    monkeypatch.setattr(torch.Tensor, "to", real)
    assert res["steps"] == 6 and moved == [128]   # all labels once; no batch of them per step


def test_feature_cache_is_keyed_by_precision_and_the_study_recomputes_in_the_runs(tmp_path, monkeypatch):
    run = tmp_path / "run"
    P.pretrain(make_config("original", "smoke", "synthetic", 0, {"train.amp": False}), run, progress=False)
    data = load_dataset("synthetic", "test", max_images=32)
    monkeypatch.setattr(probes, "amp_dtype", lambda device, enabled=True, *a: torch.bfloat16 if enabled else None)
    probes.cached_features(run, data, "test", amp=False, progress=False)
    probes.cached_features(run, data, "test", amp=True, progress=False)      # bf16 features are not fp32 ones
    names = sorted(p.name.rsplit("_", 1)[1] for p in (run / "features").glob("test_*.pt"))
    assert names == ["bf16.pt", "fp32.pt"]

    import maehelpers.study.run as S
    seen = {}
    monkeypatch.setattr(S, "cached_features", lambda *a, **k: seen.setdefault("amp", k.get("amp")) or
                        {p: torch.randn(32, 8) for p in ("cls", "mean")})
    monkeypatch.setattr(S, "knn_predict", lambda *a, **k: seen.setdefault("knn_device", k.get("device")) and
                        torch.zeros(32, dtype=torch.long))
    monkeypatch.setattr(S, "linear_probe", lambda *a, **k: {"pred": torch.zeros(32, dtype=torch.long)})
    top = 100.0 * (data.labels == 0).float().mean().item()
    S.correctness(run, (data, data), {f"{p}_top1_{q}": top for p in ("knn", "lp") for q in ("cls", "mean")}, "cpu")
    assert seen == {"amp": False, "knn_device": torch.device("cpu")}     # the run's precision, the run's device
    assert S.bits_tolerance(torch.device("cpu")) < 1e-6 < S.bits_tolerance(torch.device("cuda")) <= 0.2


def test_the_random_schedules_draw_does_not_depend_on_the_batch_or_the_device():
    """The same (seed, step) gives the same ratio whatever the images consumed before it: on the CPU
    it used to follow the crops' draws from the step's generator, which CUDA draws elsewhere."""
    cfg = make_config("random_ratio", "smoke", "synthetic", 3)
    ratios = set()
    for n in (4, 8, 16):
        images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
        ratios.add(P._step_inputs(cfg, images, 5, 100, 16, torch.device("cpu"), slice(None), n)[2])
    assert len(ratios) == 1 and 0.6 <= ratios.pop() <= 0.9


def test_notebook_raw_pixels_run_on_the_notebooks_device(monkeypatch, tmp_path):
    import maehelpers.probes
    import maehelpers.notebook as N
    asked = []
    monkeypatch.setattr(maehelpers.probes, "raw_pixel_baseline",
                        lambda cfg, tr, te, seed=0, device=None: asked.append(device) or {"lp_top1": 1.0, "knn_top1": 1.0})
    cfg = make_config("original", "smoke", "synthetic")
    data = (load_dataset("synthetic", "train", max_images=8), load_dataset("synthetic", "test", max_images=8))
    N.raw_pixels(cfg, data, tmp_path, device="cuda:1")
    assert asked == ["cuda:1"]
