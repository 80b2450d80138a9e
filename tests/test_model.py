import math

import pytest
import torch

from maehelpers.model import MAE, adapt_pos_embeds, encoder_state_dict, sincos_2d


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
