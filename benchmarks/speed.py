"""Speed, measured as ratios within one run (the machine's own speed drifts between minutes).

    pip install -r requirements-bench.txt && python benchmarks/speed.py [--quick] [--no-compile]

1. Training step (forward + backward + AdamW), images/s: maehelpers.MAE against Hugging Face
   ViTMAEForPreTraining at the same sizes, interleaved A B A B after warm-up, at 96 and 224 px,
   batch 64, fp32 on CPU; ratio per pair and the median. Achieved GFLOP/s (torch.utils.flop_counter)
   next to this CPU's sgemm peak measured in the same run.
2. torch.compile at 96 px, compile time apart, then the steady-state ratio per interleaved pair, of the
   whole training step and of the forward pass with the loss alone.
3. Data: the batched uint8 augmentation against per-image PIL transforms + DataLoader.
4. Evaluation: a 100-epoch linear probe on cached features against re-encoding every epoch.
5. On CUDA (when present): step throughput with the precision training uses there (amp_dtype:
   bf16 from compute capability 8.0, else fp16 with a GradScaler), reported in rows of its own.
Every measurement names its device: the CPU sections run on the CPU even where a GPU is present.
Results: benchmarks/results/speed.{json,md}.
"""
import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from maehelpers.data import augment  # noqa: E402
from maehelpers.probes import extract_features, linear_probe  # noqa: E402
from maehelpers.model import MAE  # noqa: E402
from maehelpers.devices import amp_dtype, device_name  # noqa: E402
from maehelpers.generated import marks, replace_block  # noqa: E402
from maehelpers.runs import save_json  # noqa: E402

SIZES = dict(embed_dim=192, depth=8, num_heads=6, decoder_embed_dim=128, decoder_depth=4, decoder_num_heads=4)


def hf_model(img_size):
    from transformers import ViTMAEConfig, ViTMAEForPreTraining
    cfg = ViTMAEConfig(hidden_size=192, num_hidden_layers=8, num_attention_heads=6, intermediate_size=768,
                       decoder_hidden_size=128, decoder_num_hidden_layers=4, decoder_num_attention_heads=4,
                       decoder_intermediate_size=512, patch_size=16, image_size=img_size, mask_ratio=0.75,
                       norm_pix_loss=True)
    return ViTMAEForPreTraining(cfg)


def step_fn(model, kind, imgs, device, dtype=None):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)  # as training does in fp16

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = model(imgs, 0.75)[0] if kind == "ours" else model(pixel_values=imgs).loss
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize()
    return step


def timed(fn, repeats=1):
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def flops_per_step(step):
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def sgemm_peak(device, n=2048, repeats=5):
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    dt = min(timed(lambda: (a @ b, sync())) for _ in range(repeats))
    return 2 * n**3 / dt / 1e9


def bench_steps(img_size, batch, pairs, device, dtype=None):
    """Interleaved A B pairs after one warm-up step each; images/s and ratio ours / HF."""
    torch.manual_seed(0)
    imgs = torch.randn(batch, 3, img_size, img_size, device=device)
    ours = step_fn(MAE(img_size=img_size, **SIZES).to(device), "ours", imgs, device, dtype)
    hf = step_fn(hf_model(img_size).to(device), "hf", imgs, device, dtype)
    ours(), hf()
    flops = flops_per_step(ours)
    a, b = [], []
    for _ in range(pairs):
        a.append(batch / timed(ours))
        b.append(batch / timed(hf))
    ratios = [x / y for x, y in zip(a, b)]
    return {"img_size": img_size, "batch": batch, "device": str(device), "dtype": str(dtype or "fp32"),
            "ours_img_s": a, "hf_img_s": b, "ratio_per_pair": ratios, "median_ratio": statistics.median(ratios),
            "gflop_per_step": flops / 1e9, "ours_gflop_s": flops / 1e9 * statistics.median(a) / batch}


