"""Exports that other libraries load: timm's VisionTransformer (the encoder) and Hugging Face's
ViTMAEForPreTraining (the whole MAE), strict keys, the same numbers, and a model card."""
import subprocess
import sys

import pytest
import torch

from maehelpers import export as X
from maehelpers.config import make_config
from maehelpers.checkpoints import load_encoder, load_mae
from maehelpers.pretrain import pretrain
from maehelpers.runs import merge_results


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "run"
    pretrain(make_config("original", "smoke", "synthetic"), path, progress=False)
    merge_results(path, {"knn_top1_mean": 61.5})
    return path


def test_timm_encoder_gives_our_features_and_interpolates_to_another_size(run, tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import load_file                           # a dependency of timm
    out = subprocess.run([sys.executable, "-m", "maehelpers", "export", str(run), "--to", "timm", str(tmp_path / "t")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    encoder, _ = load_encoder(run / "encoder_pretrained.pt")
    net = timm.create_model(f"local-dir:{tmp_path / 't'}", pretrained=True)   # timm's own loader, strict keys
    imgs = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net.eval().forward_features(imgs), encoder.forward_tokens(imgs), atol=1e-5)
    assert timm.data.resolve_data_config({}, model=net)["input_size"] == (3, 32, 32)
    ft = timm.create_model(f"local-dir:{tmp_path / 't'}", pretrained=True, num_classes=10, global_pool="avg")
    exported, fresh = load_file(tmp_path / "t" / "model.safetensors"), ft.state_dict()   # the official fine-tuning model:
    assert set(fresh) - set(exported) == {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}  # new head
    assert all(torch.equal(fresh[k], v) for k, v in exported.items() if k in fresh) and fresh["head.weight"].shape[0] == 10
    card = (tmp_path / "t" / "README.md").read_text()
    assert "k-NN (k 20), mean of patch tokens: 61.50" in card and "synthetic" in card and "seed 0" in card
    X.export_timm(run, tmp_path / "t48", img_size=48)                  # 6 x 6 patches instead of 4 x 4
    bigger, _ = load_encoder(run / "encoder_pretrained.pt", 48)
    net48 = timm.create_model(f"local-dir:{tmp_path / 't48'}", pretrained=True)
    imgs48 = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.allclose(net48.eval().forward_features(imgs48), bigger.forward_tokens(imgs48), atol=1e-5)


def test_hugging_face_round_trip_gives_our_loss_prediction_and_mask(run, tmp_path):
    pytest.importorskip("transformers")
    from transformers import ViTMAEForPreTraining
    X.export_hf(run, tmp_path / "hf")
    hf = ViTMAEForPreTraining.from_pretrained(tmp_path / "hf").eval()
    mae, _ = load_mae(run)
    imgs, noise = torch.randn(3, 3, 32, 32), torch.rand(3, 16)
    with torch.no_grad():
        loss, pred, mask = mae(imgs, 0.75, noise)
        theirs = hf(pixel_values=imgs, noise=noise)
    assert torch.equal(theirs.mask, mask)
    assert torch.allclose(theirs.logits, pred, atol=1e-5) and abs(theirs.loss.item() - loss.item()) < 1e-5
    assert (tmp_path / "hf" / "model.safetensors").exists() and "from_pretrained" in (tmp_path / "hf" / "README.md").read_text()
    from transformers import ViTForImageClassification                # the same folder, read for fine-tuning
    clf = ViTForImageClassification.from_pretrained(tmp_path / "hf", num_labels=10).eval()
    encoder, _ = load_encoder(run / "encoder_pretrained.pt")
    with torch.no_grad():
        assert torch.allclose(clf.vit(pixel_values=imgs).last_hidden_state, encoder.forward_tokens(imgs), atol=1e-5)


def test_a_renamed_or_resized_key_is_refused_with_its_name(run):
    pytest.importorskip("transformers")
    mae, cfg = load_mae(run)
    state = mae.state_dict()
    state["blocks.0.mlp.gate.weight"] = state.pop("blocks.0.mlp.fc1.weight")
    with pytest.raises(X.ExportError, match="no Hugging Face name for blocks.0.mlp.gate.weight"):
        X.hf_state(state, ["vit.layers.0.attention.q_proj.weight"])
    pytest.importorskip("timm")
    encoder, _ = load_encoder(run / "encoder_pretrained.pt")
    bad = {**encoder.state_dict()}
    bad = {k: v for k, v in bad.items() if k.startswith(("patch_embed", "cls_token", "pos_embed", "blocks", "norm."))}
    bad["cls_token"] = torch.zeros(1, 1, cfg.model.embed_dim + 1)
    with pytest.raises(X.ExportError, match="other shapes \\['cls_token'\\]"):
        X.load_strict(X.timm_model(cfg.model), bad, "timm VisionTransformer")
