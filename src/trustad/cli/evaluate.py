"""``trustad evaluate`` (the protocol grid) and ``trustad report`` (tables from results)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..attacks import ATTACKS, DEFAULT_EPS
from ..data import DATASETS, PREPROCESSING


def _eps(text: str) -> float:
    """An eps given as a fraction of 255 ("8/255") or as a plain number in [0, 1]."""
    try:
        if "/" in text:
            num, den = text.split("/")
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError) as exc:
        raise argparse.ArgumentTypeError(
            f"eps must be a number or a fraction like 8/255, got {text!r}"
        ) from exc


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected on/off, got {text!r}")


def add_run_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``evaluate`` and ``demo``."""
    p.add_argument(
        "--resolution", type=int, default=448, help="smaller image edge in pixels (default 448)"
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument(
        "--backbone", default="dinov2_vits14", help="DINOv2 variant (default dinov2_vits14)"
    )
    p.add_argument(
        "--weights",
        default=None,
        help="weights file (.pth or .safetensors); default: see `trustad weights show`",
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast for feature extraction")
    p.add_argument(
        "--attack-bf16",
        action="store_true",
        help="bfloat16 autocast for attack gradients (faster, approximate)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="run the evaluation protocol (shots x seeds x attacks) on a dataset",
        description="Runs AnomalyDINO over categories x shots x seeds x conditions, writes "
        "results.csv, scores.csv, run.json and report.md into --out, and prints a summary. "
        "Rerunning with the same --out resumes.",
    )
    p.add_argument("--dataset", choices=DATASETS, required=True)
    p.add_argument(
        "--root", required=True, help="dataset folder (a folder of categories, or one category)"
    )
    p.add_argument(
        "--categories", nargs="+", default=None, help="subset of categories (default: all found)"
    )
    p.add_argument("--shots", nargs="+", type=int, default=[1, 2, 4, 8, 16])
    p.add_argument("--seeds", type=int, default=3, help="number of seeds 0..N-1 (default 3)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--preprocessing", choices=PREPROCESSING, default="agnostic")
    p.add_argument(
        "--mask-test",
        type=_bool,
        default=None,
        metavar="on|off",
        help="override the category table's background masking of test images",
    )
    p.add_argument(
        "--rotate",
        type=_bool,
        default=None,
        metavar="on|off",
        help="override the category table's rotation augmentation of support images",
    )
    p.add_argument(
        "--mask-support",
        action="store_true",
        help="also mask the background of support images",
    )
    p.add_argument(
        "--mask-morphology",
        choices=("grid", "flat"),
        default="grid",
        help="grid: 3x3 on the patch grid (protocol); flat: along the token order like the public reference code",
    )
    p.add_argument("--knn", type=int, default=1)
    p.add_argument(
        "--attack", nargs="+", choices=ATTACKS, default=["none"], help="conditions besides clean"
    )
    p.add_argument(
        "--eps",
        nargs="+",
        type=_eps,
        default=[DEFAULT_EPS],
        help="L-inf budgets, e.g. 8/255 (several: a sweep)",
    )
    p.add_argument("--pgd-steps", type=int, default=10)
    p.add_argument("--pgd-step-size", type=_eps, default=None, help="default 2.5*eps/steps")
    p.add_argument("--no-random-start", action="store_true", help="PGD without a random start")
    p.add_argument(
        "--round-8bit",
        action="store_true",
        help="round adversarial images to 8 bits before scoring",
    )
    p.add_argument("--probe-steps", type=int, default=200)
    p.add_argument("--probe-lr", type=float, default=1e-3)
    p.add_argument("--probe-train-on", choices=("test", "calibration"), default="test")
    p.add_argument("--calibration-fraction", type=float, default=0.2)
    p.add_argument(
        "--flag-rate", type=float, default=0.05, help="false-flag rate of the entropy attack flag"
    )
    p.add_argument(
        "--platt-c",
        type=float,
        default=None,
        help="L2 regularisation of Platt scaling in scikit-learn's C units (default: none)",
    )
    p.add_argument(
        "--platt-smooth",
        action="store_true",
        help="fit Platt scaling to Platt's smoothed targets (N+1)/(N+2) and 1/(N+2) instead "
        "of 0/1: less overconfident on small or separable calibration sets",
    )
    p.add_argument(
        "--conformal-alpha",
        type=float,
        default=0.1,
        help="target false-alarm rate of the conformal threshold",
    )
    p.add_argument("--no-pixel-metrics", action="store_true")
    p.add_argument(
        "--save-examples",
        type=int,
        default=0,
        metavar="N",
        help="save N adversarial images and maps per category and attack",
    )
    add_run_options(p)
    p.set_defaults(func=run_evaluate)

    r = sub.add_parser("report", help="print and write report.md from an evaluation folder")
    r.add_argument("out", help="folder holding results.csv")
    r.set_defaults(func=run_report)


def settings_from_args(args: argparse.Namespace):
    from ..protocol import EvaluationSettings

    return EvaluationSettings(
        dataset=args.dataset,
        root=str(Path(args.root)),
        categories=args.categories,
        shots=sorted(set(args.shots)),
        seeds=args.seeds,
        resolution=args.resolution,
        backbone=args.backbone,
        weights=args.weights,
        preprocessing=args.preprocessing,
        mask_test=args.mask_test,
        rotate=args.rotate,
        mask_support=args.mask_support,
        mask_morphology=args.mask_morphology,
        knn=args.knn,
        batch_size=args.batch_size,
        bf16=args.bf16,
        attacks=list(dict.fromkeys(args.attack)),
        eps=list(dict.fromkeys(args.eps)),
        pgd_steps=args.pgd_steps,
        pgd_step_size=args.pgd_step_size,
        random_start=not args.no_random_start,
        round_8bit=args.round_8bit,
        attack_bf16=args.attack_bf16,
        probe_steps=args.probe_steps,
        probe_lr=args.probe_lr,
        probe_train_on=args.probe_train_on,
        calibration_fraction=args.calibration_fraction,
        flag_rate=args.flag_rate,
        conformal_alpha=args.conformal_alpha,
        platt_c=args.platt_c,
        platt_smooth=args.platt_smooth,
        pixel_metrics=not args.no_pixel_metrics,
        save_examples=args.save_examples,
    )


def execute(settings, out: str | Path, device: str, quiet: bool) -> list[dict]:
    """Load the backbone, run the grid, write the report, print the summary."""
    from ..backbone import load_backbone
    from ..protocol import Evaluation
    from ..report import summary, write_figures, write_report

    backbone = load_backbone(settings.backbone, settings.weights, device=device)
    source = backbone.weights_source
    print(f"weights: {source.label}, {source.path} (sha256 {source.sha256[:12]})")
    run = Evaluation(settings, backbone, out, progress=not quiet)
    rows = run.run()
    path = write_report(out)
    figures = write_figures(out)
    print(summary(rows))
    print(
        f"\nresults: {Path(out) / 'results.csv'}  scores: {Path(out) / 'scores.csv'}  report: {path}"
    )
    if figures:
        print("figures: " + ", ".join(str(f) for f in figures))
    if run.failures:
        lines = [f"  {c}: {msg}" for c, msg in run.failures.items()]
        raise RuntimeError("these categories failed (the others are saved):\n" + "\n".join(lines))
    return rows


def run_evaluate(args: argparse.Namespace) -> int:
    execute(settings_from_args(args), args.out, args.device, args.quiet)
    return 0


def run_report(args: argparse.Namespace) -> int:
    from ..report import read_results, summary, write_figures, write_report

    rows = read_results(args.out)
    print(summary(rows))
    print(f"\nreport: {write_report(args.out)}")
    for figure in write_figures(args.out):
        print(f"figure: {figure}")
    return 0
