"""What the notebooks call: one short function per step, so the notebooks stay thin and 01/02
differ only in their parameters."""
import sys
from dataclasses import dataclass
from pathlib import Path

from .config import apply_overrides, to_dict, validate
from .evaluate import (compare_runs, evaluate_run, find_runs, make_scratch_run, markdown_table, recon_run,
                       run_config, load_eval_data)
from .pretrain import pick_device, pretrain
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


def setup(data_root="data", runs_root="runs", use_drive: bool = False, device: str = "auto") -> Paths:
    """Resolve folders (relative ones against the repository root) and the device. In Colab with
    use_drive, runs go to Google Drive so that a killed session resumes where it stopped."""
    base = project_root()
    data_root, runs_root = Path(data_root), Path(runs_root)
    if use_drive and "google.colab" in sys.modules:
        from google.colab import drive  # noqa: F401 (Colab only)
        drive.mount("/content/drive")
        runs_root = Path("/content/drive/MyDrive") / runs_root.name
    data_root = data_root if data_root.is_absolute() else base / data_root
    runs_root = runs_root if runs_root.is_absolute() else base / runs_root
    runs_root.mkdir(parents=True, exist_ok=True)
    dev = str(pick_device(device))
    print(f"data: {data_root}\nruns: {runs_root}\ndevice: {dev}")
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
    """Run the evaluation `steps` on every run (the data is loaded once); returns a markdown table.
    eval_settings: EvalConfig fields to change (None keeps the run's own), e.g. lp_epochs=10."""
    runs = pretrained_runs(paths)
    changes = {f"eval.{k}": v for k, v in eval_settings.items() if v is not None}
    cfg = apply_overrides(run_config(runs[0]), changes)
    validate(cfg)  # bad settings fail here, before any work
    data = load_eval_data(cfg, paths.data_root)
    for run in runs:
        evaluate_run(run, paths.data_root, steps, data=data, device=paths.device, force=force, overrides=changes)
    rows = compare_runs(runs, paths.compare)
    keys = {"lp": ["lp_top1_cls", "lp_top1_mean"], "knn": ["knn_top1_cls", "knn_top1_mean"], "ft": ["ft_top1", "ft_recipe"]}
    return markdown_table(rows, ["variant", "seeds"] + [k for s in steps for k in keys[s]])


def show_table(markdown: str) -> None:
    try:
        from IPython.display import Markdown, display
        display(Markdown(markdown))
    except ImportError:
        print(markdown)


def visualize_all(paths: Paths, n_images: int = 6, mask_ratio: float = 0.75, seed: int = 0) -> dict:
    """Masked PSNR / HF error for every pretrained run, then runs/compare/: recon_grid.png (same
    masks for all models), curves.png, results.png and the comparison table. Returns the models
    and test images (for the inspector) and the table."""
    from .pretrain import load_mae
    from .viz import plot_curves, plot_results, recon_grid
    runs = pretrained_runs(paths)
    pretrained = [r for r in runs if (r / "checkpoint_last.pt").exists()]
    cfg = run_config(pretrained[0])
    _, test = load_eval_data(cfg, paths.data_root)
    for run in pretrained:
        recon_run(run, test, paths.device)
    models = {r.name: load_mae(r)[0].to(paths.device) for r in pretrained}
    images = test.images[:n_images]
    recon_grid(models, images, cfg.model.img_size, paths.compare / "recon_grid.png", mask_ratio, seed)
    plot_curves(pretrained, paths.compare / "curves.png")
    rows = compare_runs(runs, paths.compare)
    plot_results(rows, paths.compare / "results.png")
    return {"models": models, "images": test.images[:64], "img_size": cfg.model.img_size,
            "table": (paths.compare / "compare.md").read_text()}
