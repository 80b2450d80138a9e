import math

import pytest
import torch

from maehelpers.config import VARIANTS, make_config
import maehelpers.losses as L
from maehelpers.losses import (laplacian_loss, masked_mse, patch_laplacian, pretrain_loss, uniformity_umae,
                               uniformity_wang_isola)
from maehelpers.masking import mask_ratio_at
from maehelpers.model import MAE
from maehelpers.optim import lr_at, param_groups


def test_masked_mse_ignores_visible_patches():
    target = torch.randn(2, 4, 12)
    mask = torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 1]])
    pred = target.clone()
    pred[mask == 0] += 100.0          # visible patches may hold anything
    assert masked_mse(pred, target, mask) == 0
    pred[0, 0] += 1.0                 # one masked patch off by 1 everywhere: 1 / 3 masked patches
    assert torch.isclose(masked_mse(pred, target, mask), torch.tensor(1 / 3))


def test_laplacian_zero_on_constant_positive_on_edge():
    p, c = 4, 3
    mask = torch.ones(1, 1)
    flat = torch.full((1, 1, p * p * c), 0.7)
    assert laplacian_loss(flat, torch.full_like(flat, -2.0), mask, p, c) == 0  # constants: no HF at all
    edge = torch.zeros(1, p, p, c)
    edge[:, :, 2:, :] = 1.0           # vertical step edge
    edge = edge.reshape(1, 1, -1)
    assert laplacian_loss(flat, edge, mask, p, c) > 0
    # hand value: 2x2 valid outputs per channel; along the edge columns 1 and 2 the Laplacian is
    # +1 (left of the step) and -1 (right): mean |.| = 1
    assert torch.isclose(patch_laplacian(edge, p, c).abs().mean(), torch.tensor(1.0))
    assert laplacian_loss(flat, edge, torch.zeros(1, 1), p, c) == 0  # visible patches ignored


def test_uniformity_lower_for_spread_features():
    torch.manual_seed(0)
    spread = torch.randn(64, 16)
    collapsed = torch.ones(64, 16) + 0.01 * torch.randn(64, 16)
    assert uniformity_wang_isola(spread) < uniformity_wang_isola(collapsed)
    assert uniformity_umae(spread) < uniformity_umae(collapsed)
    assert torch.isclose(uniformity_umae(torch.ones(8, 4)), torch.tensor(1.0))
    # orthonormal features: no pair correlates
    assert torch.isclose(uniformity_umae(torch.eye(4)), torch.tensor(0.0))
    # two antipodal points: |z1 - z2|^2 = 4, one pair: log exp(-2 * 4) = -8
    assert torch.isclose(uniformity_wang_isola(torch.tensor([[1.0, 0], [-1, 0]])), torch.tensor(-8.0))


def test_masked_logsumexp_has_the_value_and_gradient_of_the_indexed_one():
    """CUDA's form (no host wait) against the boolean index, on a hand case and on random features."""
    x = torch.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.0, 8.0]])
    upper = torch.ones(3, 3, dtype=torch.bool).triu(1)
    assert L.upper_logsumexp(x, upper, masked=True).item() == pytest.approx(math.log(math.e + math.e ** 2 + math.e ** 5))
    torch.manual_seed(0)
    for n in (2, 5, 64):
        feats = torch.randn(n, 16, requires_grad=True)
        grads = []
        for masked in (False, True):
            z = torch.nn.functional.normalize(feats, dim=-1)
            sq = (2 - 2 * z @ z.T).clamp_min(0)
            value = L.upper_logsumexp(-2 * sq, torch.ones(n, n, dtype=torch.bool).triu(1), masked)
            grads.append((value.detach(), *torch.autograd.grad(value, feats)))
        assert torch.allclose(grads[0][0], grads[1][0], atol=1e-6) and torch.allclose(grads[0][1], grads[1][1], atol=1e-6)


def test_weights_switch_terms():
    model = MAE(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16,
                decoder_depth=1, decoder_num_heads=2)
    imgs, noise = torch.randn(4, 3, 32, 32), torch.rand(4, 16)
    total, parts, _, _ = pretrain_loss(model, imgs, 0.75, VARIANTS["original"], noise)
    assert set(parts) == {"mse"} and torch.equal(total, parts["mse"])
    assert torch.isclose(total, model(imgs, 0.75, noise)[0])  # same as the official forward
    total, parts, _, _ = pretrain_loss(model, imgs, 0.75, VARIANTS["improved"], noise)
    assert set(parts) == {"mse", "laplacian", "uniformity"}
    assert torch.isclose(total, parts["mse"] + 0.05 * parts["laplacian"] + 0.01 * parts["uniformity"])


