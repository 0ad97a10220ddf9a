"""Attack flags beyond the score, and calibration under attack, measured with real DINOv2.

    PYTHONPATH=src .venv/bin/python benchmarks/flags.py [--data synthetic photos]
        [--categories 1] [--n-good 6] [--n-defect 6] [--shots 1 4] [--resolution 224]

For each category: a calibration split of the test images (clean: the only data the flags'
thresholds and the calibrators see) and an evaluation split. Every evaluation image is
attacked (noise, probe fgsm/pgd, score-fgsm/pgd, and an adaptive score-PGD that also
minimises a flag's statistic) at each eps; each flag's AUROC separates clean from attacked
evaluation images, and its TPR is the share of attacked images above the threshold set on
the clean calibration images (plus --flag-normals spare normal training images, never in
the memory bank) for --flag-rate false flags (the realised clean false-flag
rate on the evaluation images is printed too). Then ECE on attacked inputs at the largest
eps per calibrator: fitted on clean calibration scores, on clean + the defender's own
score-FGSM scores ("mixed"), and abstaining where the --abstain-flag fires.
Tables are printed as Markdown (abstention for the --abstain flags); --out saves every
number as JSON (abstention for every flag).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import trustad
from trustad import calibration as cal
from trustad.attacks import (
    AttackSettings,
    ProbeSettings,
    probe_objective,
    run_attack,
    score_loss,
    train_probe,
)
from trustad.backbone import preprocess, preprocess_mask
from trustad.backbone.preprocess import patch_mask
from trustad.backbone.runtime import BackboneRuntime
from trustad.data import load_category, load_mask, make_synthetic_dataset
from trustad.detector import AnomalyDINO
from trustad.flags import (
    FLAG_COSTS,
    FLAGS,
    FlagInputs,
    flag_aware_score_loss,
    flagging_auroc,
    gate_probabilities,
    make_flag,
    rate_threshold,
)

sys.path.insert(0, str(Path(__file__).parent))
from photo_set import PHOTO_CATEGORIES, make_photo_category  # noqa: E402
from robust_calibration import (  # noqa: E402
    abstaining_metrics,
    as_label_tensor,
    defender_perturbation,
    fit_mixed_calibrator,
)

PROBE_ATTACKS = ("noise", "fgsm", "pgd")
SCORE_ATTACKS = ("score-fgsm", "score-pgd")
CALIBRATORS = ("uncal", "platt", "platt-smooth", "temperature", "isotonic", "beta")


@dataclass
class Category:
    dataset: str
    name: str
    train: list[torch.Tensor]  # preprocessed normal images
    test: torch.Tensor  # (N, 3, H, W)
    labels: np.ndarray
    patch_labels: torch.Tensor  # (N, h, w) float


def _patch_labels(masks: list[np.ndarray], res: int) -> torch.Tensor:
    return torch.stack([patch_mask(preprocess_mask(m, res)).float() for m in masks])


def _names(args: argparse.Namespace, available: tuple[str, ...]) -> tuple[str, ...]:
    if args.names:
        return tuple(n for n in args.names if n in available)
    return available[: args.categories]


def synthetic_categories(args: argparse.Namespace, tmp: Path) -> list[Category]:
    names = _names(args, ("brick", "grass", "gravel"))
    root = make_synthetic_dataset(
        tmp / "synthetic",
        names,
        max(args.shots) + args.flag_normals,
        args.n_good,
        args.n_defect,
        256,
        args.seed,
    )
    out = []
    for name in names:
        data = load_category("folder", root, name)
        test = torch.stack([preprocess(s.path, args.resolution) for s in data.test])
        masks = [load_mask(s, (256, 256)) for s in data.test]
        labels = np.array([s.label for s in data.test])
        train = [preprocess(p, args.resolution) for p in data.train]
        out.append(
            Category("synthetic", name, train, test, labels, _patch_labels(masks, args.resolution))
        )
    return out


def photo_categories(args: argparse.Namespace) -> list[Category]:
    out = []
    for name in _names(args, PHOTO_CATEGORIES):
        c = make_photo_category(
            name, max(args.shots) + args.flag_normals, args.n_good, args.n_defect, 256, args.seed
        )
        test = torch.stack([preprocess(x, args.resolution) for x in c.test])
        train = [preprocess(x, args.resolution) for x in c.train]
        out.append(
            Category("photos", name, train, test, c.labels, _patch_labels(c.masks, args.resolution))
        )
    return out


def attack(x, labels_idx, settings, objective_for, batch: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for s in range(0, len(x), batch):
        idx = list(range(s, min(s + batch, len(x))))
        out.append(run_attack(x[idx], settings, objective=objective_for(idx), generator=gen))
    return torch.cat(out)


def score_attack(det, x, y, name, eps, target, score_scale, args) -> torch.Tensor:
    """score-fgsm / score-pgd, or the adaptive score-PGD against ``target`` (a fitted flag)."""
    labels = as_label_tensor(y)
    kind = "score-fgsm" if name == "score-fgsm" else "score-pgd"
    coarse = args.coarse if target is not None and kind == "score-pgd" else 1
    settings = AttackSettings(kind, eps / 255, steps=args.pgd_steps, coarse=coarse)
    if target is None:
        return attack(x, None, settings, lambda idx: score_loss(det, labels[idx]), args.batch, 2)
    return attack(
        x,
        None,
        settings,
        lambda idx: flag_aware_score_loss(det, labels[idx], target, score_scale, args.lam),
        args.batch,
        2,
    )


def extract_features(backbone, images, batch: int) -> list[torch.Tensor]:
    return BackboneRuntime(backbone, batch_size=batch).features(images)


def flag_stats(flags, det, feats, images) -> dict[str, np.ndarray]:
    dists = torch.stack(det.distances_from_features(list(feats)))
    inputs = FlagInputs(dists, feats, images)
    return {name: f.statistic(inputs) for name, f in flags.items()}, dists


def scores_of(det, dists) -> np.ndarray:
    return det.scores_from_distances(list(dists))


def calibrator(name: str, scores, labels, perturbed=None):
    base, opts = ("platt", {"smooth_targets": True}) if name == "platt-smooth" else (name, {})
    if perturbed is None:
        return cal.fit_calibrator_safely(base, scores, labels, **opts)[0]
    return fit_mixed_calibrator(base, scores, perturbed, labels, **opts)[0]


def run_category(c: Category, backbone, args, done: dict) -> tuple[list[dict], list[dict]]:
    """Rows for one category; ``done`` holds earlier categories' rows (saved with ours)."""
    t0 = time.time()
    cal_idx, eval_idx = cal.calibration_split(c.labels, args.cal_fraction, args.seed)
    feats = torch.stack(extract_features(backbone, list(c.test), args.batch))
    x_eval, y_eval = c.test[eval_idx], c.labels[eval_idx]
    probe, _ = train_probe(feats, c.patch_labels, ProbeSettings(seed=args.seed))
    lab_eval = c.patch_labels[eval_idx]

    def probe_objective_for(idx):
        return probe_objective(backbone, probe, lab_eval[idx])

    conditions = [(a, e) for a in args.attacks for e in args.eps]
    conditions += [(f"adaptive-{f}", e) for f in args.adaptive for e in args.eps]
    shared: dict[tuple[str, float], torch.Tensor] = {}  # probe attacks ignore the bank
    for a, e in conditions:
        if a in PROBE_ATTACKS:
            name, obj = a, (None if a == "noise" else probe_objective_for)
            st = AttackSettings(name, e / 255, steps=args.pgd_steps)
            shared[(a, e)] = attack(x_eval, None, st, obj or (lambda i: None), args.batch, 1)
    flag_rows, cal_rows = [], []
    for shots in args.shots:
        # Training crops are random already: the first ``shots`` are a random support set.
        det = AnomalyDINO(backbone, resolution=args.resolution, rotate=False)
        det.fit_features(extract_features(backbone, c.train[:shots], args.batch))
        dist_all = torch.stack(det.distances_from_features(list(feats)))
        s_all = scores_of(det, dist_all)
        clean_cal = FlagInputs(dist_all[cal_idx], feats[cal_idx], c.test[cal_idx])
        if args.flag_normals:  # spare normal images (never in the bank) join the flags' data
            spare = c.train[max(args.shots) :]
            f_sp = torch.stack(extract_features(backbone, spare, args.batch))
            d_sp = torch.stack(det.distances_from_features(list(f_sp)))
            clean_cal = FlagInputs(
                torch.cat([clean_cal.distances, d_sp]),
                torch.cat([clean_cal.features, f_sp]),
                torch.cat([clean_cal.images, torch.stack(spare)]),
            )
        flags = {n: make_flag(n).calibrate(det, clean_cal, args.flag_rate) for n in args.flags}
        clean_eval = FlagInputs(dist_all[eval_idx], feats[eval_idx], x_eval)
        clean_stats = {n: f.statistic(clean_eval) for n, f in flags.items()}
        s_cal, y_cal = s_all[cal_idx], c.labels[cal_idx]
        # Entropy of Platt / uncalibrated probabilities: the existing flag, for comparison.
        ent_cal = {n: calibrator(n, s_cal, y_cal) for n in ("uncal", "platt")}
        clean_stats.update(
            {
                f"entropy_{n}": cal.entropy(k.predict_proba(s_all[eval_idx]))
                for n, k in ent_cal.items()
            }
        )
        ent_thr = {
            n: rate_threshold(cal.entropy(k.predict_proba(s_cal)), args.flag_rate)
            for n, k in ent_cal.items()
        }
        x_cal_def = defender_perturbation(
            det, c.test[cal_idx], as_label_tensor(y_cal), max(args.eps) / 255
        )
        s_cal_def = scores_of(
            det,
            det.distances_from_features(extract_features(backbone, list(x_cal_def), args.batch)),
        )
        score_scale = float(max(np.std(s_cal), 1e-6))
        for a, e in conditions:
            if (a, e) in shared:
                x_adv = shared[(a, e)]
            else:
                target = flags.get(a.removeprefix("adaptive-")) if "adaptive" in a else None
                x_adv = score_attack(det, x_eval, y_eval, a, e, target, score_scale, args)
            f_adv = torch.stack(extract_features(backbone, list(x_adv), args.batch))
            adv_stats, d_adv = flag_stats(flags, det, f_adv, x_adv)
            s_adv = scores_of(det, d_adv)
            for n, k in ent_cal.items():
                adv_stats[f"entropy_{n}"] = cal.entropy(k.predict_proba(s_adv))
            for n, v in adv_stats.items():
                thr = flags[n].threshold_ if n in flags else ent_thr[n.removeprefix("entropy_")]
                flag_rows.append(
                    dict(
                        dataset=c.dataset,
                        category=c.name,
                        shots=shots,
                        attack=a,
                        eps=e,
                        flag=n,
                        auroc=flagging_auroc(clean_stats[n], v),
                        tpr=float(np.mean(v > thr)),
                        clean_ffr=float(np.mean(clean_stats[n] > thr)),
                        image_auroc=trustad.metrics.auroc(y_eval, s_adv),
                    )
                )
            if e != max(args.eps):
                continue
            abstain = {n: f.predict(adv_stats[n]) for n, f in flags.items()}
            for name in CALIBRATORS:
                p_clean = calibrator(name, s_cal, y_cal).predict_proba(s_adv)
                p_mixed = calibrator(name, s_cal, y_cal, s_cal_def).predict_proba(s_adv)
                row = dict(
                    dataset=c.dataset, category=c.name, shots=shots, attack=a, eps=e,
                    calibrator=name, ece=cal.ece(p_clean, y_eval),
                    ece_mixed=cal.ece(p_mixed, y_eval),
                )  # fmt: skip
                for n, ab in abstain.items():
                    m = abstaining_metrics(p_clean, y_eval, ab)
                    row[f"ece_abstain_{n}"], row[f"abstain_{n}"] = m["ece"], m["abstention"]
                    gated = gate_probabilities(p_clean, ab, float(np.mean(y_cal)))
                    row[f"ece_gated_{n}"] = cal.ece(gated, y_eval)
                cal_rows.append(row)
        # Calibration on clean evaluation inputs too: the options must not break it.
        s_clean_eval = s_all[eval_idx]
        clean_fired = {n: f.predict(clean_stats[n]) for n, f in flags.items()}
        for name in CALIBRATORS:
            p_clean = calibrator(name, s_cal, y_cal).predict_proba(s_clean_eval)
            row = dict(
                dataset=c.dataset, category=c.name, shots=shots, attack="none", eps=0,
                calibrator=name, ece=cal.ece(p_clean, y_eval),
                ece_mixed=cal.ece(
                    calibrator(name, s_cal, y_cal, s_cal_def).predict_proba(s_clean_eval),
                    y_eval,
                ),
            )  # fmt: skip
            for n, fired in clean_fired.items():
                gated = gate_probabilities(p_clean, fired, float(np.mean(y_cal)))
                row[f"ece_gated_{n}"] = cal.ece(gated, y_eval)
            cal_rows.append(row)
        print(f"[{c.dataset}/{c.name}] {shots} shots done at {time.time() - t0:.0f} s", flush=True)
        if args.out:  # after every shot count, so that a long run keeps what it measured
            rows = {
                "flags": done["flags"] + flag_rows,
                "calibration": done["calibration"] + cal_rows,
            }
            args.out.write_text(json.dumps(rows))
    return flag_rows, cal_rows


