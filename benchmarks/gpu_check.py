"""The GPU check: one prepared script for the first session lent a GPU (estimates sum to 7.5 minutes on one H100).

    python benchmarks/gpu_check.py                                    # on a GPU: benchmarks/results/gpu_check.json
    python benchmarks/gpu_check.py --quick --device cpu --out /tmp/g  # the script itself on a CPU (a test runs this)

It cannot lose its record: each part prints its estimate before it starts, is skipped when it no
longer fits --budget-seconds (default 480), and the JSON is rewritten after every part, so a run
killed midway keeps what it measured. Every subprocess has a timeout. Each part states the outcome
it expects ("expect") and whether it held ("ok"); the script exits 1 when one did not.

Parts:
 env          device, compute capability, precision chosen, the device's nominal dense bf16/fp16 peak.
 pretrain_96  `original` at 96 px (preset fast, batch 64): host waits per step in a window after
              warm-up (sync-debug mode on for that window only; the log flush every 25 steps is
              counted apart), then images/s over another window timed with CUDA events, TFLOP/s and
              the fraction of the nominal and of the measured matmul peak. Expect 0 waits per step.
 improved_96  the same for `improved` (curriculum, Laplacian, uniformity). Expect 0.
 fp16_96      `original` with fp16 and a GradScaler forced (a T4's path) on this GPU. Expect 0.
 host_data_96 `original` with the images kept in host memory (pinned, non-blocking copies). Expect 0.
 pretrain_224 `original` at 224 px (preset paper, batch 64): images/s and peak memory (a T4 has 15 GB).
 finetune_224 fine-tuning at 224 px, batch 128, the official augmentation on: waits per step,
              images/s, peak memory. Expect 0 waits.
 compile      the fixed-ratio `original` training step at 96 px, eager against the model under
              torch.compile (forward and loss compiled, backward from AOTAutograd, AdamW eager):
              compile time apart, then steps/s of each over windows timed with CUDA events.
 fp16_overflow an overflowing loss under forced fp16 stops the run with the loss-scale message.
 resume       an fp16 checkpoint resumed in this GPU's precision: allowed and recorded.
 eval         linear probe and k-NN on the GPU; raw_pixels: the raw-pixel baseline's peak memory at 224 px.
 ddp_one      torchrun with one process: an NCCL group of one, `improved` in bf16 (DDP and the
              gathered uniformity run). ddp_two: two processes against one, where two GPUs exist.
"""
import argparse
import inspect
import json
import linecache
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import maehelpers.evaluate as ev  # noqa: E402
import maehelpers.finetune as ft  # noqa: E402
import maehelpers.pretrain as P  # noqa: E402
from maehelpers.checkpoints import build_model  # noqa: E402
from maehelpers.config import make_config  # noqa: E402
from maehelpers.data import ImageSet  # noqa: E402
from maehelpers.devices import device_name, pick_device, precision_name  # noqa: E402
from maehelpers.model import ViTClassifier  # noqa: E402
from maehelpers.train_log import NonFiniteLossError, StepLog  # noqa: E402
from maehelpers.runs import load_torch, read_results  # noqa: E402
from raw_pixel_memory import measure as raw_pixel_memory  # noqa: E402
from speed import flops_per_step, step_fn  # noqa: E402

T4_BYTES = 15 * 2**30
# nominal dense (no sparsity) tensor-core peaks in TFLOP/s, bf16 where the GPU has it, else fp16
NOMINAL_PEAK = {"H200": 989, "H100 PCIe": 756, "H100": 989, "A100": 312, "L4": 121, "A10": 125, "V100": 125, "T4": 65}


def images(n: int, size: int = 96, labels: bool = False) -> ImageSet:
    g = torch.Generator().manual_seed(n)
    return ImageSet(torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8),
                    torch.arange(n) % 10 if labels else None, [], "stl10-sized")


def sizes(quick: bool) -> dict:
    """Steps of warm-up, of the waits window and of the timed window; tiny models with --quick."""
    if quick:
        return {"warm": 2, "waits": 3, "timed": 3, "model": {"model.img_size": 32, "model.patch_size": 8,
                "model.embed_dim": 32, "model.depth": 1, "model.num_heads": 2, "model.decoder_embed_dim": 32,
                "model.decoder_depth": 1, "model.decoder_num_heads": 2}}
    return {"warm": 30, "waits": 100, "timed": 100, "model": {}}