def test_mask_schedules_hand_values():
    v = VARIANTS
    assert mask_ratio_at(0.3, v["original"]) == 0.75
    # curriculum: 0.5 -> 0.75 over the first half, then constant
    assert mask_ratio_at(0.0, v["curriculum"]) == 0.5
    assert math.isclose(mask_ratio_at(0.25, v["curriculum"]), 0.625)
    assert mask_ratio_at(0.5, v["curriculum"]) == 0.75 and mask_ratio_at(0.9, v["improved"]) == 0.75
    assert math.isclose(mask_ratio_at(0.25, v["decreasing"]), 0.825)
    cos = make_config("curriculum", "smoke", overrides={"variant.mask_schedule": "cosine"}).variant
    assert math.isclose(mask_ratio_at(0.25, cos), 0.625)                # midpoint of the cosine
    assert math.isclose(mask_ratio_at(0.125, cos), 0.75 - 0.25 * 0.5 * (1 + math.cos(math.pi / 4)))


def test_learning_rate_hand_values_and_scaling():
    assert lr_at(5, 100, 10, 1e-3) == pytest.approx(5e-4)
    assert lr_at(10, 100, 10, 1e-3) == pytest.approx(1e-3)
    assert lr_at(55, 100, 10, 1e-3) == pytest.approx(5e-4)              # half-way down the cosine
    assert lr_at(100, 100, 10, 1e-3, min_lr=1e-5) == pytest.approx(1e-5)
    assert make_config("original", "paper").train.lr == pytest.approx(1.5e-4 * 64 / 256)


def test_no_weight_decay_on_biases_and_norms():
    model = MAE(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16,
                decoder_depth=1, decoder_num_heads=2)
    no_decay, decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    nd = {names[id(p)] for p in no_decay["params"]}
    d = {names[id(p)] for p in decay["params"]}
    assert no_decay["weight_decay"] == 0 and decay["weight_decay"] == 0.05
    assert {"blocks.0.norm1.weight", "blocks.0.attn.qkv.bias", "norm.bias", "decoder_pred.bias"} <= nd
    assert {"blocks.0.attn.qkv.weight", "patch_embed.proj.weight", "cls_token"} <= d
    assert "pos_embed" not in nd | d  # fixed, not trained


def test_config_validation_messages():
    with pytest.raises(ValueError, match="valid variants: original, improved"):
        make_config("bogus")
    with pytest.raises(ValueError, match="valid presets"):
        make_config("original", "huge")
    with pytest.raises(ValueError, match="valid datasets"):
        make_config("original", "smoke", "imagenet")
    bad = {"model.img_size": 100, "variant.mask_ratio": 1.0, "train.epochs": 0, "train.batch_size": -1,
           "variant.laplacian_weight": -0.1}
    for key, value in bad.items():
        with pytest.raises(ValueError):
            make_config("original", "paper", overrides={key: value})
    cfg = make_config("original", "smoke", overrides={"variant.laplacian_weight": "0.2", "train.epochs": "3"})
    assert cfg.variant.laplacian_weight == 0.2 and cfg.train.epochs == 3


def test_random_ratio_draws_within_its_range_every_step():
    v = VARIANTS["random_ratio"]                      # uniform in [0.6, 0.9]
    assert mask_ratio_at(0.3, v, u=0.0) == pytest.approx(0.6)
    assert mask_ratio_at(0.3, v, u=0.5) == pytest.approx(0.75)
    assert mask_ratio_at(0.9, v, u=0.999) == pytest.approx(0.6 + 0.3 * 0.999)


def test_random_ratio_is_used_by_pretraining(tmp_path):
    from maehelpers.pretrain import pretrain
    from maehelpers.runs import read_jsonl
    pretrain(make_config("random_ratio", "smoke", "synthetic"), tmp_path / "r", progress=False)
    ratios = [r["mask_ratio"] for r in read_jsonl(tmp_path / "r" / "log_steps.jsonl")]
    assert all(0.6 <= r <= 0.9 for r in ratios) and len(set(ratios)) == len(ratios)


