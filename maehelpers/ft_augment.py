"""Fine-tuning augmentation for a whole batch on the device, with no host wait: RandAugment with
torchvision's ops and magnitudes (each image its own ops and magnitude), random erasing with noise,
and mixup / cutmix.

Why not torchvision.transforms.v2 itself: a v2 transform gives the whole batch one random choice, so
a per-image RandAugment takes one call per image, and on CUDA its affine ops and the sharpness
kernel build small tensors from Python numbers (a blocking copy each): about 140 host waits per
step at batch 128, and 32 ms of host dispatch. Here every random choice is a tensor drawn on the
device, each op is computed once for the whole batch with each image's own level, and each image
keeps the result of the op it drew. The ops follow torchvision's kernels line by line (tested op by
op against torchvision), so the distribution is the one of v2.RandAugment applied to each image.
"""
import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from .data import normalize

OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast",
       "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize")   # v2.RandAugment's, in its order
SIGNED = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast", "Sharpness")


def level_table(bins: int, height: int, width: int) -> torch.Tensor:
    """(len(OPS), bins) float: each op's level at each magnitude bin, made as v2.RandAugment makes them."""
    lin = lambda hi, lo=0.0: torch.linspace(lo, hi, bins)  # noqa: E731
    levels = {"ShearX": lin(0.3), "ShearY": lin(0.3), "TranslateX": lin(150.0 / 331.0 * width),
              "TranslateY": lin(150.0 / 331.0 * height), "Rotate": lin(30.0), "Brightness": lin(0.9),
              "Color": lin(0.9), "Contrast": lin(0.9), "Sharpness": lin(0.9),
              "Posterize": (8 - (torch.arange(bins) / ((bins - 1) / 4))).round().int().float(),
              "Solarize": torch.linspace(1.0, 0.0, bins)}
    return torch.stack([levels.get(op, torch.zeros(bins)) for op in OPS])


@functools.lru_cache(maxsize=None)
def _constants(device: torch.device, bins: int, height: int, width: int) -> tuple:
    """The level table, which ops are signed, and the sharpness kernel, on the device once."""
    a, b = 1.0 / 13.0, 5.0 / 13.0
    kernel = torch.tensor([[a, a, a], [a, b, a], [a, a, a]]).expand(3, 1, 3, 3)
    signed = torch.tensor([op in SIGNED for op in OPS])
    return tuple(t.to(device) for t in (level_table(bins, height, width), signed, kernel))


