"""Reconstruction quality on the masked regions, in display pixel space [0, 1].

A norm_pix model predicts each patch normalised by its own mean and std; to show or score it we
map the prediction back with the TARGET patch's mean and std. (The official demo notebook avoids
this by loading a checkpoint trained without norm_pix, which predicts pixels.) That borrows two
numbers per patch from the truth, so PSNR here measures structure within each patch, not its mean
brightness: a predictor of zeros already gets the patch means right. Every PSNR is therefore
reported next to its floor, the PSNR of that mean predictor, and next to the masked loss in the
model's own target space (nmse_masked), which borrows nothing.

PSNR = 10 log10(1 / MSE) over masked pixels only, per image, then averaged; an image whose masked
pixels match exactly gets PSNR_CAP (100 dB) instead of infinity, so averages stay finite.
"""
import torch
import torch.nn.functional as F

from .data import denormalize, prepare
from .losses import patch_laplacian

PSNR_CAP = 100.0


@torch.no_grad()
def reconstruct(model, imgs, mask_ratio: float = 0.75, noise=None):
    """Run the MAE on normalised images; returns display-space (original, masked input,
    reconstruction, reconstruction with the visible patches pasted back, pixel mask), all
    (N, 3, H, W) in [0, 1]; pixel mask is 1 on removed pixels."""
    model.eval()
    _, pred, mask = model(imgs, mask_ratio, noise)
    return to_display(model, imgs, pred, mask)


def to_display(model, imgs, pred, mask):
    """Map a prediction in the model's target space back to display pixels (see reconstruct)."""
    pred = pred.float()
    if model.norm_pix_loss:
        target = model.patchify(imgs)
        mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        pred = pred * (var + 1.0e-6) ** 0.5 + mean
    p = model.patch_embed.patch_size
    pixel_mask = model.unpatchify(mask.unsqueeze(-1).expand(-1, -1, p * p * model.in_chans))
    original = denormalize(imgs.float())
    recon = denormalize(model.unpatchify(pred))
    pasted = original * (1 - pixel_mask) + recon * pixel_mask
    masked_input = original * (1 - pixel_mask) + 0.5 * pixel_mask  # grey where removed
    return original, masked_input, recon, pasted, pixel_mask


def views(model, imgs, pred, mask) -> dict:
    """The prediction shown three ways, each (N, 3, H, W) in [0, 1] (see docs/protocol.md):
    - "output": what the model outputs, in its target space; a per-patch normalised prediction is
      shown as mid-grey plus a quarter of its value (so +-2 std fill the range);
    - "true stats": norm-pix only: de-normalised with each removed patch's TRUE mean and std (the
      display everyone shows; it borrows two numbers per patch from the hidden image);
    - "honest": borrows nothing from the removed patches: a pixel model's own output, or a norm-pix
      prediction de-normalised with the mean and std averaged over the image's VISIBLE patches."""
    pred = pred.float()
    if not model.norm_pix_loss:
        shown = denormalize(model.unpatchify(pred))
        return {"output": shown, "honest": shown}
    target = model.patchify(imgs).float()
    mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
    keep = (1 - mask).unsqueeze(-1)                                  # (N, L, 1), 1 on visible patches
    seen_mean = (mean * keep).sum(1, keepdim=True) / keep.sum(1, keepdim=True).clamp_min(1)
    seen_var = (var * keep).sum(1, keepdim=True) / keep.sum(1, keepdim=True).clamp_min(1)
    return {"output": (0.5 + 0.25 * model.unpatchify(pred)).clamp(0, 1),
            "true stats": denormalize(model.unpatchify(pred * (var + 1e-6) ** 0.5 + mean)),
            "honest": denormalize(model.unpatchify(pred * (seen_var + 1e-6) ** 0.5 + seen_mean))}


@torch.no_grad()
def feature_health(feats: torch.Tensor) -> dict:
    """Dimensional collapse, measured on (N, D) features: the effective rank (exp of the entropy of
    the normalised singular values of the centred features; D when all directions are used equally,
    1 when the features lie on a line) and the uniformity of the L2-normalised features in both forms
    (Wang-Isola: log of the mean of exp(-2 |zi - zj|^2), lower = more uniform; U-MAE: mean squared
    cosine between different samples, lower = more spread)."""
    x = feats.float()
    s = torch.linalg.svdvals(x - x.mean(0))
    p = s / s.sum().clamp_min(1e-12)
    erank = torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum()).item()
    z = F.normalize(x, dim=1)
    gram = z @ z.T
    off = ~torch.eye(len(z), dtype=torch.bool, device=z.device)
    sq_dist = (2 - 2 * gram[off]).clamp_min(0)
    return {"effective_rank": erank, "uniformity_wi": torch.log(torch.exp(-2 * sq_dist).mean()).item(),
            "uniformity_umae": (gram[off] ** 2).mean().item()}


