import json
import math
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import torch

from maehelpers.config import make_config
from maehelpers.data import IMAGENET_STD, ImageSet, denormalize, load_dataset, normalize, prepare
import maehelpers.finetune as F
from maehelpers.evaluate import compare_runs, evaluate_run, make_scratch_run, recon_run
from maehelpers.finetune import finetune
from maehelpers.optim import param_groups_lrd
from maehelpers.probes import cached_features, file_key, knn_top1, linear_probe
from maehelpers.metrics import PSNR_CAP, masked_hf_error, masked_psnr, reconstruct, reconstruction_metrics, to_display
from maehelpers.model import MAE, ViTClassifier
from maehelpers.train_log import HEALTH_IMAGES, feature_health_of
from maehelpers.checkpoints import build_model, load_encoder, load_mae
from maehelpers.pretrain import pretrain
from maehelpers.runs import epoch_rows, load_torch, read_jsonl, read_results
from maehelpers.viz import draw_curves, draw_recon_grid, draw_results, plot_curves, plot_results, recon_grid
from maehelpers.widgets import Inspector, draw_inspector


def blobs(n, dim=32, classes=4, seed=0, random_labels=False):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    centres = 4 * torch.randn(classes, dim, generator=torch.Generator().manual_seed(99))
    x = centres[y] + torch.randn(n, dim, generator=g)
    if random_labels:
        y = torch.randint(0, classes, (n,), generator=g)
    return x, y


def test_probe_and_knn_on_separable_and_random_labels():
    xtr, ytr = blobs(400)
    xte, yte = blobs(200, seed=1)
    lp = linear_probe(xtr, ytr, xte, yte, epochs=30, batch_size=64, progress=False)
    assert lp["top1"] > 95
    assert knn_top1(xtr, ytr, xte, yte) > 95
    rtr, rytr = blobs(400, random_labels=True)
    rte, ryte = blobs(400, seed=1, random_labels=True)
    chance = 25
    assert abs(linear_probe(rtr, rytr, rte, ryte, epochs=30, batch_size=64, progress=False)["top1"] - chance) < 10
    assert abs(knn_top1(rtr, rytr, rte, ryte) - chance) < 10


