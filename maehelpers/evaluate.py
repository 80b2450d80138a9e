"""How a run folder is judged, and how runs are compared: its linear probe and k-NN (probes.py), its
fine-tuning (finetune.py) and its masked reconstructions (metrics.py), each stored in the run's
results.json with the key it was computed for (encoder hash, data fingerprint, settings) and reused
only when that key matches, so a retrained encoder is never shown with old scores. Then one table
over runs (mean ± sd over seeds). docs/protocol.md states the protocol and its reasons.
"""
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from .checkpoints import build_model, load_mae
from .config import PretrainConfig, apply_overrides, from_dict, to_dict, validate
from .data import ImageSet, load_dataset
from .devices import pick_device
from .finetune import FT_RECIPES, finetune
from .model import encoder_state_dict
from .probes import POOLS, cached_features, data_key, file_key, knn_top1, linear_probe
from .runs import HEADLINES, load_torch, merge_results, read_results, run_lock, save_json, save_torch


# ----------------------------------------------------------------------------- run folders
def run_config(run_dir) -> PretrainConfig:
    results = read_results(run_dir)
    if "config" not in results:
        raise FileNotFoundError(f"{run_dir} has no results.json with a config: pretrain it first")
    return from_dict(results["config"])


def make_scratch_run(cfg: PretrainConfig, run_dir, seed: int = 0) -> Path:
    """A run folder holding a randomly initialised encoder: the no-pretraining baseline."""
    run_dir = Path(run_dir)
    if not (run_dir / "encoder_pretrained.pt").exists():
        torch.manual_seed(seed)
        scfg = replace(cfg, seed=seed, variant=replace(cfg.variant, name="scratch"))
        save_torch({"model": encoder_state_dict(build_model(scfg)), "config": to_dict(scfg)},
                   run_dir / "encoder_pretrained.pt")
        merge_results(run_dir, {"variant": "scratch", "seed": seed, "config": to_dict(scfg),
                                "dataset": cfg.dataset, "preset": cfg.preset, "pretrain_time_s": 0.0,
                                "status": "random init"})
    return run_dir


EVAL_SPLITS = ("validation", "heldout")


def load_eval_data(cfg: PretrainConfig, data_root="data", split: str = "validation", download: bool = True):
    """(probe-training images, scored images). 'validation' scores the first eval.max_test test
    images (every choice of arm or setting was made there); 'heldout' scores the NEXT max_test
    test images, which no choice saw: a confirmation that cannot be tuned to."""
    e = cfg.eval
    train = load_dataset(cfg.dataset, "train", data_root, download, max_images=e.max_train)
    if split == "validation":
        return train, load_dataset(cfg.dataset, "test", data_root, download, max_images=e.max_test)
    if split != "heldout":
        raise ValueError(f"unknown evaluation split {split!r}; valid: {', '.join(EVAL_SPLITS)}")
    test = load_dataset(cfg.dataset, "test", data_root, download)
    if not e.max_test or len(test) < 2 * e.max_test:
        raise ValueError(f"a held-out split needs eval.max_test > 0 and twice as many test images: "
                         f"max_test {e.max_test}, {len(test)} test images")
    return train, test.part(e.max_test, 2 * e.max_test)


def _keyed(run_dir: Path, name: str, key: dict, force: bool, progress: bool, compute) -> dict:
    """Reuse results[name] when it was computed for the same key (encoder hash, data, settings),
    else compute() -> (entry, headline values) and store both; an entry's old fields never linger."""
    done = read_results(run_dir).get(name)
    if not force and isinstance(done, dict) and done.get("key") == key:
        if progress:
            print(f"{run_dir.name}: {name} reused (encoder {key['encoder']}, same data and settings)")
        return done
    entry, headline = compute()
    with run_lock(run_dir):
        results = read_results(run_dir)
        results.update({name: {**entry, "key": key}, **headline})
        save_json(results, run_dir / "results.json")
    return results[name]


