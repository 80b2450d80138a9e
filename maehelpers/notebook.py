"""What the notebooks call: one short function per step, so the notebooks stay thin and 01/02
differ only in their parameters."""
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import apply_overrides, to_dict, validate
from .evaluate import (compare_runs, evaluate_run, find_runs, fresh_results, make_scratch_run, markdown_table,
                       recon_run, run_config, load_eval_data, seed_list)
from .data import load_dataset, prepare
from .losses import pretrain_loss
from .checkpoints import build_model
from .devices import pick_device
from .pretrain import pretrain
from .study.stats import seeds_needed
from .runs import read_results


@dataclass
class Paths:
    data_root: Path
    runs_root: Path
    compare: Path
    device: str


def project_root() -> Path:
    """The repository root when running inside it (notebooks/ or the root), else the cwd."""
    cwd = Path.cwd()
    for base in (cwd, cwd.parent):
        if (base / "maehelpers").is_dir() and (base / "notebooks").is_dir():
            return base
    return cwd


DRIVE_MOUNT = Path("/content/drive")
DRIVE_HOME = Path("/content/drive/MyDrive/maehelpers")  # where Colab keeps data and runs across runtimes
LOCAL_DATA = Path("/content/data")  # the runtime's own disk


def local_copy(data_root: Path, local: Path = None, folder: str = "stl10_binary") -> Path:
    """Drive is a network mount: every training step's random reads from a memory map there wait
    on the network. When data_root holds the extracted STL-10, copy it once to the runtime's disk
    (a copy whose files have the same sizes is reused) and read from there; else keep data_root."""
    import shutil
    local = local or LOCAL_DATA
    source = Path(data_root) / folder
    if not source.is_dir():
        return Path(data_root)
    files = [f for f in source.iterdir() if f.is_file()]
    if not all((local / folder / f.name).exists() and (local / folder / f.name).stat().st_size == f.stat().st_size
               for f in files):
        print(f"copying {source} to {local / folder} (once per runtime; reads from Drive are slow)")
        (local / folder).mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copyfile(f, local / folder / f.name)
    return local


def in_colab() -> bool:
    return "google.colab" in sys.modules


def setup(data_root="data", runs_root="runs", use_drive: bool | None = None, device: str = "auto") -> Paths:
    """Resolve folders and the device. Relative folders are taken against the repository root, or,
    in Colab with use_drive (the default there: None means 'in Colab'), against Google Drive's
    MyDrive/maehelpers/, so that runs and the downloaded dataset outlive the runtime: every notebook
    runs in a runtime of its own, and a disconnected one resumes where it stopped."""
    base = project_root()
    data_root, runs_root = Path(data_root), Path(runs_root)
    if use_drive is None:
        use_drive = in_colab()
    if use_drive and in_colab():
        from google.colab import drive  # Colab only
        drive.mount(str(DRIVE_MOUNT))
        base = DRIVE_HOME
    elif use_drive:
        print(f"use_drive applies in Colab only; here runs and data stay under {base}")
    data_root = data_root if data_root.is_absolute() else base / data_root
    runs_root = runs_root if runs_root.is_absolute() else base / runs_root
    if use_drive and in_colab():
        data_root = local_copy(data_root)
    runs_root.mkdir(parents=True, exist_ok=True)
    dev = str(pick_device(device))
    print(f"data: {data_root}\nruns: {runs_root}\ndevice: {dev}")
    if dev == "cpu" and in_colab():
        print("No GPU in this runtime: Runtime > Change runtime type > T4 GPU makes pretraining ~50x faster.")
    return Paths(data_root, runs_root, runs_root / "compare", dev)


def overrides(img_size=None, epochs=None, batch_size=None, max_images=None) -> dict:
    """Notebook parameters left as None keep the preset's value."""
    pairs = {"model.img_size": img_size, "train.epochs": epochs, "train.batch_size": batch_size,
             "train.max_images": max_images}
    return {k: v for k, v in pairs.items() if v is not None}


def describe_variant(cfg) -> None:
    """Print what makes a variant: its masking and loss settings (preset-independent)."""
    for key, value in to_dict(cfg.variant).items():
        print(f"{key:>20}: {value}")


def pretrain_variant(cfg, paths: Paths, force: bool = False) -> dict:
    """Pretrain (or resume, or skip when finished) runs/<variant>/; force=True starts over."""
    run_dir = paths.runs_root / cfg.variant.name
    if force and run_dir.exists():
        import shutil
        shutil.rmtree(run_dir)
    done = read_results(run_dir)
    if done.get("status") == "done" and done.get("config") == to_dict(cfg):
        print(f"{run_dir} is already pretrained: skipping (force=True to redo)")
        return done
    return pretrain(cfg, run_dir, data_root=paths.data_root, resume=True, device=paths.device)