class StepWindows:
    """Wraps a function that the loop calls once per step. Over the steps [warm, warm + waits) every
    synchronising CUDA call is recorded (torch.cuda.set_sync_debug_mode, this window only); over the
    next `timed` steps the GPU's time is measured with CUDA events (perf_counter on a CPU)."""

    def __init__(self, fn, device, warm: int, waits: int, timed: int):
        self.fn, self.device, self.calls, self.seen = fn, device, 0, []
        self.edges = (warm, warm + waits, warm + waits + 1, warm + waits + 1 + timed)
        self.timed, self.waits, self.marks, self._catch = timed, waits, [], None

    def __call__(self, *a, **k):
        i, self.calls = self.calls, self.calls + 1
        if i == self.edges[0] and self.device.type == "cuda":
            self._catch = warnings.catch_warnings(record=True)
            self.seen = self._catch.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        if i == self.edges[1]:
            self.stop_waits()
        if i in self.edges[2:]:
            self.marks.append(self._mark())
        return self.fn(*a, **k)

    def stop_waits(self):
        if self._catch is not None:
            torch.cuda.set_sync_debug_mode(0)
            self._catch.__exit__(None, None, None)
            self._catch = None

    def _mark(self):
        if self.device.type != "cuda":
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self) -> float | None:
        if len(self.marks) < 2:
            return None
        if self.device.type != "cuda":
            return self.marks[1] - self.marks[0]
        self.marks[1].synchronize()
        return self.marks[0].elapsed_time(self.marks[1]) / 1000

    def waits(self) -> dict:
        """Synchronising calls seen in the window, by source line, and how many per step outside the flush."""
        allowed = {(inspect.getsourcefile(f), n) for f in (StepLog.flush, StepLog._check_scale)
                   for n in range(f.__code__.co_firstlineno, f.__code__.co_firstlineno + len(inspect.getsource(f).splitlines()))}
        where, other = {}, 0
        for w in (x for x in self.seen if "synchroniz" in str(x.message)):
            key = f"{Path(w.filename).name}:{w.lineno} {linecache.getline(w.filename, w.lineno).strip()[:80]}"
            where[key] = where.get(key, 0) + 1
            other += (w.filename, w.lineno) not in allowed
        return {"window_steps": self.waits, "per_step_outside_flush": other / self.waits,
                "by_line": dict(sorted(where.items(), key=lambda kv: -kv[1]))}


def nominal_peak(device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in NOMINAL_PEAK.items() if k in name), None)


def matmul_peak(device, dtype, quick: bool) -> float:
    n = 256 if quick else 8192
    a, b = (torch.randn(n, n, device=device, dtype=dtype or torch.float32) for _ in range(2))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b
    sync()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(10):
            a @ b
        sync()
        best = min(best, (time.perf_counter() - t0) / 10)
    return 2 * n ** 3 / best / 1e12


def pretrain_part(tmp, device, quick, variant="original", preset="fast", batch=64, fp16=False, host_data=False):
    """One pretraining run with its windows: waits per step, images/s, TFLOP/s and peak memory."""
    s = sizes(quick)
    steps = s["warm"] + s["waits"] + s["timed"] + 5
    cfg = make_config(variant, preset, "stl10", 0, {
        "train.epochs": 1, "train.warmup_epochs": 0.1, "train.max_images": steps * batch, "train.batch_size": batch,
        "train.monitor_points": 0, "train.tensorboard": False, "train.log_every": 25, **s["model"]})
    real_step, real_dtype, real_resident = P._train_step, P.amp_dtype, P.resident
    window = StepWindows(real_step, device, s["warm"], s["waits"], s["timed"])
    P._train_step = window
    if fp16:
        P.amp_dtype = lambda dev, enabled=True, capability=None: torch.float16 if dev.type == "cuda" and enabled else None
    if host_data:
        P.resident = lambda imgs, dev, limit_bytes=None: imgs          # the images stay in host memory
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        res = P.pretrain(cfg, tmp / f"{variant}_{preset}_{fp16}_{host_data}", data=images(steps * batch),
                         device=device, progress=False)
    finally:
        window.stop_waits()
        P._train_step, P.amp_dtype, P.resident = real_step, real_dtype, real_resident
    dtype = (torch.float16 if fp16 and device.type == "cuda" else P.amp_dtype(device, cfg.train.amp))
    model = build_model(cfg).to(device)
    x = torch.randn(batch, 3, cfg.model.img_size, cfg.model.img_size, device=device)
    flops = flops_per_step(step_fn(model, "ours", x, device, dtype))
    return summarise(window, batch, flops, device, dtype, quick, cfg.model.img_size, res.get("precision"))


