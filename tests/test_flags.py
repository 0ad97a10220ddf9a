"""Attack flags on constructed cases whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_vit

from trustad import calibration as cal
from trustad.attacks import score_loss
from trustad.detector import AnomalyDINO
from trustad.flags import (
    FLAG_COSTS,
    FLAGS,
    TRANSFORMS,
    CombinedFlag,
    ExceedanceFlag,
    FeatureNormFlag,
    Flag,
    FlagInputs,
    MedianDistanceFlag,
    NoiseLevelFlag,
    StabilityFlag,
    calibrated_flags,
    flag_aware_score_loss,
    flag_columns,
    gate_probabilities,
    make_flag,
)
from trustad.flags.noise_level import noise_response
from trustad.flags.stability import blur, jpeg, shift

# Flags that read the level of the map: lighting it everywhere must raise them.
LEVEL_FLAGS = (MedianDistanceFlag, ExceedanceFlag)


def _clean_maps(n: int, seed: int = 0, defect: bool = True) -> torch.Tensor:
    """Low, noisy distance grids (n, 8, 8); with ``defect`` every other one has a bright
    2x2 spot, as a real defect on a normal background."""
    gen = torch.Generator().manual_seed(seed)
    d = 0.2 + 0.02 * torch.rand(n, 8, 8, generator=gen)
    if defect:
        d[::2, 3:5, 3:5] += 0.5
    return d


def test_registry_and_costs():
    assert set(FLAG_COSTS) == set(FLAGS)
    for name in FLAGS:
        flag = make_flag(name)
        assert isinstance(flag, Flag)
        assert flag.cost == FLAG_COSTS[name]
    assert make_flag("stability").cost == len(TRANSFORMS)
    with pytest.raises(ValueError, match="unknown flag 'nope'"):
        make_flag("nope")


@pytest.mark.parametrize("rate", [0.05, 0.1, 0.25])
def test_threshold_gives_the_asked_false_flag_rate_on_clean_data(rate):
    clean = FlagInputs(_clean_maps(200, seed=1, defect=False))
    flag = MedianDistanceFlag().calibrate(None, clean, rate)
    values = flag.statistic(clean)
    assert flag.predict(values).mean() == pytest.approx(rate)  # no ties: exact
    assert flag.predict(values).mean() <= rate


@pytest.mark.parametrize("cls", LEVEL_FLAGS)
def test_a_perturbation_that_moves_the_map_everywhere_raises_map_flags(cls):
    clean = FlagInputs(_clean_maps(20))
    flag = cls().calibrate(None, clean, 0.0)  # threshold: the largest clean statistic
    test = _clean_maps(6, seed=2)
    assert not flag.predict(flag.statistic(FlagInputs(test))).any()
    # An attack lights the whole map up (the bright spot stays where it was).
    lit = test + 0.3 + 0.02 * torch.rand(test.shape, generator=torch.Generator().manual_seed(3))
    assert flag.predict(flag.statistic(FlagInputs(lit))).all()


def test_exceedance_reference_is_the_clean_normal_range():
    clean = FlagInputs(_clean_maps(10, defect=False))
    flag = ExceedanceFlag().prepare(None, clean)
    values = flag.statistic(clean)
    assert values.mean() == pytest.approx(1 - 0.95, abs=0.01)
    # The soft surrogate for attackers follows the hard statistic.
    lit = FlagInputs(_clean_maps(4) + 0.3)
    assert flag.surrogate(lit).min() > 0.9 and flag.statistic(lit).min() == 1.0


def test_feature_norm_flag_catches_rescaled_features_only():
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(12, 4, 4, 16, generator=gen)
    d = _clean_maps(12)[:, :4, :4]
    flag = FeatureNormFlag().calibrate(None, FlagInputs(d[:8], feats[:8]), 0.0)
    same = flag.statistic(FlagInputs(d[8:], feats[8:]))
    assert flag.predict(same).mean() <= 0.5
    for factor in (0.5, 2.0):  # either direction is suspicious
        assert flag.predict(flag.statistic(FlagInputs(d[8:], feats[8:] * factor))).all()
    with pytest.raises(ValueError, match="needs features"):
        flag.statistic(FlagInputs(d[8:]))


def test_combined_flag_fires_when_any_member_is_far_out():
    clean = FlagInputs(_clean_maps(20))
    flag = CombinedFlag([MedianDistanceFlag(), ExceedanceFlag()]).calibrate(None, clean, 0.0)
    z = flag.statistic(clean)
    median = flag.members[0]
    want = np.maximum(
        (median.statistic(clean) - median.clean_mean_) / median.clean_scale_,
        (flag.members[1].statistic(clean) - flag.members[1].clean_mean_)
        / flag.members[1].clean_scale_,
    )
    np.testing.assert_allclose(z, want, rtol=1e-5, atol=1e-6)
    lit = FlagInputs(_clean_maps(4) + 0.3)
    assert flag.predict(flag.statistic(lit)).all()
    with pytest.raises(ValueError, match="at least one member"):
        CombinedFlag([])


def test_flag_inputs_and_misuse_are_reported():
    with pytest.raises(ValueError, match=r"\(B, h, w\)"):
        FlagInputs(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="2 features for 3 distance grids"):
        FlagInputs(torch.zeros(3, 4, 4), torch.zeros(2, 4, 4, 8))
    with pytest.raises(ValueError, match="share a shape"):
        FlagInputs([torch.zeros(4, 4), torch.zeros(5, 4)])
    stacked = FlagInputs([torch.zeros(4, 4), torch.ones(4, 4)])
    assert stacked.distances.shape == (2, 4, 4)
    assert len(stacked.subset([1])) == 1 and stacked.subset([1]).distances.max() == 1
    with pytest.raises(RuntimeError, match="not prepared"):
        MedianDistanceFlag().statistic(stacked)
    with pytest.raises(RuntimeError, match="no threshold"):
        MedianDistanceFlag().prepare(None, stacked).predict([0.1])


def test_transforms_keep_constant_images_and_pass_gradients_straight_through():
    x = torch.full((1, 3, 28, 28), 0.5)
    torch.testing.assert_close(blur(x), x)
    torch.testing.assert_close(shift(x), x)
    assert (jpeg(x) - x).abs().max() <= 2 / 255
    y = torch.rand(2, 3, 28, 28, requires_grad=True)
    (g,) = torch.autograd.grad(jpeg(y).sum(), y)
    torch.testing.assert_close(g, torch.ones_like(y))
    torch.testing.assert_close(shift(y)[..., 2:, 2:], y[..., :-2, :-2])


@pytest.fixture(scope="module")
def detector():
    vit = make_tiny_vit()
    gen = torch.Generator().manual_seed(0)
    coarse = torch.rand(2, 3, 4, 4, generator=gen)
    support = F.interpolate(coarse, size=(56, 56), mode="bilinear").clamp(0, 1)
    det = AnomalyDINO(vit, rotate=False)
    return det.fit_features(det.features(list(support)))


def _inputs(det: AnomalyDINO, x: torch.Tensor) -> FlagInputs:
    feats = torch.stack(det.features(list(x)))
    return FlagInputs(torch.stack(det.distances_from_features(list(feats))), feats, x)


def test_stable_inputs_do_not_raise_the_stability_flag(detector):
    gen = torch.Generator().manual_seed(1)
    smooth = F.interpolate(torch.rand(6, 3, 2, 2, generator=gen), size=(56, 56), mode="bilinear")
    flag = StabilityFlag().calibrate(detector, _inputs(detector, smooth), 0.0)
    constant = torch.full((2, 3, 56, 56), 0.4)
    values = flag.statistic(_inputs(detector, constant))
    assert values.max() < 1e-2 * max(flag.threshold_, 1e-6) + 1e-4
    assert not flag.predict(values).any()
    # Pixel-level noise is what blurring and JPEG destroy: its map moves.
    noisy = (smooth[:2] + 0.25 * torch.randn(2, 3, 56, 56, generator=gen)).clamp(0, 1)
    assert flag.predict(flag.statistic(_inputs(detector, noisy))).all()
    with pytest.raises(ValueError, match="subset"):
        StabilityFlag(("jpeg", "rotate"))


def test_adaptive_loss_is_the_score_loss_plus_a_flag_term(detector):
    gen = torch.Generator().manual_seed(2)
    x = F.interpolate(torch.rand(3, 3, 3, 3, generator=gen), size=(56, 56), mode="bilinear")
    labels = torch.tensor([0.0, 1.0, 0.0])
    flag = make_flag("combined").calibrate(detector, _inputs(detector, x), 0.05)
    plain = score_loss(detector, labels)(x)
    no_flag = flag_aware_score_loss(detector, labels, flag, score_scale=0.5, lam=0.0)(x)
    torch.testing.assert_close(no_flag, plain / 0.5)
    with_flag = flag_aware_score_loss(detector, labels, flag, score_scale=0.5, lam=2.0)
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(with_flag(xr).sum(), xr)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    surrogate = flag.surrogate(_inputs(detector, x)).float()
    want = plain / 0.5 - 2.0 * surrogate / flag.clean_scale_
    torch.testing.assert_close(with_flag(x), want, rtol=1e-4, atol=1e-5)
    with pytest.raises(RuntimeError, match="fitted"):
        flag_aware_score_loss(detector, labels, make_flag("median"), 0.5)
    with pytest.raises(ValueError, match="score_scale"):
        flag_aware_score_loss(detector, labels, flag, 0.0)


def test_flag_columns_for_the_runner():
    flags = calibrated_flags(None, FlagInputs(_clean_maps(20)), ("median", "exceed"), 0.0)
    clean = FlagInputs(_clean_maps(6, seed=2))
    cols = flag_columns(flags, clean, FlagInputs(clean.distances + 0.3))
    assert set(cols) == {f"flag_{m}_{n}" for m in ("auroc", "tpr", "ffr") for n in flags}
    assert cols["flag_auroc_median"] == 1.0 and cols["flag_tpr_exceed"] == 1.0
    assert cols["flag_ffr_median"] == 0.0


def test_flags_follow_a_masking_detector(detector):
    """With test-time masking the flags read the masked grids the detector scores."""
    masked = AnomalyDINO(detector.backbone, rotate=False, mask_test=True)
    masked.memory_bank_ = detector.memory_bank_
    gen = torch.Generator().manual_seed(4)
    x = F.interpolate(torch.rand(3, 3, 3, 3, generator=gen), size=(56, 56), mode="bilinear")
    inputs = _inputs(masked, x)
    for name in ("stability", "median", "feature_norm"):
        values = make_flag(name).calibrate(masked, inputs, 0.0).statistic(inputs)
        assert values.shape == (3,) and np.isfinite(values).all()


def _textured_images(n: int, seed: int) -> torch.Tensor:
    """Camera-like images (n, 3, 64, 64): smooth content and a slope, sensor noise of one
    grey level, 8-bit values."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=gen)
    smooth = F.interpolate(coarse, size=(64, 64), mode="bilinear", align_corners=False)
    ramp = torch.linspace(0, 0.3, 64).view(1, 1, 1, 64)
    noisy = 0.6 * smooth + ramp + torch.randn(n, 3, 64, 64, generator=gen) / 255
    return (noisy.clamp(0, 1) * 255).round() / 255