def evaluate_run(run_dir, data_root="data", steps=("lp", "knn", "ft"), data=None, device=None,
                 progress: bool = True, force: bool = False, overrides: dict | None = None) -> dict:
    """Linear probe and k-NN (on cls and mean-pooled features) and fine-tuning of one run folder,
    each stored in its results.json with the key it was computed for: the encoder file's hash, the
    data's fingerprint and the step's own settings. A step whose key matches is reused (and says
    so) unless force=True; a retrained encoder or changed settings recompute it.
    overrides: dotted eval settings, e.g. {"eval.lp_epochs": 10}. The headline lp_top1 / knn_top1
    use eval.pool; lp_top1_cls, lp_top1_mean, ... keep both."""
    run_dir = Path(run_dir)
    cfg = apply_overrides(run_config(run_dir), overrides or {})
    validate(cfg)
    train, test = data or load_eval_data(cfg, data_root)
    e, seed = cfg.eval, cfg.seed
    encoder, data_keys = file_key(run_dir / "encoder_pretrained.pt"), (data_key(train), data_key(test))
    base = {"encoder": encoder, "data": "+".join(data_keys), "n_train": len(train), "n_test": len(test), "seed": seed}
    feats = {}

    def features():
        if not feats:
            for split, data, key in (("train", train, data_keys[0]), ("test", test, data_keys[1])):
                feats[split] = cached_features(run_dir, data, split, e.batch_size, device, progress, (encoder, key),
                                               cfg.train.amp)
        return feats["train"], feats["test"]

    def probe():
        tr, te = features()
        t0 = time.perf_counter()
        out = {pool: linear_probe(tr[pool], train.labels, te[pool], test.labels, e.lp_epochs, e.batch_size,
                                  e.lp_lr, seed, device, progress) for pool in POOLS}
        entry = {**out, "optimizer": "AdamW+cosine", "time_s": round(time.perf_counter() - t0, 2)}
        return entry, {"lp_top1": out[e.pool]["top1"], **{f"lp_top1_{p}": out[p]["top1"] for p in POOLS}}

    def knn():
        tr, te = features()
        out = {pool: knn_top1(tr[pool], train.labels, te[pool], test.labels, e.knn_k, e.knn_t, pick_device(device))
               for pool in POOLS}
        return out, {"knn_top1": out[e.pool], **{f"knn_top1_{p}": out[p] for p in POOLS}}

    def ft():
        scratch = cfg.variant.name == "scratch"
        state = load_torch(run_dir / "encoder_pretrained.pt")["model"]
        res, _ = finetune(cfg, train, test, state, seed, device, progress,
                          e.ft_scratch_layer_decay if scratch else e.ft_layer_decay)
        return {**res, "recipe": FT_RECIPES["scratch" if scratch else "pretrained"]}, {"ft_top1": res["top1"]}

    ft_settings = {k: v for k, v in to_dict(e).items() if k.startswith("ft_") or k == "batch_size"}
    plans = {"lp": ({"epochs": e.lp_epochs, "batch_size": e.batch_size, "lr": e.lp_lr}, probe),
             "knn": ({"k": e.knn_k, "t": e.knn_t}, knn), "ft": (ft_settings, ft)}
    for step in steps:
        settings, compute = plans[step]
        _keyed(run_dir, step, {**base, **settings}, force, progress, compute)
    return read_results(run_dir)


def recon_run(run_dir, test: ImageSet, device=None, force: bool = False, progress: bool = False) -> dict:
    """Masked reconstruction metrics (metrics.reconstruction_metrics) of the run's MAE on the first
    eval.recon_images test images, with the fixed mask noise (seed 0) that every run shares;
    stored in results.json, keyed like every evaluation."""
    from .metrics import reconstruction_metrics
    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    images = test.head(cfg.eval.recon_images)
    key = {"encoder": file_key(run_dir / "encoder_pretrained.pt"), "data": data_key(images), "mask_ratio": 0.75,
           "mask_seed": 0}

    def compute():
        model, _ = load_mae(run_dir)
        m = reconstruction_metrics(model.to(pick_device(device)), images.images, cfg.model.img_size)
        return m, {k: m[k] for k in HEADLINES["recon"]}
    _keyed(run_dir, "recon", key, force, progress, compute)
    return read_results(run_dir)


def fresh_results(run_dir) -> dict:
    """results.json without the evaluations whose encoder is not the one in the folder now
    (a run trained again after it was evaluated): stale numbers are never shown."""
    run_dir = Path(run_dir)
    results = read_results(run_dir)
    enc_path = run_dir / "encoder_pretrained.pt"
    current = file_key(enc_path) if enc_path.exists() else None
    for name, keys in HEADLINES.items():
        entry = results.get(name)
        if not isinstance(entry, dict) or entry.get("key", {}).get("encoder") != current:
            for k in (name, *keys):
                results.pop(k, None)
    return results


