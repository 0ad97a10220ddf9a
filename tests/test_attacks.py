"""Attacks: FGSM, PGD, the noise control, the probe and the score objectives."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_tiny_vit

from trustad.attacks import (
    ATTACKS,
    DEFAULT_EPS,
    AttackSettings,
    ProbeSettings,
    coarse_pgd,
    fgsm,
    input_gradient,
    linf,
    pgd,
    probe_loss,
    probe_objective,
    psnr,
    round_to_8bit,
    run_attack,
    score_loss,
    sign_noise,
    train_probe,
)
from trustad.detector import AnomalyDINO

EPS = DEFAULT_EPS


def _images(n: int = 2, seed: int = 0) -> torch.Tensor:
    """Random 56x56 images (a 4x4 patch grid) with bands right at the edges of [0, 1], so
    that clipping happens on both sides."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 56, 56, generator=gen)
    x[:, :, :3] = 0.01
    x[:, :, -3:] = 0.995
    return x


def _labels(n: int = 2) -> torch.Tensor:
    labels = torch.zeros(n, 4, 4)
    labels[-1, 1:3, 1:3] = 1.0  # the last image has a 2x2-patch defect
    return labels


@pytest.fixture
def probe_setup(tiny_vit):
    x, labels = _images(), _labels()
    probe, _ = train_probe(tiny_vit.patch_features(x), labels, ProbeSettings(steps=50, lr=1e-2))
    return tiny_vit, probe, x, labels


def test_settings_validate_and_record():
    with pytest.raises(ValueError, match="score-pgd"):  # the message lists the known names
        AttackSettings("cw")
    with pytest.raises(ValueError):
        AttackSettings("fgsm", eps=1.5)
    with pytest.raises(ValueError):
        AttackSettings("fgsm", eps=-0.1)
    with pytest.raises(ValueError):
        AttackSettings("pgd", steps=0)
    with pytest.raises(ValueError):
        ProbeSettings(train_on="train")
    s = AttackSettings("pgd", eps=0.04, steps=10)
    assert s.to_dict()["step_size"] == pytest.approx(0.01)
    assert s.needs_objective and not s.targets_score
    assert AttackSettings("score-fgsm").targets_score
    assert not AttackSettings("noise").needs_objective
    assert ProbeSettings().to_dict() == dict(steps=200, lr=1e-3, seed=0, train_on="test")
    assert set(ATTACKS) == {"none", "noise", "fgsm", "pgd", "score-fgsm", "score-pgd", "adaptive"}
    assert AttackSettings("adaptive").targets_score


def test_probe_training_lowers_loss_and_is_seeded(tiny_vit):
    feats = tiny_vit.patch_features(_images(3, seed=1))
    labels = torch.zeros(3, 4, 4)
    labels[:, :2] = 1.0
    settings = ProbeSettings(steps=30, lr=1e-2, seed=3)
    probe, history = train_probe(feats, labels, settings)
    assert len(history) == 31
    assert history[-1] < history[0]
    again, history2 = train_probe(feats, labels, settings)
    assert history2 == history
    assert torch.equal(again.weight, probe.weight) and torch.equal(again.bias, probe.bias)
    other, _ = train_probe(feats, labels, ProbeSettings(steps=30, lr=1e-2, seed=4))
    assert not torch.equal(other.weight, probe.weight)
    assert probe.weight.grad is None and not probe.weight.requires_grad


def test_probe_loss_is_per_image_bce(probe_setup):
    model, probe, x, labels = probe_setup
    loss = probe_loss(model, probe, x, labels)
    assert loss.shape == (2,)
    logits = probe(model.patch_features(x)).squeeze(-1)
    manual = -(labels * logits.sigmoid().log() + (1 - labels) * (-logits).sigmoid().log())
    torch.testing.assert_close(loss, manual.mean(dim=(1, 2)))
    with pytest.raises(ValueError, match="patch grid"):
        probe_loss(model, probe, x, labels[:, :3])


def test_probe_loss_gradient_matches_finite_differences():
    model = make_tiny_vit().double()
    x = _images(1).double()
    labels = _labels(1)
    labels[0, 0, :2] = 1.0
    probe, _ = train_probe(model.patch_features(x), labels, ProbeSettings(steps=20, lr=1e-2))
    assert probe.weight.dtype == torch.float64
    loss_fn = probe_objective(model, probe, labels)
    grad = input_gradient(x, loss_fn)
    h = 1e-6
    for idx in [(0, 0, 5, 7), (0, 1, 20, 33), (0, 2, 41, 12), (0, 0, 55, 55)]:
        xp, xm = x.clone(), x.clone()
        xp[idx] += h
        xm[idx] -= h
        numeric = (loss_fn(xp).sum() - loss_fn(xm).sum()).item() / (2 * h)
        assert grad[idx].item() == pytest.approx(numeric, rel=1e-4, abs=1e-9)


