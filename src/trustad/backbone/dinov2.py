"""The DINOv2 vision transformer, written with torch alone.

Parameter names follow the official release (facebookresearch/dinov2, hub models with
``block_chunks=0``) so that an official checkpoint loads with ``strict=True``. ImageNet
normalisation happens inside the model: it takes images in [0, 1], so that attacks work in
plain pixel space and an epsilon means what users think it means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..deadline import check_time

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PATCH_SIZE = 14


@dataclass(frozen=True)
class ViTConfig:
    embed_dim: int
    depth: int
    num_heads: int
    ffn: str = "mlp"  # "mlp" or "swiglu" (ViT-g)
    num_register_tokens: int = 0
    # Position-embedding resampling as in the official hub models: the plain models use a
    # +0.1 offset without antialias, the register models no offset with antialias.
    interpolate_offset: float = 0.1
    interpolate_antialias: bool = False
    patch_size: int = PATCH_SIZE
    img_size: int = 518
    mlp_ratio: float = 4.0


_SIZES = {
    "s": dict(embed_dim=384, depth=12, num_heads=6),
    "b": dict(embed_dim=768, depth=12, num_heads=12),
    "l": dict(embed_dim=1024, depth=24, num_heads=16),
    "g": dict(embed_dim=1536, depth=40, num_heads=24, ffn="swiglu"),
}
CONFIGS: dict[str, ViTConfig] = {}
for _size, _kw in _SIZES.items():
    CONFIGS[f"dinov2_vit{_size}14"] = ViTConfig(**_kw)
    CONFIGS[f"dinov2_vit{_size}14_reg"] = ViTConfig(
        **_kw, num_register_tokens=4, interpolate_offset=0.0, interpolate_antialias=True
    )
# The paper's backbone, and the one whose weights ship with the set-up.
DEFAULT_BACKBONE = "dinov2_vits14"


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        hidden = (int(hidden * 2 / 3) + 7) // 8 * 8  # the official "swiglufused" width
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, hidden: int, ffn: str) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = SwiGLU(dim, hidden) if ffn == "swiglu" else Mlp(dim, hidden)
        self.ls2 = LayerScale(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def interpolate_pos_embed(
    pos_embed: Tensor, grid_h: int, grid_w: int, offset: float = 0.1, antialias: bool = False
) -> Tensor:
    """Resample ``pos_embed`` [1, 1+M*M, D] to a grid_h x grid_w patch grid.

    The official formula: bicubic with ``scale_factor=((h+offset)/M, (w+offset)/M)`` when
    ``offset`` is non-zero, else with ``size=(h, w)``; the class position is kept.
    """
    n = pos_embed.shape[1] - 1
    m = int(math.sqrt(n))
    if m * m != n:
        raise ValueError(f"pos_embed holds {n} patch positions, not a square grid")
    if grid_h == m and grid_w == m:
        return pos_embed
    dim = pos_embed.shape[-1]
    cls_pos, patch_pos = pos_embed[:, :1].float(), pos_embed[:, 1:].float()
    patch_pos = patch_pos.reshape(1, m, m, dim).permute(0, 3, 1, 2)
    if offset:
        size_kw = dict(scale_factor=((grid_h + offset) / m, (grid_w + offset) / m))
    else:
        size_kw = dict(size=(grid_h, grid_w))
    patch_pos = F.interpolate(patch_pos, mode="bicubic", antialias=antialias, **size_kw)
    if patch_pos.shape[-2:] != (grid_h, grid_w):
        raise RuntimeError(f"interpolated grid {tuple(patch_pos.shape[-2:])} != {(grid_h, grid_w)}")
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)
    return torch.cat([cls_pos, patch_pos], dim=1).to(pos_embed.dtype)


class DinoVisionTransformer(nn.Module):
    """DINOv2 ViT. ``patch_features`` is the entry point used by the rest of trustad."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        dim, p = config.embed_dim, config.patch_size
        self.patch_size = p
        self.embed_dim = dim
        grid = config.img_size // p
        self.patch_embed = PatchEmbed(p, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, dim))
        # Unused at inference; kept so that official checkpoints load strictly.
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        if config.num_register_tokens:
            self.register_tokens = nn.Parameter(torch.zeros(1, config.num_register_tokens, dim))
        hidden = int(dim * config.mlp_ratio)
        self.blocks = nn.ModuleList(
            Block(dim, config.num_heads, hidden, config.ffn) for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        # Non-persistent: not part of the checkpoint format.
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), False)

    def position_embedding(self, grid_h: int, grid_w: int) -> Tensor:
        """The position embedding [1, 1 + h*w, D] for a grid_h x grid_w patch grid."""
        return interpolate_pos_embed(
            self.pos_embed,
            grid_h,
            grid_w,
            self.config.interpolate_offset,
            self.config.interpolate_antialias,
        )

    def forward_tokens(self, x: Tensor) -> Tensor:
        """Normalised tokens [B, 1 + registers + h*w, D] after the final LayerNorm."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
        x = (x - self.pixel_mean) / self.pixel_std
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        tokens = tokens + self.position_embedding(h // p, w // p).to(tokens.dtype)
        if self.config.num_register_tokens:
            regs = self.register_tokens.expand(tokens.shape[0], -1, -1)
            tokens = torch.cat([tokens[:, :1], regs, tokens[:, 1:]], dim=1)
        for block in self.blocks:
            if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
                check_time()  # a time-limited request stops here, not at the end
            tokens = block(tokens)
        return self.norm(tokens)

    def patch_features(self, x: Tensor) -> Tensor:
        """Patch tokens of the last block after the final norm: (B, H/14, W/14, D).

        ``x`` is a batch in [0, 1] of shape (B, 3, H, W), H and W multiples of 14.
        Gradients flow to ``x`` when it requires them.
        """
        tokens = self.forward_tokens(x)[:, 1 + self.config.num_register_tokens :]
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        return tokens.reshape(x.shape[0], h, w, self.embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.patch_features(x)


def build_model(name: str = DEFAULT_BACKBONE) -> DinoVisionTransformer:
    """An uninitialised DINOv2 of the named size (see ``CONFIGS``)."""
    if name not in CONFIGS:
        raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(CONFIGS)}")
    return DinoVisionTransformer(CONFIGS[name])
