import math

import pytest
import torch

from maehelpers.data import denormalize, load_dataset, prepare
import maehelpers.probes as probes
from maehelpers.metrics import PSNR_CAP, masked_psnr, to_display
from maehelpers.model import MAE, adapt_pos_embeds, encoder_state_dict, interpolate_pos_embed, sincos_2d


def tiny(**kw):
    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=16,
                decoder_depth=1, decoder_num_heads=2)
    return MAE(**{**args, **kw})


def test_mask_removes_exact_count_and_restores_order():
    torch.manual_seed(0)
    model = MAE(img_size=224)  # the description's model: 196 patches
    imgs = torch.randn(3, 3, 224, 224)
    for r in (0.75, 0.5, 0.9):
        latent, mask, ids_restore = model.forward_encoder(imgs, r)
        L = 196
        removed = L - int(L * (1 - r))
        assert mask.shape == (3, L)
        assert (mask.sum(dim=1) == removed).all()
        assert latent.shape == (3, 1 + L - removed, 192)
    # ids_restore inverts the shuffle: gathering sorted noise back gives the noise
    noise = torch.rand(3, 196)
    _, _, ids_restore = model.forward_encoder(imgs, 0.75, noise)
    sorted_noise = noise.sort(dim=1).values
    assert torch.equal(torch.gather(sorted_noise, 1, ids_restore), noise)


def test_same_noise_same_mask_in_two_models():
    a, b = tiny(), tiny(embed_dim=64)
    imgs, noise = torch.randn(4, 3, 32, 32), torch.rand(4, 16)
    _, _, mask_a = a(imgs, 0.75, noise)
    _, _, mask_b = b(imgs, 0.75, noise)
    assert torch.equal(mask_a, mask_b)
    # the kept patches are those with the smallest noise
    expected = torch.ones(4, 16)
    expected.scatter_(1, noise.argsort(dim=1)[:, :4], 0.0)
    assert torch.equal(mask_a, expected)


def test_forward_shapes_and_patchify_roundtrip():
    model = tiny()
    imgs = torch.randn(2, 3, 32, 32)
    loss, pred, mask = model(imgs)
    assert pred.shape == (2, 16, 8 * 8 * 3) and mask.shape == (2, 16) and loss.ndim == 0
    assert torch.equal(model.unpatchify(model.patchify(imgs)), imgs)
    # patch 1 is the top row's second patch, laid out (p, p, C)
    assert torch.equal(model.patchify(imgs)[0, 1].reshape(8, 8, 3), imgs[0, :, :8, 8:16].permute(1, 2, 0))


def test_sincos_pos_embed_hand_values():
    # embed 8 -> 4 channels for w (first) and 4 for h; 1-D omega = [1, 1/100]
    emb = sincos_2d(8, grid_size=2, cls_token=True)
    s1, s01, c1, c01 = math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01)
    assert torch.allclose(emb[0], torch.zeros(8))                                   # cls row
    assert torch.allclose(emb[1], torch.tensor([0, 0, 1, 1, 0, 0, 1, 1.0]))         # row 0, col 0
    assert torch.allclose(emb[2], torch.tensor([s1, s01, c1, c01, 0, 0, 1, 1]))      # row 0, col 1
    assert torch.allclose(emb[3], torch.tensor([0, 0, 1, 1, s1, s01, c1, c01]))      # row 1, col 0
    model = tiny()
    assert torch.allclose(model.pos_embed[0], sincos_2d(32, 4, cls_token=True))
    assert not model.pos_embed.requires_grad and not model.decoder_pos_embed.requires_grad


def official_vit_base_shapes():
    """Names and shapes of the official mae_vit_base_patch16 (dec 512, depth 8, 16 heads) state dict."""
    D, Dd, L, p = 768, 512, 196, 16
    shapes = {"cls_token": (1, 1, D), "pos_embed": (1, L + 1, D), "patch_embed.proj.weight": (D, 3, p, p),
              "patch_embed.proj.bias": (D,), "norm.weight": (D,), "norm.bias": (D,),
              "mask_token": (1, 1, Dd), "decoder_pos_embed": (1, L + 1, Dd), "decoder_embed.weight": (Dd, D),
              "decoder_embed.bias": (Dd,), "decoder_norm.weight": (Dd,), "decoder_norm.bias": (Dd,),
              "decoder_pred.weight": (p * p * 3, Dd), "decoder_pred.bias": (p * p * 3,)}
    for prefix, depth, d in (("blocks", 12, D), ("decoder_blocks", 8, Dd)):
        for i in range(depth):
            b = f"{prefix}.{i}."
            shapes.update({b + "norm1.weight": (d,), b + "norm1.bias": (d,), b + "norm2.weight": (d,),
                           b + "norm2.bias": (d,), b + "attn.qkv.weight": (3 * d, d), b + "attn.qkv.bias": (3 * d,),
                           b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,),
                           b + "mlp.fc1.weight": (4 * d, d), b + "mlp.fc1.bias": (4 * d,),
                           b + "mlp.fc2.weight": (d, 4 * d), b + "mlp.fc2.bias": (d,)})
    return shapes


