"""Take a run further in the ecosystem's own formats: the encoder as a timm VisionTransformer, the
whole MAE as Hugging Face's ViTMAEForPreTraining (save_pretrained, safetensors), each with a model card.

    python -m maehelpers export runs/original --to timm out/original_timm   # encoder (+ --img-size N)
    python -m maehelpers export runs/original --to hf out/original_hf       # encoder and decoder

The parameter names here are the official MAE's, which timm's VisionTransformer shares, so the timm
export is the encoder's state dict (with a config.json that timm's create_model reads), loaded with
strict keys; Hugging Face names differ and split the fused qkv projection, so the HF export maps
every name (both layouts of transformers' ViTMAE, 4.x and 5.x) and loads strictly too. A name that does not map, or a shape that does not fit, is refused
with the names. timm and transformers are optional: `pip install -e .[export]`.
"""
import json
from pathlib import Path

import torch.nn as nn

from .data import IMAGENET_MEAN, IMAGENET_STD
from .model import encoder_state_dict
from .checkpoints import load_encoder, load_mae
from .runs import read_results

LICENSES = {"stl10": "STL-10 (Coates, Ng, Lee 2011): for research; images from ImageNet, see its terms",
            "fashion_mnist": "Fashion-MNIST (Zalando Research): MIT license",
            "cifar10": "CIFAR-10 (Krizhevsky 2009): see the dataset's terms",
            "synthetic": "procedural images made by this package: no restriction",
            "folder": "your own images: their license"}


class ExportError(ValueError):
    """An export whose weights do not fit the target model; the message names the keys."""


TIMM_ARCH = "vit_base_patch16_224"   # timm's entry point only: the config's model_args set every size


def timm_model(model_cfg, img_size: int | None = None):
    """timm's VisionTransformer with a run's sizes: the cls token read after the final norm (what
    the linear probe reads here), no head. The official fine-tuning model is
    `create_model("local-dir:OUT", pretrained=True, num_classes=N, global_pool="avg")`: head and
    fc_norm fresh, the final norm dropped, as the official code loads it."""
    import timm
    return timm.create_model(TIMM_ARCH, pretrained=False, **_timm_args(model_cfg, img_size or model_cfg.img_size))


def _timm_args(m, img_size: int) -> dict:
    return {"img_size": img_size, "patch_size": m.patch_size, "in_chans": m.in_chans, "embed_dim": m.embed_dim,
            "depth": m.depth, "num_heads": m.num_heads, "mlp_ratio": m.mlp_ratio, "qkv_bias": True,
            "global_pool": "token", "num_classes": 0}


def _timm_config(m, img_size: int, dataset: str) -> dict:
    """config.json in the layout timm writes for the Hub, so `create_model("local-dir:OUT")` reads it:
    the architecture, the arguments that rebuild it, how its inputs are prepared, and which layer is
    the classifier (so `num_classes=10` leaves a fresh head instead of failing on a missing one)."""
    return {"architecture": TIMM_ARCH, "num_classes": 0, "num_features": m.embed_dim,
            "model_args": _timm_args(m, img_size),
            "pretrained_cfg": {"input_size": [m.in_chans, img_size, img_size], "fixed_input_size": True,
                               "interpolation": "bicubic", "crop_pct": 1.0, "mean": list(IMAGENET_MEAN),
                               "std": list(IMAGENET_STD), "num_classes": 0, "classifier": "head",
                               "first_conv": "patch_embed.proj",
                               "license": LICENSES.get(dataset, "see the dataset")}}


def load_strict(model: nn.Module, state: dict, what: str) -> nn.Module:
    """load_state_dict(strict=True), with a refusal that names the keys instead of a traceback."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        own = model.state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
        raise ExportError(f"{what}: the weights do not fit (missing {missing[:5]}, unexpected {unexpected[:5]}, "
                          f"other shapes {wrong[:5]})") from e
    return model


def export_timm(run_dir, out, img_size: int | None = None) -> Path:
    """The run's encoder as a timm VisionTransformer (position embeddings interpolated when img_size
    differs): model.safetensors, config.json in timm's Hub layout and a model card, so that
    `timm.create_model("local-dir:OUT", pretrained=True)` (timm >= 1.0.16) rebuilds it."""
    from safetensors.torch import save_file
    model, cfg = load_encoder(Path(run_dir) / "encoder_pretrained.pt", img_size)
    state = encoder_state_dict(model)
    net = load_strict(timm_model(cfg.model, cfg.model.img_size), state, "timm VisionTransformer")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(_timm_config(cfg.model, cfg.model.img_size, cfg.dataset), indent=1) + "\n")
    (out / "README.md").write_text(model_card(run_dir, "timm", cfg))
    return out


# ----------------------------------------------------------------------------- Hugging Face
def hf_config(m):
    from transformers import ViTMAEConfig
    return ViTMAEConfig(hidden_size=m.embed_dim, num_hidden_layers=m.depth, num_attention_heads=m.num_heads,
                        intermediate_size=int(m.embed_dim * m.mlp_ratio), decoder_hidden_size=m.decoder_embed_dim,
                        decoder_num_hidden_layers=m.decoder_depth, decoder_num_attention_heads=m.decoder_num_heads,
                        decoder_intermediate_size=int(m.decoder_embed_dim * m.mlp_ratio), image_size=m.img_size,
                        patch_size=m.patch_size, num_channels=m.in_chans, qkv_bias=True, hidden_act="gelu",
                        layer_norm_eps=1e-6, mask_ratio=0.75, norm_pix_loss=m.norm_pix_loss)


def _block_names(new: bool) -> dict:
    """Our block sub-names -> transformers' (5.x: q/k/v/o_proj and mlp.fc*; 4.x: the older names)."""
    if new:
        return {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.o_proj",
                "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2", "qkv": ("attention.q_proj", "attention.k_proj",
                                                                   "attention.v_proj")}
    return {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.output.dense",
            "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense",
            "qkv": ("attention.attention.query", "attention.attention.key", "attention.attention.value")}


