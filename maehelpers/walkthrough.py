"""The mechanism, step by step, on one image: what notebooks 01 and 02 show before training.

Every quantity comes from the model's own methods (patchify, forward_encoder, forward_decoder,
target) and the package's losses, so what the pictures show is what training computes.
"""
import matplotlib.pyplot as plt
import torch

from .data import denormalize, prepare
from .losses import gaussian_blur, patch_laplacian, uniformity_umae, uniformity_wang_isola
from .masking import mask_ratio_at
from .metrics import fixed_noise, to_display
from .viz import DPI, _to_hwc


@torch.no_grad()
def walkthrough(model, image_u8, img_size: int, mask_ratio: float = 0.75, seed: int = 0) -> dict:
    """One forward pass of `model` on one uint8 image, every intermediate kept (batch of 1)."""
    model.eval()
    x = prepare(image_u8[None], img_size)
    noise = fixed_noise(1, model.num_patches, seed)
    latent, mask, ids_restore = model.forward_encoder(x, mask_ratio, noise)
    pred = model.forward_decoder(latent, ids_restore)
    target = model.target(x)
    per_patch = ((pred - target) ** 2).mean(-1)
    return {"image": x, "patches": model.patchify(x), "noise": noise, "ids_restore": ids_restore, "mask": mask,
            "latent": latent, "pred": pred, "target": target, "per_patch_loss": per_patch,
            "loss": (per_patch * mask).sum() / mask.sum(), "mask_ratio": mask_ratio}


def describe(steps: dict) -> str:
    """The shapes and counts of a walkthrough, one line each."""
    n_patches = steps["mask"].shape[1]
    removed = int(steps["mask"].sum())
    return "\n".join([
        f"image            {tuple(steps['image'].shape)}  (normalised)",
        f"patches          {tuple(steps['patches'].shape)}  (batch, patches, pixels per patch x channels)",
        f"noise            {tuple(steps['noise'].shape)}  -> argsort keeps the {n_patches - removed} smallest",
        f"mask             {removed} of {n_patches} patches removed (ratio {steps['mask_ratio']})",
        f"encoder tokens   {tuple(steps['latent'].shape)}  (cls + visible patches only)",
        f"prediction       {tuple(steps['pred'].shape)}  (every patch, in the target space)",
        f"loss             {steps['loss'].item():.4f}  (mean squared error over the {removed} removed patches)"])


def draw_walkthrough(model, steps: dict):
    """Image | patch grid with the noise rank | visible patches | prediction | prediction with the
    visible patches pasted back | per-patch loss, counted only on removed patches."""
    original, masked, recon, pasted, _ = to_display(model, steps["image"], steps["pred"], steps["mask"])
    g = int(steps["mask"].shape[1] ** 0.5)
    rank = steps["ids_restore"].reshape(g, g).float()  # where each patch falls in the sorted noise
    loss_map = (steps["per_patch_loss"] * steps["mask"]).reshape(g, g)
    panels = [("image", _to_hwc(original[0]), None), ("noise rank (low = kept)", rank.numpy(), "viridis"),
              ("what the encoder sees", _to_hwc(masked[0]), None), ("decoder prediction", _to_hwc(recon[0]), None),
              ("prediction + visible", _to_hwc(pasted[0]), None), ("loss on removed patches", loss_map.numpy(), "magma")]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.2 * len(panels), 2.5), dpi=DPI)
    for ax, (title, img, cmap) in zip(axes, panels):
        ax.imshow(img.clip(0, 1) if cmap is None else img, cmap=cmap)
        ax.set_title(title, fontsize=8)
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(f"one MAE forward pass, mask ratio {steps['mask_ratio']}", fontsize=9)
    fig.tight_layout()
    return fig


def draw_variant_changes(cfg, image_u8=None, features=None):
    """What a variant changes against the paper's MAE: its mask ratio over training (next to the
    constant 0.75), and, when it uses them, the Laplacian of one patch and what uniformity measures.
    image_u8 shows the Laplacian / low-pass target; features (N, D) show the uniformity values."""
    v = cfg.variant
    extra = [k for k, on in (("laplacian", v.laplacian_weight > 0 and image_u8 is not None),
                             ("lowpass", v.target_blur > 0 and image_u8 is not None),
                             ("uniformity", v.uniformity_weight > 0 and features is not None)) if on]
    fig, axes = plt.subplots(1, 1 + len(extra), figsize=(4.2 * (1 + len(extra)), 3), dpi=DPI, squeeze=False)
    axes = axes[0]
    progress = [i / 200 for i in range(201)]
    axes[0].plot(progress, [0.75] * len(progress), "k--", lw=1, label="paper (constant 0.75)")
    draws = torch.rand(len(progress), generator=torch.Generator().manual_seed(0)).tolist()
    axes[0].plot(progress, [mask_ratio_at(p, v, u) for p, u in zip(progress, draws)], lw=1.2, label=v.name)
    axes[0].set(xlabel="fraction of training", ylabel="mask ratio", ylim=(0, 1))
    axes[0].set_title(f"mask ratio ({v.mask_schedule})", fontsize=9)
    axes[0].legend(fontsize=7)
    for ax, kind in zip(axes[1:], extra):
        {"laplacian": _laplacian_panel, "lowpass": _lowpass_panel,
         "uniformity": _uniformity_panel}[kind](ax, cfg, image_u8, features)
    fig.tight_layout()
    return fig


def _laplacian_panel(ax, cfg, image_u8, _):
    p = cfg.model.patch_size
    x = prepare(image_u8[None], cfg.model.img_size)
    patch = x[..., :4 * p, :4 * p].mean(1, keepdim=True)  # a 4 x 4 block of patches, grey
    grid = patch.reshape(1, 1, 4, p, 4, p).permute(0, 2, 4, 3, 5, 1).reshape(1, 16, p * p)
    lap = patch_laplacian(grid, p, 1, cfg.variant.laplacian_form)
    side = p - 2 if cfg.variant.laplacian_form == "interior" else p
    tiles = lap.reshape(4, 4, side, side).permute(0, 2, 1, 3).reshape(4 * side, 4 * side)
    ax.imshow(tiles.numpy(), cmap="coolwarm")
    ax.set_title(f"Laplacian inside each patch ({cfg.variant.laplacian_form}),\nwhat the extra loss compares",
                 fontsize=8)
    ax.set_xticks([]), ax.set_yticks([])


def _lowpass_panel(ax, cfg, image_u8, _):
    x = prepare(image_u8[None], cfg.model.img_size)
    both = torch.cat([x, gaussian_blur(x, cfg.variant.target_blur)], dim=3)
    ax.imshow(_to_hwc(denormalize(both)[0]).clip(0, 1))
    ax.set_title(f"image | low-pass target (sigma {cfg.variant.target_blur} px)", fontsize=8)
    ax.set_xticks([]), ax.set_yticks([])


def _uniformity_panel(ax, cfg, _, features):
    v = cfg.variant
    fn = (lambda f: uniformity_wang_isola(f, v.uniformity_t)) if v.uniformity_form == "wang_isola" else uniformity_umae
    n, d = features.shape
    cases = {"collapsed\n(all equal)": features[:1].expand(n, d), "this encoder\n(untrained)": features,
             "uniform on\nthe sphere": torch.randn(n, d, generator=torch.Generator().manual_seed(0))}
    values = [fn(f).item() for f in cases.values()]
    ax.bar(list(cases), values, color=["C3", "C0", "C2"])
    ax.set_title(f"uniformity ({v.uniformity_form}, lower = more spread out)", fontsize=8)
    ax.tick_params(labelsize=7)