def test_fgsm_moves_every_pixel_by_eps_unless_clipped(probe_setup):
    model, probe, x, labels = probe_setup
    loss_fn = probe_objective(model, probe, labels)
    grad = input_gradient(x, loss_fn)
    assert (grad != 0).all()  # so that every pixel must move
    x_adv = fgsm(x, loss_fn, EPS)
    assert not x_adv.requires_grad
    target = x + EPS * grad.sign()
    inside = (target >= 0) & (target <= 1)
    assert (~inside).any() and inside.float().mean() > 0.5
    torch.testing.assert_close((x_adv - x).abs()[inside], torch.full_like(x[inside], EPS))
    assert torch.equal(x_adv[~inside], target[~inside].clamp(0, 1))
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    # FGSM raises the probe loss on this easy surrogate.
    assert (loss_fn(x_adv) > loss_fn(x)).all()


def test_pgd_stays_in_the_ball_and_beats_fgsm(probe_setup):
    model, probe, x, labels = probe_setup
    loss_fn = probe_objective(model, probe, labels)
    gen = torch.Generator().manual_seed(0)
    x_pgd = pgd(x, loss_fn, EPS, steps=10, generator=gen)
    assert linf(x, x_pgd).max() <= EPS + 1e-6
    assert x_pgd.min() >= 0 and x_pgd.max() <= 1
    x_fgsm = fgsm(x, loss_fn, EPS)
    assert loss_fn(x_pgd).mean() > loss_fn(x_fgsm).mean()
    # The same seed gives the same random start and hence the same result.
    again = pgd(x, loss_fn, EPS, steps=10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, x_pgd)


def test_coarse_pgd_is_smooth_stays_in_the_ball_and_raises_the_loss(probe_setup):
    model, probe, x, labels = probe_setup
    loss_fn = probe_objective(model, probe, labels)
    x_mid = x.clamp(0.1, 0.9)  # no clipping: the perturbation is exactly the upsampled grid
    x_adv = coarse_pgd(x_mid, loss_fn, EPS, coarse=8, steps=5, random_start=False)
    delta = x_adv - x_mid
    assert linf(x_mid, x_adv).max() <= EPS + 1e-6
    assert loss_fn(x_adv).mean() > loss_fn(x_mid).mean()
    # Linear between the 7 grid points of a row: second differences vanish except next to
    # the 5 interior grid points (at most 10 of the 54 columns).
    second = delta[..., 1:-1] * 2 - delta[..., :-2] - delta[..., 2:]
    assert second.abs().amax() > 1e-4  # it is not flat
    assert (second.abs() < 1e-6).float().mean() > 0.8
    settings = AttackSettings("pgd", EPS, steps=2, coarse=8)
    got = run_attack(x_mid, settings, objective=loss_fn, generator=torch.Generator().manual_seed(1))
    want = coarse_pgd(x_mid, loss_fn, EPS, 8, steps=2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match="coarse must be >= 1"):
        AttackSettings("pgd", EPS, coarse=0)


def test_one_step_pgd_without_start_is_fgsm(probe_setup):
    model, probe, x, labels = probe_setup
    loss_fn = probe_objective(model, probe, labels)
    one = pgd(x, loss_fn, EPS, steps=1, step_size=EPS, random_start=False)
    assert torch.equal(one, fgsm(x, loss_fn, EPS))


def test_no_parameter_gradients_accumulate():
    model = make_tiny_vit().requires_grad_(True)  # even a model that could take gradients
    x, labels = _images(), _labels()
    probe, _ = train_probe(model.patch_features(x).detach(), labels, ProbeSettings(steps=5))
    probe.requires_grad_(True)
    loss_fn = probe_objective(model, probe, labels)
    fgsm(x, loss_fn, EPS)
    pgd(x, loss_fn, EPS, steps=2, generator=torch.Generator().manual_seed(0))
    for p in [*model.parameters(), *probe.parameters()]:
        assert p.grad is None


@pytest.mark.parametrize("masked", [False, True])
def test_score_attacks_push_scores_the_wrong_way(tiny_vit, masked):
    support = _images(3, seed=10)
    detector = AnomalyDINO(tiny_vit, rotate=False)
    detector.fit_features(list(tiny_vit.patch_features(support)))
    gen = torch.Generator().manual_seed(0)
    # A normal image close to the support set, and an unrelated (anomalous) one.
    normal = (support[:1] + 0.03 * torch.randn(1, 3, 56, 56, generator=gen)).clamp(0, 1)
    x = torch.cat([normal, _images(1, seed=11)])
    labels = torch.tensor([0, 1])
    # A fixed foreground mask (the tiny ViT's features are too small for the zero-shot one).
    foreground = None
    if masked:
        foreground = torch.ones(2, 4, 4, dtype=torch.bool)
        foreground[:, 0] = False
    before = detector.score_pixels(x, foreground)
    assert before[0] < before[1]
    loss_fn = score_loss(detector, labels, foreground)
    torch.testing.assert_close(loss_fn(x), torch.stack([before[0], -before[1]]))
    for name in ("score-fgsm", "score-pgd"):
        settings = AttackSettings(name, eps=16 / 255, steps=10)
        x_adv = run_attack(x, settings, objective=loss_fn, generator=gen)
        after = detector.score_pixels(x_adv, foreground)
        assert linf(x, x_adv).max() <= 16 / 255 + 1e-6
        if name == "score-pgd":
            assert after[0] > before[0] and after[1] < before[1]
        else:  # one step: at least the objective goes up
            assert loss_fn(x_adv).sum() > loss_fn(x).sum()


