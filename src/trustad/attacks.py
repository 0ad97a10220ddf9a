"""L-infinity attacks on the detector's input (PROTOCOL section 5).

Images are batches (B, 3, H, W) in [0, 1] *before* ImageNet normalisation (the backbone
normalises internally), so ``eps`` is measured in plain pixel units.

Two kinds of objective:

* the paper's surrogate: a linear probe on frozen patch features, trained with BCE against
  the patch mask; the attack maximises that BCE, then the probe is discarded and the
  perturbed image is scored by the unchanged kNN detector;
* the detector's own image score, through the differentiable 1-NN distance and top-1% mean
  (``score-fgsm``, ``score-pgd``): anomalous images are pushed down, normal images up.

Every objective is a callable ``x -> (B,)`` of per-image losses to *maximise*. Gradients are
taken with ``torch.autograd.grad`` with respect to the input only, so no model parameter
ever accumulates a ``.grad``. ``autocast=True`` runs the forward pass under bfloat16
autocast: faster on CPU, but the gradient is approximate (see benchmarks/attacks.py).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbone.runtime import autocast_context

# "adaptive": score-PGD that also keeps an attack flag down (trustad.flags.adaptive).
ATTACKS = ("none", "noise", "fgsm", "pgd", "score-fgsm", "score-pgd", "adaptive")
DEFAULT_EPS = 8 / 255
PROBE_TRAIN_ON = ("test", "calibration")
# Image pairs stacked per call of mean_linf_psnr on an accelerator.
PAIR_BATCH = 64

Objective = Callable[[Tensor], Tensor]


class _Backbone(Protocol):
    def patch_features(self, x: Tensor) -> Tensor: ...


class _Detector(Protocol):
    def score_pixels(self, x: Tensor, foreground: Tensor | None = None) -> Tensor: ...


@dataclass(frozen=True)
class ProbeSettings:
    """How the surrogate linear probe is trained (PROTOCOL section 5)."""

    steps: int = 200
    lr: float = 1e-3
    seed: int = 0
    # "test": the category's test images with their masks (the protocol default);
    # "calibration": only the calibration split.
    train_on: str = "test"

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"probe steps must be >= 1, got {self.steps}")
        if not self.lr > 0:
            raise ValueError(f"probe learning rate must be > 0, got {self.lr}")
        if self.train_on not in PROBE_TRAIN_ON:
            raise ValueError(
                f"probe train_on must be one of {PROBE_TRAIN_ON}, got {self.train_on!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AttackSettings:
    """One attack condition; ``name`` is one of ``ATTACKS`` ("none" is the clean run)."""

    name: str
    eps: float = DEFAULT_EPS
    steps: int = 10  # PGD only
    step_size: float | None = None  # PGD only; None: 2.5 * eps / steps
    random_start: bool = True  # PGD only
    # PGD only: > 1 searches a perturbation on a grid this many times coarser, upsampled
    # bilinearly: a smooth, low-frequency perturbation (what an attacker who knows a
    # high-frequency flag such as ``noise_level`` would use).
    coarse: int = 1
    round_8bit: bool = False  # round x_adv to multiples of 1/255 before scoring

    def __post_init__(self) -> None:
        if self.name not in ATTACKS:
            raise ValueError(f"unknown attack {self.name!r}; expected one of {', '.join(ATTACKS)}")
        if not 0.0 <= self.eps <= 1.0:
            raise ValueError(f"eps must lie in [0, 1], got {self.eps}")
        if self.steps < 1:
            raise ValueError(f"attack steps must be >= 1, got {self.steps}")
        if self.step_size is not None and not self.step_size >= 0:
            raise ValueError(f"step_size must be >= 0, got {self.step_size}")
        if self.coarse < 1:
            raise ValueError(f"coarse must be >= 1, got {self.coarse}")

    @property
    def resolved_step_size(self) -> float:
        return default_step_size(self.eps, self.steps) if self.step_size is None else self.step_size

    @property
    def needs_objective(self) -> bool:
        """True for the gradient attacks (they need a loss to maximise)."""
        return self.name not in ("none", "noise")

    @property
    def targets_score(self) -> bool:
        """True for the attacks on the detector's own score (else the probe, if any)."""
        return self.name.startswith("score-") or self.name == "adaptive"

    def to_dict(self) -> dict[str, Any]:
        # Record the step size actually used, not the None placeholder.
        return {**asdict(self), "step_size": self.resolved_step_size}


