"""``trustad fit``: fit a detector on a few good images and save it as one model file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..data import category_defaults, support_paths
from ..evaluation.settings import parse_on_off
from ..model import (
    DEFAULT_CALIBRATOR,
    DEFAULT_CONFORMAL_ALPHA,
    DEFAULT_FALSE_FLAG_RATE,
    DEFAULT_FLAG,
    FLAGS,
    SAVABLE_CALIBRATORS,
    FittedDetector,
)
from ..model.file import check_writable
from .inputs import calibration_images, check_images, collect_images, key_file
from .options import add_device_option, add_setting_options, device_of

NONE = "none"


def add_parser(sub: argparse._SubParsersAction) -> None:
    defaults = category_defaults("folder", "")
    p = sub.add_parser(
        "fit",
        help="fit a detector on good images (and calibrate it) into one model file",
        description="Builds the AnomalyDINO memory bank from normal images; with "
        "--calibration also fits a calibrated probability (needs good/ and defect "
        "sub-folders), the conformal threshold (on the good images) and the attack flag. "
        "Writes one .safetensors model file for `trustad predict` and `trustad serve`.",
    )
    p.add_argument(
        "--normal",
        nargs="+",
        required=True,
        metavar="DIR_OR_FILE",
        help="good images, or folders of them: the support set of the memory bank",
    )
    p.add_argument(
        "--calibration",
        metavar="DIR",
        help="good/ plus one folder per defect type, or a folder of good images only "
        "(default: none, raw scores only)",
    )
    p.add_argument("--shots", type=int, default=None, help="support images (default: all)")
    p.add_argument(
        "--seed", type=int, default=0, help="which block of --shots images (default %(default)s)"
    )
    p.add_argument(
        "--conformal-alpha",
        type=float,
        default=DEFAULT_CONFORMAL_ALPHA,
        help="guaranteed false-alarm rate of the decision threshold (default: %(default)s). "
        "Exact split-conformal on separate normal calibration images; pooled with the "
        "support images scored leave-one-out it holds up to a bias towards fewer alarms "
        "(each is scored against a bank one image smaller)",
    )
    p.add_argument(
        "--calibrator",
        choices=(*SAVABLE_CALIBRATORS, NONE),
        default=DEFAULT_CALIBRATOR,
        help="probability from the score (default: %(default)s, Bayesian Platt scaling with a "
        "weakly informative prior and a credible interval; platt: the paper's unregularised "
        "fit, a step function on small separable sets); needs good and defect calibration "
        "images",
    )
    add_setting_options(p, ["platt_c", "platt_smooth"])
    p.add_argument(
        "--flag",
        choices=(*FLAGS, NONE),
        default=DEFAULT_FLAG,
        help="'do not trust this answer' flag (default: %(default)s)",
    )
    p.add_argument(
        "--false-flag-rate",
        type=float,
        default=DEFAULT_FALSE_FLAG_RATE,
        help="share of normal images (and their benign variants) the flag may fire on "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--leave-one-out",
        type=parse_on_off,
        default=True,
        metavar="on|off",
        help="score each support image against a bank without it, for p-values and a "
        "threshold from good images alone (default: on)",
    )
    p.add_argument(
        "--benign-envelope",
        type=parse_on_off,
        default=True,
        metavar="on|off",
        help="set pixel-only flag thresholds over benign variants of the normal images too: "
        "camera noise up to 3 grey levels, JPEG >= 50, blur <= 1 px, lighting +-10 %%, "
        "shifts <= 2 px (default: on)",
    )
    p.add_argument("--out", required=True, metavar="MODEL", help="model file to write")
    p.add_argument(
        "--sign-key",
        metavar="FILE",
        type=key_file,
        default=None,
        help="sign the model file with the secret key in FILE (HMAC-SHA256, at least 16 "
        "bytes), so that `predict/serve --verify-key FILE` refuse an edited file "
        "(default: unsigned)",
    )
    add_setting_options(
        p,
        ["resolution", "rotate", "mask_test", "knn", "backbone", "weights", "batch_size"],
        defaults={"rotate": defaults.rotate, "mask_test": defaults.mask_test},
        helps={
            "rotate": "rotation augmentation of the support images",
            "mask_test": "mask the background of test images",
        },
    )
    add_device_option(p)
    p.set_defaults(func=run)


def _names(paths: list[Path], limit: int = 8) -> str:
    names = [p.name for p in paths[:limit]]
    return ", ".join(names) + (f", ... ({len(paths)} in all)" if len(paths) > limit else "")


def run(args: argparse.Namespace) -> int:
    from ..backbone import load_backbone

    check_writable(args.out)  # every refusal before the fit, not after it
    normal = collect_images(args.normal)
    if not normal:
        raise ValueError(f"no images found in --normal {' '.join(args.normal)}")
    check_images(normal, args.resolution, "--normal")
    support = normal if args.shots is None else support_paths(normal, args.shots, args.seed)
    cal_paths, cal_labels, cal_what = [], None, ""
    if args.calibration:
        cal_paths, cal_labels, cal_what = calibration_images(args.calibration)
        overlap = set(map(Path.resolve, cal_paths)) & set(map(Path.resolve, support))
        if overlap:
            raise ValueError(
                f"{len(overlap)} calibration image(s) are also support images, e.g. "
                f"{sorted(overlap)[0]}; their scores would be near 0"
            )
        check_images(cal_paths, args.resolution, "--calibration")
    backbone = load_backbone(args.backbone, args.weights, device_of(args))
    model = FittedDetector(
        backbone,
        resolution=args.resolution,
        rotate=args.rotate,
        mask_test=args.mask_test,
        knn=args.knn,
        batch_size=args.batch_size,
        calibrator=None if args.calibrator == NONE else args.calibrator,
        calibrator_options={"c": args.platt_c, "smooth_targets": args.platt_smooth}
        if args.calibrator == "platt"
        else None,
        leave_one_out=args.leave_one_out,
        benign_envelope=args.benign_envelope,
        conformal_alpha=args.conformal_alpha,
        flag=None if args.flag == NONE else args.flag,
        flag_options={"false_flag_rate": args.false_flag_rate},
    )
    print(
        f"fitting on {len(support)} support image(s) and {len(cal_paths)} calibration image(s)",
        file=sys.stderr,
    )
    model.fit(support, cal_paths or None, cal_labels)
    path = model.save(args.out, args.sign_key)
    print(summary(model, path, support, cal_what, args))
    return 0


def summary(
    model: FittedDetector, path: Path, support: list[Path], cal_what: str, args: argparse.Namespace
) -> str:
    """What was fitted, and with which images."""
    s = model.settings()
    w = s["backbone"]["weights"]
    pre = s["preprocessing"]
    size_mb = path.stat().st_size / 1e6
    shots = "all" if args.shots is None else f"{args.shots}, seed {args.seed}"
    lines = [
        f"model written to {path} ({size_mb:.1f} MB)",
        f"  backbone     {s['backbone']['name']}"
        + ("" if w is None else f", weights sha256 {w['sha256'][:16]}... ({w['label']})"),
        f"  support      {len(support)} image(s) (shots: {shots}): {_names(support)}",
        f"  memory bank  {s['memory_bank']['patches']} patches; resolution {pre['resolution']}, "
        f"rotate {'on' if pre['rotate'] else 'off'}, mask test "
        f"{'on' if pre['mask_test'] else 'off'}, knn {pre['knn']}",
    ]
    if not cal_what:
        lines.append(
            "  calibration  none: the support images scored leave-one-out give p-values, the "
            "threshold and the flag; no probability"
        )
    else:
        lines.append(f"  calibration  {args.calibration}: {cal_what}")
        if model.calibrator_ is None and model.conformal_ is not None:
            lines.append(
                "               only normal images: the conformal threshold (and a flag that "
                "needs no probability), no probability"
            )
    cal = s["calibrator"]
    if cal is not None:
        params = ", ".join(
            f"{k.rstrip('_')}={v:.4g}" for k, v in cal["params"].items() if isinstance(v, float)
        )
        lines.append(f"  probability  {cal['name']} ({params})")
    conf = s["conformal"]
    if conf is not None:
        lines.append(
            f"  conformal    alpha {conf['alpha']}: threshold {conf['threshold']:.6g} "
            f"on {conf['n']} normal score(s), {s['calibration']['n_leave_one_out']} of them "
            "support images scored leave-one-out"
        )
    if s["flag"] is not None:
        lines.append(
            f"  flag         {s['flag']['name']}: false-flag rate {s['flag']['false_flag_rate']}, "
            f"threshold {s['flag']['threshold']:.4g}"
        )
    lines.append(f"  decision     {s['decision_rule'] or 'none (raw score only)'}")
    lines += [f"  note         {n}" for n in s["calibration"]["notes"]]
    return "\n".join(lines)
