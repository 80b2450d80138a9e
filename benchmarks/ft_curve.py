"""Fine-tuning against its budget on the `ablation` preset: from how many epochs does fine-tuning a
pretrained encoder pass that encoder's own linear probe, and where does it leave training from scratch?

    bash scripts/install_fashion_mnist.sh
    python benchmarks/ft_curve.py run [--epochs 10 20 40] [--arms original random] [--seed 0] [--threads 1]
    python benchmarks/ft_curve.py report [--doc docs/study.md]

Each (arm, seed, epochs) is a fine-tuning run of its own, with its own warmup and cosine schedule (not
one long run read early), on the validation split (the probe's 5,000 training images; test images
0-4,999, where choices are made), from the study's pretrained encoder: `original` after 500 steps
with the pretrained recipe, `random` (the untrained encoder) with the scratch recipe. The preset's
fine-tuning recipe otherwise (the short presets' light augmentation: crop, flip, label smoothing,
drop path). Lines go to benchmarks/results/ft_curve.jsonl; finished lines are skipped, so the curve
can grow over several sessions. `report` writes ft_curve.{md,png} and names the smallest budget at
which pretrained fine-tuning passes both of its probes, if one was measured.
"""
import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from maehelpers.generated import marks, replace_block  # noqa: E402
from maehelpers.study.arms import arm_config  # noqa: E402
from maehelpers.study.cli import parse  # noqa: E402
from maehelpers.study.records import append_record  # noqa: E402
from maehelpers.study.run import run_arm  # noqa: E402
from maehelpers.config import apply_overrides  # noqa: E402
from maehelpers.evaluate import load_eval_data, run_config  # noqa: E402
from maehelpers.finetune import finetune
from maehelpers.runs import git_commit, load_torch, read_jsonl, save_json  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
RECORDS = RESULTS / "ft_curve.jsonl"
STEPS = 500  # the study's pretraining budget


def study_args(a):
    """The study's settings (preset ablation, Fashion-MNIST, validation split), these folders."""
    return parse(["run", "--arms", "original", "--threads", str(a.threads), "--runs-root", a.runs_root,
                        "--data-root", a.data_root, "--quiet"])


def encoder_run(arm: str, seed: int, args, data) -> tuple[Path, dict]:
    """The study's run folder of (arm, seed, 500 steps), pretrained and probed if not yet."""
    record = run_arm(arm, seed, STEPS, args, data)
    return Path(args.runs_root) / args.dataset / f"{arm}_s{seed}_{STEPS}", record


