"""One prepared check of the CUDA path, to run the first time a GPU is lent (a few minutes on one GPU).

    python benchmarks/gpu_check.py                                   # on a GPU: benchmarks/results/gpu_check.json
    python benchmarks/gpu_check.py --quick --device cpu --out /tmp/g # the script itself on a CPU (a test runs this)

Every check writes what it measured next to the outcome it expects ("expect"), so a reader can see
at once which ones held:
 syncs       200 steps of the real pretrain() under torch.cuda.set_sync_debug_mode("warn"); every
             synchronising call is counted by the source line that made it. Expect: only the log flush
             (every 25 steps), the duration message, the epoch end and the checkpoint.
 throughput  pretrain() of the paper (224 px) and fast (96 px) presets on STL-10-sized synthetic images,
             in the precision amp_dtype picks; img/s from two run lengths (start-up cancels), TFLOP/s
             against a dense matmul peak measured in the same precision in the same run.
 uniformity_memory  peak GPU memory of the uniformity term's backward, one matmul against torch.pdist.
 fp16        amp forced to fp16 (a T4's choice): the loss scale is logged; an injected overflow stops
             the run with the loss-scale message instead of training on skipped steps.
 resume      one epoch in fp16, resumed in the GPU's own precision: allowed and recorded.
 tf32        results.json records matmul_precision "high" on CUDA.
 raw_pixels  notebook 03's raw-pixel baseline at 224 px on STL-10-sized data: peak host and GPU memory.
 eval        linear probe and k-NN of a run on the GPU.
 two_gpus    2 NCCL processes against 1 (fp32; TF32 rounding allowed), when two GPUs are present.
"""
import argparse
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

import maehelpers.pretrain as P  # noqa: E402
from maehelpers.config import make_config  # noqa: E402
from maehelpers.data import ImageSet  # noqa: E402
from maehelpers.evaluate import evaluate_run  # noqa: E402
from maehelpers.runs import read_jsonl, read_results, load_torch  # noqa: E402
from raw_pixel_memory import measure as raw_pixel_memory  # noqa: E402
from speed import flops_per_step, step_fn  # noqa: E402


def images(n: int, size: int = 96, labels: bool = False) -> ImageSet:
    g = torch.Generator().manual_seed(n)
    return ImageSet(torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8),
                    torch.arange(n) % 10 if labels else None, [], "stl10-sized")


def config(preset: str, steps: int, batch: int, quick: bool, **extra):
    overrides = {"train.epochs": 1, "train.warmup_epochs": 0.1, "train.max_images": steps * batch,
                 "train.batch_size": batch, **extra}
    if quick:
        overrides.update({"model.img_size": 32, "model.patch_size": 8, "model.embed_dim": 32, "model.depth": 1,
                          "model.num_heads": 2, "model.decoder_embed_dim": 32, "model.decoder_depth": 1,
                          "model.decoder_num_heads": 2})
    return make_config("original", preset, "stl10", 0, overrides)


def check_syncs(tmp: Path, device, quick: bool) -> dict:
    steps, batch = (20, 8) if quick else (200, 64)
    cfg = config("fast", steps, batch, quick, **{"train.log_every": 25})
    seen = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
        try:
            P.pretrain(cfg, tmp / "syncs", data=images(steps * batch), device=device, progress=True)
        finally:
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode(0)
        seen = [w for w in caught if "synchroniz" in str(w.message)]
    where = {}
    for w in seen:
        key = f"{Path(w.filename).name}:{w.lineno} {linecache.getline(w.filename, w.lineno).strip()[:80]}"
        where[key] = where.get(key, 0) + 1
    return {"steps": steps, "syncs": len(seen), "by_line": dict(sorted(where.items(), key=lambda kv: -kv[1])),
            "expect": "syncs only in _StepLog.flush (every 25 steps), the duration message, the epoch end and the "
                      "checkpoint: about 10-20 in all, none per step",
            "measured_on": str(device)}


