"""Behaviour that shapes and ranges cannot show: what the encoder sees, where the decoder puts its
predictions, which schedules the training loop really uses, and where evaluation weights come from.
Expected values come from an independent route (a plain re-implementation or a hand calculation)."""
import math

import pytest
import torch

import maehelpers.losses as L
import maehelpers.pretrain as P
from maehelpers.config import make_config
from maehelpers.data import augment, denormalize, load_dataset, prepare
from maehelpers.evaluate import cached_features, param_groups_lrd
from maehelpers.masking import mask_ratio_at
from maehelpers.metrics import masked_psnr, to_display, PSNR_CAP
from maehelpers.model import MAE, ViTClassifier, interpolate_pos_embed
from maehelpers.pretrain import load_encoder, lr_at, pretrain


def small_mae(seed=0, **kw):
    torch.manual_seed(seed)
    return MAE(**{**dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=16,
                         decoder_depth=1, decoder_num_heads=2), **kw}).eval()


def visible_positions(mask):
    return [int(i) for i in (mask[0] == 0).nonzero().flatten()]


# ----------------------------------------------------------------------------- the forward pass
def test_encoder_sees_only_visible_patches():
    model = small_mae()
    imgs, noise = torch.randn(1, 3, 32, 32), torch.rand(1, 16)
    latent, mask, _ = model.forward_encoder(imgs, 0.75, noise)
    changed = imgs.clone()
    for i in range(16):  # scribble over every removed patch
        if mask[0, i] == 1:
            r, c = divmod(i, 4)
            changed[..., 8 * r:8 * r + 8, 8 * c:8 * c + 8] = torch.randn(3, 8, 8) * 5
    assert torch.equal(model.forward_encoder(changed, 0.75, noise)[0], latent)
    vis = visible_positions(mask)
    r, c = divmod(vis[0], 4)
    changed[..., 8 * r, 8 * c] += 1.0  # one pixel of one visible patch
    assert not torch.allclose(model.forward_encoder(changed, 0.75, noise)[0], latent)


def test_encoder_gives_each_visible_patch_its_own_position():
    """Independent route: embed the visible patches in position order, add their position rows,
    run the blocks; the MAE's output (in noise order) must hold the same tokens."""
    model = small_mae()
    imgs, noise = torch.randn(1, 3, 32, 32), torch.rand(1, 16)
    latent, mask, _ = model.forward_encoder(imgs, 0.75, noise)
    vis = visible_positions(mask)
    x = model.patch_embed(imgs)[:, vis] + model.pos_embed[:, 1:][:, vis]
    x = torch.cat([model.cls_token + model.pos_embed[:, :1], x], dim=1)
    for blk in model.blocks:
        x = blk(x)
    x = model.norm(x)
    order = sorted(range(len(vis)), key=lambda k: noise[0, vis[k]].item())  # MAE keeps noise order
    assert torch.allclose(latent[0, 1:], x[0, 1:][order], atol=1e-5)
    assert torch.allclose(latent[0, 0], x[0, 0], atol=1e-5)
    # swapping the pixels of two visible patches changes what the encoder reports
    a, b = vis[0], vis[1]
    (ra, ca), (rb, cb) = divmod(a, 4), divmod(b, 4)
    swapped = imgs.clone()
    swapped[..., 8 * ra:8 * ra + 8, 8 * ca:8 * ca + 8] = imgs[..., 8 * rb:8 * rb + 8, 8 * cb:8 * cb + 8]
    swapped[..., 8 * rb:8 * rb + 8, 8 * cb:8 * cb + 8] = imgs[..., 8 * ra:8 * ra + 8, 8 * ca:8 * ca + 8]
    assert not torch.allclose(model.forward_encoder(swapped, 0.75, noise)[0], latent, atol=1e-4)


def test_decoder_puts_every_prediction_at_its_own_position():
    """Independent route: build the decoder's input position by position (a visible patch's latent,
    or the mask token) without argsort or gather, and compare."""
    model = small_mae()
    imgs, noise = torch.randn(1, 3, 32, 32), torch.rand(1, 16)
    latent, mask, ids_restore = model.forward_encoder(imgs, 0.75, noise)
    pred = model.forward_decoder(latent, ids_restore)
    vis = visible_positions(mask)
    by_noise = sorted(vis, key=lambda i: noise[0, i].item())  # latent row k + 1 is patch by_noise[k]
    emb = model.decoder_embed(latent)
    rows = [emb[0, 0]] + [emb[0, 1 + by_noise.index(i)] if i in vis else model.mask_token[0, 0] for i in range(16)]
    x = torch.stack(rows).unsqueeze(0) + model.decoder_pos_embed
    for blk in model.decoder_blocks:
        x = blk(x)
    expected = model.decoder_pred(model.decoder_norm(x))[:, 1:]
    assert torch.allclose(pred, expected, atol=1e-5)