def summarise(window, batch, flops, device, dtype, quick, img_size, precision) -> dict:
    seconds = window.seconds()
    img_s = window.timed * batch / seconds if seconds else None
    nominal, measured = nominal_peak(device), matmul_peak(device, dtype, quick)
    tflop_s = flops * img_s / batch / 1e12 if img_s else None
    out = {"img_size": img_size, "batch": batch, "precision": precision, "img_s": img_s, "tflop_s": tflop_s,
           "matmul_peak_tflop_s": measured, "nominal_peak_tflop_s": nominal,
           "fraction_of_matmul_peak": tflop_s / measured if tflop_s else None,
           "fraction_of_nominal_peak": tflop_s / nominal if tflop_s and nominal else None}
    if device.type == "cuda":
        waits = window.waits()
        out.update(waits=waits, peak_memory_gb=torch.cuda.max_memory_allocated(device) / 2**30,
                   fits_a_t4=torch.cuda.max_memory_allocated(device) < T4_BYTES,
                   expect="0 host waits per step outside the log flush", ok=waits["per_step_outside_flush"] == 0)
    else:
        out["waits"] = "not measurable on a CPU (sync-debug mode is CUDA's)"
    return out


def finetune_part(tmp, device, quick) -> dict:
    """Fine-tuning at 224 px, batch 128, with the official augmentation, its windows on the crop step."""
    s = sizes(quick)
    batch = 16 if quick else 128
    steps = s["warm"] + s["waits"] + s["timed"] + 5
    cfg = make_config("original", "paper", "stl10", 0, {"eval.ft_epochs": 1, "eval.batch_size": batch, **s["model"]})
    real = ft.augment
    window = StepWindows(real, device, s["warm"], s["waits"], s["timed"])
    ft.augment = window
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        ft.finetune(cfg, images(steps * batch, labels=True), images(64, labels=True), None, device=device, progress=False)
    finally:
        window.stop_waits()
        ft.augment = real
    dtype = P.amp_dtype(device, cfg.train.amp)
    model = ViTClassifier(10, **{k: v for k, v in vars(cfg.model).items()}).to(device)
    x = torch.randn(batch, 3, cfg.model.img_size, cfg.model.img_size, device=device)
    opt = torch.optim.AdamW(model.parameters())

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = model(x).float().logsumexp(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return summarise(window, batch, flops_per_step(step), device, dtype, quick, cfg.model.img_size,
                     precision_name(dtype))


def compile_part(device, quick) -> dict:
    """Eager against torch.compile of the model, the same fixed-ratio training step, timed in one process."""
    if device.type != "cuda" and quick:
        return {"skipped": "a minute of compiling on a CPU; the CPU's numbers are benchmarks/speed.py's"}
    from maehelpers.model import MAE
    from speed import SIZES
    s, batch = sizes(quick), 8 if quick else 64
    size = 32 if quick else 96
    kw = {**SIZES, "patch_size": 8} if quick else SIZES
    dtype = P.amp_dtype(device)
    x = torch.randn(batch, 3, size, size, device=device)
    torch.manual_seed(0)
    steps = {"eager": step_fn(MAE(img_size=size, **kw).to(device), "ours", x, device, dtype)}
    t0 = time.perf_counter()
    steps["compiled"] = step_fn(torch.compile(MAE(img_size=size, **kw).to(device)), "ours", x, device, dtype)
    steps["compiled"]()
    steps["compiled"]()                       # a second call catches a recompile
    compile_s = time.perf_counter() - t0
    out = {"img_size": size, "batch": batch, "compile_s": compile_s, "what": "model (forward and loss) under "
           "torch.compile, backward from AOTAutograd, AdamW eager; fixed mask ratio 0.75"}
    for name, step in steps.items():
        step()
        window = StepWindows(step, device, 0, 0, s["timed"])
        for _ in range(s["timed"] + 2):
            window()
        out[f"{name}_img_s"] = window.timed * batch / window.seconds()
    out["compiled_over_eager"] = out["compiled_img_s"] / out["eager_img_s"]
    return out


def fp16_overflow_part(tmp, device, quick) -> dict:
    if device.type != "cuda":
        return {"skipped": "fp16 autocast and the GradScaler run on CUDA only"}
    steps, batch = 40, 64
    cfg = make_config("original", "fast", "stl10", 0, {"train.epochs": 1, "train.max_images": steps * batch,
                                                       "train.batch_size": batch, "train.monitor_points": 0})
    real_dtype, real_loss = P.amp_dtype, P.pretrain_loss
    P.amp_dtype = lambda dev, enabled=True, capability=None: torch.float16 if dev.type == "cuda" and enabled else None

    def overflowing(*a, **k):
        total, parts, pred, mask = real_loss(*a, **k)
        return total * 1e30, parts, pred, mask
    P.pretrain_loss = overflowing
    try:
        P.pretrain(cfg, tmp / "fp16_overflow", data=images(steps * batch), device=device, progress=False)
        stopped = "no stop"
    except NonFiniteLossError as e:
        stopped = str(e)
    finally:
        P.amp_dtype, P.pretrain_loss = real_dtype, real_loss
    return {"message": stopped[:300], "expect": "stops with 'the fp16 loss scale fell'",
            "ok": "loss scale fell" in stopped}


def resume_part(tmp, device) -> dict:
    if device.type != "cuda":
        return {"skipped": "needs CUDA"}
    steps, batch = 20, 64
    cfg = make_config("original", "fast", "stl10", 0, {"train.epochs": 2, "train.max_images": steps * batch,
                                                       "train.batch_size": batch, "train.monitor_points": 0})
    real = P.amp_dtype
    P.amp_dtype = lambda dev, enabled=True, capability=None: torch.float16 if dev.type == "cuda" and enabled else None
    try:
        P.pretrain(cfg, tmp / "resume", data=images(steps * batch), device=device, progress=False, stop_at_epoch=1)
    finally:
        P.amp_dtype = real
    res = P.pretrain(cfg, tmp / "resume", data=images(steps * batch), device=device, progress=False)
    changes = res.get("precision_changes") or []
    return {"precision_changes": changes, "status": res.get("status"), "matmul_precision": res.get("matmul_precision"),
            "expect": "done; one change fp16 -> this GPU's precision at step 20; matmul precision 'high' (TF32)",
            "ok": res.get("status") == "done" and len(changes) == 1 and res.get("matmul_precision") == "high"}


def eval_part(tmp, device, quick) -> dict:
    cfg = make_config("original", "fast", "stl10", 0, {"train.epochs": 1, "train.warmup_epochs": 0.1,
                                                       "train.max_images": 128, "train.batch_size": 64,
                                                       "train.monitor_points": 0, **sizes(quick)["model"]})
    P.pretrain(cfg, tmp / "eval", data=images(128), device=device, progress=False)
    data = (images(500 if quick else 5000, labels=True), images(400 if quick else 8000, labels=True))
    t0 = time.perf_counter()
    res = ev.evaluate_run(tmp / "eval", steps=("lp", "knn"), data=data, device=device, progress=False)
    return {"seconds": time.perf_counter() - t0, "lp_top1_cls": res.get("lp_top1_cls"), "knn_top1_cls": res.get("knn_top1_cls"),
            "expect": "chance-level accuracies (random pictures), a few seconds on a GPU"}


def torchrun_part(tmp, device, nproc: int, timeout: int) -> dict:
    """`improved` in bf16 (the GPU's precision) under torchrun against one plain process."""
    if device.type != "cuda" or torch.cuda.device_count() < nproc:
        return {"skipped": f"needs {nproc} GPU(s), found {torch.cuda.device_count() if device.type == 'cuda' else 0}"}
    common = ["-m", "maehelpers", "pretrain", "--variant", "improved", "--preset", "smoke", "--dataset", "synthetic",
              "--device", "cuda", "--runs-root", str(tmp), "--no-progress", "--set", "train.monitor_points", "0"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = {"plain": [sys.executable, *common, "--run-name", "plain"],
            "group": [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", *common,
                      "--run-name", f"group{nproc}"]}
    for name, cmd in runs.items():
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
        if out.returncode:
            return {"failed": name, "stderr": out.stderr[-2000:], "ok": False}
    a, b = (load_torch(tmp / n / "checkpoint_last.pt")["model"] for n in ("plain", f"group{nproc}"))
    res = read_results(tmp / f"group{nproc}")
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    return {"world_size": res.get("world_size"), "process_group": res.get("process_group"),
            "precision": res.get("precision"), "max_weight_difference": diff,
            "expect": f"world_size {nproc}, nccl, bf16; weights within 5e-2 of one plain process (bf16 and NCCL's "
                      "reduction order round differently)",
            "ok": res.get("world_size") == nproc and res.get("process_group") == "nccl" and diff < 5e-2}


def uniformity_memory_part(device) -> dict:
    if device.type != "cuda":
        return {"skipped": "the pdist backward is O(n^2 d) on CUDA only (measured O(n^2) on the CPU)"}
    import torch.nn.functional as F
    from maehelpers.losses import uniformity_wang_isola
    forms = {"matmul": uniformity_wang_isola,
             "pdist": lambda f: torch.pdist(F.normalize(f, dim=-1)).pow(2).mul(-2.0).exp().mean().log()}
    out = {}
    for name, fn in forms.items():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        f = torch.randn(2048, 768, device=device, requires_grad=True)
        try:
            fn(f).backward()
            out[f"{name}_peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
        except torch.OutOfMemoryError as e:
            out[f"{name}_peak_gb"] = f"out of memory: {str(e)[:120]}"
        del f
    out["expect"] = "matmul well under 1 GB; pdist about 13 GB (n(n-1)/2 x d floats in its backward)"
    return out


def env_part(device) -> dict:
    out = {"device": device_name(device), "torch": torch.__version__, "nominal_peak_tflop_s": nominal_peak(device)}
    if device.type == "cuda":
        out.update(capability=list(torch.cuda.get_device_capability(device)),
                   precision=precision_name(P.amp_dtype(device)), gpus=torch.cuda.device_count(),
                   memory_gb=torch.cuda.get_device_properties(device).total_memory / 2**30)
    return out


def parts(tmp: Path, device, quick: bool) -> list:
    """(name, estimated seconds on one H100, what it runs)."""
    return [
        ("env", 2, lambda: env_part(device)),
        ("pretrain_96", 25, lambda: pretrain_part(tmp, device, quick)),
        ("improved_96", 30, lambda: pretrain_part(tmp, device, quick, variant="improved")),
        ("fp16_96", 25, lambda: pretrain_part(tmp, device, quick, fp16=True)),
        ("host_data_96", 25, lambda: pretrain_part(tmp, device, quick, host_data=True)),
        ("pretrain_224", 30, lambda: pretrain_part(tmp, device, quick, preset="paper")),
        ("finetune_224", 45, lambda: finetune_part(tmp, device, quick)),
        ("compile", 90, lambda: compile_part(device, quick)),
        ("fp16_overflow", 15, lambda: fp16_overflow_part(tmp, device, quick)),
        ("resume", 15, lambda: resume_part(tmp, device)),
        ("eval", 20, lambda: eval_part(tmp, device, quick)),
        ("raw_pixels", 30, lambda: raw_pixel_memory(32 if quick else 224, 1, str(device),
                                                    *((200, 200) if quick else (5000, 8000)), timeout=240)),
        ("uniformity_memory", 10, lambda: uniformity_memory_part(device)),
        ("ddp_one", 45, lambda: torchrun_part(tmp, device, 1, timeout=150)),
        ("ddp_two", 45, lambda: torchrun_part(tmp, device, 2, timeout=150)),
    ]


def write(res: dict, path: Path) -> None:
    """The JSON as it stands, replaced whole (written beside, then renamed): a kill never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(res, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that the script itself runs")
    p.add_argument("--budget-seconds", type=float, default=480, help="skip a part whose estimate no longer fits")
    p.add_argument("--only", nargs="+", help="run these parts only")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    device = pick_device(args.device)
    out = Path(args.out) / "gpu_check.json"
    res = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "quick": args.quick,
           "budget_seconds": args.budget_seconds, "command": "python benchmarks/gpu_check.py " + " ".join(argv or sys.argv[1:])}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name, estimate, run in parts(Path(tmp), device, args.quick):
            if args.only and name not in args.only:
                continue
            left = args.budget_seconds - (time.perf_counter() - start)
            if estimate > left:
                res[name] = {"skipped": f"estimated {estimate} s on one H100, {left:.0f} s of the budget left"}
            else:
                print(f"{name}: about {estimate} s on one H100 ...", flush=True)
                t0 = time.perf_counter()
                try:
                    res[name] = {**run(), "seconds_taken": round(time.perf_counter() - t0, 1)}
                except Exception as e:  # noqa: BLE001 - a failed part is a result; the others still run
                    res[name] = {"error": f"{type(e).__name__}: {e}"[:2000], "ok": False}
            print(f"{name}: {json.dumps(res[name], default=str)[:600]}", flush=True)
            write(res, out)
    failed = [k for k, v in res.items() if isinstance(v, dict) and v.get("ok") is False]
    print(f"wrote {out}" + (f"; did not hold: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