def mean_by(rows: list[dict], keys: tuple[str, ...], values: tuple[str, ...]) -> dict:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in keys)].append(r)
    return {
        k: {v: float(np.nanmean([r.get(v, np.nan) for r in g])) for v in values}
        for k, g in groups.items()
    }


def print_tables(flag_rows: list[dict], cal_rows: list[dict], args) -> None:
    for dataset in dict.fromkeys(r["dataset"] for r in flag_rows):
        rows = [r for r in flag_rows if r["dataset"] == dataset]
        agg = mean_by(rows, ("flag", "attack", "eps", "shots"), ("auroc", "tpr", "image_auroc"))
        flags = list(dict.fromkeys(r["flag"] for r in rows))
        attacks = list(dict.fromkeys(r["attack"] for r in rows))
        print(f"\n### {dataset}: flag AUROC / TPR at {args.flag_rate:.0%} false flags "
              f"(threshold on clean calibration images), mean over categories\n")  # fmt: skip
        head = "| flag | attack | eps | " + " | ".join(
            f"{k}-shot AUROC | {k}-shot TPR" for k in args.shots
        )
        print(head + " |")
        print("|" + "---|" * (3 + 2 * len(args.shots)))
        for f in flags:
            for a in attacks:
                for e in args.eps:
                    cells = []
                    for k in args.shots:
                        m = agg.get((f, a, e, k))
                        cells += (
                            ["-", "-"] if m is None else [f"{m['auroc']:.3f}", f"{m['tpr']:.2f}"]
                        )
                    print(f"| {f} | {a} | {e}/255 | " + " | ".join(cells) + " |")
        print(f"\n{dataset}: image AUROC under each attack (clean-vs-defect, evaluation split)\n")
        print("| attack | eps | " + " | ".join(f"{k}-shot" for k in args.shots) + " |")
        print("|" + "---|" * (2 + len(args.shots)))
        for a in attacks:
            for e in args.eps:
                cells = [f"{agg[(flags[0], a, e, k)]['image_auroc']:.3f}" for k in args.shots]
                print(f"| {a} | {e}/255 | " + " | ".join(cells) + " |")
        ffr = mean_by(rows, ("flag",), ("clean_ffr",))
        print(f"\n{dataset}: realised false-flag rate on clean evaluation images: "
              + ", ".join(f"{f} {ffr[(f,)]['clean_ffr']:.2f}" for f in flags))  # fmt: skip
        crow = [r for r in cal_rows if r["dataset"] == dataset]
        cols = ["ece", "ece_mixed"] + [f"ece_abstain_{n}" for n in args.abstain]
        cols += [f"abstain_{n}" for n in args.abstain] + [f"ece_gated_{n}" for n in args.abstain]
        cagg = mean_by(crow, ("attack", "calibrator"), tuple(cols))
        print(f"\n{dataset}: ECE of attacked evaluation images at {max(args.eps)}/255 "
              "('none': clean), mean over categories and shots\n")  # fmt: skip
        print("| attack | calibrator | " + " | ".join(cols) + " |")
        print("|" + "---|" * (2 + len(cols)))
        for (a, name), m in cagg.items():
            print(f"| {a} | {name} | " + " | ".join(f"{m[c]:.3f}" for c in cols) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", default=["synthetic", "photos"],
                   choices=["synthetic", "photos"])  # fmt: skip
    p.add_argument("--categories", type=int, default=1, help="categories per data set (1-3)")
    p.add_argument("--names", nargs="+", help="categories by name (instead of the first N)")
    p.add_argument("--n-good", type=int, default=6)
    p.add_argument("--n-defect", type=int, default=6)
    p.add_argument("--cal-fraction", type=float, default=0.34)
    p.add_argument("--shots", type=int, nargs="+", default=[1, 4])
    p.add_argument("--eps", type=int, nargs="+", default=[2, 4, 8], help="in 1/255")
    p.add_argument("--pgd-steps", type=int, default=5)
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--flags", nargs="+", default=list(FLAGS), choices=list(FLAGS))
    p.add_argument("--attacks", nargs="*", default=list(PROBE_ATTACKS + SCORE_ATTACKS),
                   choices=list(PROBE_ATTACKS + SCORE_ATTACKS))  # fmt: skip
    p.add_argument("--adaptive", nargs="*", default=["combined"],
                   help="flags attacked by an adaptive score-PGD")  # fmt: skip
    p.add_argument("--lam", type=float, default=1.0, help="adaptive attacker's flag weight")
    p.add_argument("--coarse", type=int, default=1,
                   help="adaptive attacker's perturbation grid: this many pixels per point")  # fmt: skip
    p.add_argument("--abstain", nargs="*", default=["combined"], help="flags to abstain on")
    p.add_argument("--flag-normals", type=int, default=0,
                   help="spare normal training images added to the flags' calibration data")  # fmt: skip
    p.add_argument("--flag-rate", type=float, default=0.05)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path)
    p.add_argument("--tables-from", type=Path, nargs="+", help="print tables of saved runs")
    args = p.parse_args()
    if args.tables_from:
        saved = [json.loads(path.read_text()) for path in args.tables_from]
        rows = [r for d in saved for r in d["flags"]], [r for d in saved for r in d["calibration"]]
        args.shots = sorted({r["shots"] for r in rows[0]})
        args.eps = sorted({r["eps"] for r in rows[0]})
        print_tables(*rows, args)
        return
    for n in args.adaptive + args.abstain:
        if n not in args.flags:
            p.error(f"flag {n!r} is attacked or abstained on but not in --flags")
    torch.manual_seed(args.seed)
    backbone = trustad.load_backbone()
    src = backbone.weights_source
    print(f"weights: {src.origin} {src.path}; torch threads {torch.get_num_threads()}")
    print("flag costs (extra backbone passes per image): "
          + ", ".join(f"{n} {FLAG_COSTS[n]}" for n in args.flags))  # fmt: skip
    print("command: " + " ".join(sys.argv), flush=True)
    flag_rows, cal_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        cats = []
        if "synthetic" in args.data:
            cats += synthetic_categories(args, Path(tmp))
        if "photos" in args.data:
            cats += photo_categories(args)
        for c in cats:
            done = {"flags": list(flag_rows), "calibration": list(cal_rows)}
            fr, cr = run_category(c, backbone, args, done)
            flag_rows += fr
            cal_rows += cr
    print_tables(flag_rows, cal_rows, args)


if __name__ == "__main__":
    main()
