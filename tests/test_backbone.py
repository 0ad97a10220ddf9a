"""The DINOv2 model: official checkpoint format, position embeddings, variants, preprocessing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import make_tiny_vit
from PIL import Image
from safetensors.torch import save_file

from trustad.backbone.dinov2 import ViTConfig, build_model, interpolate_pos_embed
from trustad.backbone.preprocess import (
    load_rgb8,
    patch_mask,
    preprocess,
    preprocess_mask,
)
from trustad.backbone.weights import load_weights_into, read_state_dict


def _randomise(model: torch.nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.02)


def _official_vits14_names() -> set[str]:
    names = {"cls_token", "pos_embed", "mask_token", "patch_embed.proj.weight"}
    names |= {"patch_embed.proj.bias", "norm.weight", "norm.bias"}
    for i in range(12):
        for layer in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            names |= {f"blocks.{i}.{layer}.weight", f"blocks.{i}.{layer}.bias"}
        names |= {f"blocks.{i}.ls1.gamma", f"blocks.{i}.ls2.gamma"}
    return names


def test_official_checkpoint_loads_strictly_and_round_trips(tmp_path):
    src = build_model("dinov2_vits14")
    _randomise(src)
    state = src.state_dict()
    assert set(state) == _official_vits14_names()
    assert tuple(state["pos_embed"].shape) == (1, 1370, 384)
    assert tuple(state["mask_token"].shape) == (1, 384)
    pth = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(state, pth)

    model = load_weights_into(build_model("dinov2_vits14"), pth).eval()
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k

    st = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in read_state_dict(pth).items()}, str(st))
    model_st = load_weights_into(src, st).eval()  # reuse: building a ViT-S takes a while
    x = torch.rand(2, 3, 28, 42, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        a, b = model.patch_features(x), model_st.patch_features(x)
    assert a.shape == (2, 2, 3, 384)
    assert torch.equal(a, b)


def _cubic(x: np.ndarray, a: float = -0.75) -> np.ndarray:
    x = np.abs(x)
    near = (a + 2) * x**3 - (a + 3) * x**2 + 1
    far = a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def _resample_matrix(n_in: int, n_out: int, scale: float) -> np.ndarray:
    """Bicubic resampling along one axis, half-pixel centres, edge indices clamped."""
    w = np.zeros((n_out, n_in))
    for o in range(n_out):
        src = (o + 0.5) / scale - 0.5
        i0 = math.floor(src)
        for j in range(i0 - 1, i0 + 3):
            w[o, min(max(j, 0), n_in - 1)] += _cubic(np.array(src - j))
    return w


def _reference_interpolation(pos: torch.Tensor, h: int, w: int, offset: float) -> torch.Tensor:
    """The official formula, written out by hand: rows scale by (h + offset) / M, columns by
    (w + offset) / M, where the official code's first axis is the image height."""
    n, dim = pos.shape[1] - 1, pos.shape[2]
    m = int(math.isqrt(n))
    if (h, w) == (m, m):
        return pos.double()  # the official code returns the table unchanged
    grid = pos[0, 1:].double().numpy().reshape(m, m, dim)
    sh = (h + offset) / m if offset else h / m
    sw = (w + offset) / m if offset else w / m
    rows, cols = _resample_matrix(m, h, sh), _resample_matrix(m, w, sw)
    out = np.einsum("hi,ijd,wj->hwd", rows, grid, cols).reshape(1, h * w, dim)
    return torch.cat([pos[:, :1].double(), torch.from_numpy(out)], dim=1)


@pytest.mark.parametrize("h,w", [(6, 9), (3, 5), (8, 2), (7, 7), (4, 4)])
@pytest.mark.parametrize("offset", [0.1, 0.0])
def test_interpolate_pos_embed_matches_official_formula(h, w, offset):
    pos = torch.randn(1, 1 + 4 * 4, 3, generator=torch.Generator().manual_seed(h * 10 + w))
    ours = interpolate_pos_embed(pos, h, w, offset=offset)
    ref = _reference_interpolation(pos, h, w, offset)
    assert ours.shape == (1, 1 + h * w, 3)
    torch.testing.assert_close(ours.double(), ref, atol=1e-5, rtol=1e-5)


def test_interpolate_pos_embed_offset_changes_values():
    # The +0.1 offset changes the sampling grid, not only the output size.
    pos = torch.randn(1, 1 + 37 * 37, 4, generator=torch.Generator().manual_seed(0))
    a = interpolate_pos_embed(pos, 32, 32, offset=0.1)
    b = interpolate_pos_embed(pos, 32, 32, offset=0.0)
    assert a.shape == b.shape and not torch.allclose(a, b)