def bench_compile(img_size, batch, pairs, device):
    """torch.compile against eager, interleaved pairs after compiling, two workloads: the whole training
    step (the model compiled, its backward from AOTAutograd, AdamW eager) and the forward pass with the
    loss alone (no backward). Each pair's ratio is compiled / eager; its median is what the table
    reports (the medians of the two series come from different pairs and need not agree with it)."""
    torch.manual_seed(0)
    imgs = torch.randn(batch, 3, img_size, img_size, device=device)
    eager_model = MAE(img_size=img_size, **SIZES).to(device)
    compiled_model = torch.compile(MAE(img_size=img_size, **SIZES).to(device))
    out = {"img_size": img_size, "batch": batch}
    workloads = {"step": (step_fn(compiled_model, "ours", imgs, device), step_fn(eager_model, "ours", imgs, device)),
                 "forward": (lambda: _no_grad(compiled_model, imgs), lambda: _no_grad(eager_model, imgs))}
    for name, (compiled, eager) in workloads.items():
        t0 = time.perf_counter()
        compiled()  # first call compiles
        compiled()  # mask sizes are fixed, but a second call catches recompiles
        out[f"{name}_compile_s"] = time.perf_counter() - t0
        eager()
        a, b = [], []
        for _ in range(pairs):
            a.append(batch / timed(compiled))
            b.append(batch / timed(eager))
        ratios = [x / y for x, y in zip(a, b)]
        out[name] = {"compiled_img_s": a, "eager_img_s": b, "ratio_per_pair": ratios,
                     "median_ratio": statistics.median(ratios)}
    return out


def _no_grad(model, imgs):
    with torch.no_grad():
        return model(imgs, 0.75)[0]


