"""Benign corruptions on constructed images whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from trustad.corruptions import (
    BENIGN_ENVELOPE,
    CORRUPTIONS,
    LEVELS,
    Corruption,
    benign_variants,
    parse_corruption,
    to_8bit_frame,
)
from trustad.flags import FlagInputs, NoiseLevelFlag

NEUTRAL = {"gaussian-noise": 0, "blur": 0, "brightness": 0, "contrast": 0, "shift": 0}
# A level of each corruption far enough from neutral to show.
STRONG = {
    "gaussian-noise": 3,
    "jpeg": 50,
    "blur": 1,
    "brightness": 10,
    "contrast": -10,
    "shift": 2,
}
MEDIAN_ABS_NORMAL = 0.6745  # median of |N(0, 1)|


def frame(shape: tuple[int, ...] = (2, 3, 40, 48), seed: int = 0) -> torch.Tensor:
    """Random 8-bit images in [0, 1], as ``preprocess`` gives them."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=g).float() / 255.0


def textured(size: int = 96) -> torch.Tensor:
    """A smooth coloured pattern with fine grain, on 8-bit levels (3, size, size)."""
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    pattern = 0.5 + 0.2 * torch.sin(x / 3.0) * torch.cos(y / 5.0)
    grain = 0.05 * torch.rand(3, size, size, generator=torch.Generator().manual_seed(1))
    return to_8bit_frame(pattern + grain)


def test_registry_and_level_ranges_name_the_same_corruptions():
    assert list(CORRUPTIONS) == list(LEVELS)
    assert set(NEUTRAL) | {"jpeg"} == set(CORRUPTIONS)


@pytest.mark.parametrize("name", sorted(NEUTRAL))
def test_neutral_level_is_the_identity_on_8bit_images(name):
    x = frame()
    assert torch.equal(Corruption(name, NEUTRAL[name]).apply(x, seed=3), x)


@pytest.mark.parametrize("name", sorted(NEUTRAL))
def test_neutral_level_only_rounds_other_images_to_8bit(name):
    x = torch.rand(2, 3, 20, 24, generator=torch.Generator().manual_seed(0))
    out = Corruption(name, NEUTRAL[name]).apply(x)
    assert (out - x).abs().max() <= 0.5 / 255 + 1e-6
    assert torch.equal(out, to_8bit_frame(x))


def test_jpeg_at_quality_100_is_nearly_lossless_on_a_grey_image():
    grey = textured().mean(dim=0, keepdim=True).expand(3, -1, -1)
    diff = (parse_corruption("jpeg:100").apply(grey) - grey).abs() * 255
    assert diff.mean() < 0.5 and diff.max() <= 2


def test_jpeg_at_quality_50_changes_a_textured_image_by_a_few_grey_levels():
    x = textured()
    diff = (parse_corruption("jpeg:50").apply(x) - x).abs() * 255
    assert 1.0 < diff.mean() < 10.0
    lower = (parse_corruption("jpeg:10").apply(x) - x).abs() * 255
    assert lower.mean() > diff.mean()


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_same_seed_same_result_and_shape_dtype_kept(name):
    x = frame()
    c = Corruption(name, STRONG[name])
    out = c.apply(x, seed=7)
    assert torch.equal(out, c.apply(x, seed=7))
    assert torch.equal(out, c.apply(x, torch.Generator().manual_seed(7)))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert not torch.equal(out, x)
    single = c.apply(x[0], seed=7)
    assert single.shape == x[0].shape


def test_noise_differs_between_seeds_and_between_images():
    x = torch.full((2, 3, 16, 16), 0.5)
    c = parse_corruption("gaussian-noise:3")
    a, b = c.apply(x, seed=0), c.apply(x, seed=1)
    assert not torch.equal(a, b)
    assert not torch.equal(a[0], a[1])


@pytest.mark.parametrize(
    "text",
    [
        "gaussian-noise:60",
        "jpeg:1",
        "blur:3",
        "brightness:100",
        "brightness:-100",
        "contrast:100",
        "contrast:-100",
        "shift:-5",
    ],
)
def test_range_and_8bit_levels_kept_at_strong_levels(text):
    x = frame()
    x[:, :, :4] = 0.0
    x[:, :, -4:] = 1.0
    out = parse_corruption(text).apply(x, seed=0)
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert torch.equal(out, to_8bit_frame(out))