def test_sign_noise_is_exact_and_seeded():
    x = _images()
    noisy = sign_noise(x, EPS, torch.Generator().manual_seed(1))
    delta = noisy - x
    inside = ((x + EPS) <= 1) & ((x - EPS) >= 0)
    torch.testing.assert_close(delta.abs()[inside], torch.full_like(x[inside], EPS))
    assert 0.4 < (delta[inside] > 0).float().mean() < 0.6  # both signs, about evenly
    assert noisy.min() >= 0 and noisy.max() <= 1
    assert torch.equal(noisy, sign_noise(x, EPS, torch.Generator().manual_seed(1)))
    assert not torch.equal(noisy, sign_noise(x, EPS, torch.Generator().manual_seed(2)))


def test_round_8bit_stays_close(probe_setup):
    model, probe, x, labels = probe_setup
    loss_fn = probe_objective(model, probe, labels)
    eps = 5.3 / 255  # not a multiple of 1/255, so rounding really moves values
    for name in ("noise", "fgsm", "pgd"):
        settings = AttackSettings(name, eps=eps, steps=3, round_8bit=True)
        x_adv = run_attack(
            x, settings, objective=loss_fn, generator=torch.Generator().manual_seed(0)
        )
        assert linf(x, x_adv).max() <= eps + 1 / 255 + 1e-6
        codes = x_adv * 255
        torch.testing.assert_close(codes, codes.round(), rtol=0, atol=1e-4)
    grid = torch.tensor([0.0, 0.2, 0.5, 1.0])
    torch.testing.assert_close(round_to_8bit(grid) * 255, torch.tensor([0.0, 51.0, 128.0, 255.0]))


def test_run_attack_dispatch(probe_setup):
    model, probe, x, labels = probe_setup
    loss_fn = probe_objective(model, probe, labels)
    gen = torch.Generator()
    assert torch.equal(run_attack(x, AttackSettings("none"), objective=None, generator=gen), x)
    with pytest.raises(ValueError, match="objective"):
        run_attack(x, AttackSettings("fgsm"), objective=None, generator=gen)
    out = run_attack(x, AttackSettings("fgsm"), objective=loss_fn, generator=gen)
    assert torch.equal(out, fgsm(x, loss_fn, EPS))
    settings = AttackSettings("pgd", steps=2)
    out = run_attack(x, settings, objective=loss_fn, generator=torch.Generator().manual_seed(5))
    expected = pgd(x, loss_fn, EPS, steps=2, generator=torch.Generator().manual_seed(5))
    assert torch.equal(out, expected)


def test_bf16_autocast_gradient_is_close(probe_setup):
    model, probe, x, labels = probe_setup
    loss_fn = probe_objective(model, probe, labels)
    exact = input_gradient(x, loss_fn)
    approx = input_gradient(x, loss_fn, autocast=True)
    assert approx.dtype == torch.float32
    assert (exact.sign() == approx.sign()).float().mean() > 0.7
    x_adv = fgsm(x, loss_fn, EPS, autocast=True)
    assert linf(x, x_adv).max() <= EPS + 1e-6


def test_linf_and_psnr_hand_values():
    x = torch.zeros(2, 3, 2, 2)
    x_adv = x.clone()
    x_adv[0, 1, 0, 1] = 0.5  # one of 12 values off by 0.5: mse = 0.25 / 12
    torch.testing.assert_close(linf(x, x_adv), torch.tensor([0.5, 0.0]))
    values = psnr(x, x_adv)
    assert values[0].item() == pytest.approx(10 * math.log10(48))
    assert values[1].item() == math.inf
    probe = torch.full((1, 3, 4, 4), 0.5)
    assert psnr(probe, probe + 0.1)[0].item() == pytest.approx(20.0, abs=1e-4)


def test_probe_trains_on_features_from_the_extractor() -> None:
    from trustad.backbone.runtime import BackboneRuntime

    feats = BackboneRuntime(make_tiny_vit()).features([torch.rand(3, 56, 56)])
    probe, history = train_probe(feats[0][None], torch.zeros(1, 4, 4), ProbeSettings(steps=3))
    assert history[-1] < history[0]