def bench_data(n_images, img_size, batch, pairs):
    """Random 96x96 uint8 images (STL-10's layout): same augmentation two ways."""
    import torchvision.transforms as T
    from PIL import Image
    images = torch.randint(0, 256, (n_images, 3, 96, 96), dtype=torch.uint8)
    pil = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in images]
    tf = T.Compose([T.RandomResizedCrop(img_size, scale=(0.2, 1.0), interpolation=T.InterpolationMode.BICUBIC),
                    T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return len(pil)

        def __getitem__(self, i):
            return tf(pil[i])

    def batched():
        g = torch.Generator().manual_seed(0)
        order = torch.randperm(n_images, generator=g)
        for i in range(0, n_images - batch + 1, batch):
            augment(images[order[i:i + batch]], img_size, generator=g)

    loader = torch.utils.data.DataLoader(DS(), batch_size=batch, shuffle=True, num_workers=2, drop_last=True,
                                         persistent_workers=True)

    def per_image():
        for _ in loader:
            pass
    per_image()  # start the workers
    a, b = [], []
    for _ in range(pairs):
        a.append(n_images // batch * batch / timed(batched))
        b.append(n_images // batch * batch / timed(per_image))
    return {"img_size": img_size, "batch": batch, "batched_img_s": a, "pil_dataloader_img_s": b,
            "median_ratio": statistics.median(x / y for x, y in zip(a, b)), "pil_workers": 2}


def bench_probe(n_images, img_size, epochs, measured_reencode_epochs=2, device=torch.device("cpu")):
    torch.manual_seed(0)
    model = MAE(img_size=img_size, **SIZES).eval()
    images = torch.randint(0, 256, (n_images, 3, 96, 96), dtype=torch.uint8)
    labels = torch.arange(n_images) % 10
    t0 = time.perf_counter()
    feats = extract_features(model, images, img_size, progress=False, device=device)["cls"]
    encode_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    linear_probe(feats, labels, feats, labels, epochs=epochs, progress=False, device=device)
    probe_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(measured_reencode_epochs):  # what a probe without the cache does each epoch
        f = extract_features(model, images, img_size, progress=False, device=device)["cls"]
        linear_probe(f, labels, f, labels, epochs=1, progress=False, device=device)
    reencode_epoch_s = (time.perf_counter() - t0) / measured_reencode_epochs
    cached = encode_s + probe_s
    return {"n_images": n_images, "img_size": img_size, "epochs": epochs, "device": str(device), "encode_s": encode_s,
            "probe_s": probe_s, "cached_total_s": cached, "reencode_epoch_s": reencode_epoch_s,
            "reencode_total_s_estimated": reencode_epoch_s * epochs,
            "speedup": reencode_epoch_s * epochs / cached,
            "note": f"re-encoding cost measured over {measured_reencode_epochs} epochs, times {epochs}"}


DOC_MARKS = marks("speed", "python benchmarks/speed.py")  # in docs/performance.md


def table(res) -> str:
    lines = [f"Machine: {res['machine']}; torch {res['torch']}; sgemm peak {res['sgemm_gflop_s']:.0f} GFLOP/s "
             "(2048x2048, this run)", "",
             "| training step | maehelpers img/s | HF ViTMAE img/s | ratio (median) "
             "| GFLOP/step | achieved GFLOP/s | % of sgemm peak |", "|---|---|---|---|---|---|---|"]
    for r in res["steps"]:
        lines.append(f"| {r['img_size']} px, batch {r['batch']}, {r['device']} {r['dtype']} | {statistics.median(r['ours_img_s']):.1f} "
                     f"| {statistics.median(r['hf_img_s']):.1f} | {r['median_ratio']:.3f} | {r['gflop_per_step']:.1f} "
                     f"| {r['ours_gflop_s']:.1f} | {100 * r['ours_gflop_s'] / res['sgemm_gflop_s']:.0f} % |")
    if res.get("compile"):
        c = res["compile"]
        for name, what in (("step", "the whole training step (model compiled, backward from AOTAutograd, AdamW eager)"),
                           ("forward", "the forward pass and loss alone, no backward")):
            if name in c:
                r = c[name]
                lines += ["", f"torch.compile at {c['img_size']} px, {what}: compile {c[f'{name}_compile_s']:.0f} s; "
                              f"compiled / eager per interleaved pair: median {r['median_ratio']:.3f} "
                              f"(pairs {', '.join(f'{x:.2f}' for x in r['ratio_per_pair'])})"
                              + (f"; {c['date']}, 1-minute load {c['load_1min']:.1f} on {os.cpu_count()} cores"
                                 if "load_1min" in c else "")]
    for d in res["data"]:
        lines += ["", f"Data at {d['img_size']} px: batched uint8 path {statistics.median(d['batched_img_s']):.0f} img/s, "
                      f"PIL + DataLoader ({d['pil_workers']} workers) {statistics.median(d['pil_dataloader_img_s']):.0f} "
                      f"img/s (ratio {d['median_ratio']:.1f})"]
    if res.get("cuda"):
        c = res["cuda"]
        lines += ["", f"CUDA: {c['device']}, sgemm peak {c['sgemm_gflop_s']:.0f} GFLOP/s", "",
                  "| training step | maehelpers img/s | HF ViTMAE img/s | ratio (median) | achieved GFLOP/s |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['img_size']} px, batch {r['batch']}, {r['dtype']} | {statistics.median(r['ours_img_s']):.1f} | "
                  f"{statistics.median(r['hf_img_s']):.1f} | {r['median_ratio']:.3f} | {r['ours_gflop_s']:.0f} |"
                  for r in c["steps"]]
    p = res["probe"]
    lines += ["", f"Linear probe, {p['epochs']} epochs on {p['n_images']} images at {p['img_size']} px: cached features "
                  f"{p['cached_total_s']:.1f} s vs re-encoding every epoch {p['reencode_total_s_estimated']:.0f} s "
                  f"(x{p['speedup']:.0f}; {p['note']})"]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks that the script runs")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--compile-only", action="store_true",
                    help="measure torch.compile alone and replace that section of the existing speed.json")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    cpu = torch.device("cpu")
    sizes, pairs, batch = ((32,), 2, 4) if args.quick else ((96, 224), 5, 64)
    if args.compile_only:
        res = json.loads((Path(args.out) / "speed.json").read_text())
        res["compile"] = {**bench_compile(sizes[0], batch, pairs, cpu), "command": " ".join(sys.argv),
                          "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_1min": os.getloadavg()[0]}
        save_json(res, Path(args.out) / "speed.json")
        (Path(args.out) / "speed.md").write_text(table(res))
        replace_block(ROOT / "docs" / "performance.md", table(res), DOC_MARKS)
        return res
    res = {"machine": device_name(torch.device("cpu")),
           "torch": torch.__version__, "command": " ".join(sys.argv), "sgemm_gflop_s": sgemm_peak(cpu)}
    res["steps"] = [bench_steps(s, batch, pairs, cpu) for s in sizes]
    print(res["steps"], flush=True)
    if not args.no_compile:
        res["compile"] = bench_compile(sizes[0], batch, pairs, cpu)
    res["data"] = [bench_data(256 if args.quick else 1024, s, batch, pairs) for s in sizes]
    res["probe"] = bench_probe(64 if args.quick else 1000, sizes[0], 3 if args.quick else 100, device=cpu)
    if torch.cuda.is_available():
        cuda = torch.device("cuda")
        dtype = amp_dtype(cuda)  # what pretraining uses on this GPU (fp16 on a T4, whose bf16 is emulated)
        res["cuda"] = {"device": torch.cuda.get_device_name(), "sgemm_gflop_s": sgemm_peak(cuda),
                       "steps": [bench_steps(s, 256 if not args.quick else batch, pairs, cuda, dtype) for s in sizes]}
    out = Path(args.out)
    save_json(res, out / "speed.json")
    (out / "speed.md").write_text(table(res))
    if not args.quick:
        replace_block(ROOT / "docs" / "performance.md", table(res), DOC_MARKS)
    print(table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
