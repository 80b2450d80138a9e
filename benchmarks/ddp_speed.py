"""Throughput of pretraining under torchrun with 2 processes against 1 process, on this machine.

    python benchmarks/ddp_speed.py                 # ablation preset, 40 steps of 128 images, 2 rounds

Both sides train the same global batch (128) from the same seed; one process uses all the cores
(torch's default threads), each of the two processes one thread per core share (OMP_NUM_THREADS).
Timings are the runs' own pretrain_time_s (start-up excluded), alternated 1-2-1-2 in one call so
the machine's drift cancels; the ratio is what carries over, not the absolute images/s.
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(nproc: int, runs: Path, name: str, args) -> float:
    """Images per second of one short pretraining with nproc processes."""
    cli = ["-m", "maehelpers", "pretrain", "--preset", args.preset, "--dataset", args.dataset, "--runs-root",
           str(runs), "--run-name", name, "--no-progress", "--set", "train.epochs", "1",
           "--set", "train.max_images", str(args.steps * 128), "--set", "train.warmup_epochs", "0.1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if nproc > 1:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // nproc))
        cli = ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}", *cli]
    out = subprocess.run([sys.executable, *cli], capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode:
        raise SystemExit(out.stderr[-2000:])
    res = json.loads((runs / name / "results.json").read_text())
    return res["pretrain_steps"] * 128 / res["pretrain_time_s"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="ablation")
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    one, two = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            one.append(run(1, Path(tmp), f"one{r}", args))
            two.append(run(2, Path(tmp), f"two{r}", args))
    ratios = [b / a for a, b in zip(one, two)]
    load = os.getloadavg()[0]
    result = {"preset": args.preset, "dataset": args.dataset, "steps": args.steps, "global_batch": 128,
              "one_process_img_s": one, "two_processes_img_s": two, "ratio_per_round": ratios,
              "median_ratio": statistics.median(ratios), "cpus": os.cpu_count(), "load_after": load,
              "command": "python benchmarks/ddp_speed.py " + " ".join(argv or sys.argv[1:])}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ddp_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