# ----------------------------------------------------------------------------- comparison table
METRICS = ("lp_top1", "lp_top1_cls", "lp_top1_mean", "knn_top1", "knn_top1_cls", "knn_top1_mean", "ft_top1",
           "nmse_masked", "psnr_masked", "psnr_masked_floor", "hf_error_masked", "hf_error_floor", "pretrain_time_s")
COLUMNS = ("variant", "seeds", "knn_top1_mean", "lp_top1_mean", "knn_top1_cls", "lp_top1_cls", "ft_top1", "ft_recipe",
           "nmse_masked", "psnr_masked", "psnr_masked_floor", "hf_error_masked", "pretrain_time_s")
# the study's headline first and named as such, in every table of the series
HEADERS = {"seeds": "n seeds", "knn_top1_mean": "k-NN, mean pool (headline)", "lp_top1_mean": "LP, mean pool",
           "knn_top1_cls": "k-NN, cls", "lp_top1_cls": "LP, cls"}


def summarise_variants(results: list[dict]) -> list[dict]:
    """One row per variant: each metric as mean (and sd over seeds where there are several);
    `seeds` lists them. A metric no run of the variant has stays None (shown blank)."""
    groups = {}
    for r in results:
        groups.setdefault(r.get("variant"), []).append(r)
    rows = []
    for variant, runs in groups.items():
        row = {"variant": variant, "seeds": sorted(r.get("seed") for r in runs), "runs": [r["run"] for r in runs],
               "ft_recipe": "scratch" if variant == "scratch" else "pretrained"}
        for m in METRICS:
            vals = [r[m] for r in runs if r.get(m) is not None]
            row[m] = statistics.fmean(vals) if vals else None
            row[f"{m}_sd"] = statistics.stdev(vals) if len(vals) > 1 else None
            row[f"{m}_n"] = len(vals)
        rows.append(row)
    return rows


def compare_runs(run_dirs, out_dir) -> list[dict]:
    """Collect the runs' fresh results into out_dir/compare.json and compare.md: one row per
    variant, mean ± sd over seeds where there are several, the number of seeds always shown."""
    runs = [{"run": Path(d).name, **fresh_results(d)} for d in run_dirs if read_results(d)]
    rows = summarise_variants(runs)
    out_dir = Path(out_dir)
    save_json({"variants": rows, "runs": [{k: r.get(k) for k in ("run", "variant", "seed", *METRICS)} for r in runs]},
              out_dir / "compare.json")
    (out_dir / "compare.md").write_text(markdown_table(rows, COLUMNS) + _seed_note(rows))
    return rows


def seed_list(rows) -> str:
    """'seeds: original 0, 1; improved 0': the seeds behind the counts in a table."""
    return "seeds: " + "; ".join(f"{r['variant']} {', '.join(map(str, r['seeds']))}" for r in rows if r.get("seeds"))


def _seed_note(rows) -> str:
    single = [r["variant"] for r in rows if len(r["seeds"]) == 1]
    note = f"\n{seed_list(rows)}.\nValues are mean ± sd over those seeds; "
    if single:
        note += f"{', '.join(map(str, single))} ha{'s' if len(single) == 1 else 've'} ONE seed, so no spread is shown. "
    return note + "A blank (-) is a metric not measured. The scratch row is fine-tuned without layer-wise lr decay.\n"


def markdown_table(rows, columns) -> str:
    """Markdown table; a value with a `<column>_sd` entry is shown as mean ± sd, None as '-'."""
    def fmt(row, c):
        v, sd = row.get(c), row.get(f"{c}_sd")
        if v is None:
            return "-"
        if isinstance(v, list):  # the seeds: their number (seed_list names them)
            return str(len(v)) if v else "-"
        text = f"{v:.2f}" if isinstance(v, float) else str(v)
        return text + (f" ± {sd:.2f}" if sd is not None else "")
    lines = ["| " + " | ".join(HEADERS.get(c, c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row, c) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def find_runs(runs_root) -> list[Path]:
    """Run folders under runs_root (those with an encoder), scratch last."""
    runs = sorted(p.parent for p in Path(runs_root).glob("*/encoder_pretrained.pt"))
    return sorted(runs, key=lambda p: p.name == "scratch")