def test_norm_pix_target_maps_back_to_the_image():
    """A prediction equal to the target, de-normalised with the target's statistics, is the image:
    the display path undoes patchify, norm-pix and the input normalisation exactly."""
    model = small_mae()
    imgs = prepare(load_dataset("synthetic", "test").images[:4], 32)
    noise = torch.rand(4, 16)
    _, _, mask = model(imgs, 0.75, noise)
    original, _, recon, pasted, pm = to_display(model, imgs, model.target(imgs), mask)
    assert torch.allclose(recon, denormalize(imgs), atol=1e-5) and torch.allclose(pasted, original, atol=1e-5)
    assert (masked_psnr(recon, original, pm) > 90).all()
    assert masked_psnr(original, original, pm).eq(PSNR_CAP).all()


def test_pos_embed_interpolation_keeps_rows_and_columns_apart():
    # channel 0 holds the column index, channel 1 the row index of a 4x4 grid; resized to 8x8, the
    # column channel must rise along rows of the new grid and stay constant down its columns
    grid = torch.zeros(1, 1 + 16, 2)
    for i in range(16):
        r, c = divmod(i, 4)
        grid[0, 1 + i] = torch.tensor([float(c), float(r)])
    grid[0, 0] = torch.tensor([7.0, -7.0])
    out = interpolate_pos_embed(grid, 64)
    assert torch.equal(out[0, 0], grid[0, 0])                     # cls row kept
    cols, rows = out[0, 1:, 0].reshape(8, 8), out[0, 1:, 1].reshape(8, 8)
    assert torch.allclose(cols, cols[:1].expand(8, 8)) and torch.allclose(rows, rows[:, :1].expand(8, 8))
    assert (cols[0, 1:] > cols[0, :-1]).all() and (rows[1:, 0] > rows[:-1, 0]).all()
    # by hand: align_corners=False maps new index j to old x = (j + 0.5) / 2 - 0.5; PyTorch's bicubic
    # kernel (a = -0.75) weighs the 4 neighbours at distances d by
    #   (a + 2)d^3 - (a + 3)d^2 + 1 for d <= 1,  a d^3 - 5a d^2 + 8a d - 4a for 1 < d < 2
    def w(d):
        a = -0.75
        return (a + 2) * d**3 - (a + 3) * d**2 + 1 if d <= 1 else a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a
    for j in (3, 4):                                              # all four taps inside the 4-wide grid
        x = (j + 0.5) / 2 - 0.5
        assert cols[0, j].item() == pytest.approx(sum(c * w(abs(x - c)) for c in range(4)), abs=1e-5)
    assert cols[0, 3].item() == pytest.approx(1.296875, abs=1e-5)  # 0.87890625 + 2 * 0.26171875 - 3 * 0.03515625


# ----------------------------------------------------------------------------- the training loop
def test_training_uses_the_scheduled_lr_and_mask_ratio_at_every_step(tmp_path, monkeypatch):
    cfg = make_config("curriculum", "smoke", "synthetic")
    used = []
    real_loss, real_step = L.pretrain_loss, torch.optim.AdamW.step

    def loss(model, imgs, ratio, variant, noise=None):
        total, parts, pred, mask = real_loss(model, imgs, ratio, variant, noise)
        used.append({"removed": mask.sum(1).tolist(), "noise": noise.clone(), "imgs": imgs.clone()})
        return total, parts, pred, mask

    def step(self, *a, **k):
        used[-1]["lr"] = [g["lr"] for g in self.param_groups]
        return real_step(self, *a, **k)
    monkeypatch.setattr(P, "pretrain_loss", loss)
    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    pretrain(cfg, tmp_path / "run", progress=False)
    total, warmup, lr = 16, 8.0, cfg.train.lr          # smoke: 8 steps per epoch, 2 epochs, 1 warmup epoch
    for s, u in enumerate(used):
        ratio = 0.5 + 0.25 * min(s / total / 0.5, 1.0)  # the curriculum, by hand
        assert u["removed"] == [16 - int(16 * (1 - ratio))] * 16
        expected_lr = lr * s / warmup if s < warmup else lr * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup)))
        assert u["lr"] == pytest.approx([expected_lr, expected_lr])
    assert len({tuple(u["noise"][0].tolist()) for u in used}) == 16          # fresh masks every step
    assert not torch.equal(used[0]["imgs"], used[8]["imgs"])                # fresh crops / order per epoch
    assert mask_ratio_at(0.25, cfg.variant) == pytest.approx(0.625) and lr_at(4, 16, 8, 1.0) == 0.5


