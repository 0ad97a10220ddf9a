"""Rotation, batched preprocessing and image distances in torch, on every device."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from trustad.attacks import linf, mean_linf_psnr, psnr
from trustad.backbone.preprocess import crop_to_patches, preprocess, resized_size
from trustad.backbone.resize import pillow_coefficients, preprocess_batch, resize_bicubic_uint8
from trustad.backbone.rotate import (
    rotate_rgb8,
    rotate_rgb8_opencv,
    rotate_rgb8_torch,
    rotation_matrix,
)

ANGLES = (0, 45, 90, 135, 180, 225, 270, 315, 30, -17.5, 0.001)


@pytest.mark.parametrize("rotate", [rotate_rgb8, rotate_rgb8_torch])
def test_rotation_equals_opencv_bit_for_bit(torch_device, rotate):
    # The reference code's own call is the oracle; both paths, every angle, odd sizes.
    rng = np.random.default_rng(0)
    for h, w in [(1, 1), (1, 6), (5, 3), (31, 40), (37, 50), (448, 448), (300, 413)]:
        arrs = rng.integers(0, 256, size=(2, h, w, 3), dtype=np.uint8)
        x = torch.from_numpy(arrs).permute(0, 3, 1, 2).to(torch_device)
        views = rotate(x, ANGLES)
        assert views.shape == (2, len(ANGLES), 3, h, w) and views.device == x.device
        for b in range(2):
            for k, angle in enumerate(ANGLES):
                got = views[b, k].permute(1, 2, 0).cpu().numpy()
                ref = rotate_rgb8_opencv(arrs[b], angle) if angle else arrs[b]
                np.testing.assert_array_equal(got, ref, err_msg=f"{h}x{w} at {angle} degrees")


def test_rotation_matrix_is_the_reference_codes():
    # image_center = tuple(np.array(image.shape[1::-1]) / 2) for a 37x50 image
    ref = cv2.getRotationMatrix2D((25.0, 18.5), 45, 1.0)
    np.testing.assert_array_equal(rotation_matrix(37, 50, 45), ref)


def test_rotation_of_a_single_image_and_bad_input():
    img = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (3, 9, 7), dtype=np.uint8))
    views = rotate_rgb8(img, [0, 90])
    assert views.shape == (2, 3, 9, 7)
    assert torch.equal(views[0], img)
    with pytest.raises(ValueError, match="uint8"):
        rotate_rgb8(torch.rand(3, 8, 8), [45])
    with pytest.raises(ValueError, match="uint8"):
        rotate_rgb8_torch(torch.rand(3, 8, 8), [45])


SIZES = [(20, 30, 56), (100, 80, 56), (56, 56, 56), (57, 300, 56), (5, 3, 28), (203, 157, 98)]


def sample_images(h: int, w: int) -> list[np.ndarray]:
    rng = np.random.default_rng(h * w)
    noisy = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    edges = np.where((np.arange(w) % 5 == 0)[None, :, None], 255, 0).repeat(h, 0).repeat(3, 2)
    return [noisy, edges.astype(np.uint8)]


@pytest.mark.parametrize("h, w, resolution", SIZES)
def test_torch_bicubic_equals_pillow(torch_device, h, w, resolution):
    size = resized_size(w, h, resolution)
    for arr in sample_images(h, w):
        ref = np.asarray(Image.fromarray(arr).resize(size, Image.BICUBIC))
        x = torch.from_numpy(arr).permute(2, 0, 1)[None].to(torch_device)
        got = resize_bicubic_uint8(x, size)[0].permute(1, 2, 0).cpu().numpy()
        np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("h, w, resolution", SIZES)
def test_preprocess_batch_equals_preprocess(torch_device, h, w, resolution):
    images = sample_images(h, w)
    ref = torch.stack([preprocess(a, resolution) for a in images])
    got = preprocess_batch([torch.from_numpy(a) for a in images], resolution, torch_device)
    assert got.device.type == torch_device.type
    torch.testing.assert_close(got.cpu(), ref, rtol=0, atol=0)


def test_pillow_coefficients_sum_to_one_in_fixed_point():
    for n_in, n_out in [(1024, 448), (256, 448), (7, 3)]:
        idx, kk = pillow_coefficients(n_in, n_out)
        assert idx.min() >= 0 and idx.max() < n_in
        assert np.abs(kk.sum(axis=1) - (1 << 22)).max() <= kk.shape[1]


def test_torch_bicubic_gives_the_same_features(tiny_vit):
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, size=(90, 70, 3), dtype=np.uint8) for _ in range(3)]
    ref = torch.stack([preprocess(a, 56) for a in images])
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    ours = crop_to_patches(resize_bicubic_uint8(x, resized_size(70, 90, 56)).float() / 255.0)
    with torch.no_grad():
        diff = tiny_vit.patch_features(ours) - tiny_vit.patch_features(ref)
    assert diff.abs().max() == 0


def test_preprocess_batch_rejects_mixed_inputs():
    with pytest.raises(ValueError, match="share a size"):
        preprocess_batch([np.zeros((8, 8, 3), np.uint8), np.zeros((9, 8, 3), np.uint8)], 28)
    with pytest.raises(ValueError, match=r"image 0: expected a uint8 \(H, W, 3\)"):
        preprocess_batch([np.zeros((8, 8, 3), np.float32)], 28)
    with pytest.raises(ValueError, match="no images"):
        preprocess_batch([], 28)


def test_mean_linf_psnr_is_the_mean_of_per_image_values(torch_device):
    gen = torch.Generator().manual_seed(0)
    clean = [torch.rand(3, 8, 8, generator=gen) for _ in range(3)] + [
        torch.rand(3, 6, 9, generator=gen)
    ]
    adv = [(c + 0.05 * torch.randn(c.shape, generator=gen)).clamp(0, 1) for c in clean]
    mean_l, mean_p = mean_linf_psnr(
        [c.to(torch_device) for c in clean], [a.to(torch_device) for a in adv]
    )
    assert mean_l.device.type == torch_device.type and mean_l.ndim == 0
    ref_l = np.mean([float(linf(c[None], a[None])[0]) for c, a in zip(clean, adv)])
    ref_p = np.mean([float(psnr(c[None], a[None])[0]) for c, a in zip(clean, adv)])
    assert float(mean_l) == pytest.approx(ref_l, abs=1e-7)
    assert float(mean_p) == pytest.approx(ref_p, abs=1e-5)
    with pytest.raises(ValueError, match="pair 0: shapes differ"):
        mean_linf_psnr([clean[0]], [adv[3]])
