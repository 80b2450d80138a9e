"""Pictures: reconstruction grid under identical masks, training curves, results bar chart.

Every function draws a matplotlib Figure (for notebooks) and, given a path, saves it as PNG at a
fixed size (no tight bounding box), so files are comparable between runs.
"""
import math
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from .data import prepare
from .metrics import fixed_noise, masked_psnr, to_display, views
from .runs import read_jsonl

DPI = 100


def _to_hwc(img):
    return img.permute(1, 2, 0).cpu().numpy()


VIEW_TITLES = {"output": "output (target space)", "true stats": "true patch stats (borrowed)",
               "honest": "borrows nothing"}


def draw_recon_grid(models: dict, images_u8, img_size: int, mask_ratio: float = 0.75, seed: int = 0):
    """Rows: images. Columns: image | masked input | per model, its prediction shown three ways
    (metrics.views: the target-space output, the display with the true patch statistics, the
    reconstruction that borrows nothing, the last two with the visible patches pasted back; a
    pixel-target model needs only one). Every model sees the
    SAME mask noise. Returns (figure, {model name: (N,) masked PSNR as psnr_masked computes it}, the
    pixel masks each model received)."""
    grids = {m.num_patches for m in models.values()}
    if len(grids) != 1:
        raise ValueError("models in one grid must share the patch grid (same image and patch size)")
    n = len(images_u8)
    noise = fixed_noise(n, grids.pop(), seed)
    columns, psnrs, masks = [], {}, {}  # columns: (title, images, per-image PSNR or None)
    for name, model in models.items():
        device = next(model.parameters()).device
        imgs = prepare(images_u8, img_size, device)
        model.eval()
        with torch.no_grad():
            _, pred, mask = model(imgs, mask_ratio, noise.to(device))
            original, masked, recon, _, pm = to_display(model, imgs, pred, mask)
            shown = views(model, imgs, pred, mask)
        if not columns:
            columns += [("image", original, None), ("masked", masked, None)]
        psnrs[name], masks[name] = masked_psnr(recon, original, pm).cpu(), pm.cpu()
        for view, img in shown.items():
            if view == "output" and not model.norm_pix_loss:
                continue  # a pixel model's output is its honest reconstruction
            if view != "output":  # removed patches predicted, visible ones pasted back as they were
                img = original * (1 - pm) + img * pm
            scored = masked_psnr(img, original, pm).cpu() if view != "output" else None
            columns.append((f"{name}:\n{VIEW_TITLES[view]}", img, scored))
    fig = _draw_columns(columns, n, f"mask ratio {mask_ratio}, mask seed {seed}; PSNR on masked pixels. "
                        "'borrowed' uses each hidden patch's true mean and std")
    return fig, psnrs, masks


def _draw_columns(columns, n: int, title: str):
    """A figure of n rows; columns are (title, (N, 3, H, W) images in [0, 1], per-image PSNR or None)."""
    fig, axes = plt.subplots(n, len(columns), figsize=(1.6 * len(columns), 1.75 * n), dpi=DPI, squeeze=False)
    for i in range(n):
        for j, (name, panel, psnr) in enumerate(columns):
            ax = axes[i, j]
            ax.imshow(_to_hwc(panel[i]).clip(0, 1))
            ax.set_xticks([]), ax.set_yticks([])
            lines = ([name] if i == 0 else []) + ([f"{psnr[i]:.1f} dB"] if psnr is not None else [])
            ax.set_title("\n".join(lines), fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))  # room for the title above the column titles
    return fig


def draw_official(name: str, ours, official, mask_ratio: float = 0.75, seed: int = 0):
    """One of the series' models beside the official ViT-B on the same images and mask regions;
    ours and official are reconstruct()'s outputs (official.side_by_side)."""
    columns = [("image", ours[0], None)]
    for label, (original, masked, _, pasted, pm) in ((name, ours), ("official ViT-B", official)):
        columns += [(f"{label}: input", masked, None), (f"{label} + visible", pasted,
                                                        masked_psnr(pasted, original, pm).cpu())]
    return _draw_columns(columns, len(ours[0]), f"mask ratio {mask_ratio}, mask seed {seed}; the official "
                         "model sees the image at 224 px; PSNR on masked pixels at each model's size")


def save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def recon_grid(models: dict, images_u8, img_size: int, path, mask_ratio: float = 0.75, seed: int = 0) -> dict:
    """Draw and save the reconstruction grid; returns the per-image masked PSNRs."""
    fig, psnrs, _ = draw_recon_grid(models, images_u8, img_size, mask_ratio, seed)
    save(fig, path)
    return psnrs


SHARED_TERM = "mse"  # every variant's loss has this term; totals of different variants do not compare