def explain(cfg, paths: Paths, index: int = 0) -> dict:
    """Notebooks 01/02 before training: one real image through an untrained MAE of this config,
    shapes printed and every step drawn; then what this variant changes against the paper's MAE."""
    import matplotlib.pyplot as plt
    import torch

    from .data import load_dataset, prepare
    from .walkthrough import describe, draw_variant_changes, draw_walkthrough, walkthrough
    from .checkpoints import build_model
    images = load_dataset(cfg.dataset, "pretrain", paths.data_root, max_images=64).images
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).eval()
    steps = walkthrough(model, images[index], cfg.model.img_size, cfg.variant.mask_ratio, cfg.seed)
    print(describe(steps))
    draw_walkthrough(model, steps)
    with torch.no_grad():
        features = model.forward_features(prepare(images, cfg.model.img_size), cfg.variant.uniformity_features)
    draw_variant_changes(cfg, images[index], features)
    plt.show()
    return steps


def list_runs(paths: Paths) -> list[str]:
    """The run folders that hold an encoder (nothing is created)."""
    return [r.name for r in find_runs(paths.runs_root) if r.name != "compare"]


def pretrained_runs(paths: Paths, with_scratch: bool = True) -> list[Path]:
    """The pretrained run folders, plus the scratch (random encoder) baseline made from the first."""
    runs = [r for r in find_runs(paths.runs_root) if r.name not in ("scratch", "compare")]
    if not runs:
        raise FileNotFoundError(f"no pretrained runs under {paths.runs_root}: run 01 and 02 first")
    if with_scratch:
        cfg = run_config(runs[0])
        runs.append(make_scratch_run(cfg, paths.runs_root / "scratch", seed=cfg.seed))
    return runs


def evaluate_all(paths: Paths, steps, force: bool = False, **eval_settings) -> str:
    """Run the evaluation `steps` on every run and the random-encoder baseline (the data is loaded
    once), and for probe / k-NN also on raw pixels; returns a markdown table, cls and mean features
    side by side. eval_settings: EvalConfig fields to change (None keeps the run's own)."""
    runs = pretrained_runs(paths)
    changes = {f"eval.{k}": v for k, v in eval_settings.items() if v is not None}
    cfg = apply_overrides(run_config(runs[0]), changes)
    validate(cfg)  # bad settings fail here, before any work
    data = load_eval_data(cfg, paths.data_root)
    for run in runs:
        evaluate_run(run, paths.data_root, steps, data=data, device=paths.device, force=force, overrides=changes)
    rows = compare_runs(runs, paths.compare)
    order = {"knn_top1_mean": "knn", "lp_top1_mean": "lp", "knn_top1_cls": "knn", "lp_top1_cls": "lp",
             "ft_top1": "ft", "ft_recipe": "ft"}  # the study's headline first
    if {"lp", "knn"} & set(steps):
        raw = raw_pixels(cfg, data, paths.compare, force, paths.device)
        rows.append({"variant": "raw pixels", "seeds": [], **{f"{m}_top1_{p}": raw[f"{m}_top1"]
                                                               for m in ("lp", "knn") for p in ("cls", "mean")}})
    return markdown_table(rows, ["variant", "seeds"] + [k for k, s in order.items() if s in steps]) + \
        f"\n{seed_list(rows)}\n"


def raw_pixels(cfg, data, out_dir: Path, force: bool = False, device=None) -> dict:
    """The raw-pixel baseline for these images and eval settings, on `device` (the notebook's),
    cached in out_dir/raw_pixels.json."""
    from .probes import data_key, raw_pixel_baseline
    from .runs import save_json
    e = cfg.eval
    key = {"data": data_key(data[0]) + data_key(data[1]), "img_size": cfg.model.img_size, "lp_epochs": e.lp_epochs,
           "batch_size": e.batch_size, "lr": e.lp_lr, "k": e.knn_k, "t": e.knn_t}
    path = out_dir / "raw_pixels.json"
    if path.exists() and not force and json.loads(path.read_text()).get("key") == key:
        return json.loads(path.read_text())
    result = {**raw_pixel_baseline(cfg, *data, device=device), "key": key}
    save_json(result, path)
    return result


def show_probe_curves(paths: Paths, pool: str = "cls"):
    """Linear-probe training curves of every run (the reported top-1 is the last epoch's)."""
    from .viz import draw_eval_curves
    return draw_eval_curves({r.name: read_results(r) for r in pretrained_runs(paths, False) + _scratch(paths)},
                            "lp", pool)


def show_ft_curves(paths: Paths):
    """Fine-tuning training loss per epoch, pretrained runs next to the scratch baseline."""
    from .viz import draw_eval_curves
    return draw_eval_curves({r.name: read_results(r) for r in pretrained_runs(paths, False) + _scratch(paths)}, "ft")