def hf_state(state: dict, hf_keys) -> dict:
    """Our full MAE state dict (official names) in ViTMAEForPreTraining's names and layout."""
    new = any(".layers." in k and "q_proj" in k for k in hf_keys)
    enc_layers, dec_layers = "vit.layers" if new else "vit.encoder.layer", "decoder.decoder_layers"
    sub, out = _block_names(new), {}
    fixed = {"cls_token": "vit.embeddings.cls_token", "pos_embed": "vit.embeddings.position_embeddings",
             "patch_embed.proj.weight": "vit.embeddings.patch_embeddings.projection.weight",
             "patch_embed.proj.bias": "vit.embeddings.patch_embeddings.projection.bias",
             "norm.weight": "vit.layernorm.weight", "norm.bias": "vit.layernorm.bias",
             "mask_token": "decoder.mask_token", "decoder_pos_embed": "decoder.decoder_pos_embed"}
    for k, v in state.items():
        if k in fixed:
            out[fixed[k]] = v
        elif k.startswith(("decoder_embed.", "decoder_norm.", "decoder_pred.")):
            out["decoder." + k] = v
        elif k.startswith(("blocks.", "decoder_blocks.")):
            head, i, rest = k.split(".", 2)
            layers = enc_layers if head == "blocks" else dec_layers
            name, kind = rest.rsplit(".", 1)
            if name == "attn.qkv":
                for part, target in zip(v.chunk(3, dim=0), sub["qkv"]):
                    out[f"{layers}.{i}.{target}.{kind}"] = part
            elif name in sub:
                out[f"{layers}.{i}.{sub[name]}.{kind}"] = v
            else:
                raise ExportError(f"no Hugging Face name for {k}")
        else:
            raise ExportError(f"no Hugging Face name for {k}")
    return out


def hf_model(run_dir):
    """ViTMAEForPreTraining holding the run's whole MAE (encoder and decoder), and the run's config."""
    from transformers import ViTMAEForPreTraining
    mae, cfg = load_mae(run_dir)
    hf = ViTMAEForPreTraining(hf_config(cfg.model))
    return load_strict(hf, hf_state(mae.state_dict(), hf.state_dict().keys()), "ViTMAEForPreTraining").eval(), cfg


def export_hf(run_dir, out) -> Path:
    hf, cfg = hf_model(run_dir)
    out = Path(out)
    hf.save_pretrained(out)
    (out / "README.md").write_text(model_card(run_dir, "hf", cfg))
    return out


# ----------------------------------------------------------------------------- model card
def model_card(run_dir, fmt: str, cfg) -> str:
    r = read_results(run_dir)
    scores = [f"- {name}: {r[k]:.2f}" for k, name in (
        ("lp_top1_cls", "linear probe, cls token"), ("lp_top1_mean", "linear probe, mean of patch tokens"),
        ("knn_top1_cls", "k-NN (k 20), cls token"), ("knn_top1_mean", "k-NN (k 20), mean of patch tokens"),
        ("ft_top1", "fine-tuning")) if r.get(k) is not None]
    settings = {k: (r.get(k) or {}).get("key", {}) for k in ("lp", "knn", "ft") if r.get(k)}
    load = {"timm": ("```python\nimport timm   # >= 1.0.16\n"
                     "model = timm.create_model('local-dir:OUT', pretrained=True)   # features: model.forward_features(x)\n"
                     "# fine-tuning as the official MAE: fresh head and fc_norm on the mean of the patch tokens\n"
                     "model = timm.create_model('local-dir:OUT', pretrained=True, num_classes=10, global_pool='avg')\n```\n\n"
                     "Inputs: the size in config.json, normalised with ImageNet's mean and std "
                     "(`timm.data.resolve_data_config({}, model=model)` gives them)."),
            "hf": ("```python\nfrom transformers import ViTMAEForPreTraining\n"
                   "model = ViTMAEForPreTraining.from_pretrained('OUT')   # model.vit is the encoder\n"
                   "from transformers import ViTForImageClassification   # fine-tuning: the encoder and a fresh classifier\n"
                   "model = ViTForImageClassification.from_pretrained('OUT', num_labels=10)\n```")}[fmt]
    return (f"# MAE {cfg.variant.name}, pretrained with maehelpers\n\n"
            f"- data: {cfg.dataset} (preset {cfg.preset}); license of the data: {LICENSES.get(cfg.dataset, 'see the dataset')}\n"
            f"- variant: {cfg.variant.name}; seed {cfg.seed}; {r.get('pretrain_steps')} steps of batch "
            f"{cfg.train.batch_size} on {r.get('pretrain_images')} images; {r.get('precision')} on {r.get('device')}\n"
            f"- model: ViT {cfg.model.embed_dim} wide, {cfg.model.depth} deep, {cfg.model.num_heads} heads, patch "
            f"{cfg.model.patch_size}, {cfg.model.img_size} px; decoder {cfg.model.decoder_embed_dim} x {cfg.model.decoder_depth}\n"
            f"- code: maehelpers, commit {r.get('git_commit')}\n\n"
            "## Scores of the run (its own evaluation)\n\n" + ("\n".join(scores) or "- not evaluated") +
            f"\n\nSettings: {json.dumps(settings)}\n\n## Load\n\n{load}\n")
