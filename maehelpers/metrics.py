"""Reconstruction quality on the masked regions, in display pixel space [0, 1].

A norm_pix model predicts each patch normalised by its own mean and std; to show or score it we
map the prediction back with the TARGET patch's mean and std (as the official demo does). That
borrows two numbers per patch from the truth, so PSNR here measures structure within each patch,
not its mean brightness; for a model trained without norm_pix nothing is borrowed.

PSNR = 10 log10(1 / MSE) over masked pixels only, per image, then averaged; an image whose masked
pixels match exactly gets PSNR_CAP (100 dB) instead of infinity, so averages stay finite.
"""
import torch
import torch.nn.functional as F

from .data import denormalize, prepare
from .losses import LAPLACIAN_3x3

PSNR_CAP = 100.0


@torch.no_grad()
def reconstruct(model, imgs, mask_ratio: float = 0.75, noise=None):
    """Run the MAE on normalised images; returns display-space (original, masked input,
    reconstruction, reconstruction with the visible patches pasted back, pixel mask), all
    (N, 3, H, W) in [0, 1]; pixel mask is 1 on removed pixels."""
    model.eval()
    _, pred, mask = model(imgs, mask_ratio, noise)
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


def masked_psnr(pred, target, pixel_mask) -> torch.Tensor:
    """(N,) PSNR in dB over pixels where pixel_mask = 1; images in [0, 1]."""
    se = ((pred - target) ** 2 * pixel_mask).flatten(1).sum(1)
    mse = se / pixel_mask.flatten(1).sum(1).clamp_min(1)
    psnr = 10 * torch.log10(1.0 / mse.clamp_min(1e-30))
    return torch.where(mse > 0, psnr.clamp(max=PSNR_CAP), torch.full_like(psnr, PSNR_CAP))


def laplacian(img) -> torch.Tensor:
    """3x3 Laplacian of each channel, replicate padding (same size out)."""
    c = img.shape[1]
    kernel = LAPLACIAN_3x3.to(img).expand(c, 1, 3, 3)
    return F.conv2d(F.pad(img, (1, 1, 1, 1), mode="replicate"), kernel, groups=c)


def masked_hf_error(pred, target, pixel_mask) -> torch.Tensor:
    """(N,) mean |Laplacian(pred) - Laplacian(target)| over masked pixels: high-frequency error."""
    diff = (laplacian(pred) - laplacian(target)).abs() * pixel_mask
    return diff.flatten(1).sum(1) / pixel_mask.flatten(1).sum(1).clamp_min(1)


def fixed_noise(n: int, num_patches: int, seed: int = 0) -> torch.Tensor:
    """The mask noise of the evaluation set: identical for every model with the same patch grid."""
    return torch.rand(n, num_patches, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def reconstruction_metrics(model, images_u8, img_size: int, mask_ratio: float = 0.75, seed: int = 0,
                           batch_size: int = 64, device=None) -> dict:
    """Masked PSNR (dB) and masked Laplacian HF error over a fixed set with fixed mask noise."""
    device = device or next(model.parameters()).device
    noise = fixed_noise(len(images_u8), model.num_patches, seed)
    psnr, hf = [], []
    for i in range(0, len(images_u8), batch_size):
        imgs = prepare(images_u8[i:i + batch_size], img_size, device)
        original, _, recon, _, pm = reconstruct(model, imgs, mask_ratio, noise[i:i + batch_size].to(device))
        psnr.append(masked_psnr(recon, original, pm).cpu())
        hf.append(masked_hf_error(recon, original, pm).cpu())
    psnr, hf = torch.cat(psnr), torch.cat(hf)
    return {"psnr_masked": psnr.mean().item(), "hf_error_masked": hf.mean().item(), "n_images": len(psnr),
            "mask_ratio": mask_ratio, "mask_seed": seed, "psnr_cap": PSNR_CAP,
            "psnr_note": "norm_pix predictions de-normalised with the target patch mean/std"
            if model.norm_pix_loss else "raw pixel predictions"}