def draw_curves(run_dirs):
    """Against step, for one or more runs: the masked MSE that every variant shares (common axes),
    each variant's extra loss terms (their own panel, labelled by run and term), mask ratio, lr, and
    the k-NN monitor (validation images; mean pool filled, cls hollow). Totals are not overlaid:
    they hold different terms in different variants."""
    fig, axes = plt.subplots(1, 5, figsize=(18, 3.2), dpi=DPI, sharex=True)
    for i, run_dir in enumerate(map(Path, run_dirs)):
        rows = read_jsonl(run_dir / "log_steps.jsonl")
        if not rows:
            continue
        steps = [r["step"] for r in rows]
        axes[0].plot(steps, [r[SHARED_TERM] for r in rows], label=run_dir.name, lw=1)
        for term in sorted(set(rows[0]) - {"step", "epoch", "loss", "lr", "mask_ratio", SHARED_TERM}):
            axes[1].plot(steps, [r[term] for r in rows], label=f"{run_dir.name}: {term}", lw=1)
        axes[2].plot(steps, [r["mask_ratio"] for r in rows], label=run_dir.name, lw=1)
        axes[3].plot(steps, [r["lr"] for r in rows], label=run_dir.name, lw=1)
        draw_monitor(axes[4], run_dir, f"C{i}")
    titles = ("masked MSE (shared by all variants)", "extra loss terms (unweighted)", "mask ratio", "learning rate",
              "k-NN monitor, top-1 % (validation)")
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if not axes[1].lines:
        axes[1].text(0.5, 0.5, "no extra terms", ha="center", va="center", transform=axes[1].transAxes)
    for ax in (*axes[:2], axes[4]):
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def draw_monitor(ax, run_dir, color) -> None:
    """A run's k-NN monitor points (monitor.py) on `ax`: mean pool filled, cls token hollow."""
    from .monitor import monitor_curve
    curve = monitor_curve(read_jsonl(Path(run_dir) / "log_epochs.jsonl"))
    if not curve:
        return
    steps = [c[0] for c in curve]
    ax.plot(steps, [c[1] for c in curve], "o-", color=color, ms=4, lw=1, label=f"{Path(run_dir).name}, mean pool")
    ax.plot(steps, [c[2] for c in curve], "o--", color=color, mfc="none", ms=4, lw=1, label=f"{Path(run_dir).name}, cls")


def plot_curves(run_dirs, path) -> Path:
    return save(draw_curves(run_dirs), path)


def draw_results(rows, metrics=("lp_top1", "knn_top1", "ft_top1"), errors: dict | None = None, label: str = "variant"):
    """Grouped bars of top-1 per row (dicts with `label` and the metrics). A missing metric draws
    no bar (not a 0 % one); error bars are the rows' `<metric>_sd` (sd over seeds) unless
    errors[(row label, metric)] gives them; each label says how many seeds it holds."""
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(rows) + 2), 3.5), dpi=DPI)
    width = 0.8 / len(metrics)
    for k, metric in enumerate(metrics):
        xs = [i + (k - (len(metrics) - 1) / 2) * width for i in range(len(rows))]
        vals = [math.nan if r.get(metric) is None else r[metric] for r in rows]
        err = [(errors or {}).get((r[label], metric), r.get(f"{metric}_sd") or 0.0) for r in rows]
        ax.bar(xs, vals, width, yerr=err, capsize=3, label=metric)
    names = [f"{r[label]}\n({len(r['seeds'])} seed{'s' if len(r['seeds']) > 1 else ''})" if "seeds" in r
             else str(r[label]) for r in rows]
    ax.set_xticks(range(len(rows)), names, fontsize=8)
    ax.set_ylabel("top-1 (%)")
    ax.set_title("mean over seeds; whiskers: sd over seeds (none with one seed); no bar: not measured", fontsize=8)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_results(rows, path, **kw) -> Path:
    return save(draw_results(rows, **kw), path)


def show_images(images_u8, labels=None, classes=None, n: int = 16):
    """A sample grid of raw images with their class names."""
    n = min(n, len(images_u8))
    cols = min(8, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols, 1.5 * rows), dpi=DPI, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        img = images_u8[i].float() / 255
        ax = axes.flat[i]
        ax.imshow(_to_hwc(img.expand(3, -1, -1)))
        if labels is not None and classes:
            ax.set_title(classes[int(labels[i])], fontsize=7)
    fig.tight_layout()
    return fig


