"""The Masked Autoencoder, laid out exactly like the official `MaskedAutoencoderViT`.

Parameter names, shapes, initialisation and masking follow facebookresearch/mae (models_mae.py)
so that an official checkpoint loads with `strict=True` into `MAE` built at the official sizes.
Attention runs through `F.scaled_dot_product_attention`.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


# ----------------------------------------------------------------------------- position embeddings
def sincos_1d(embed_dim: int, pos: torch.Tensor) -> torch.Tensor:
    """(M,) positions -> (M, embed_dim): [sin(pos * omega), cos(pos * omega)], omega = 1/10000^(2i/D)."""
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    out = pos.to(torch.float64).reshape(-1, 1) * omega.reshape(1, -1)
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_2d(embed_dim: int, grid_size: int, cls_token: bool = False) -> torch.Tensor:
    """Fixed 2D sin-cos embedding of a grid_size x grid_size patch grid, rows in raster order.

    As in the official code (np.meshgrid(grid_w, grid_h)), the FIRST half of the channels encodes
    the column (w) and the second half the row (h). With cls_token a zero row is prepended.
    """
    assert embed_dim % 4 == 0, "sin-cos position embedding needs embed_dim divisible by 4"
    rows, cols = torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing="ij")
    emb = torch.cat([sincos_1d(embed_dim // 2, cols), sincos_1d(embed_dim // 2, rows)], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, embed_dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()


def interpolate_pos_embed(pos_embed: torch.Tensor, num_patches: int) -> torch.Tensor:
    """Resize a (1, 1 + L, D) position embedding to (1, 1 + num_patches, D), bicubic on the grid.

    The cls row is kept as is; used when a checkpoint meets a model of another image size.
    """
    cls, grid = pos_embed[:, :1], pos_embed[:, 1:]
    old, new = int(math.isqrt(grid.shape[1])), int(math.isqrt(num_patches))
    if old == new:
        return pos_embed
    dim = grid.shape[-1]
    grid = grid.reshape(1, old, old, dim).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new * new, dim).to(pos_embed.dtype)
    return torch.cat([cls, grid], dim=1)


# ----------------------------------------------------------------------------- building blocks
class PatchEmbed(nn.Module):
    """Image -> sequence of patch embeddings with one strided convolution (`patch_embed.proj`)."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.img_size, self.patch_size = img_size, patch_size
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size**2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)  # (N, L, D)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def drop_path(x, p: float, training: bool):
    """Stochastic depth: drop the whole residual branch per sample (used by fine-tuning only)."""
    if p == 0.0 or not training:
        return x
    keep = torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device) >= p
    return x * keep.to(x.dtype) / (1 - p)