def check_throughput(tmp: Path, device, quick: bool) -> list:
    out = []
    for preset, size in (("paper", 224), ("fast", 96)):
        batch = 8 if quick else 64
        times = {}
        for steps in ((4, 8) if quick else (20, 70)):
            cfg = config(preset, steps, batch, quick)
            res = P.pretrain(cfg, tmp / f"{preset}_{steps}", data=images(steps * batch), device=device, progress=False)
            times[steps] = res["pretrain_time_s"]
        (s0, t0), (s1, t1) = sorted(times.items())
        img_s = (s1 - s0) * batch / max(t1 - t0, 1e-9)
        dtype = P.amp_dtype(device, cfg.train.amp)
        model = P.build_model(cfg).to(device)
        x = torch.randn(batch, 3, cfg.model.img_size, cfg.model.img_size, device=device)
        flops = flops_per_step(step_fn(model, "ours", x, device, dtype))
        out.append({"preset": preset, "img_size": cfg.model.img_size, "batch": batch, "precision": P.precision_name(dtype),
                    "img_s": img_s, "tflop_s": flops * img_s / batch / 1e12,
                    "matmul_peak_tflop_s": matmul_peak(device, dtype, quick),
                    "steps_compared": [s0, s1]})
        out[-1]["fraction_of_peak"] = out[-1]["tflop_s"] / out[-1]["matmul_peak_tflop_s"]
    return out


def matmul_peak(device, dtype, quick: bool) -> float:
    n = 512 if quick else 8192
    a, b = (torch.randn(n, n, device=device, dtype=dtype or torch.float32) for _ in range(2))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b
    sync()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(10):
            a @ b
        sync()
        best = min(best, (time.perf_counter() - t0) / 10)
    return 2 * n ** 3 / best / 1e12


def check_uniformity_memory(device, quick: bool) -> dict:
    """Peak GPU memory of the Wang-Isola term's backward at a global batch of 2048 x 768: one matmul
    (the package) against torch.pdist (what it replaced)."""
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


def check_fp16(tmp: Path, device, quick: bool) -> dict:
    if device.type != "cuda":
        return {"skipped": "fp16 autocast and the GradScaler run on CUDA only"}
    steps, batch = 60, 64
    real_dtype, real_loss = P.amp_dtype, P.pretrain_loss
    P.amp_dtype = lambda dev, enabled=True, capability=None: torch.float16 if dev.type == "cuda" and enabled else None
    try:
        cfg = config("fast", steps, batch, quick)
        P.pretrain(cfg, tmp / "fp16", data=images(steps * batch), device=device, progress=False)
        log = read_jsonl(tmp / "fp16" / "log_steps.jsonl")

        def overflowing(*a, **k):
            total, parts, pred, mask = real_loss(*a, **k)
            return total * 1e30, parts, pred, mask
        P.pretrain_loss = overflowing
        try:
            P.pretrain(cfg, tmp / "fp16_overflow", data=images(steps * batch), device=device, progress=False)
            stopped = "no stop"
        except P.NonFiniteLossError as e:
            stopped = str(e)
    finally:
        P.amp_dtype, P.pretrain_loss = real_dtype, real_loss
    return {"loss_scale_logged": [r.get("loss_scale") for r in log[::10]], "skipped_steps": log[-1].get("skipped_steps"),
            "overflow_run": stopped[:300],
            "expect": "a loss scale in every logged row; the overflowing run stops with 'the fp16 loss scale fell'"}