def _scratch(paths: Paths) -> list[Path]:
    return [paths.runs_root / "scratch"] if (paths.runs_root / "scratch" / "results.json").exists() else []


def show_neighbours(paths: Paths, n_queries: int = 4, k: int = 6, pool: str = "mean"):
    """For each run, a few test images and their nearest training images under its features."""
    from .probes import cached_features
    from .viz import draw_neighbours
    runs = pretrained_runs(paths)
    train, test = load_eval_data(run_config(runs[0]), paths.data_root)
    figs = []
    for run in runs:
        tr = cached_features(run, train, "train", device=paths.device, progress=False)[pool]
        te = cached_features(run, test, "test", device=paths.device, progress=False)[pool]
        figs.append(draw_neighbours(tr, train, te, test, n_queries, k, f"{run.name}: nearest training images "
                                                                        f"({pool} features, cosine)"))
    return figs


def show_table(markdown: str) -> None:
    try:
        from IPython.display import Markdown, display
        display(Markdown(markdown))
    except ImportError:
        print(markdown)


def visualize_all(paths: Paths, n_images: int = 6, mask_ratio: float = 0.75, seed: int = 0,
                  force: bool = False) -> dict:
    """Masked PSNR / HF error for every pretrained run, then runs/compare/: recon_grid.png (same
    masks for all models), curves.png, results.png and the comparison table. Returns the models
    and test images (for the inspector) and the table."""
    from .checkpoints import load_mae
    from .viz import plot_curves, plot_results, recon_grid
    runs = pretrained_runs(paths)
    pretrained = [r for r in runs if (r / "checkpoint_last.pt").exists()]
    cfg = run_config(pretrained[0])
    _, test = load_eval_data(cfg, paths.data_root)
    for run in pretrained:
        recon_run(run, test, paths.device, force=force)
    models = {r.name: load_mae(r)[0].to(paths.device) for r in pretrained}
    images = test.images[:n_images]
    recon_grid(models, images, cfg.model.img_size, paths.compare / "recon_grid.png", mask_ratio, seed)
    plot_curves(pretrained, paths.compare / "curves.png")
    rows = compare_runs(runs, paths.compare)
    plot_results(rows, paths.compare / "results.png", metrics=("knn_top1_mean", "lp_top1_mean", "ft_top1"))
    return {"models": models, "images": test.images[:64], "img_size": cfg.model.img_size,
            "table": (paths.compare / "compare.md").read_text()}


def show_official(vis: dict, paths: Paths, n_images: int = 4, mask_ratio: float = 0.75, seed: int = 0):
    """Optional quick look: the official ViT-B visualisation MAE (downloaded once into data_root)
    beside the first of vis['models'], on the same images with masks over the same regions; saved
    as runs/compare/official.png. Offline it says so and returns None."""
    from .official import load_official, side_by_side
    from .viz import draw_official, save
    official = load_official(Path(paths.data_root) / "official")
    if official is None:
        return None
    name, ours = next(iter(vis["models"].items()))
    pair = side_by_side(ours, official.to(paths.device), vis["images"][:n_images], vis["img_size"], mask_ratio, seed)
    fig = draw_official(name, *pair, mask_ratio, seed)
    save(fig, paths.compare / "official.png")
    return fig


# ----------------------------------------------------------------------------- 06: an idea of your own
def check_term(name: str, cfg, paths: Paths, n: int = 8) -> dict:
    """One batch of `cfg`'s data through a fresh model: the term's value, whether it is a finite
    scalar, and whether its gradient reaches the encoder's first block."""
    images = load_dataset(cfg.dataset, "pretrain", paths.data_root, max_images=n).images
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    noise = torch.rand(len(images), model.num_patches, generator=torch.Generator().manual_seed(0))
    _, parts, _, _ = pretrain_loss(model, prepare(images, cfg.model.img_size), cfg.variant.mask_ratio, cfg.variant, noise)
    value = parts[name]
    value.backward()
    grad = model.blocks[0].attn.qkv.weight.grad
    return {"value": value.item(), "scalar": value.ndim == 0, "finite": math.isfinite(value.item()),
            "reaches_encoder": bool(grad is not None and grad.abs().sum() > 0)}