class Block(nn.Module):
    """Pre-norm transformer block with timm's parameter names (norm1, attn, norm2, mlp)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = drop_path

    def forward(self, x):
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


# ----------------------------------------------------------------------------- the MAE
class MAE(nn.Module):
    """Masked Autoencoder with a ViT encoder on visible patches and a light decoder.

    Defaults are the project's sizes (ViT 192 wide, 8 deep; decoder 128 wide, 4 deep).
    `forward(imgs, mask_ratio, noise)` returns (loss, pred, mask) with the official semantics.
    """

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=192, depth=8, num_heads=6,
                 decoder_embed_dim=128, decoder_depth=4, decoder_num_heads=4, mlp_ratio=4.0,
                 norm_pix_loss=True):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not divisible by patch_size {patch_size}; "
                             f"pick an image size that is a multiple of {patch_size}")
        if embed_dim % num_heads or decoder_embed_dim % decoder_num_heads:
            raise ValueError("embed_dim must be divisible by num_heads (and likewise for the decoder)")
        self.in_chans, self.norm_pix_loss = in_chans, norm_pix_loss
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        L = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, L + 1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, L + 1, decoder_embed_dim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            [Block(decoder_embed_dim, decoder_num_heads, mlp_ratio) for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans, bias=True)
        self.initialize_weights()

    # -- initialisation, as official: fixed sin-cos, xavier for Linear and the patch projection
    def initialize_weights(self):
        g = self.patch_embed.grid_size
        self.pos_embed.data.copy_(sincos_2d(self.pos_embed.shape[-1], g, cls_token=True).unsqueeze(0))
        self.decoder_pos_embed.data.copy_(
            sincos_2d(self.decoder_pos_embed.shape[-1], g, cls_token=True).unsqueeze(0))
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @property
    def num_patches(self) -> int:
        return self.patch_embed.num_patches

    # -- patches
    def patchify(self, imgs):
        """(N, C, H, W) -> (N, L, p*p*C), each row laid out (p, p, C) as in the official code."""
        p, c = self.patch_embed.patch_size, self.in_chans
        h = w = imgs.shape[2] // p
        x = imgs.reshape(imgs.shape[0], c, h, p, w, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(imgs.shape[0], h * w, p * p * c)

    def unpatchify(self, x):
        """(N, L, p*p*C) -> (N, C, H, W)."""
        p, c = self.patch_embed.patch_size, self.in_chans
        h = w = int(math.isqrt(x.shape[1]))
        x = x.reshape(x.shape[0], h, w, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, h * p, h * p)

    # -- masking
    @staticmethod
    def random_masking(x, mask_ratio: float, noise=None):
        """Keep the int(L * (1 - mask_ratio)) patches with the smallest noise.

        Returns the kept tokens, the mask (1 = removed) in the original order, and ids_restore.
        """
        N, L, D = x.shape
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must lie in [0, 1), got {mask_ratio}")
        len_keep = int(L * (1 - mask_ratio))
        if len_keep < 1:
            raise ValueError(f"mask_ratio {mask_ratio} leaves no visible patch out of {L}")
        if noise is None:
            noise = torch.rand(N, L, device=x.device)
        elif noise.shape != (N, L):
            raise ValueError(f"noise must have shape {(N, L)}, got {tuple(noise.shape)}")
        ids_shuffle = torch.argsort(noise.to(x.device), dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :len_keep]
        x_masked = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, D))
        mask = torch.ones(N, L, device=x.device)
        mask[:, :len_keep] = 0
        return x_masked, torch.gather(mask, 1, ids_restore), ids_restore

    # -- encoder / decoder
    def forward_encoder(self, imgs, mask_ratio: float, noise=None):
        """Encode the visible patches. Returns latent (N, 1 + len_keep, D), mask, ids_restore."""
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]
        x, mask, ids_restore = self.random_masking(x, mask_ratio, noise)
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, latent, ids_restore):
        """Fill in mask tokens, unshuffle, decode. Returns pred (N, L, p*p*C), cls dropped."""
        x = self.decoder_embed(latent)
        n_mask = ids_restore.shape[1] + 1 - x.shape[1]
        x_ = torch.cat([x[:, 1:, :], self.mask_token.expand(x.shape[0], n_mask, -1)], dim=1)
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1, :], x_], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:, :]

    def target(self, imgs):
        """The reconstruction target: patches, normalised per patch when norm_pix_loss."""
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        return target

    def forward_loss(self, imgs, pred, mask):
        """Mean squared error per patch, averaged over removed patches only (as official)."""
        loss = ((pred - self.target(imgs)) ** 2).mean(dim=-1)
        return (loss * mask).sum() / mask.sum().clamp_min(1.0)

    def forward(self, imgs, mask_ratio: float = 0.75, noise=None):
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(imgs, pred, mask), pred, mask

    # -- features for probing: the whole image, no masking
    def forward_tokens(self, imgs):
        """Encoder on all patches, no masking: (N, 1 + L, D) tokens after the final norm."""
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward_features(self, imgs, pool: str = "cls"):
        """Encoder on all patches; `pool` = 'cls' (cls token) or 'mean' (mean of patch tokens)."""
        return pool_tokens(self.forward_tokens(imgs), pool)


def pool_tokens(x, pool: str):
    """(N, 1 + L, D) normed tokens -> (N, D): the cls token, or the mean of the patch tokens."""
    if pool == "cls":
        return x[:, 0]
    if pool == "mean":
        return x[:, 1:].mean(dim=1)
    raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")


ENCODER_PREFIXES = ("patch_embed.", "cls_token", "pos_embed", "blocks.", "norm.")


def encoder_state_dict(model: MAE) -> dict:
    """The encoder's weights only (no decoder, no mask token)."""
    return {k: v for k, v in model.state_dict().items() if k.startswith(ENCODER_PREFIXES)}


def adapt_pos_embeds(state_dict: dict, model: MAE) -> dict:
    """Return state_dict with its position embeddings resized to `model`'s patch grid."""
    out = dict(state_dict)
    for key in ("pos_embed", "decoder_pos_embed"):
        if key in out and out[key].shape[1] != model.num_patches + 1:
            out[key] = interpolate_pos_embed(out[key], model.num_patches)
    return out


# ----------------------------------------------------------------------------- fine-tuning model
class ViTClassifier(nn.Module):
    """The MAE encoder as a classifier, laid out as the official fine-tuning ViT (models_vit.py,
    global_pool=True): mean of patch tokens -> fc_norm -> head; drop path rising linearly to
    `drop_path`; position embeddings trainable, as in timm. Encoder keys match `MAE`'s."""

    def __init__(self, num_classes: int, img_size=224, patch_size=16, in_chans=3, embed_dim=192, depth=8,
                 num_heads=6, mlp_ratio=4.0, drop_path=0.1, **unused_decoder_args):
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(sincos_2d(embed_dim, self.patch_embed.grid_size, True).unsqueeze(0))
        rates = [drop_path * i / max(1, depth - 1) for i in range(depth)]
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, r) for r in rates])
        self.fc_norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.normal_(self.cls_token, std=0.02)
        self.apply(MAE._init_weights)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)  # official: tiny head init

    def load_encoder(self, state_dict: dict) -> None:
        """Load MAE encoder weights (decoder and final norm are not used with global pooling)."""
        state = {k: v for k, v in state_dict.items() if k.startswith(ENCODER_PREFIXES) and not k.startswith("norm.")}
        if state["pos_embed"].shape != self.pos_embed.shape:
            state["pos_embed"] = interpolate_pos_embed(state["pos_embed"], self.patch_embed.num_patches)
        missing, unexpected = self.load_state_dict(state, strict=False)
        assert set(missing) == {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}, missing
        assert not unexpected, unexpected

    def forward(self, imgs):
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.fc_norm(x[:, 1:].mean(dim=1)))