def test_random_resized_crop_really_crops():
    # a horizontal ramp: a crop narrower than the image spans a narrower range of values
    ramp = torch.linspace(0, 255, 64).round().to(torch.uint8).expand(16, 1, 64, 64).contiguous()
    full = denormalize(augment(ramp, 32, scale=(1.0, 1.0), ratio=(1.0, 1.0), generator=torch.Generator().manual_seed(0)))
    small = denormalize(augment(ramp, 32, scale=(0.1, 0.1), ratio=(1.0, 1.0), generator=torch.Generator().manual_seed(0)))
    span = lambda x: (x[:, 0, 0].amax(1) - x[:, 0, 0].amin(1))  # noqa: E731
    assert (span(full) > 0.9).all()
    assert (span(small) < 0.4).all()                              # sqrt(0.1) ~ 0.32 of the width
    assert len({round(v, 3) for v in small[:, 0, 0, 16].tolist()}) > 4   # different crops per image


def test_uniformity_gradient_reaches_the_encoder():
    model = small_mae()
    variant = make_config("uniformity", "smoke", "synthetic").variant
    _, parts, _, _ = L.pretrain_loss(model.train(), torch.randn(8, 3, 32, 32), 0.75, variant, torch.rand(8, 16))
    parts["uniformity"].backward()
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.patch_embed.proj.weight.grad.abs().sum() > 0
    assert model.decoder_pred.weight.grad is None or model.decoder_pred.weight.grad.abs().sum() == 0


# ----------------------------------------------------------------------------- evaluation
def test_probe_features_come_from_the_checkpoint_weights(tmp_path):
    cfg = make_config("original", "smoke", "synthetic")
    pretrain(cfg, tmp_path / "run", progress=False)
    data = load_dataset("synthetic", "test", max_images=16)
    feats = cached_features(tmp_path / "run", data, "test", progress=False)
    trained, _ = load_encoder(tmp_path / "run" / "encoder_pretrained.pt")
    x = prepare(data.images, 32)
    with torch.no_grad():
        assert torch.allclose(feats["cls"], trained.eval().forward_features(x, "cls"), atol=1e-5)
        fresh = P.build_model(cfg).eval()
        assert not torch.allclose(feats["cls"], fresh.forward_features(x, "cls"), atol=1e-3)


def test_layer_decay_gives_the_official_scale_at_every_depth():
    model = ViTClassifier(10, img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2)
    groups = param_groups_lrd(model, 0.05, 0.5)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    names = dict(model.named_parameters())
    # 3 blocks: num_layers = 4; patch embed / cls / pos = layer 0 -> 0.5^4, block i -> 0.5^(3 - i), head -> 1
    expected = {"patch_embed.proj.weight": 0.0625, "cls_token": 0.0625, "pos_embed": 0.0625,
                "blocks.0.attn.qkv.weight": 0.125, "blocks.1.mlp.fc1.bias": 0.25, "blocks.2.norm1.weight": 0.5,
                "fc_norm.weight": 1.0, "head.weight": 1.0}
    for name, value in expected.items():
        assert scale[id(names[name])] == pytest.approx(value), name


def test_walkthrough_is_the_models_own_forward_pass():
    from maehelpers.explain import describe, walkthrough
    model = small_mae()
    image = load_dataset("synthetic", "test").images[0]
    steps = walkthrough(model, image, 32, 0.75, seed=0)
    loss, pred, mask = model(prepare(image[None], 32), 0.75, steps["noise"])
    assert torch.equal(steps["mask"], mask) and torch.allclose(steps["pred"], pred)
    assert steps["loss"].item() == pytest.approx(loss.item(), rel=1e-6)
    text = describe(steps)
    assert "12 of 16 patches removed" in text and "(1, 5, 32)" in text