def test_official_vit_base_state_dict_loads_strict():
    with torch.device("meta"):
        model = MAE(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12,
                    decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16, norm_pix_loss=True)
    state = {k: torch.zeros(s) for k, s in official_vit_base_shapes().items()}
    model.load_state_dict(state, strict=True, assign=True)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == official_vit_base_shapes()


def test_initialisation_matches_official():
    torch.manual_seed(0)
    model = MAE(img_size=96)
    assert torch.equal(model.blocks[0].norm1.weight, torch.ones(192))
    assert torch.equal(model.blocks[0].attn.qkv.bias, torch.zeros(576))
    # xavier uniform bound for fc1 (768 x 192): sqrt(6 / (192 + 768))
    bound = math.sqrt(6 / (192 + 768))
    w = model.blocks[0].mlp.fc1.weight
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    assert 0.015 < model.cls_token.std() < 0.025 and 0.01 < model.mask_token.std() < 0.03


def test_encoder_state_and_pos_embed_interpolation():
    small = tiny()
    enc = encoder_state_dict(small)
    assert not any(k.startswith(("decoder", "mask_token")) for k in enc)
    assert "pos_embed" in enc and "blocks.0.attn.qkv.weight" in enc
    big = tiny(img_size=48)  # 6 x 6 grid instead of 4 x 4
    state = adapt_pos_embeds(small.state_dict(), big)
    assert state["pos_embed"].shape == (1, 37, 32)
    big.load_state_dict(state, strict=True)
    assert torch.equal(big.pos_embed[0, 0], small.pos_embed[0, 0])


def test_features_and_bad_inputs():
    model = tiny()
    imgs = torch.randn(5, 3, 32, 32)
    assert model.forward_features(imgs, "cls").shape == (5, 32)
    assert model.forward_features(imgs, "mean").shape == (5, 32)
    with pytest.raises(ValueError, match="divisible"):
        MAE(img_size=100, patch_size=16)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        model(imgs, mask_ratio=1.0)
    with pytest.raises(ValueError, match="shape"):
        model(imgs, noise=torch.rand(5, 7))


def small_mae(seed=0, **kw):
    torch.manual_seed(seed)
    return MAE(**{**dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=16,
                         decoder_depth=1, decoder_num_heads=2), **kw}).eval()


def visible_positions(mask):
    return [int(i) for i in (mask[0] == 0).nonzero().flatten()]


def test_mean_pool_excludes_the_cls_token():
    torch.manual_seed(0)
    model = MAE(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16,
                decoder_depth=1, decoder_num_heads=2).eval()
    imgs = torch.randn(2, 3, 32, 32)
    feats = probes.extract_features(model, (imgs.clamp(-2, 2) * 50 + 128).to(torch.uint8), 32, progress=False)
    tokens = model.forward_tokens(prepare((imgs.clamp(-2, 2) * 50 + 128).to(torch.uint8), 32, "cpu"))
    assert torch.allclose(feats["mean"], tokens[:, 1:].mean(1), atol=1e-6)
    assert torch.allclose(feats["cls"], tokens[:, 0], atol=1e-6)


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


def test_walkthrough_is_the_models_own_forward_pass():
    from maehelpers.walkthrough import describe, walkthrough
    model = small_mae()
    image = load_dataset("synthetic", "test").images[0]
    steps = walkthrough(model, image, 32, 0.75, seed=0)
    loss, pred, mask = model(prepare(image[None], 32), 0.75, steps["noise"])
    assert torch.equal(steps["mask"], mask) and torch.allclose(steps["pred"], pred)
    assert steps["loss"].item() == pytest.approx(loss.item(), rel=1e-6)
    text = describe(steps)
    assert "12 of 16 patches removed" in text and "(1, 5, 32)" in text
