"""Speed of the attacks on CPU, and how faithful bfloat16 gradients are.

    .venv/bin/python benchmarks/attacks.py [--batch 4] [--resolution 448] [--pgd-steps 10]

Prints seconds per image for FGSM (the attack plus the rescoring forward pass) and for PGD,
in float32 and under bfloat16 autocast; then the fraction of input-gradient signs on which
bf16 agrees with fp32, and the probe-loss increase FGSM achieves with each. A PGD run that
would exceed ``--budget`` seconds is not run; its time is estimated from the FGSM gradient
(on CPUs without native bf16 the bf16 runs are very slow).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import trustad
from trustad.attacks import (
    DEFAULT_EPS,
    ProbeSettings,
    fgsm,
    pgd,
    probe_objective,
    train_probe,
)
from trustad.backbone import build_model
from trustad.detector import AnomalyDINO


def load_model(name: str) -> torch.nn.Module:
    try:
        return trustad.load_backbone(name)
    except Exception as exc:  # no weights here: random ones run at the same speed
        print(f"note: no pretrained weights ({type(exc).__name__}: {exc}); using random ones")
        model = build_model(name)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.02)
        return model.eval().requires_grad_(False)


def smooth_images(n: int, size: int, seed: int) -> torch.Tensor:
    """Low-frequency random images: closer to photographs than white noise."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, size // 16, size // 16, generator=gen)
    return F.interpolate(coarse, size=(size, size), mode="bicubic").clamp(0, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="dinov2_vits14")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--resolution", type=int, default=448)
    parser.add_argument("--pgd-steps", type=int, default=10)
    parser.add_argument("--budget", type=float, default=120.0, help="seconds allowed per PGD run")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")

    model = load_model(args.backbone)
    source = getattr(model, "weights_source", None)
    print(f"weights: {getattr(source, 'origin', 'random')} {getattr(source, 'path', '')}")
    n, size = args.batch, args.resolution
    x = smooth_images(n, size, seed=0)
    grid = size // 14
    # A square "defect" of patches per image, so that the probe has both classes.
    labels = torch.zeros(n, grid, grid)
    labels[:, grid // 3 : grid // 2, grid // 3 : grid // 2] = 1.0
    with torch.no_grad():
        feats = model.patch_features(x)
        support = model.patch_features(smooth_images(1, size, seed=1))
    probe, history = train_probe(feats, labels, ProbeSettings())
    print(f"probe loss {history[0]:.4f} -> {history[-1]:.4f} in 200 Adam steps")
    loss_fn = probe_objective(model, probe, labels)

    detectors = {
        bf16: AnomalyDINO(model, rotate=False, bf16=bf16).fit_features(list(support))
        for bf16 in (False, True)
    }

    def rescore(x_adv: torch.Tensor, bf16: bool) -> torch.Tensor:
        with torch.no_grad():
            return detectors[bf16].score_pixels(x_adv)

    # Warm-up on a small crop: the first call of each kernel pays for dispatch and allocation.
    warm_loss = probe_objective(model, probe, labels[:1, :8, :8])
    for bf16 in (False, True):
        rescore(fgsm(x[:1, :, :112, :112], warm_loss, DEFAULT_EPS, autocast=bf16), bf16)

    results, per_step = {}, {}
    for bf16 in (False, True):
        tag = "bf16" if bf16 else "fp32"
        start = time.perf_counter()
        x_adv = fgsm(x, loss_fn, DEFAULT_EPS, autocast=bf16)
        t_attack = time.perf_counter() - start
        rescore(x_adv, bf16)
        t_score = time.perf_counter() - start - t_attack
        results[tag], per_step[tag] = x_adv, t_attack
        print(
            f"FGSM {tag}: {(t_attack + t_score) / n:.2f} s/img "
            f"(attack {t_attack / n:.2f} + rescoring {t_score / n:.2f})",
            flush=True,
        )
    steps = args.pgd_steps
    for tag, bf16 in (("fp32", False), ("bf16", True)):
        # A PGD step costs what the FGSM attack costs; skip runs that would blow the budget.
        if per_step[tag] * steps > args.budget:
            print(
                f"PGD-{steps} {tag}: ~{per_step[tag] * steps / n:.1f} s/img (estimated: "
                f"{steps} x the FGSM gradient; not run, over --budget {args.budget:.0f} s)"
            )
            continue
        gen = torch.Generator().manual_seed(0)
        start = time.perf_counter()
        pgd(x, loss_fn, DEFAULT_EPS, steps, generator=gen, autocast=bf16)
        t_pgd = time.perf_counter() - start
        print(f"PGD-{steps} {tag}: {t_pgd / n:.2f} s/img (attack only)", flush=True)

    # FGSM's step is eps * sign(grad): where no clipping happened, the step's sign is the
    # gradient's sign, so the two FGSM results already tell whether the signs agree.
    inside = (x >= DEFAULT_EPS) & (x <= 1 - DEFAULT_EPS)
    signs = {tag: (x_adv - x).sign()[inside] for tag, x_adv in results.items()}
    agree = (signs["fp32"] == signs["bf16"]).float().mean().item()
    with torch.no_grad():
        clean = loss_fn(x).mean().item()
        gain = {tag: loss_fn(x_adv).mean().item() - clean for tag, x_adv in results.items()}
    print(f"bf16 vs fp32 gradient signs agree on {agree:.1%} of (unclipped) pixels")
    print(
        f"FGSM probe-loss increase (fp32 evaluation, clean {clean:.4f}): "
        f"fp32 {gain['fp32']:+.4f}, bf16 {gain['bf16']:+.4f} "
        f"(bf16 achieves {gain['bf16'] / gain['fp32'] - 1:+.1%} relative to fp32)"
    )


if __name__ == "__main__":
    main()