def default_step_size(eps: float, steps: int) -> float:
    """The usual PGD step: 2.5 * eps / steps, so that the walk can cross the ball."""
    return 2.5 * eps / steps


def _rand(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Uniform [0, 1) noise shaped like x, drawn on the generator's device (so a seed gives
    the same noise whatever device x lives on)."""
    if generator is None:
        return torch.rand_like(x)
    return torch.rand(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(
        x.device
    )


def input_gradient(x: Tensor, loss_fn: Objective, autocast: bool = False) -> Tensor:
    """d sum(loss_fn(x)) / dx, without touching any parameter's ``.grad``."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad(), autocast_context(x.device, autocast):
        loss = loss_fn(x)
    if loss.ndim != 1 or loss.shape[0] != x.shape[0]:
        raise ValueError(
            f"loss_fn must return per-image losses ({x.shape[0]},), got {tuple(loss.shape)}"
        )
    (grad,) = torch.autograd.grad(loss.float().sum(), x)
    return grad


def fgsm(x: Tensor, loss_fn: Objective, eps: float, autocast: bool = False) -> Tensor:
    """One signed-gradient step: clip(x + eps * sign(grad_x sum(loss_fn(x))), 0, 1)."""
    x = x.detach()
    grad = input_gradient(x, loss_fn, autocast)
    return (x + eps * grad.sign()).clamp(0.0, 1.0)


def pgd(
    x: Tensor,
    loss_fn: Objective,
    eps: float,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    autocast: bool = False,
    on_step: Callable[[], None] | None = None,
) -> Tensor:
    """L-infinity PGD: optional uniform start in the eps ball, then ``steps`` signed steps,
    each followed by projection onto the eps ball around x and onto [0, 1]. ``on_step`` is
    called after each step (progress); it cannot change the result."""
    x = x.detach()
    step = default_step_size(eps, steps) if step_size is None else step_size
    lower, upper = (x - eps).clamp(min=0.0), (x + eps).clamp(max=1.0)
    x_adv = x
    if random_start:
        x_adv = (x + eps * (2.0 * _rand(x, generator) - 1.0)).clamp(0.0, 1.0)
    for _ in range(steps):
        grad = input_gradient(x_adv, loss_fn, autocast)
        # min/max rather than clamp(delta): keeps a 1-step, no-start PGD bit-equal to FGSM.
        x_adv = torch.minimum(torch.maximum(x_adv + step * grad.sign(), lower), upper)
        if on_step is not None:
            on_step()
    return x_adv.detach()