def test_knn_hand_example():
    train = torch.tensor([[1.0, 0], [0.9, 0.1], [0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    assert knn_top1(train, labels, torch.tensor([[1.0, 0.05], [0.05, 1.0]]), torch.tensor([0, 1]), k=1) == 100.0
    # cosine, not the dot product: a long vector in another direction must not win on its length
    long_and_off = torch.tensor([[10.0, 0.0], [0.6, 0.8]])
    query = torch.tensor([[0.6, 0.8]])                  # cosine 0.6 vs 1.0; dot 6.0 vs 1.0
    assert knn_top1(long_and_off, torch.tensor([0, 1]), query, torch.tensor([1]), k=1) == 100.0


def test_psnr_hand_value_cap_and_mask():
    target = torch.zeros(1, 3, 4, 4)
    pred = torch.zeros(1, 3, 4, 4)
    mask = torch.zeros(1, 3, 4, 4)
    mask[..., :2, :] = 1                       # top half masked
    pred[..., :2, :] = 0.1                     # error 0.1 on every masked pixel: MSE 0.01 -> 20 dB
    pred[..., 2:, :] = 0.9                     # visible pixels are ignored
    assert torch.isclose(masked_psnr(pred, target, mask), torch.tensor([20.0]))
    assert masked_psnr(target, target, mask).item() == PSNR_CAP



def test_hf_error_hand_value_inside_masked_patches_only():
    # 8x8 image, patch 4: patches 0 (top-left) and 3 (bottom-right) masked
    target = torch.zeros(1, 3, 8, 8)
    mask = torch.zeros(1, 3, 8, 8)
    mask[..., :4, :4] = 1
    mask[..., 4:, 4:] = 1
    pred = target.clone()
    pred[..., :4, :4] += 0.3                   # a constant offset per patch: a seam, no high frequency
    pred[..., :4, 4:] = torch.rand(3, 4, 4)    # visible patches are ignored, whatever they hold
    assert masked_hf_error(pred, target, mask, 4).item() == pytest.approx(0.0, abs=1e-6)
    pred[..., 5, 5] += 1.0                     # a spike at interior pixel (1, 1) of patch 3
    # Laplacian at the 2x2 interior: -4 at the spike, 1 at its two interior neighbours, 0 at the
    # diagonal: mean |.| = 6 / 4 = 1.5 for that patch, 0 for patch 0; mean over masked patches = 0.75
    assert masked_hf_error(pred, target, mask, 4).item() == pytest.approx(0.75)


def test_reconstruct_undoes_norm_pix_with_target_stats():
    torch.manual_seed(0)
    model = MAE(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16,
                decoder_depth=1, decoder_num_heads=2, norm_pix_loss=True)
    imgs = torch.randn(2, 3, 32, 32) * 0.5
    original, masked, recon, pasted, pm = reconstruct(model, imgs, 0.75)
    assert recon.shape == original.shape == pm.shape and 0 <= recon.min() and recon.max() <= 1
    assert torch.equal(pasted * (1 - pm), original * (1 - pm))     # visible pixels come from the image
    assert pm[:, 0].mean().item() == pytest.approx(0.75)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for variant in ("original", "improved"):
        pretrain(make_config(variant, "smoke", "synthetic"), root / variant, progress=False)
    return root


def test_grid_uses_identical_masks_and_fixed_size(two_runs, tmp_path):
    models = {name: load_mae(two_runs / name)[0] for name in ("original", "improved")}
    images = load_dataset("synthetic", "test").images[:3]
    fig, psnrs, masks = draw_recon_grid(models, images, 32)
    assert torch.equal(masks["original"], masks["improved"])
    path = tmp_path / "recon_grid.png"
    recon_grid(models, images, 32, path)
    assert Image.open(path).size == (int(1.6 * 8 * 100), int(1.75 * 3 * 100))   # image, masked, 3 views x 2
    titles = [ax.get_title() for ax in fig.axes[:8]]
    assert titles[2:5] == ["original:\noutput (target space)", "original:\ntrue patch stats (borrowed)\n"
                           + titles[3].split("\n")[-1], "original:\nborrows nothing\n" + titles[4].split("\n")[-1]]
    models["original"].norm_pix_loss = False      # a pixel-target model: its output is the reconstruction
    assert len(draw_recon_grid(models, images, 32)[0].axes) == 3 * (2 + 1 + 3)
    curves = plot_curves([two_runs / "original", two_runs / "improved"], tmp_path / "curves.png")
    assert Image.open(curves).size == (1800, 320)
    from maehelpers.viz import draw_curves
    monitor = draw_curves([two_runs / "original"]).axes[4]     # the k-NN monitor: mean pool and cls, 8 points each
    assert [len(line.get_xdata()) for line in monitor.lines] == [8, 8]
    bars = plot_results([{"variant": "a", "lp_top1": 50.0}, {"variant": "b", "lp_top1": 60.0}], tmp_path / "bars.png")
    assert Image.open(bars).size[1] == 350


def test_inspector_redraws_on_slider_change(two_runs):
    models = {name: load_mae(two_runs / name)[0] for name in ("original", "improved")}
    images = load_dataset("synthetic", "test").images[:5]
    ins = Inspector(models, images, 32)
    assert ins.redraws == 1
    before = dict(ins.psnrs)
    ins.index.value = 3
    assert ins.redraws == 2 and ins.psnrs != before
    ins.ratio.value = 0.5
    assert ins.redraws == 3
    _, direct = draw_inspector(models, images, 32, index=3, mask_ratio=0.5)
    assert direct == pytest.approx(ins.psnrs)
    assert ins.index.continuous_update is False and ins.ratio.continuous_update is False


def test_inspector_shows_errors_and_an_empty_selection_in_the_cell(two_runs):
    models = {name: load_mae(two_runs / name)[0] for name in ("original", "improved")}
    images = load_dataset("synthetic", "test").images[:5]

    def broken(*args):
        raise RuntimeError("the draw function broke")
    ins = Inspector(models, images, 32, draw=broken)
    assert ins.redraws == 0 and "the draw function broke" in ins.status.value
    assert isinstance(ins.error, RuntimeError)
    ok = Inspector(models, images, 32)
    ok.names.value = ()
    assert "No model selected" in ok.status.value and ok.redraws == 1
    with pytest.raises(ValueError, match="at least one model"):
        Inspector({}, images, 32)


def test_finetune_trains_the_encoder_and_scratch_differs(tmp_path):
    cfg = make_config("original", "smoke", "synthetic")
    pretrain(cfg, tmp_path / "run", progress=False)
    train = load_dataset("synthetic", "train", max_images=64)
    test = load_dataset("synthetic", "test", max_images=32)
    state = load_torch(tmp_path / "run" / "encoder_pretrained.pt")["model"]
    res, model = finetune(cfg, train, test, state, progress=False)
    key = "blocks.0.attn.qkv.weight"
    assert not torch.allclose(model.state_dict()[key], state[key])          # the encoder itself trained
    assert 0 <= res["top1"] <= 100 and res["steps"] == 2
    scratch_cfg = make_config("original", "smoke", "synthetic")
    torch.manual_seed(0)
    from maehelpers.model import ViTClassifier
    fresh = ViTClassifier(10, **{k: v for k, v in vars(scratch_cfg.model).items()})
    loaded = ViTClassifier(10, **{k: v for k, v in vars(scratch_cfg.model).items()})
    loaded.load_encoder(state)
    assert not torch.allclose(fresh.state_dict()[key], loaded.state_dict()[key])
    assert torch.equal(loaded.state_dict()[key], state[key])


def test_paper_preset_fine_tunes_with_the_official_augmentation_and_short_presets_without():
    paper, ablation = make_config("original", "paper").eval, make_config("original", "ablation").eval
    official = (9.0, 0.5, 2, 0.25, 0.8, 1.0, 0.1)
    names = ("ft_randaug_magnitude", "ft_randaug_mstd", "ft_randaug_ops", "ft_reprob", "ft_mixup", "ft_cutmix",
             "ft_label_smoothing")
    assert tuple(getattr(paper, n) for n in names) == official
    assert (ablation.ft_randaug_magnitude, ablation.ft_reprob, ablation.ft_mixup, ablation.ft_cutmix) == (0, 0, 0, 0)


def _augmenter(seed=0, **settings):
    from maehelpers.ft_augment import ft_augmenter
    e = make_config("original", "smoke", "synthetic", overrides={f"eval.{k}": v for k, v in settings.items()}).eval
    return ft_augmenter(e, 10, "cpu", seed)


def test_randaugment_and_random_erasing_act_per_image():
    """Identical images must come out different: v2 applied to the whole batch would give every image
    the same ops and the same erased rectangle."""
    x = torch.rand(1, 3, 16, 16).expand(8, -1, -1, -1).contiguous()
    y = torch.arange(8)
    out, labels = _augmenter(ft_randaug_magnitude=9.0, ft_reprob=0.0)(x, y)
    assert torch.equal(labels, y)
    assert len({tuple(o.flatten().tolist()) for o in out}) >= 6
    out, _ = _augmenter(ft_reprob=1.0)(x, y)
    erased = [(o != normalize(x[:1])[0]).any(0) for o in out]   # where each image was erased
    assert all(m.any() for m in erased)
    assert len({tuple(m.flatten().tolist()) for m in erased}) >= 6
    assert torch.equal(_augmenter()(x, y)[0], normalize(x))      # all parts off: normalising only


def test_each_randaugment_op_is_torchvisions_at_every_magnitude_and_sign():
    """The batched ops against v2.RandAugment's own op on each image (nearest, zero fill), including a
    low-contrast image and a flat patch (AutoContrast, Equalize and Solarize's edge cases)."""
    from torchvision.transforms import v2
    from maehelpers import ft_augment as A
    torch.manual_seed(0)
    u8 = torch.randint(0, 256, (4, 3, 20, 24), dtype=torch.uint8)
    u8[1] = u8[1] // 3 + 40
    u8[2, :, :5] = 7
    u8[3] = 128                                                          # a flat image
    ra = v2.RandAugment(num_ops=1, num_magnitude_bins=11)
    table, _, kernel = A._constants(torch.device("cpu"), 11, 20, 24)
    for k, name in enumerate(A.OPS):
        for m in range(11):
            for sign in ((1, -1) if name in A.SIGNED else (1,)):
                level = float(table[k, m]) * sign
                theirs = torch.stack([ra._apply_image_or_video_transform(img, name, level, interpolation=ra.interpolation,
                                                                         fill=ra._fill) for img in u8])
                ours = A.apply_ops(u8, torch.full((4,), k), torch.full((4,), level), kernel)
                off = (theirs.int() - ours.int()).abs()
                assert off.max() <= 1 and (off > 0).float().mean() < 0.005, (name, m, sign)


def _ks(a, b) -> float:
    from scipy.stats import ks_2samp
    return ks_2samp(a.numpy(), b.numpy()).pvalue


def test_batched_randaugment_and_erasing_are_distributed_as_torchvisions_per_image():
    """The same picture through torchvision per image and through the batched version, 3,000 times each:
    the distributions of what each does to it (mean change, share of pixels changed) agree (KS test)."""
    from torchvision.transforms import v2
    from maehelpers import ft_augment as A
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (3, 12, 12), dtype=torch.uint8, generator=g)
    n = 3000
    batch = img.expand(n, -1, -1, -1).contiguous()
    torch.manual_seed(0)
    theirs = torch.stack([v2.RandAugment(2, 9, num_magnitude_bins=11)(img) for _ in range(n)])
    ours = A.rand_augment(batch, torch.full((n,), 9), 2, 11, torch.Generator().manual_seed(1))
    for stat in (lambda t: (t.float() - img.float()).mean((1, 2, 3)), lambda t: (t != img).float().mean((1, 2, 3))):
        assert _ks(stat(theirs), stat(ours)) > 0.01
    x = torch.zeros(n, 3, 16, 16)
    erase = v2.RandomErasing(0.5, scale=(0.02, 1 / 3), ratio=(0.3, 1 / 0.3), value="random")
    theirs = torch.stack([erase(x[0]) for _ in range(n)]) != 0
    ours = A.random_erase(x, 0.5, generator=torch.Generator().manual_seed(2)) != 0
    for stat in (lambda t: t.float().mean((1, 2, 3)), lambda t: t.any(1).float().argmax(1).float().mean(1)):
        assert _ks(stat(theirs), stat(ours)) > 0.01


def test_mixup_and_cutmix_give_soft_targets_that_sum_to_one():
    """Each image is mixed with the one before it, and its target gives its own label the share of it
    that is left: the pixels it keeps (cutmix) or the weight of the blend (mixup)."""
    x, y = torch.rand(8, 3, 16, 16), torch.arange(8)
    kinds = set()
    for seed in range(4):                                         # both mixup and cutmix come up
        out, soft = _augmenter(seed, ft_mixup=0.8, ft_cutmix=1.0)(x, y)
        own, before = soft[torch.arange(8), y], soft[torch.arange(8), y.roll(1)]
        assert torch.allclose(soft.sum(1), torch.ones(8)) and torch.allclose(own + before, torch.ones(8))
        kept = (out == normalize(x)).all(1).float().mean((1, 2))
        if kept.any():
            kinds.add("cutmix")
            assert torch.allclose(own, kept)
        else:
            kinds.add("mixup")
            assert torch.allclose(out, normalize(x) * own[0] + normalize(x).roll(1, 0) * before[0], atol=1e-6)
    assert kinds == {"mixup", "cutmix"}


def test_finetune_with_the_official_augmentation_runs():
    cfg = make_config("original", "smoke", "synthetic", overrides={
        "eval.ft_mixup": 0.8, "eval.ft_cutmix": 1.0, "eval.ft_randaug_magnitude": 9.0, "eval.ft_reprob": 0.25})
    train = load_dataset("synthetic", "train", max_images=64)
    res, _ = finetune(cfg, train, load_dataset("synthetic", "test", max_images=16), None, progress=False)
    assert res["steps"] == 2 and res["final_train_loss"] > 0


def test_evaluate_run_merges_and_skips_finished_steps(two_runs, tmp_path):
    run = two_runs / "original"
    res = evaluate_run(run, progress=False)
    for key in ("lp_top1", "knn_top1", "ft_top1", "pretrain_time_s", "config"):
        assert key in res
    assert res["lp"]["key"]["epochs"] == 5 and res["lp"]["key"]["n_train"] == 128
    cache = list((run / "features").glob("*.pt"))
    assert len(cache) == 2                                       # train and test features cached
    mtimes = {p: p.stat().st_mtime_ns for p in cache}
    res2 = evaluate_run(run, steps=("lp",), force=True, progress=False)
    assert {p: p.stat().st_mtime_ns for p in cache} == mtimes   # no re-encoding
    assert res2["ft_top1"] == res["ft_top1"]                    # other results kept
    recon = recon_run(run, load_dataset("synthetic", "test"))
    assert math.isfinite(recon["psnr_masked"]) and recon["lp_top1"] == res2["lp_top1"]
    scratch = make_scratch_run(make_config("original", "smoke", "synthetic"), two_runs / "scratch")
    evaluate_run(scratch, steps=("ft",), progress=False)
    a = load_torch(scratch / "encoder_pretrained.pt")["model"]["blocks.0.attn.qkv.weight"]
    b = load_torch(run / "encoder_pretrained.pt")["model"]["blocks.0.attn.qkv.weight"]
    assert not torch.equal(a, b)
    rows = compare_runs([run, scratch], tmp_path / "compare")
    assert rows[1]["ft_top1"] == read_results(scratch)["ft_top1"] and rows[1]["ft_recipe"] == "scratch"
    assert "| original |" in (tmp_path / "compare" / "compare.md").read_text()
    assert json.loads((tmp_path / "compare" / "compare.json").read_text())["variants"] == rows


def _cli(*args, cwd):
    out = subprocess.run([sys.executable, "-m", "maehelpers", *args], capture_output=True, text=True,
                         timeout=600, cwd=cwd)
    assert out.returncode == 0, out.stderr
    return out.stdout + out.stderr


def test_psnr_floor_is_the_patch_mean_hand_value():
    # a 2x2 patch whose normalised pixels (all channels) are a checkerboard of -1 and +1: a decoder
    # that outputs zeros is filled with the patch mean 0, so every pixel is off by 1 in normalised
    # space, i.e. by the channel's std in display space: MSE = mean(std^2), PSNR = -10 log10 of it
    model = MAE(img_size=2, patch_size=2, embed_dim=8, depth=1, num_heads=1, decoder_embed_dim=8,
                decoder_depth=1, decoder_num_heads=1)
    imgs = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).expand(1, 3, 2, 2)
    mask = torch.ones(1, 1)
    original, _, floor, _, pm = to_display(model, imgs, torch.zeros(1, 1, 12), mask)
    assert torch.allclose(floor, denormalize(torch.zeros(1, 3, 2, 2)), atol=1e-6)
    std2 = sum(s * s for s in IMAGENET_STD) / 3
    assert masked_psnr(floor, original, pm).item() == pytest.approx(-10 * math.log10(std2), abs=1e-3)


def test_zero_decoder_scores_exactly_the_floor():
    """A decoder that outputs zeros (norm-pix space) is the patch-mean predictor: its PSNR equals
    the reported floor, and its masked loss is the target's variance, (n - 1) / n per patch."""
    torch.manual_seed(0)
    model = MAE(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16,
                decoder_depth=1, decoder_num_heads=2)
    torch.nn.init.zeros_(model.decoder_pred.weight)
    torch.nn.init.zeros_(model.decoder_pred.bias)
    images = load_dataset("synthetic", "test").images[:16]
    m = reconstruction_metrics(model, images, 32)
    assert m["psnr_masked"] == pytest.approx(m["psnr_masked_floor"], abs=1e-3)
    assert m["hf_error_masked"] == pytest.approx(m["hf_error_floor"], abs=1e-5)
    n = 8 * 8 * 3  # unbiased per-patch variance: mean of squares of a normalised patch = (n - 1) / n
    assert m["nmse_masked"] == pytest.approx((n - 1) / n, abs=2e-3)


def test_scratch_fine_tunes_without_layer_decay(tmp_path, monkeypatch):
    seen = []
    real = F.param_groups_lrd
    monkeypatch.setattr(F, "param_groups_lrd", lambda m, wd, decay: seen.append(decay) or real(m, wd, decay))
    cfg = make_config("original", "smoke", "synthetic")
    pretrain(cfg, tmp_path / "original", progress=False)
    scratch = make_scratch_run(cfg, tmp_path / "scratch")
    evaluate_run(tmp_path / "original", steps=("ft",), progress=False)
    evaluate_run(scratch, steps=("ft",), progress=False)
    assert seen == [0.75, 1.0]
    assert "no layer-wise" in read_results(scratch)["ft"]["recipe"]
    assert read_results(scratch)["ft"]["layer_decay"] == 1.0


def test_retrained_run_is_evaluated_again_not_shown_stale(tmp_path):
    common = ["--preset", "smoke", "--dataset", "synthetic", "--runs-root", str(tmp_path / "runs")]
    _cli("pretrain", *common, "--seed", "0", "--no-progress", cwd=tmp_path)
    _cli("evaluate", *common, "--steps", "lp,knn", cwd=tmp_path)
    run = tmp_path / "runs" / "original"
    first = read_results(run)
    for f in ("checkpoint_last.pt", "encoder_pretrained.pt"):
        (run / f).unlink()
    _cli("pretrain", *common, "--seed", "1", "--no-progress", cwd=tmp_path)
    assert "lp_top1" not in read_results(run)          # the old encoder's scores are gone at once
    out = _cli("evaluate", *common, "--steps", "lp,knn", cwd=tmp_path)
    second = read_results(run)
    assert "original: lp reused" not in out
    assert second["lp"]["key"]["encoder"] == file_key(run / "encoder_pretrained.pt") != first["lp"]["key"]["encoder"]
    assert second["knn_top1_cls"] != first["knn_top1_cls"] or second["lp_top1_cls"] != first["lp_top1_cls"]
    again = _cli("evaluate", *common, "--steps", "lp,knn", cwd=tmp_path)
    assert "original: lp reused" in again and "original: knn reused" in again
    changed = evaluate_run(run, steps=("lp",), progress=False, overrides={"eval.lp_epochs": 2})
    assert changed["lp"]["key"]["epochs"] == 2          # a changed setting recomputes


def test_cached_features_are_keyed_by_the_images_not_their_count(tmp_path):
    cfg = make_config("original", "smoke", "synthetic")
    pretrain(cfg, tmp_path / "run", progress=False)
    a = ImageSet(torch.zeros(8, 3, 32, 32, dtype=torch.uint8), torch.zeros(8, dtype=torch.long), [], "folder")
    b = ImageSet(torch.full((8, 3, 32, 32), 200, dtype=torch.uint8), torch.zeros(8, dtype=torch.long), [], "folder")
    fa = cached_features(tmp_path / "run", a, "train", progress=False)
    fb = cached_features(tmp_path / "run", b, "train", progress=False)
    assert not torch.allclose(fa["cls"], fb["cls"])


def test_curves_compare_the_shared_term_and_keep_extra_terms_apart(tmp_path):
    for variant in ("original", "improved"):
        pretrain(make_config(variant, "smoke", "synthetic"), tmp_path / variant, progress=False)
    fig = draw_curves([tmp_path / "original", tmp_path / "improved"])
    shared, extra = fig.axes[0], fig.axes[1]
    mse = [r["mse"] for r in read_jsonl(tmp_path / "improved" / "log_steps.jsonl")]
    assert list(shared.lines[1].get_ydata()) == mse       # the masked MSE, not the total
    assert sorted(line.get_label() for line in extra.lines) == ["improved: laplacian", "improved: uniformity"]


def test_results_chart_draws_no_bar_for_a_missing_metric_and_shows_seed_spread():
    rows = [{"variant": "original", "seeds": [0, 1], "lp_top1": 60.0, "lp_top1_sd": 2.0, "ft_top1": None},
            {"variant": "improved", "seeds": [0], "lp_top1": 62.0, "ft_top1": 70.0}]
    fig = draw_results(rows, metrics=("lp_top1", "ft_top1"))
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert heights[:2] == [60.0, 62.0] and np.isnan(heights[2]) and heights[3] == 70.0
    assert "2 seeds" in ax.get_xticklabels()[0].get_text() and "1 seed" in ax.get_xticklabels()[1].get_text()


def test_compare_table_shows_spread_over_seeds_and_blanks(tmp_path):
    runs = []
    for seed in (0, 1):
        cfg = make_config("original", "smoke", "synthetic", seed=seed)
        pretrain(cfg, tmp_path / f"original_s{seed}", progress=False)
        evaluate_run(tmp_path / f"original_s{seed}", steps=("knn",), progress=False)
        runs.append(tmp_path / f"original_s{seed}")
    rows = compare_runs(runs, tmp_path / "compare")
    vals = [read_results(r)["knn_top1"] for r in runs]
    assert rows[0]["seeds"] == [0, 1] and rows[0]["knn_top1"] == pytest.approx(sum(vals) / 2)
    table = (tmp_path / "compare" / "compare.md").read_text()
    assert f"{sum(vals) / 2:.2f} ± " in table and "| - |" in table  # spread shown; ft not measured: blank


def test_probe_features_come_from_the_checkpoint_weights(tmp_path):
    cfg = make_config("original", "smoke", "synthetic")
    pretrain(cfg, tmp_path / "run", progress=False)
    data = load_dataset("synthetic", "test", max_images=16)
    feats = cached_features(tmp_path / "run", data, "test", progress=False)
    trained, _ = load_encoder(tmp_path / "run" / "encoder_pretrained.pt")
    x = prepare(data.images, 32)
    with torch.no_grad():
        assert torch.allclose(feats["cls"], trained.eval().forward_features(x, "cls"), atol=1e-5)
        fresh = build_model(cfg).eval()
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


def test_feature_health_hand_values():
    from maehelpers.metrics import feature_health
    square = torch.tensor([[1.0, 0], [-1, 0], [0, 1], [0, -1]])      # centred, two equal singular values
    line = torch.tensor([[1.0, 0], [2, 0], [3, 0]])                    # rank 1 after centring
    assert feature_health(square)["effective_rank"] == pytest.approx(2.0, abs=1e-5)
    assert feature_health(line)["effective_rank"] == pytest.approx(1.0, abs=1e-5)
    same, orthogonal = torch.tensor([[1.0, 0], [2, 0]]), torch.tensor([[1.0, 0], [0, 3]])
    assert feature_health(same)["uniformity_umae"] == pytest.approx(1.0)       # cos 1 between the two
    assert feature_health(same)["uniformity_wi"] == pytest.approx(0.0, abs=1e-6)  # log exp(0)
    assert feature_health(orthogonal)["uniformity_umae"] == pytest.approx(0.0, abs=1e-7)
    assert feature_health(orthogonal)["uniformity_wi"] == pytest.approx(-4.0)   # |zi - zj|^2 = 2, exp(-2 * 2)


def test_pretraining_logs_feature_health_per_epoch(two_runs):
    rows = epoch_rows(two_runs / "original")
    assert len(rows) == 2 and all(1 <= r["effective_rank"] <= 32 for r in rows)
    model = load_mae(two_runs / "original")[0]
    images = load_dataset("synthetic", "pretrain", max_images=128).images[:HEALTH_IMAGES]
    assert feature_health_of(model, images, 32)["effective_rank"] == pytest.approx(rows[-1]["effective_rank"], abs=1e-4)


def test_the_honest_view_borrows_nothing_from_the_removed_patches():
    """Change what is under the removed patches: the model's output cannot change (the encoder never
    sees them), so neither may a view that claims to borrow nothing; the borrowed view does change."""
    from maehelpers.metrics import views
    torch.manual_seed(0)
    model = MAE(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=32,
                decoder_depth=1, decoder_num_heads=2).eval()
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        _, pred, mask = model(imgs, 0.75, noise)
        pixel_mask = model.unpatchify(mask.unsqueeze(-1).expand(-1, -1, 8 * 8 * 3))
        other = imgs + 3.0 * torch.randn_like(imgs) * pixel_mask           # new content where removed only
        _, pred2, mask2 = model(other, 0.75, noise)
        assert torch.equal(mask, mask2) and torch.allclose(pred, pred2, atol=1e-6)
        a, b = views(model, imgs, pred, mask), views(model, other, pred2, mask2)
    assert torch.allclose(a["honest"], b["honest"], atol=1e-5)
    assert not torch.allclose(a["true stats"], b["true stats"], atol=1e-3)
    model.norm_pix_loss = False
    pixels = views(model, imgs, pred, mask)
    assert set(pixels) == {"output", "honest"} and torch.equal(pixels["output"], pixels["honest"])


def test_a_correct_prediction_of_a_flat_black_patch_on_a_grey_image_is_drawn_blue_unless_borrowed():
    """docs/protocol.md and notebook 05 explain the blue patches on Fashion-MNIST this way: a black
    patch of a grey image, ImageNet-normalised and then patch-normalised (48 values, unbiased variance,
    as the loss), is (-0.98, -0.37, +1.35) per channel, worked out by hand from the ImageNet constants.
    Given exactly that prediction, the output and the view that borrows nothing are blue; the borrowed
    view is black."""
    from maehelpers.metrics import views
    model = MAE(img_size=8, patch_size=4, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=32,
                decoder_depth=1, decoder_num_heads=2).eval()
    grey = torch.zeros(1, 1, 8, 8)
    grey[..., :4, :] = torch.linspace(0.2, 1.0, 32).view(1, 1, 4, 8)   # top half visible, with contrast
    imgs = normalize(grey)
    target = model.patchify(imgs)
    pred = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    assert pred[0, 3].view(16, 3)[0].tolist() == pytest.approx([-0.98, -0.37, 1.35], abs=0.01)
    mask = torch.tensor([[0.0, 0.0, 1.0, 1.0]])                          # the black bottom half removed
    shown = views(model, imgs, pred, mask)
    black = lambda view: view[0, :, 4:, :].mean((1, 2))                # (R, G, B) over the removed half
    for name in ("output", "honest"):
        r, g, b = black(shown[name]).tolist()
        assert b > g > r and b - r > 0.1, (name, r, g, b)
    assert black(shown["true stats"]).tolist() == pytest.approx([0, 0, 0], abs=0.01)