def test_replicate_laplacian_covers_border_pixels_hand_values():
    # one 3x3 single-channel patch holding a 1 in its top-left corner
    patch = torch.zeros(1, 1, 9)
    patch[0, 0, 0] = 1.0
    interior = patch_laplacian(patch, 3, 1, "interior")
    assert interior.shape == (1, 1, 1) and interior.item() == 0.0   # the centre does not see the corner
    full = patch_laplacian(patch, 3, 1, "replicate").reshape(3, 3)
    # replicate padding: the corner's up and left neighbours are itself: 1 + 1 + 0 + 0 - 4 = -2;
    # its right and lower neighbours see it once: +1; everything else 0
    expected = torch.tensor([[-2.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert torch.equal(full, expected)
    mask = torch.ones(1, 1)
    assert laplacian_loss(patch, torch.zeros(1, 1, 9), mask, 3, 1, "replicate").item() == pytest.approx(4 / 9)
    assert laplacian_loss(patch, torch.zeros(1, 1, 9), mask, 3, 1, "interior").item() == 0.0


def test_lowpass_target_hand_values():
    from maehelpers.losses import gaussian_blur
    flat = torch.full((1, 1, 8, 8), 0.7)
    assert torch.allclose(gaussian_blur(flat, 1.0), flat)            # a constant passes unchanged
    spike = torch.zeros(1, 1, 9, 9)
    spike[0, 0, 4, 4] = 1.0
    out = gaussian_blur(spike, 1.0)                                  # radius 2: weights exp(-x^2 / 2)
    w = torch.tensor([math.exp(-x * x / 2) for x in (-2, -1, 0, 1, 2)])
    w = w / w.sum()
    assert out[0, 0, 4, 4].item() == pytest.approx((w[2] * w[2]).item())
    assert out[0, 0, 3, 5].item() == pytest.approx((w[1] * w[3]).item())
    assert out.sum().item() == pytest.approx(1.0)                    # mass kept
    model = MAE(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16,
                decoder_depth=1, decoder_num_heads=2)
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    _, parts, pred, mask = pretrain_loss(model, imgs, 0.75, VARIANTS["lowpass"], noise)
    blurred_target = model.target(gaussian_blur(imgs, 1.0))
    assert parts["mse"].item() == pytest.approx(masked_mse(pred, blurred_target, mask).item(), rel=1e-6)


# ----------------------------------------------------------------------------- registered terms and schedules
def test_a_term_from_a_notebook_cell_reaches_the_gradient_and_is_named_in_the_config():
    import torch.nn.functional as F
    from maehelpers.losses import TERMS, register_term

    @register_term("test_spread_floor")
    def spread_floor(x):                          # what a notebook cell would define
        return F.relu(1.0 - x.pooled("mean").std(dim=0)).mean()
    try:
        cfg = make_config("original", "smoke", "synthetic", 0, {"variant.extra_terms": [["test_spread_floor", 0.5]]})
        assert cfg.variant.extra_terms == (("test_spread_floor", 0.5),)
        assert cfg.variant.name == "original+extra_terms=(('test_spread_floor', 0.5),)"
        model = MAE(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16,
                    decoder_depth=1, decoder_num_heads=2)
        imgs, noise = torch.randn(4, 3, 32, 32), torch.rand(4, 16)
        total, parts, _, _ = pretrain_loss(model, imgs, 0.75, cfg.variant, noise)
        assert set(parts) == {"mse", "test_spread_floor"}
        assert torch.isclose(total, parts["mse"] + 0.5 * parts["test_spread_floor"])
        parts["test_spread_floor"].backward()
        assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0   # it reaches the encoder
    finally:
        TERMS.pop("test_spread_floor")


def test_bad_terms_are_named_in_one_sentence(tmp_path):
    from maehelpers.losses import TERMS, LossTermError, register_term
    from maehelpers.pretrain import pretrain
    with pytest.raises(ValueError, match="registered loss terms .*laplacian, uniformity"):
        make_config("original", "smoke", "synthetic", 0, {"variant.extra_terms": (("no_such_term", 0.1),)})
    register_term("test_per_sample")(lambda x: x.pooled().norm(dim=1))          # one value per image
    register_term("test_nan")(lambda x: x.pred.sum() * float("nan"))
    try:
        model = MAE(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16,
                    decoder_depth=1, decoder_num_heads=2)
        cfg = make_config("original", "smoke", "synthetic", 0, {"variant.extra_terms": (("test_per_sample", 1.0),)})
        with pytest.raises(LossTermError, match="'test_per_sample' must return a scalar tensor; it returned \\(4,\\)"):
            pretrain_loss(model, torch.randn(4, 3, 32, 32), 0.75, cfg.variant, torch.rand(4, 16))
        cfg = make_config("original", "smoke", "synthetic", 0, {"variant.extra_terms": (("test_nan", 1.0),)})
        with pytest.raises(LossTermError, match="'test_nan' is nan on the first images, before training"):
            pretrain(cfg, tmp_path / "run", progress=False)
        assert not (tmp_path / "run" / "checkpoint_last.pt").exists()             # before any work
    finally:
        TERMS.pop("test_per_sample"), TERMS.pop("test_nan")


def test_a_registered_schedule_is_used_at_every_step():
    from maehelpers.masking import SCHEDULES, register_schedule

    @register_schedule("test_step_up")
    def step_up(progress, start, end, frac, u):
        return start if progress < frac else end
    try:
        v = make_config("original", "smoke", "synthetic", 0, {"variant.mask_schedule": "test_step_up",
                                                              "variant.mask_ratio_start": 0.5}).variant
        assert [mask_ratio_at(p, v) for p in (0.0, 0.49, 0.5, 1.0)] == [0.5, 0.5, 0.75, 0.75]
    finally:
        SCHEDULES.pop("test_step_up")
    with pytest.raises(ValueError, match="unknown mask schedule 'test_step_up'"):
        make_config("original", "smoke", "synthetic", 0, {"variant.mask_schedule": "test_step_up"})


def small_mae(seed=0, **kw):
    torch.manual_seed(seed)
    return MAE(**{**dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=16,
                         decoder_depth=1, decoder_num_heads=2), **kw}).eval()


def test_loss_terms_are_computed_in_fp32_under_autocast(monkeypatch):
    torch.manual_seed(0)
    model = MAE(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16,
                decoder_depth=1, decoder_num_heads=2)
    variant = make_config("improved", "smoke", "synthetic", overrides={"variant.uniformity_form": "umae"}).variant
    imgs, noise = torch.randn(8, 3, 32, 32), torch.rand(8, 16)
    seen = {}
    monkeypatch.setitem(L.UNIFORMITY, "umae", lambda f: seen.setdefault("f", f) is f and uniformity_umae(f))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, parts, pred, mask = pretrain_loss(model, imgs, 0.75, variant, noise)
    target = model.target(imgs)
    exact = laplacian_loss(pred.float(), target, mask, 8, 3)  # outside autocast: fp32 throughout
    assert parts["laplacian"].dtype == torch.float32
    assert parts["laplacian"].item() == pytest.approx(exact.item(), rel=1e-6)
    assert parts["uniformity"].item() == pytest.approx(uniformity_umae(seen["f"].float()).item(), rel=1e-6)


@pytest.mark.parametrize("overrides, message", [
    ({"variant.uniformity_weight": 0.01, "train.batch_size": 1}, "batch_size must be >= 2"),
    ({"variant.mask_ratio": 0.0, "variant.mask_ratio_start": 0.0}, "masks no patch"),
    ({"train.warmup_epochs": 2}, "warmup_epochs .* must be shorter"),
])
def test_bad_settings_are_refused_before_any_work(overrides, message):
    with pytest.raises(ValueError, match=message):
        make_config("original", "smoke", "synthetic", overrides=overrides)


def test_a_changed_variant_gets_a_name_of_its_own():
    cfg = make_config("laplacian", "smoke", "synthetic", overrides={"variant.laplacian_weight": 0.5})
    assert cfg.variant.name == "laplacian+laplacian_weight=0.5"
    named = make_config("laplacian", "smoke", "synthetic",
                        overrides={"variant.laplacian_weight": 0.5, "variant.name": "lap10"})
    assert named.variant.name == "lap10"


def test_uniformity_gradient_reaches_the_encoder():
    model = small_mae()
    variant = make_config("uniformity", "smoke", "synthetic").variant
    _, parts, _, _ = L.pretrain_loss(model.train(), torch.randn(8, 3, 32, 32), 0.75, variant, torch.rand(8, 16))
    parts["uniformity"].backward()
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.patch_embed.proj.weight.grad.abs().sum() > 0
    assert model.decoder_pred.weight.grad is None or model.decoder_pred.weight.grad.abs().sum() == 0
