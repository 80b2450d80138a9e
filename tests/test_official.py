"""The official-checkpoint quick look (notebook 05): names, loading, offline, matched masks."""
import torch
import torch.nn.functional as F
import pytest

from maehelpers.model import MAE
from maehelpers.official import VIT_B, load_official, matched_noise, official_model, side_by_side
from maehelpers.viz import draw_official

TINY = dict(img_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=2, num_heads=2,
            decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2, norm_pix_loss=False)


def official_vit_b_names() -> dict:
    """mae_vit_base_patch16_dec512d8b's parameters as facebookresearch/mae names them, by hand."""
    D, d, L = 768, 512, 14 * 14 + 1

    def block(prefix, w):
        return {f"{prefix}.norm1.weight": (w,), f"{prefix}.norm1.bias": (w,),
                f"{prefix}.attn.qkv.weight": (3 * w, w), f"{prefix}.attn.qkv.bias": (3 * w,),
                f"{prefix}.attn.proj.weight": (w, w), f"{prefix}.attn.proj.bias": (w,),
                f"{prefix}.norm2.weight": (w,), f"{prefix}.norm2.bias": (w,),
                f"{prefix}.mlp.fc1.weight": (4 * w, w), f"{prefix}.mlp.fc1.bias": (4 * w,),
                f"{prefix}.mlp.fc2.weight": (w, 4 * w), f"{prefix}.mlp.fc2.bias": (w,)}
    names = {"cls_token": (1, 1, D), "pos_embed": (1, L, D), "patch_embed.proj.weight": (D, 3, 16, 16),
             "patch_embed.proj.bias": (D,), "norm.weight": (D,), "norm.bias": (D,), "mask_token": (1, 1, d),
             "decoder_pos_embed": (1, L, d), "decoder_embed.weight": (d, D), "decoder_embed.bias": (d,),
             "decoder_norm.weight": (d,), "decoder_norm.bias": (d,), "decoder_pred.weight": (16 * 16 * 3, d),
             "decoder_pred.bias": (16 * 16 * 3,)}
    for i in range(12):
        names.update(block(f"blocks.{i}", D))
    for i in range(8):
        names.update(block(f"decoder_blocks.{i}", d))
    return names


def test_vit_b_has_the_official_names_and_shapes():
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in MAE(**VIT_B).state_dict().items()}
    assert ours == official_vit_b_names()


def test_a_cached_official_state_dict_loads_and_predicts_like_its_source(tmp_path):
    torch.manual_seed(0)
    source = MAE(**TINY).eval()
    torch.save({"model": source.state_dict(), "epoch": 1}, tmp_path / "mae.pth")
    loaded = load_official(tmp_path, url="http://127.0.0.1:9/mae.pth", arch=TINY)  # cached: no download
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    assert torch.equal(loaded(imgs, 0.75, noise)[1], source(imgs, 0.75, noise)[1])

    renamed = {k.replace("attn.qkv", "attn.in_proj"): v for k, v in source.state_dict().items()}
    with pytest.raises(ValueError, match="blocks.0.attn.in_proj.weight"):
        official_model(renamed, TINY)


def test_offline_says_so_and_returns_none(tmp_path, capsys):
    assert load_official(tmp_path, url="http://127.0.0.1:9/mae.pth", timeout_s=5, arch=TINY) is None
    assert "could not be downloaded" in capsys.readouterr().out
    assert not (tmp_path / "mae.pth").exists()


def test_matched_noise_by_hand():
    noise = torch.tensor([[0.1, 0.9, 0.5, 0.3]])  # 2 x 2 grid; 0.75 keeps the smallest: top left
    up = matched_noise(noise, 4)
    assert up.argsort(1)[0, :4].sort().values.tolist() == [0, 1, 4, 5]  # its four copies on the 4 x 4 grid
    assert up.argsort(1)[0, -4:].sort().values.tolist() == [2, 3, 6, 7]  # 0.9: top right is removed first


def test_side_by_side_masks_the_same_regions():
    torch.manual_seed(0)
    ours = MAE(**{**TINY, "img_size": 16, "norm_pix_loss": True})  # 2 x 2 patches of 8 px
    official = MAE(**TINY)                                          # 4 x 4 patches of 8 px at 32 px
    images = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    mine, theirs = side_by_side(ours, official, images, 16, seed=3)
    assert torch.equal(F.interpolate(mine[4], scale_factor=2, mode="nearest"), theirs[4])
    assert theirs[4].mean().item() == 0.75
    fig = draw_official("original", mine, theirs)
    assert len(fig.axes) == 3 * 5  # image, then input and reconstruction of each model