def masked_psnr(pred, target, pixel_mask) -> torch.Tensor:
    """(N,) PSNR in dB over pixels where pixel_mask = 1; images in [0, 1]."""
    se = ((pred - target) ** 2 * pixel_mask).flatten(1).sum(1)
    mse = se / pixel_mask.flatten(1).sum(1).clamp_min(1)
    psnr = 10 * torch.log10(1.0 / mse.clamp_min(1e-30))
    return torch.where(mse > 0, psnr.clamp(max=PSNR_CAP), torch.full_like(psnr, PSNR_CAP))


def masked_hf_error(pred, target, pixel_mask, patch_size: int) -> torch.Tensor:
    """(N,) high-frequency error inside masked patches: mean |Lap(pred) - Lap(target)| over the
    interior pixels ((p-2)^2 per channel) of every removed patch, the 3x3 Laplacian taken within
    each patch, so that neither visible neighbours nor seams between patches enter it."""
    c = pred.shape[1]

    def patches(img):  # (N, C, H, W) -> (N, L, p*p*C), laid out as MAE.patchify
        n, _, h, w = img.shape
        x = img.reshape(n, c, h // patch_size, patch_size, w // patch_size, patch_size)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(n, -1, patch_size * patch_size * c)
    diff = (patch_laplacian(patches(pred), patch_size, c) - patch_laplacian(patches(target), patch_size, c)).abs()
    mask = patches(pixel_mask)[..., 0]  # (N, L): 1 on removed patches
    return (diff.mean(dim=-1) * mask).sum(1) / mask.sum(1).clamp_min(1)


def fixed_noise(n: int, num_patches: int, seed: int = 0) -> torch.Tensor:
    """The mask noise of the evaluation set: identical for every model with the same patch grid."""
    return torch.rand(n, num_patches, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def reconstruction_metrics(model, images_u8, img_size: int, mask_ratio: float = 0.75, seed: int = 0,
                           batch_size: int = 64, device=None) -> dict:
    """Reconstruction quality on removed patches over a fixed image set with fixed mask noise:
    - nmse_masked: the loss itself (MSE in the model's target space) on removed patches; borrows
      nothing from the truth. A predictor of zeros scores ~1 with norm_pix (the target's variance).
    - psnr_masked: PSNR of the displayed reconstruction on removed pixels. With norm_pix the patch
      mean and std are borrowed from the truth, so psnr_masked_floor, the same PSNR for a decoder
      that outputs zeros (each removed patch filled with its true mean over pixels and channels),
      is the score of predicting no structure at all.
    - hf_error_masked: Laplacian error inside removed patches (masked_hf_error); hf_error_floor is
      that of the same zero decoder."""
    device = device or next(model.parameters()).device
    model.eval()
    noise = fixed_noise(len(images_u8), model.num_patches, seed)
    p = model.patch_embed.patch_size
    per_image = {k: [] for k in ("psnr", "floor", "hf", "hf_floor")}
    se_sum, n_patches = 0.0, 0.0
    for i in range(0, len(images_u8), batch_size):
        imgs = prepare(images_u8[i:i + batch_size], img_size, device)
        _, pred, mask = model(imgs, mask_ratio, noise[i:i + batch_size].to(device))
        original, _, recon, _, pm = to_display(model, imgs, pred, mask)
        floor = to_display(model, imgs, torch.zeros_like(pred), mask)[2]  # a decoder that outputs zeros
        per_image["psnr"].append(masked_psnr(recon, original, pm).cpu())
        per_image["floor"].append(masked_psnr(floor, original, pm).cpu())
        per_image["hf"].append(masked_hf_error(recon, original, pm, p).cpu())
        per_image["hf_floor"].append(masked_hf_error(floor, original, pm, p).cpu())
        se_sum += (((pred.float() - model.target(imgs).float()) ** 2).mean(-1) * mask).sum().item()
        n_patches += mask.sum().item()
    out = {k: torch.cat(v).mean().item() for k, v in per_image.items()}
    return {"psnr_masked": out["psnr"], "psnr_masked_floor": out["floor"], "hf_error_masked": out["hf"],
            "hf_error_floor": out["hf_floor"], "nmse_masked": se_sum / max(n_patches, 1.0),
            "n_images": len(images_u8), "mask_ratio": mask_ratio, "mask_seed": seed, "psnr_cap": PSNR_CAP,
            "psnr_note": "norm_pix predictions de-normalised with the target patch mean/std"
            if model.norm_pix_loss else "raw pixel predictions"}