def rand_augment(u8: torch.Tensor, magnitude: torch.Tensor, num_ops: int = 2, bins: int = 11,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """u8: (N, 3, H, W) uint8 on the device; magnitude: (N,) integer bins. Per image and per op slot:
    an op drawn uniformly, its level at the image's magnitude, negated with probability 1/2 where
    the op is signed (as v2.RandAugment(num_ops, magnitude, bins) applied to that image alone)."""
    n, dev = u8.shape[0], u8.device
    table, signed, kernel = _constants(dev, bins, *u8.shape[-2:])
    for _ in range(num_ops):
        op = torch.randint(len(OPS), (n,), generator=generator, device=dev)
        flip = torch.rand(n, generator=generator, device=dev) <= 0.5
        level = table[op, magnitude]
        level = torch.where(signed[op] & flip, -level, level)
        u8 = apply_ops(u8, op, level, kernel)
    return u8


def apply_ops(u8, op, level, kernel) -> torch.Tensor:
    """Each image's op (an index into OPS) at its level, computed op by op for the whole batch."""
    x = u8.float()
    out = torch.where(_is(op, "Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"),
                      _geometric(x, op, level), u8)
    gray, lv = _gray(x), level.view(-1, 1, 1, 1)
    candidates = {
        "Brightness": _to_u8(x * (1.0 + lv)),
        "Color": _blend(x, gray, lv),
        "Contrast": _blend(x, gray.mean(dim=(-3, -2, -1), keepdim=True), lv),
        "Sharpness": _sharpen(x, lv, kernel),
        "Posterize": _posterize(u8, level),
        "Solarize": torch.where(x >= 255.0 * lv, 255 - u8, u8),   # compared in float32, as torchvision
        "AutoContrast": _autocontrast(x),
        "Equalize": _equalize(u8)}
    for name, result in candidates.items():
        out = torch.where(_is(op, name), result, out)
    return out


def _is(op, *names) -> torch.Tensor:
    """(N, 1, 1, 1) bool: the images whose op is one of `names`."""
    return torch.isin(op, torch.tensor([OPS.index(n) for n in names], device=op.device)).view(-1, 1, 1, 1)


def _to_u8(x) -> torch.Tensor:
    return x.clamp(0, 255).to(torch.uint8)  # truncation toward zero, as torchvision's float-to-uint8 cast


def _blend(x, other, level) -> torch.Tensor:
    """torchvision's _blend at factor 1 + level: x * factor + other * (1 - factor), clamped and truncated
    (1 - factor is -level exactly, as torchvision's Python arithmetic gives it)."""
    return _to_u8(torch.addcmul(x * (1.0 + level), other, -level))  # one rounding, as add_(alpha=...)


def _gray(x) -> torch.Tensor:
    r, g, b = x.unbind(dim=-3)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(-3).floor()


def _sharpen(x, level, kernel) -> torch.Tensor:
    """adjust_sharpness at factor 1 + level: the interior blended with its 3x3 smoothing (rounded); the
    border stays."""
    blurred = F.conv2d(x, kernel, groups=3).round()
    out = x.clone()
    inner = out[..., 1:-1, 1:-1]
    out[..., 1:-1, 1:-1] = inner + (blurred - inner) * -level
    return _to_u8(out)


def _posterize(u8, level) -> torch.Tensor:
    bits = level.to(torch.int32).view(-1, 1, 1, 1)
    mask = (((1 << bits) - 1) << (8 - bits)).to(torch.uint8)
    return torch.where(bits >= 8, u8, u8 & mask)


def _autocontrast(x) -> torch.Tensor:
    lo, hi = x.amin(dim=(-2, -1), keepdim=True), x.amax(dim=(-2, -1), keepdim=True)
    flat = hi == lo
    scale = torch.where(flat, 1.0, (hi - lo) * (1.0 / 255.0))
    return _to_u8((x - torch.where(flat, 0.0, lo)) / scale)


def _equalize(u8) -> torch.Tensor:
    from torchvision.transforms.v2.functional import equalize  # batched, with no data-dependent shape
    return equalize(u8)


def _geometric(x, op, level) -> torch.Tensor:
    """Shear, translate and rotate for the whole batch: each image's inverse affine matrix (torchvision's
    _get_inverse_affine_matrix, with its centres), one affine grid, nearest sampling, zero fill."""
    h, w = x.shape[-2:]
    level = level.double()  # the matrix in float64, as torchvision's Python arithmetic, then float32
    zero = torch.zeros_like(level)
    shear = torch.rad2deg(torch.atan(level))
    is_ = lambda name: op == OPS.index(name)  # noqa: E731
    angle = torch.where(is_("Rotate"), -torch.remainder(level, 360.0), zero)   # rotate() passes -angle
    tx = torch.where(is_("TranslateX"), level.trunc(), zero)                    # int(magnitude)
    ty = torch.where(is_("TranslateY"), level.trunc(), zero)
    sx, sy = torch.where(is_("ShearX"), shear, zero), torch.where(is_("ShearY"), shear, zero)
    sheared = is_("ShearX") | is_("ShearY")          # sheared about the top-left corner, the rest about the centre
    cx, cy = torch.where(sheared, -0.5 * w, zero), torch.where(sheared, -0.5 * h, zero)
    theta = _inverse_affine(angle, tx, ty, sx, sy, cx, cy).float()
    grid = _affine_grid(theta, h, w)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False).round().to(torch.uint8)


def _inverse_affine(angle, tx, ty, sx, sy, cx, cy) -> torch.Tensor:
    """(N, 2, 3): torchvision's _get_inverse_affine_matrix(center, angle, translate, scale 1, shear), per image."""
    rot, sx, sy = torch.deg2rad(angle), torch.deg2rad(sx), torch.deg2rad(sy)
    a = torch.cos(rot - sy) / torch.cos(sy)
    b = -torch.cos(rot - sy) * torch.tan(sx) / torch.cos(sy) - torch.sin(rot)
    c = torch.sin(rot - sy) / torch.cos(sy)
    d = -torch.sin(rot - sy) * torch.tan(sx) / torch.cos(sy) + torch.cos(rot)
    m = [d, -b, torch.zeros_like(a), -c, a, torch.zeros_like(a)]
    m[2] = m[2] + m[0] * (-cx - tx) + m[1] * (-cy - ty) + cx
    m[5] = m[5] + m[3] * (-cx - tx) + m[4] * (-cy - ty) + cy
    return torch.stack(m, dim=1).view(-1, 2, 3)


def _affine_grid(theta, h: int, w: int) -> torch.Tensor:
    """torchvision's _affine_grid: pixel-centre coordinates around the image centre, through theta."""
    dev = theta.device
    xs = torch.linspace(-w * 0.5 + 0.5, w * 0.5 - 0.5, w, device=dev)
    ys = torch.linspace(-h * 0.5 + 0.5, h * 0.5 - 0.5, h, device=dev)
    base = torch.stack([xs.expand(h, w), ys.unsqueeze(-1).expand(h, w), torch.ones(h, w, device=dev)], dim=-1)
    scale = torch.tensor([0.5 * w, 0.5 * h], device=dev)
    return (base.view(1, h * w, 3) @ (theta.transpose(1, 2) / scale)).view(-1, h, w, 2)