def run(a) -> None:
    args = study_args(a)
    torch.set_num_threads(a.threads)
    done = {(r["arm"], r["seed"], r["ft_epochs"]) for r in read_jsonl(a.records)}
    todo = [(arm, e) for e in sorted(a.epochs) for arm in a.arms if (arm, a.seed, e) not in done]
    if not todo:
        print("every requested point is recorded")
        return
    data = load_eval_data(arm_config("original", args, a.seed, STEPS), args.data_root, "validation")
    encoders = {arm: encoder_run(arm, a.seed, args, data) for arm in {arm for arm, _ in todo}}  # once per arm
    for arm, epochs in todo:
        folder, probe = encoders[arm]
        scratch = arm == "random"
        cfg = apply_overrides(run_config(folder), {"eval.ft_epochs": epochs})
        e = cfg.eval
        load0 = os.getloadavg()[0]
        res, _ = finetune(cfg, *data, load_torch(folder / "encoder_pretrained.pt")["model"], a.seed, "cpu",
                          progress=not a.quiet, layer_decay=e.ft_scratch_layer_decay if scratch else e.ft_layer_decay)
        line = {"arm": arm, "seed": a.seed, "steps": STEPS, "ft_epochs": epochs, "ft_top1": res["top1"],
                "recipe": "scratch" if scratch else "pretrained", "layer_decay": res["layer_decay"],
                **{k: probe[k] for k in ("lp_top1_mean", "lp_top1_cls", "knn_top1_mean")},
                "time_s": res["time_s"], "threads": a.threads, "load": [round(load0, 2), round(os.getloadavg()[0], 2)],
                "git_commit": git_commit(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "split": "validation", "dataset": args.dataset, "preset": args.preset}
        append_record(line, a.records)
        print(f"{arm} s{a.seed} {epochs} epochs: fine-tuning {res['top1']:.2f} (probe {probe['lp_top1_mean']:.2f} mean "
              f"pool, {probe['lp_top1_cls']:.2f} cls) in {res['time_s'] / 60:.1f} min", flush=True)


def passing_budget(lines: list[dict]) -> dict | None:
    """The smallest measured budget at which pretrained fine-tuning beats both of its own probes."""
    ok = sorted((r for r in lines if r["recipe"] == "pretrained"
                 and r["ft_top1"] > max(r["lp_top1_mean"], r["lp_top1_cls"])), key=lambda r: r["ft_epochs"])
    return ok[0] if ok else None


def scratch_gap(lines: list[dict]) -> str:
    """' Pretrained minus scratch at the same budget: -1.40 at 20 epochs, ...' (one seed each)."""
    by = {(r["recipe"], r["ft_epochs"]): r["ft_top1"] for r in lines}
    gaps = [f"{by['pretrained', e] - by['scratch', e]:+.2f} at {e}" for e in sorted({e for _, e in by})
            if ("pretrained", e) in by and ("scratch", e) in by]
    return f" Pretrained minus scratch at the same budget: {', '.join(gaps)} epochs (one seed each)." if gaps else ""


def report(a) -> dict:
    import matplotlib.pyplot as plt
    lines = read_jsonl(a.records)
    if not lines:
        raise SystemExit(f"no lines in {a.records}: python benchmarks/ft_curve.py run")
    rows = ["| arm | recipe | epochs | fine-tuning top-1 | probe, mean pool | probe, cls | fine-tuning - best probe | minutes (threads, load) |",
            "|---|---|---|---|---|---|---|---|"]
    for r in sorted(lines, key=lambda r: (r["arm"], r["ft_epochs"])):
        best = max(r["lp_top1_mean"], r["lp_top1_cls"])
        rows.append(f"| {r['arm']} s{r['seed']} | {r['recipe']} | {r['ft_epochs']} | {r['ft_top1']:.2f} | "
                    f"{r['lp_top1_mean']:.2f} | {r['lp_top1_cls']:.2f} | {r['ft_top1'] - best:+.2f} | "
                    f"{r['time_s'] / 60:.1f} ({r['threads']}, {r['load'][0]}) |")
    chosen = passing_budget(lines)
    verdict = (f"Pretrained fine-tuning first passes both of its probes at {chosen['ft_epochs']} epochs "
               f"({chosen['ft_top1']:.2f} against {max(chosen['lp_top1_mean'], chosen['lp_top1_cls']):.2f}; "
               f"{chosen['time_s'] / 60:.0f} min per run on {chosen['threads']} thread(s)); one seed: a reading "
               "of the curve, not a measured difference." if chosen else
               "At no measured budget does pretrained fine-tuning pass both of its probes.")
    verdict += scratch_gap(lines)
    text = "\n".join(rows) + "\n\n" + verdict + "\n"
    (RESULTS / "ft_curve.md").write_text(text)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for arm in sorted({r["arm"] for r in lines}):
        pts = sorted((r["ft_epochs"], r["ft_top1"]) for r in lines if r["arm"] == arm)
        ax.plot(*zip(*pts), "o-", label=f"{arm}: fine-tuning")
        probe = next(r for r in lines if r["arm"] == arm)
        if arm != "random":
            ax.axhline(probe["lp_top1_mean"], ls="--", color="0.4", lw=1, label=f"{arm}: linear probe, mean pool")
    ax.set_xscale("log", base=2)
    budgets = sorted({r["ft_epochs"] for r in lines})
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.minorticks_off()
    ax.set_xlabel("fine-tuning epochs (each its own schedule)")
    ax.set_ylabel("top-1 on test images 0-4,999")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "ft_curve.png", dpi=100)
    save_json({"lines": lines, "chosen": chosen, "verdict": verdict, "command": "python benchmarks/ft_curve.py report"},
              RESULTS / "ft_curve.json")
    if a.doc:
        replace_block(a.doc, doc_block(text), DOC_MARKS)
    print(text)
    return {"chosen": chosen, "text": text}


DOC_MARKS = marks("fine-tuning curve", "python benchmarks/ft_curve.py report --doc docs/study.md")


def doc_block(text: str) -> str:
    """The table's text and its picture, linked from docs/."""
    return text + "\n![fine-tuning curve](../benchmarks/results/ft_curve.png)\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("run", "report"))
    p.add_argument("--epochs", type=int, nargs="+", default=[10, 20, 40])
    p.add_argument("--arms", nargs="+", default=["original", "random"], choices=["original", "random"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs-root", default="runs/ft_curve")
    p.add_argument("--data-root", default="data")
    p.add_argument("--records", default=str(RECORDS), help="the lines (run: appended; report: read)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--doc", help="report: also write the table into this docs page, between its markers")
    a = p.parse_args(argv)
    run(a) if a.command == "run" else report(a)


if __name__ == "__main__":
    main()