def test_noise_level_is_zero_on_planes_and_the_noise_sigma_on_noise():
    plane = torch.linspace(0, 1, 40).view(1, 1, 1, 40) + torch.linspace(0, 0.5, 40).view(
        1, 1, 40, 1
    )
    assert noise_response(plane.expand(1, 3, 40, 40)).abs().max() < 1e-6
    gen = torch.Generator().manual_seed(0)
    sigma = 0.05
    noisy = 0.5 + sigma * torch.randn(2, 3, 200, 200, generator=gen)
    # The response of Gaussian noise is Gaussian with standard deviation sigma.
    assert noise_response(noisy).mean().item() == pytest.approx(
        sigma * math.sqrt(2 / math.pi), rel=0.02
    )


def test_noise_level_flags_a_dense_sign_perturbation_not_a_local_defect():
    images = _textured_images(12, seed=0)
    d = _clean_maps(12)[:, :2, :2]
    flag = NoiseLevelFlag().calibrate(None, FlagInputs(d[:8], images=images[:8]), 0.0)
    test = images[8:].clone()
    defect = test.clone()
    # A defect: a small region of unrelated, rough content.
    defect[:, :, 20:28, 20:28] = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    assert not flag.predict(flag.statistic(FlagInputs(d[8:], images=defect))).any()
    gen = torch.Generator().manual_seed(2)
    sign = torch.randint(0, 2, test.shape, generator=gen).float() * 2 - 1
    attacked = (test + 2 / 255 * sign).clamp(0, 1)
    assert flag.predict(flag.statistic(FlagInputs(d[8:], images=attacked))).all()
    # The adaptive attacker's surrogate moves with it and has a gradient on every pixel.
    x = attacked.clone().requires_grad_(True)
    flag.surrogate(FlagInputs(d[8:], images=x)).sum().backward()
    assert (x.grad[:, :, 1:-1, 1:-1] != 0).float().mean() > 0.5