def random_erase(x, prob: float, scale=(0.02, 1 / 3), ratio=(0.3, 1 / 0.3), generator=None, attempts: int = 10):
    """v2.RandomErasing(prob, scale, ratio, value='random') for each image: with probability `prob`, the
    first of 10 drawn rectangles that fits inside the image is filled with N(0, 1) noise (none fits:
    unchanged). Every draw is made on the device for the whole batch."""
    n, (h, w), dev = x.shape[0], x.shape[-2:], x.device
    u = lambda *shape: torch.rand(*shape, generator=generator, device=dev)  # noqa: E731
    area = h * w * (scale[0] + (scale[1] - scale[0]) * u(n, attempts))
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u(n, attempts)
    eh, ew = (area * log_r.exp()).sqrt().round(), (area / log_r.exp()).sqrt().round()
    fits = (eh < h) & (ew < w)
    first = fits.int().argmax(dim=1, keepdim=True)                 # the first attempt that fits
    eh, ew = eh.gather(1, first).view(-1, 1, 1), ew.gather(1, first).view(-1, 1, 1)
    top = (u(n) * (h - eh.view(-1) + 1)).floor().view(-1, 1, 1)   # randint(0, h - eh + 1)
    left = (u(n) * (w - ew.view(-1) + 1)).floor().view(-1, 1, 1)
    rows = torch.arange(h, device=dev).view(1, -1, 1)
    cols = torch.arange(w, device=dev).view(1, 1, -1)
    box = (rows >= top) & (rows < top + eh) & (cols >= left) & (cols < left + ew)
    erase = (u(n) < prob) & fits.any(dim=1)
    noise = torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype)
    return torch.where((box & erase.view(-1, 1, 1)).unsqueeze(1), noise, x)


def mix(x, y, num_classes: int, mixup: float, cutmix: float, host: np.random.Generator):
    """timm's Mixup switch: mixup (alpha `mixup`) or cutmix (alpha `cutmix`), one of them for the batch,
    each with probability 1/2 where both are on, pairing each image with the one before it
    (v2.MixUp / v2.CutMix). Targets: one-hot rows mixed with the same weight. The weight and the box
    are drawn on the host (`host`): plain numbers, no device value is read."""
    use_cutmix = cutmix > 0 and (mixup <= 0 or host.random() < 0.5)
    alpha = cutmix if use_cutmix else mixup
    lam = float(host.beta(alpha, alpha))
    target = torch.zeros(len(y), num_classes, device=x.device).scatter_(1, y.view(-1, 1), 1.0)
    other = x.roll(1, 0)
    if use_cutmix:
        h, w = x.shape[-2:]
        cx, cy = int(host.integers(w)), int(host.integers(h))
        r = 0.5 * math.sqrt(1.0 - lam)
        y0, y1 = max(cy - int(r * h), 0), min(cy + int(r * h), h)
        x0, x1 = max(cx - int(r * w), 0), min(cx + int(r * w), w)
        x = x.clone()
        x[..., y0:y1, x0:x1] = other[..., y0:y1, x0:x1]
        lam = 1.0 - (x1 - x0) * (y1 - y0) / (h * w)
    else:
        x = x * lam + other * (1.0 - lam)
    return x, target * lam + target.roll(1, 0) * (1.0 - lam)


def ft_augmenter(e, num_classes: int, device, seed: int = 0):
    """The official fine-tuning augmentation after crop and flip, in the official order: RandAugment on
    uint8 images (each image's magnitude ~ N(ft_randaug_magnitude, ft_randaug_mstd) on timm's 0-10
    scale, rounded), normalise, random erasing with per-pixel noise, then mixup or cutmix for the batch.
    Returns f(x in [0, 1] on the device, labels on the device) -> (model input, labels or soft targets).
    Randomness: a generator on the device and one on the host, both seeded with `seed`."""
    device = torch.device(device)
    g = torch.Generator(device=device).manual_seed(seed)
    host = np.random.default_rng(seed)

    def apply(x01, y):
        if e.ft_randaug_magnitude > 0:
            mags = torch.randn(len(x01), generator=g, device=device) * e.ft_randaug_mstd + e.ft_randaug_magnitude
            u8 = x01.mul(255).round_().to(torch.uint8)
            u8 = rand_augment(u8, mags.round().clamp(0, 10).long(), e.ft_randaug_ops, 11, g)
            x01 = u8.float().div_(255)
        x = normalize(x01)
        if e.ft_reprob > 0:
            x = random_erase(x, e.ft_reprob, generator=g)
        if e.ft_mixup > 0 or e.ft_cutmix > 0:
            return mix(x, y, num_classes, e.ft_mixup, e.ft_cutmix, host)
        return x, y
    return apply