def check_resume_across_precision(tmp: Path, device) -> dict:
    if device.type != "cuda":
        return {"skipped": "needs CUDA"}
    steps, batch = 20, 64
    cfg = config("fast", steps, batch, False, **{"train.epochs": 2, "train.max_images": steps * batch})
    real = P.amp_dtype
    P.amp_dtype = lambda dev, enabled=True, capability=None: torch.float16 if dev.type == "cuda" and enabled else None
    try:
        P.pretrain(cfg, tmp / "resume", data=images(steps * batch), device=device, progress=False, stop_at_epoch=1)
    finally:
        P.amp_dtype = real
    res = P.pretrain(cfg, tmp / "resume", data=images(steps * batch), device=device, progress=False)
    return {"precision_changes": res.get("precision_changes"), "status": res.get("status"),
            "expect": "status done, one change fp16 -> this GPU's precision at step 20 (bf16 from compute capability 8.0)"}


def check_eval(tmp: Path, device, quick: bool) -> dict:
    data = (images(500 if quick else 5000, labels=True), images(400 if quick else 8000, labels=True))
    t0 = time.perf_counter()
    res = evaluate_run(tmp / "syncs", steps=("lp", "knn"), data=data, device=device, progress=False)
    return {"seconds": time.perf_counter() - t0, "lp_top1_cls": res.get("lp_top1_cls"), "knn_top1_cls": res.get("knn_top1_cls"),
            "expect": "chance-level accuracies (random pictures), a few seconds on a GPU"}


def check_two_gpus(tmp: Path, device) -> dict:
    if device.type != "cuda" or torch.cuda.device_count() < 2:
        return {"skipped": f"needs 2 GPUs, found {torch.cuda.device_count() if torch.cuda.is_available() else 0}"}
    common = ["-m", "maehelpers", "pretrain", "--preset", "smoke", "--dataset", "synthetic", "--device", "cuda",
              "--runs-root", str(tmp), "--no-progress", "--set", "train.amp", "false"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    one = subprocess.run([sys.executable, *common, "--run-name", "one"], capture_output=True, text=True, env=env)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", *common, "--run-name", "two"],
                         capture_output=True, text=True, env=env)
    if one.returncode or two.returncode:
        return {"failed": (one.stderr + two.stderr)[-2000:]}
    a, b = (load_torch(tmp / n / "checkpoint_last.pt")["model"] for n in ("one", "two"))
    return {"max_weight_difference": max((a[k] - b[k]).abs().max().item() for k in a),
            "world_size": read_results(tmp / "two").get("world_size"),
            "expect": "world_size 2; difference below 1e-2 (TF32 matmuls and NCCL's reduction order round differently)"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that the script itself runs")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    device = P.pick_device(args.device)
    res = {"device": P.device_name(device), "torch": torch.__version__, "quick": args.quick,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checks = {"syncs": lambda: check_syncs(tmp, device, args.quick),
                  "throughput": lambda: check_throughput(tmp, device, args.quick),
                  "uniformity_memory": lambda: check_uniformity_memory(device, args.quick),
                  "fp16": lambda: check_fp16(tmp, device, args.quick),
                  "resume": lambda: check_resume_across_precision(tmp, device),
                  "tf32": lambda: {"matmul_precision": read_results(tmp / "syncs").get("matmul_precision"),
                                   "expect": "high on CUDA (TF32), highest on the CPU"},
                  "eval": lambda: check_eval(tmp, device, args.quick),
                  "raw_pixels": lambda: raw_pixel_memory(32 if args.quick else 224, 1, str(device),
                                                         *((200, 200) if args.quick else (5000, 8000))),
                  "two_gpus": lambda: check_two_gpus(tmp, device)}
        for name, run in checks.items():
            t0 = time.perf_counter()
            try:
                res[name] = run()
            except Exception as e:  # noqa: BLE001 - a failed check is a result; the others still run
                res[name] = {"error": f"{type(e).__name__}: {e}"[:2000]}
            print(f"{name} ({time.perf_counter() - t0:.0f} s): {json.dumps(res[name])[:600]}", flush=True)
    out = Path(args.out) / "gpu_check.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {out}")
    return 1 if any(isinstance(v, dict) and "error" in v for v in res.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
