"""Peak memory of notebook 03's raw-pixel baseline on STL-10-sized data (5,000 labelled training
and 8,000 test images of 96 x 96 x 3, random uint8: the sizes matter, not the pictures).

    python benchmarks/raw_pixel_memory.py                       # 224 px on the CPU, 1 probe epoch
    python benchmarks/raw_pixel_memory.py --device cuda         # the GPU's peak too

The baseline runs in a fresh child process so that its peak resident memory (ru_maxrss) is its own;
the uint8 images themselves (359 MB) and the imported libraries are counted in it. The approach it
replaced held the upsampled float pixels of both splits at once, N x 3 x S x S x 4 bytes (7.3 GB at
224 px; `whole_matrix_mb` in the JSON), plus the temporaries of resizing and normalising them.
Peak memory does not depend on the number of probe epochs (each epoch streams the same batches),
so one epoch keeps the CPU run short. Writes benchmarks/results/raw_pixel_memory.json.
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = """
import json, resource, sys, time, torch
from maehelpers.config import make_config
from maehelpers.data import ImageSet
from maehelpers.probes import raw_pixel_baseline
size, epochs, device, n_train, n_test = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
g = torch.Generator().manual_seed(0)
make = lambda n: ImageSet(torch.randint(0, 256, (n, 3, 96, 96), generator=g, dtype=torch.uint8),
                          torch.arange(n) % 10, [], "stl10-sized")
train, test = make(n_train), make(n_test)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
cfg = make_config("original", "paper", "stl10", 0, {"model.img_size": size, "eval.lp_epochs": epochs})
t0 = time.perf_counter()
res = raw_pixel_baseline(cfg, train, test, device=device)
out = {"seconds": time.perf_counter() - t0, "lp_top1": res["lp_top1"], "knn_top1": res["knn_top1"],
       "peak_host_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
       "host_mb_before_baseline": base / 1024}
if device.startswith("cuda"):
    out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
print("RESULT " + json.dumps(out))
"""


def measure(size: int, epochs: int, device: str, n_train: int = 5000, n_test: int = 8000, timeout: int = 7200) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(size), str(epochs), device, str(n_train), str(n_test)],
                         capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"the measurement failed:\n{out.stderr[-3000:]}")
    res = json.loads(line[7:])
    whole = (n_train + n_test) * 3 * size * size * 4 / 2**20
    return {"img_size": size, "n_train": n_train, "n_test": n_test, "lp_epochs": epochs, "device": device, **res,
            "whole_matrix_mb": whole, "limit_mb": 3 * 1024, "within_limit": res["peak_host_mb"] < 3 * 1024}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--lp-epochs", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--n-train", type=int, default=5000)
    p.add_argument("--n-test", type=int, default=8000)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "raw_pixel_memory.json"))
    args = p.parse_args(argv)
    res = measure(args.size, args.lp_epochs, args.device, args.n_train, args.n_test)
    res.update(command=" ".join(["python benchmarks/raw_pixel_memory.py", *(argv or sys.argv[1:])]),
               date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), load_1min=__import__("os").getloadavg()[0])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))
    return 0 if res["within_limit"] else 1


if __name__ == "__main__":
    sys.exit(main())