def show_paired(result: dict, half_widths=(1.0, 0.5)) -> None:
    """The paired differences of study.compare: a picture (each seed a dot, the 95 % interval a bar)
    and, per metric, the interval, the minimum detectable effect and the seeds a narrower interval needs."""
    from .viz import draw_paired  # matplotlib only when a picture is drawn
    draw_paired(result)
    for arm, metrics in result.items():
        for m, p in metrics.items():
            if not p:
                continue
            line = f"{arm}, {m}: {p['diff']:+.2f} points over {p['n']} seed(s)"
            if p["ci95"] is None:
                print(line + ": one seed gives no interval (screening only)")
                continue
            more = ", ".join(f"±{h} needs {seeds_needed(p['sd'], half_width=h)} seeds" for h in half_widths)
            print(f"{line}, 95 % interval [{p['diff'] - p['ci95']:+.2f}, {p['diff'] + p['ci95']:+.2f}]; "
                  f"smallest effect these seeds detect (80 % power): {p['mde']:.2f}; {more}")


# ----------------------------------------------------------------------------- 05: what the study found
QUICK_PRESETS = ("smoke", "ablation")  # presets whose extra pixel-target run takes minutes on a CPU


def pixel_target_run(paths: Paths, wanted: bool | None = None, force: bool = False) -> dict | None:
    """Pretrain and probe `original_pixels` (the paper's MAE predicting plain pixels) with the settings
    of the first pretrained run, so 05 can show a reconstruction that borrows nothing. wanted None:
    only with the presets that train in minutes (QUICK_PRESETS)."""
    from dataclasses import replace
    from .config import VARIANTS
    cfg = run_config(pretrained_runs(paths, False)[0])
    if not (cfg.preset in QUICK_PRESETS if wanted is None else wanted):
        print(f"original_pixels skipped at preset {cfg.preset!r} (pixel_target = True trains it)")
        return None
    pixels = replace(cfg, variant=VARIANTS["original_pixels"], model=replace(cfg.model, norm_pix_loss=False))
    pretrain_variant(pixels, paths, force)
    run = paths.runs_root / "original_pixels"   # its probes, so the table says what norm-pix targets buy
    return evaluate_run(run, paths.data_root, ("lp", "knn"), device=paths.device, force=force, progress=False)


def show_feature_health(paths: Paths):
    """Effective rank and uniformity of every run's features per epoch (pretraining's log)."""
    from .viz import draw_feature_health
    return draw_feature_health([r for r in pretrained_runs(paths, False) if (r / "log_epochs.jsonl").exists()])


def series_difference(paths: Paths, arm: str = "improved", metric: str = "knn_top1_mean") -> float | None:
    """This series' own difference arm - original on the study's headline (None if either is missing)."""
    values = [fresh_results(paths.runs_root / name).get(metric) for name in ("original", arm)]
    return None if None in values else values[1] - values[0]


def show_noise_check(paths: Paths, arm: str = "improved"):
    """Place this series' one-seed difference on the study's committed paired differences."""
    from .study.verdict import draw_noise, noise_check
    yours = series_difference(paths, arm)
    if yours is None:
        print(f"needs k-NN results of original and {arm}: run 03 first")
        return None
    cfg = run_config(paths.runs_root / "original")
    check = noise_check(yours, cfg.dataset, cfg.preset, arm)
    print(check["text"])
    return draw_noise(check, arm)


def show_verdict():
    """The study's current verdict in three lines and its paired-difference plot, from the records."""
    from .study.verdict import draw_verdict, verdict
    v = verdict()
    print("\n".join(f"{i}. {line}" for i, line in enumerate(v["lines"], 1)))
    return draw_verdict(v)


def show_ft_budget():
    """The measured fine-tuning curve of the study's setting (benchmarks/ft_curve.py, committed):
    at how many epochs pretrained fine-tuning passes its own probe, beside scratch."""
    from .paths import RESULTS
    path = RESULTS / "ft_curve.json"
    if not path.exists():
        print("no fine-tuning curve is committed yet: python benchmarks/ft_curve.py run, then report")
        return None
    print(json.loads(path.read_text())["verdict"])
    from IPython.display import Image, display
    display(Image(filename=str(RESULTS / "ft_curve.png")))


def show_long_stage():
    """The study's long-budget stage from the committed records (docs/study.md): each arm's k-NN
    monitor over 16,000 steps, raw pixels as lines, the records of every budget as points; once every
    registered record is in, its verdict in plain sentences."""
    from .study.long import progress
    from .study.plots import plot_long
    from .study.records import read_records
    validation = read_records(None, "fashion_mnist", "ablation")
    held = read_records(None, "fashion_mnist", "ablation", "heldout")
    fig = plot_long(validation, held)
    done, total = progress({k: v for k, v in held.items() if k[2] == 16000})
    print(f"The study's 16,000-step stage (Fashion-MNIST, preset ablation): {done} of its {total} registered records "
          + ("are in; its registered verdict (docs/study.md has the tables):" if done == total else "are in so far."))
    if done == total:
        from .study.long import report, verdict
        from .study.settings import StudySettings
        print("\n".join(line.replace("**", "") for line in verdict(report(StudySettings())[1])))
    return fig