def coarse_pgd(
    x: Tensor,
    loss_fn: Objective,
    eps: float,
    coarse: int,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    autocast: bool = False,
    on_step: Callable[[], None] | None = None,
) -> Tensor:
    """PGD over a perturbation on a grid ``coarse`` times coarser than x, bilinearly
    upsampled: every pixel of x + delta stays within eps of x (an interpolation of values in
    [-eps, eps] stays there), and delta is smooth between grid points."""
    x = x.detach()
    step = default_step_size(eps, steps) if step_size is None else step_size
    h, w = x.shape[-2:]
    grid = (max(1, -(-h // coarse)), max(1, -(-w // coarse)))

    def perturbed(delta: Tensor) -> Tensor:
        up = F.interpolate(delta, size=(h, w), mode="bilinear", align_corners=True)
        return (x + up).clamp(0.0, 1.0)

    delta = x.new_zeros((*x.shape[:-2], *grid))
    if random_start:
        delta = eps * (2.0 * _rand(delta, generator) - 1.0)
    for _ in range(steps):
        grad = input_gradient(delta, lambda d: loss_fn(perturbed(d)), autocast)
        delta = (delta + step * grad.sign()).clamp(-eps, eps)
        if on_step is not None:
            on_step()
    return perturbed(delta).detach()


def sign_noise(x: Tensor, eps: float, generator: torch.Generator | None = None) -> Tensor:
    """The random control: clip(x + eps * s, 0, 1) with s uniformly +-1 per pixel, i.e. the
    same L-infinity budget and L2 norm as FGSM but with no gradient information."""
    x = x.detach()
    signs = torch.where(_rand(x, generator) < 0.5, -1.0, 1.0).to(x.dtype)
    return (x + eps * signs).clamp(0.0, 1.0)


def round_to_8bit(x: Tensor) -> Tensor:
    """round(x * 255) / 255: what survives saving the image as an 8-bit PNG."""
    return torch.round(x * 255.0) / 255.0


def linf(x: Tensor, x_adv: Tensor) -> Tensor:
    """Per-image L-infinity distance (B,)."""
    return (x_adv - x).abs().flatten(1).amax(dim=1)


def psnr(x: Tensor, x_adv: Tensor) -> Tensor:
    """Per-image PSNR in dB (B,), data range 1; inf for identical images."""
    mse = (x_adv.double() - x.double()).pow(2).flatten(1).mean(dim=1)
    return (-10.0 * torch.log10(mse)).to(x.dtype if x.is_floating_point() else torch.float64)


def mean_linf_psnr(clean: Sequence[Tensor], adv: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Mean L-infinity distance and mean PSNR over image pairs (each (C, H, W)), as 0-d
    float64 tensors on the first image's device, without synchronising with the host:
    images of one size are measured in batches of ``PAIR_BATCH`` (one by one on the CPU)."""
    if len(clean) != len(adv):
        raise ValueError(f"{len(clean)} clean images but {len(adv)} adversarial ones")
    if len(clean) == 0:
        raise ValueError("no image pairs")
    device = clean[0].device
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, (a, b) in enumerate(zip(clean, adv)):
        if a.shape != b.shape:
            raise ValueError(f"pair {i}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
        by_shape.setdefault(tuple(a.shape), []).append(i)
    total_linf = torch.zeros((), dtype=torch.float64, device=device)
    total_psnr = torch.zeros((), dtype=torch.float64, device=device)
    # On the CPU stacking only adds copies; elsewhere it saves kernel launches.
    chunk = 1 if device.type == "cpu" else PAIR_BATCH
    for same_shape in by_shape.values():
        for start in range(0, len(same_shape), chunk):
            idx = same_shape[start : start + chunk]
            x = torch.stack([clean[i].to(device) for i in idx])
            x_adv = torch.stack([adv[i].to(device) for i in idx])
            total_linf += linf(x, x_adv).double().sum()
            total_psnr += psnr(x, x_adv).double().sum()
    return total_linf / len(clean), total_psnr / len(clean)


def _probe_init(probe: nn.Linear, generator: torch.Generator) -> None:
    # nn.Linear's default init (uniform +-1/sqrt(fan_in)), but from our own generator.
    bound = 1.0 / math.sqrt(probe.in_features)
    with torch.no_grad():
        for p in (probe.weight, probe.bias):
            p.copy_((torch.rand(p.shape, generator=generator) * 2.0 - 1.0) * bound)


def train_probe(
    features: Tensor,
    patch_labels: Tensor,
    settings: ProbeSettings = ProbeSettings(),
    on_step: Callable[[], None] | None = None,
) -> tuple[nn.Linear, list[float]]:
    """Train the linear probe g: R^D -> R on frozen patch features.

    ``features`` (n, h, w, D), ``patch_labels`` (n, h, w) in {0, 1}. Full-batch Adam on the
    mean BCE-with-logits over all patches, seeded initialisation. Returns the frozen probe
    (on the features' device and dtype) and the loss history: the loss before each of the
    ``steps`` updates, then the final loss (``steps + 1`` values). ``on_step`` is called
    after each update (progress).
    """
    if features.ndim != 4 or patch_labels.shape != features.shape[:3]:
        raise ValueError(
            f"expected features (n,h,w,D) and labels (n,h,w), got {tuple(features.shape)} "
            f"and {tuple(patch_labels.shape)}"
        )
    dim = features.shape[-1]
    feats = features.detach().reshape(-1, dim)
    target = patch_labels.detach().reshape(-1).to(device=feats.device, dtype=feats.dtype)
    probe = nn.Linear(dim, 1)
    _probe_init(probe, torch.Generator().manual_seed(settings.seed))
    probe = probe.to(device=feats.device, dtype=feats.dtype)
    optimiser = torch.optim.Adam(probe.parameters(), lr=settings.lr)
    history: list[float] = []
    with torch.enable_grad():
        for _ in range(settings.steps):
            optimiser.zero_grad(set_to_none=True)
            loss = F.binary_cross_entropy_with_logits(probe(feats).squeeze(-1), target)
            loss.backward()
            optimiser.step()
            history.append(loss.item())
            if on_step is not None:
                on_step()
    with torch.no_grad():
        history.append(F.binary_cross_entropy_with_logits(probe(feats).squeeze(-1), target).item())
    optimiser.zero_grad(set_to_none=True)
    return probe.eval().requires_grad_(False), history


def probe_loss(backbone: _Backbone, probe: nn.Linear, x: Tensor, patch_labels: Tensor) -> Tensor:
    """The paper's L(x, m): per-image mean BCE of the probe's patch logits (B,)."""
    logits = probe(backbone.patch_features(x)).squeeze(-1)
    if patch_labels.shape != logits.shape:
        raise ValueError(
            f"patch labels {tuple(patch_labels.shape)} do not match the patch grid "
            f"{tuple(logits.shape)}"
        )
    target = patch_labels.to(device=logits.device, dtype=logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return bce.flatten(1).mean(dim=1)


def probe_objective(backbone: _Backbone, probe: nn.Linear, patch_labels: Tensor) -> Objective:
    """The surrogate loss to maximise: x -> probe_loss(backbone, probe, x, patch_labels)."""
    return lambda x: probe_loss(backbone, probe, x, patch_labels)


def score_loss(detector: _Detector, labels: Tensor, foreground: Tensor | None = None) -> Objective:
    """The score attacks' loss to maximise: (1 - 2 * label) * score, i.e. push anomalous
    images' scores down and normal images' scores up.

    With ``foreground`` None and a masking detector, the mask is recomputed from each
    iterate's own features, as the detector will do when scoring x_adv.
    """
    sign = 1.0 - 2.0 * labels.detach().reshape(-1).float()

    def loss(x: Tensor) -> Tensor:
        scores = detector.score_pixels(x, foreground)
        return sign.to(device=scores.device, dtype=scores.dtype) * scores

    return loss


def run_attack(
    x: Tensor,
    settings: AttackSettings,
    *,
    objective: Objective | None,
    generator: torch.Generator | None,
    autocast: bool = False,
    on_step: Callable[[], None] | None = None,
) -> Tensor:
    """Apply the attack named by ``settings`` to the batch x (detached result); ``on_step``
    is called after each gradient step (progress).

    ``objective`` is the loss to maximise (``probe_objective`` or ``score_loss``), needed by
    the gradient attacks only; ``generator`` seeds the noise control and PGD's random start.
    With ``round_8bit`` the result is rounded to multiples of 1/255; rounding moves a value
    by at most 0.5/255, so |x_adv - x| <= eps + 0.5/255 still holds.
    """
    x = x.detach()
    name = settings.name
    if name == "none":
        return x
    if settings.needs_objective and objective is None:
        raise ValueError(f"attack {name!r} needs an objective")
    if name == "noise":
        x_adv = sign_noise(x, settings.eps, generator)
    elif name in ("fgsm", "score-fgsm"):
        x_adv = fgsm(x, objective, settings.eps, autocast=autocast)
        if on_step is not None:
            on_step()
    else:  # pgd, score-pgd, adaptive
        search = (
            pgd if settings.coarse == 1 else functools.partial(coarse_pgd, coarse=settings.coarse)
        )
        x_adv = search(
            x,
            objective,
            settings.eps,
            steps=settings.steps,
            step_size=settings.resolved_step_size,
            random_start=settings.random_start,
            generator=generator,
            autocast=autocast,
            on_step=on_step,
        )
    if settings.round_8bit:
        x_adv = round_to_8bit(x_adv)
    return x_adv