def test_patch_features_shape_and_gradients(tiny_vit):
    x = torch.rand(2, 3, 56, 42, generator=torch.Generator().manual_seed(0)).requires_grad_()
    feats = tiny_vit.patch_features(x)
    assert feats.shape == (2, 4, 3, 32)
    feats.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_non_multiple_of_patch_size_is_rejected(tiny_vit):
    with pytest.raises(ValueError, match="multiple of the patch size"):
        tiny_vit.patch_features(torch.rand(1, 3, 30, 28))


def test_register_and_swiglu_variant_names_and_forward():
    config = ViTConfig(
        embed_dim=32,
        depth=2,
        num_heads=2,
        ffn="swiglu",
        num_register_tokens=4,
        interpolate_offset=0.0,
        interpolate_antialias=True,
        img_size=56,
    )
    model = make_tiny_vit(config=config)
    names = set(model.state_dict())
    assert {"register_tokens", "blocks.0.mlp.w12.weight", "blocks.0.mlp.w3.bias"} <= names
    assert not any(".fc1." in n for n in names)
    assert tuple(model.register_tokens.shape) == (1, 4, 32)
    x = torch.rand(1, 3, 28, 42)
    with torch.inference_mode():
        assert model.forward_tokens(x).shape == (1, 1 + 4 + 6, 32)
        assert model.patch_features(x).shape == (1, 2, 3, 32)


def test_official_giant_and_register_shapes():
    with torch.device("meta"):
        g = build_model("dinov2_vitg14")
        reg = build_model("dinov2_vits14_reg")
    assert len(g.blocks) == 40
    assert tuple(g.blocks[0].mlp.w12.weight.shape) == (8192, 1536)
    assert tuple(g.blocks[0].mlp.w3.weight.shape) == (1536, 4096)
    assert tuple(reg.register_tokens.shape) == (1, 4, 384)


# ----------------------------------------------------------------------------- preprocessing


def test_grayscale_rgba_and_palette_become_rgb():
    gray = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4)
    rgb = np.asarray(load_rgb8(gray))
    assert rgb.shape == (8, 8, 3) and (rgb[..., 0] == rgb[..., 2]).all()
    assert rgb[1, 0, 0] == 32

    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 10, 20, 30, 0
    out = np.asarray(load_rgb8(Image.fromarray(rgba, "RGBA")))
    assert out.shape == (4, 4, 3) and (out == [10, 20, 30]).all()

    pal = Image.new("P", (4, 4))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putpixel((1, 1), 1)
    t = preprocess(pal, resolution=28)
    assert t.shape == (3, 28, 28) and t.dtype == torch.float32
    assert 0.0 <= t.min() and t.max() <= 1.0
    assert torch.allclose(t[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    arr = np.array([[0, 1000, 30000], [40000, 65535, 257]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(arr).save(path)
    with Image.open(path) as img:
        assert img.mode.startswith("I")  # really a 16-bit file
    rgb = np.asarray(load_rgb8(path))[..., 0].astype(int)
    expected = np.round(arr * 255.0 / 65535.0).astype(int)
    assert (np.abs(rgb - expected) <= 1).all(), rgb
    assert rgb[0, 2] < 255  # 30000 would be 255 if clipped


def test_resize_smaller_edge_and_crop_to_patches():
    img = Image.new("RGB", (700, 500), (200, 100, 50))
    t = preprocess(img)
    assert t.shape == (3, 448, 616)
    assert torch.allclose(t[:, 10, 10], torch.tensor([200, 100, 50]) / 255.0)


def test_float_tensor_input():
    x = torch.rand(3, 50, 60, generator=torch.Generator().manual_seed(0))
    t = preprocess(x)
    assert t.shape == (3, 448, 532) and t.dtype == torch.float32
    assert 0.0 <= t.min() and t.max() <= 1.0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        preprocess(x * 2)


def test_patch_mask_keeps_a_tiny_defect_of_a_large_mask() -> None:
    # A 2x2-pixel defect in a 1500x1500 mask (VisA scale): its patch must be anomalous.
    mask = np.zeros((1500, 1500), bool)
    mask[702:704, 1003:1005] = True  # a block that nearest-neighbour resizing drops
    small = preprocess_mask(mask, 448)
    assert small.shape == (448, 448)
    patches = patch_mask(small)
    assert patches.shape == (32, 32)
    # The patches whose source footprint overlaps the defect (here it straddles two rows).
    scale = 448 / 1500 / 14  # source pixels -> patch units
    rows = range(math.floor(702 * scale), math.ceil(704 * scale))
    cols = range(math.floor(1003 * scale), math.ceil(1005 * scale))
    assert (
        patches.nonzero().tolist() == [[r, c] for r in rows for c in cols] == [[14, 21], [15, 21]]
    )


def test_patch_mask_is_any_pixel_per_patch() -> None:
    mask = torch.zeros(28, 42, dtype=torch.bool)
    mask[13, 14] = True  # last row of patch row 0, first column of patch column 1
    np.testing.assert_array_equal(patch_mask(mask).numpy(), [[False, True, False], [False] * 3])