def test_noise_has_sigma_grey_levels():
    x = torch.full((4, 3, 64, 64), 0.5)
    out = parse_corruption("gaussian-noise:3").apply(x, seed=0)
    std = ((out - x) * 255).std().item()
    # rounding to 8 bits adds a variance of 1/12 grey level squared
    assert std == pytest.approx((9 + 1 / 12) ** 0.5, rel=0.03)


@pytest.mark.parametrize("sigma", [1, 2, 3, 4])
def test_noise_level_flag_reads_the_noise_of_a_noisy_plane(sigma):
    """The flag's statistic (median absolute response) of a smooth plane with sigma grey
    levels of noise is the median of |N(0, sigma / 255)|: 0.674 * sigma / 255."""
    y, x = torch.meshgrid(torch.arange(96), torch.arange(96), indexing="ij")
    plane = (0.3 + 0.002 * y + 0.001 * x).expand(2, 3, -1, -1)
    noisy = Corruption("gaussian-noise", sigma).apply(plane, seed=0)
    level = NoiseLevelFlag().compute(FlagInputs(torch.zeros(2, 1, 1), images=noisy))
    expected = MEDIAN_ABS_NORMAL * sigma / 255
    assert level.tolist() == pytest.approx([expected, expected], rel=0.1)
    clean = NoiseLevelFlag().compute(FlagInputs(torch.zeros(1, 1, 1), images=plane[:1]))
    assert clean.item() < 1e-6


@pytest.mark.parametrize("k", [1, 2, 5, -1, -3])
def test_shift_by_k_moves_a_pixel_by_k(k):
    x = torch.zeros(1, 3, 20, 24)
    x[0, :, 8, 10] = 1.0
    out = Corruption("shift", k).apply(x)
    assert out[0, :, 8 + k, 10 + k].tolist() == [1.0, 1.0, 1.0]
    assert out.sum() == 3.0


def test_shift_reflects_the_border_without_repeating_the_edge():
    x = frame((1, 3, 10, 12))
    out = Corruption("shift", 2).apply(x)
    assert torch.equal(out[..., 2:, 2:], x[..., :-2, :-2])
    assert torch.equal(out[..., 0, 2:], x[..., 2, :-2])  # row -2 mirrored about row 0
    back = Corruption("shift", -2).apply(x)
    assert torch.equal(back[..., :-2, :-2], x[..., 2:, 2:])
    assert torch.equal(back[..., -1, :-2], x[..., -3, 2:])


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.5])
def test_blur_matches_scipy_gaussian_filter(sigma):
    x = frame((1, 3, 30, 36))
    out = Corruption("blur", sigma).apply(x)
    reference = np.stack(
        [
            ndimage.gaussian_filter(c, sigma, mode="mirror", truncate=4.0)
            for c in x[0].double().numpy()
        ]
    )
    expected = to_8bit_frame(torch.from_numpy(reference).float())
    assert (out[0] - expected).abs().max() <= 1 / 255 + 1e-6


def test_blur_keeps_a_flat_image_and_smooths_a_random_one():
    flat = torch.full((1, 3, 16, 16), 100 / 255)
    assert torch.equal(Corruption("blur", 1).apply(flat), flat)
    x = frame()
    assert Corruption("blur", 1).apply(x).std() < 0.5 * x.std()


def test_brightness_scales_every_value():
    x = torch.full((1, 3, 4, 4), 100 / 255)
    assert torch.allclose(Corruption("brightness", 10).apply(x), torch.full_like(x, 110 / 255))
    assert torch.allclose(Corruption("brightness", -10).apply(x), torch.full_like(x, 90 / 255))


def test_contrast_scales_the_distance_from_the_mean_grey():
    x = torch.full((1, 3, 4, 4), 100 / 255)
    x[..., :2] = 140 / 255  # mean 120
    out = Corruption("contrast", 50).apply(x) * 255
    assert torch.allclose(out[..., :2], torch.tensor(150.0))
    assert torch.allclose(out[..., 2:], torch.tensor(90.0))


@pytest.mark.parametrize(
    "text, says",
    [
        ("gaussian-noise", "NAME:LEVEL"),
        ("noise:2", "unknown corruption 'noise'"),
        ("jpeg:fifty", "NAME:LEVEL"),
        ("jpeg:0", "quality, an integer 1 to 100"),
        ("jpeg:101", "quality, an integer 1 to 100"),
        ("jpeg:50.5", "an integer"),
        ("blur:-1", "sigma in pixels, >= 0"),
        ("blur:nan", "sigma in pixels"),
        ("blur:inf", "sigma in pixels"),
        ("brightness:150", "percent, -100 to 100"),
        ("shift:1.5", "an integer"),
        ("", "NAME:LEVEL"),
    ],
)
def test_parse_errors_name_the_text_and_what_is_valid(text, says):
    with pytest.raises(ValueError) as err:
        parse_corruption(text)
    message = str(err.value)
    assert repr(text) in message and says in message


def test_unknown_name_lists_every_corruption_with_its_levels():
    with pytest.raises(ValueError) as err:
        parse_corruption("fog:3")
    for name, levels in LEVELS.items():
        assert f"{name}:LEVEL ({levels.meaning})" in str(err.value)


def test_corruption_checks_its_level_when_built_directly():
    with pytest.raises(ValueError, match="not valid for 'jpeg'"):
        Corruption("jpeg", "50")
    with pytest.raises(ValueError, match="unknown corruption 'haze'"):
        Corruption("haze", 1)


@pytest.mark.parametrize(
    "text, corruption",
    [
        ("gaussian-noise:2", Corruption("gaussian-noise", 2)),
        (" brightness:+10 ", Corruption("brightness", 10)),
        ("blur:0.5", Corruption("blur", 0.5)),
        ("jpeg:50.0", Corruption("jpeg", 50)),
        ("jpeg:50", Corruption("jpeg", np.int64(50))),
    ],
)
def test_parse_and_label(text, corruption):
    assert parse_corruption(text) == corruption
    assert parse_corruption(corruption.label) == corruption


def test_labels_read_like_their_text():
    assert [c.label for c in BENIGN_ENVELOPE][:4] == [
        "gaussian-noise:1",
        "gaussian-noise:2",
        "gaussian-noise:3",
        "jpeg:90",
    ]
    assert Corruption("brightness", -10).label == "brightness:-10"
    assert Corruption("blur", 0.25).label == "blur:0.25"


def test_bad_images_are_refused_with_their_shape_or_dtype():
    with pytest.raises(ValueError, match=r"\(1, 20, 20\)"):
        Corruption("blur", 1).apply(torch.zeros(1, 20, 20))
    with pytest.raises(ValueError, match="torch.uint8"):
        Corruption("blur", 1).apply(torch.zeros(3, 20, 20, dtype=torch.uint8))
    with pytest.raises(TypeError, match="ndarray"):
        Corruption("blur", 1).apply(np.zeros((3, 20, 20)))


def test_borders_larger_than_the_image_are_refused():
    with pytest.raises(
        ValueError, match=r"shift of 20 px needs images larger than 20 px, got 20x24"
    ):
        Corruption("shift", 20).apply(torch.zeros(3, 20, 24))
    with pytest.raises(ValueError, match="blur of sigma 5 px"):
        Corruption("blur", 5).apply(torch.zeros(3, 20, 24))


def test_envelope_stays_inside_ordinary_camera_variation():
    limits = {
        "gaussian-noise": (1, 3),
        "jpeg": (50, 100),
        "blur": (0.5, 1),
        "brightness": (-10, 10),
        "contrast": (-10, 10),
        "shift": (-2, 2),
    }
    assert {c.name for c in BENIGN_ENVELOPE} == set(limits)
    for c in BENIGN_ENVELOPE:
        low, high = limits[c.name]
        assert low <= c.level <= high, c.label
    assert len({c.label for c in BENIGN_ENVELOPE}) == len(BENIGN_ENVELOPE)


def test_benign_variants_in_envelope_order_and_deterministic():
    x = frame()
    variants = benign_variants(x, seed=4)
    assert [label for label, _ in variants] == [c.label for c in BENIGN_ENVELOPE]
    again = benign_variants(x, seed=4)
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(variants, again))
    other = dict(benign_variants(x, seed=5))
    assert not torch.equal(other["gaussian-noise:2"], dict(variants)["gaussian-noise:2"])
    assert torch.equal(other["jpeg:70"], dict(variants)["jpeg:70"])
    for _, out in variants:
        assert out.shape == x.shape and not torch.equal(out, x)


def test_each_noise_level_of_the_envelope_draws_its_own_noise():
    x = torch.full((1, 3, 32, 32), 0.5)
    noise = {label: out - x for label, out in benign_variants(x) if "noise" in label}
    one, three = noise["gaussian-noise:1"], noise["gaussian-noise:3"]
    assert torch.corrcoef(torch.stack([one.flatten(), three.flatten()]))[0, 1].abs() < 0.1