def test_gated_probabilities_fall_back_to_the_base_rate_where_the_flag_fires():
    p = np.array([0.9, 0.1, 0.95, 0.2])
    y = np.array([0, 0, 1, 1])
    gated = gate_probabilities(p, [True, False, False, True], base_rate=0.5)
    np.testing.assert_array_equal(gated, [0.5, 0.1, 0.95, 0.5])
    assert cal.ece(gated, y) < cal.ece(p, y)
    with pytest.raises(ValueError, match="4 probabilities and 3 flag decisions"):
        gate_probabilities(p, [True] * 3, 0.5)
    with pytest.raises(ValueError, match="base rate"):
        gate_probabilities(p, [True] * 4, 1.5)


def test_image_only_values_are_computed_once_per_image_set():
    calls = []

    class Counting(NoiseLevelFlag):
        def compute(self, inputs):
            calls.append(len(inputs))
            return super().compute(inputs)

    images, d, memo = _textured_images(6, seed=3), _clean_maps(6)[:, :2, :2], {}
    full = FlagInputs(d, images=images, memo=memo)
    flag = Counting().calibrate(None, full.subset([0, 1, 2]), 0.05)
    values = flag.statistic(full.subset(np.array([False, False, False, True, True, True])))
    # Other distances of the same images share the memo: nothing is computed again.
    later = FlagInputs(d + 0.1, images=images, memo=memo).subset([5, 3]).subset([1])
    assert flag.statistic(later)[0] == values[0]
    assert calls == [6]
    alone = NoiseLevelFlag().prepare(None, FlagInputs(d[3:], images=images[3:]))
    np.testing.assert_array_equal(values, alone.statistic(FlagInputs(d[3:], images=images[3:])))