def draw_eval_curves(results: dict, kind: str = "lp", pool: str = "cls"):
    """Training curves of an evaluation per run. kind 'lp': probe training loss and test top-1 per
    epoch (the reported top-1 is the last epoch's); kind 'ft': fine-tuning training loss per epoch,
    pretrained runs next to the scratch baseline. results: {run name: results.json dict}."""
    fig, axes = plt.subplots(1, 2 if kind == "lp" else 1, figsize=(9 if kind == "lp" else 5, 3), dpi=DPI,
                             squeeze=False)
    axes = axes[0]
    for name, res in results.items():
        entry = res.get(kind) or {}
        curve = (entry.get(pool) or {}).get("curve") if kind == "lp" else entry.get("curve")
        if not curve:
            continue
        epochs = [c["epoch"] for c in curve]
        style = "--" if name == "scratch" else "-"
        axes[0].plot(epochs, [c["train_loss"] for c in curve], style, label=name, lw=1.2)
        if kind == "lp":
            axes[1].plot(epochs, [c["test_top1"] for c in curve], style, label=name, lw=1.2)
    axes[0].set(xlabel="epoch", ylabel="training loss")
    axes[0].set_title("linear probe" if kind == "lp" else "fine-tuning (scratch: dashed, no layer decay)", fontsize=9)
    if kind == "lp":
        axes[1].set(xlabel="epoch", ylabel="test top-1 (%)")
        axes[1].set_title(f"{pool} features; reported: the last epoch", fontsize=9)
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def draw_neighbours(train_feats, train, test_feats, test, n_queries: int = 4, k: int = 6, title: str = ""):
    """For a few test images, their k nearest training images by cosine similarity of the features
    (what k-NN votes with); each neighbour titled with its class, green when it matches."""
    import torch.nn.functional as F
    sims = F.normalize(test_feats[:n_queries].float(), dim=1) @ F.normalize(train_feats.float(), dim=1).T
    top = sims.topk(k, dim=1)
    fig, axes = plt.subplots(n_queries, k + 1, figsize=(1.3 * (k + 1), 1.45 * n_queries), dpi=DPI, squeeze=False)
    name = (lambda i, labels, classes: classes[int(labels[i])] if classes else str(int(labels[i])))  # noqa: E731
    for q in range(n_queries):
        row = [(test.images[q], f"query: {name(q, test.labels, test.classes)}", "k")]
        row += [(train.images[int(j)], f"{name(int(j), train.labels, train.classes)} {s:.2f}",
                 "g" if train.labels[int(j)] == test.labels[q] else "r") for s, j in zip(top.values[q], top.indices[q])]
        for ax, (img, label, color) in zip(axes[q], row):
            ax.imshow(_to_hwc((img.float() / 255).expand(3, -1, -1)))
            ax.set_title(label, fontsize=6, color=color)
            ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(title or "nearest training images (cosine similarity)", fontsize=8)
    fig.tight_layout()
    return fig


HEALTH = {"effective_rank": "effective rank (higher: more directions used)",
          "uniformity_wi": "uniformity, Wang-Isola (lower: more uniform)",
          "uniformity_umae": "mean squared cosine, U-MAE (lower: more spread)"}


def draw_feature_health(run_dirs):
    """Per epoch, on the same fixed training images: the effective rank of the mean-pooled features
    and both uniformity measures, one line per run (pretraining's log_epochs.jsonl); beside them the
    k-NN monitor against the same epochs: does the rank move with what the features classify?"""
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.2))
    for i, run in enumerate(run_dirs):
        rows = [r for r in read_jsonl(Path(run) / "log_epochs.jsonl") if "effective_rank" in r]
        for ax, key in zip(axes, HEALTH):
            ax.plot([r["epoch"] for r in rows], [r[key] for r in rows], "o-", ms=3, label=Path(run).name)
        monitor = [r for r in read_jsonl(Path(run) / "log_epochs.jsonl") if "knn_top1_mean" in r]
        axes[3].plot([r["epoch"] for r in monitor], [r["knn_top1_mean"] for r in monitor], "o-", ms=3, color=f"C{i}",
                     label=Path(run).name)
    for ax, title in zip(axes, (*HEALTH.values(), "k-NN monitor, mean pool (validation)")):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def draw_paired(result: dict):
    """study.compare's paired differences to original: one panel per metric, each seed a dot, the
    mean with its 95 % t interval as a bar, zero as a line. A bar that crosses zero is no finding."""
    metrics = list(next(iter(result.values())))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 0.6 * len(result) + 1.6), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for y, (arm, by_metric) in enumerate(result.items()):
            p = by_metric.get(m)
            if not p:
                continue
            ax.plot(p["diffs"], [y] * len(p["diffs"]), "o", color="0.6", ms=5, label="one seed" if y == 0 else None)
            ax.errorbar(p["diff"], y, xerr=p["ci95"] or 0, fmt="D", color="C0", capsize=4,
                        label="mean, 95 % interval" if y == 0 else None)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(range(len(result)), list(result))
        ax.set_title(f"{m}: arm minus original (points)", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig
