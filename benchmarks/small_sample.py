"""Trust with a handful of images: what the fitted detector's decisions, probabilities and
flag deliver at k normal images and n_cal calibration images, over many random draws.

For each category a pool of normal and defective images is passed through the backbone
once; each draw picks k support images, n_cal calibration images (half normal, half
defective; none for n_cal = 0) and scores every image left over, with the trust engine
`trustad fit` uses (Bayesian Platt, conformal threshold at alpha 0.1 on normal calibration
scores pooled with the support images' leave-one-out scores, the noise-level flag set on the
normal images and their benign variants). Per (k, n_cal) cell it reports:

* the conformal decision's realised false-alarm rate on held-out normal images (mean and
  90th percentile over draws; target alpha) and detection rate on defective ones, and how
  often a finite conformal threshold exists at all (with too few normal scores there is
  none, and the model decides by probability or not at all);
* NLL and ECE of the probability on a balanced held-out set, against the base-rate
  predictor (0.5: NLL 0.693) and the raw score used as a probability, and the paper's
  unregularised Platt for comparison;
* the flag's rate on benign variants of held-out normal images (camera noise 1-4 grey
  levels, JPEG 50, blur 1 px, lighting +-10 %) and its AUROC against dense random-sign
  perturbations of 2, 4 and 8/255 (the noise-level statistic reads the pixels alone, so
  a gradient sign pattern and a random one of the same budget look alike to it);
* separately, the credible interval's coverage of the true probability on simulated
  scores whose true P(anomalous | score) is known.

    PYTHONPATH=src python benchmarks/small_sample.py --data synthetic photos --draws 20
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import norm

from trustad.attacks import sign_noise
from trustad.backbone import load_backbone
from trustad.backbone.preprocess import preprocess
from trustad.backbone.runtime import BackboneRuntime
from trustad.calibration import ece, make_calibrator, nll
from trustad.corruptions import parse_corruption
from trustad.data import load_category, make_synthetic_dataset
from trustad.flags import FlagInputs, flagging_auroc, make_flag
from trustad.metrics import auroc
from trustad.model import FittedDetector
from trustad.model.scored import ScoredImages

sys.path.insert(0, str(Path(__file__).parent))
from photo_set import PHOTO_CATEGORIES, make_photo_category  # noqa: E402

BENIGN = ("gaussian-noise:1", "gaussian-noise:2", "gaussian-noise:3", "gaussian-noise:4")
BENIGN += ("jpeg:50", "blur:1", "brightness:-10", "brightness:10")
ATTACK_EPS = (2, 4, 8)


def pools(args, tmp: Path) -> list[tuple[str, str, list[torch.Tensor], list[torch.Tensor]]]:
    """(data, category, normal images, defective images), preprocessed."""
    out = []
    n_normal, n_defect = max(args.shots) + max(args.n_cal) // 2 + args.test, args.test
    if "synthetic" in args.data:
        names = ("brick", "grass")[: args.categories]
        root = make_synthetic_dataset(tmp / "syn", names, n_normal, 1, n_defect, 256, args.seed)
        for name in names:
            data = load_category("mvtec", str(root), name)
            normal = [preprocess(p, args.resolution) for p in data.train]
            defect = [preprocess(s.path, args.resolution) for s in data.test if s.label == 1]
            out.append(("synthetic", name, normal, defect))
    if "photos" in args.data:
        for name in PHOTO_CATEGORIES[: args.categories]:
            c = make_photo_category(name, n_normal, 0, n_defect, 256, args.seed)
            normal = [preprocess(x, args.resolution) for x in c.train]
            defect = [preprocess(x, args.resolution) for x in c.test]
            out.append(("photos", name, normal, defect))
    return out


def scored(model: FittedDetector, feats, images) -> ScoredImages:
    dists = model.detector.distances_from_features(feats)
    return ScoredImages(
        dists, list(feats), list(images), model.detector.scores_from_distances(dists)
    )


def noise_levels(images: list[torch.Tensor], seed: int) -> dict:
    """The noise-level statistic of every image: clean, under each benign corruption and
    under random-sign perturbations of each eps."""
    flag = make_flag("noise_level")
    x = torch.stack(images)
    gen = torch.Generator().manual_seed(seed)

    def values(batch: torch.Tensor) -> np.ndarray:
        inputs = FlagInputs(torch.zeros(len(batch), 1, 1), images=batch)
        return flag.prepare(None, inputs).statistic(inputs)

    out: dict = {"clean": values(x)}
    for text in BENIGN:
        out[text] = values(parse_corruption(text).apply(x, gen))
    for eps in ATTACK_EPS:
        out[eps] = values(sign_noise(x, eps / 255, gen))
    return out


def one_draw(model, normal, defect, pool_flag_values, k, n_cal, rng, args) -> dict:
    """Fit on a random draw, measure on the images left over."""
    order_n, order_d = rng.permutation(len(normal[0])), rng.permutation(len(defect[0]))
    support = order_n[:k]
    cal_n, cal_d = order_n[k : k + n_cal // 2], order_d[: n_cal - n_cal // 2]
    test_n, test_d = order_n[k + n_cal // 2 :][: args.test], order_d[n_cal - n_cal // 2 :]
    feats_n, imgs_n = normal
    feats_d, imgs_d = defect
    model.fit_features([feats_n[i] for i in support])
    loo = model.detector.leave_one_out_distances([[feats_n[i]] for i in support])
    loo_set = ScoredImages(
        loo,
        [feats_n[i] for i in support],
        [imgs_n[i] for i in support],
        model.detector.scores_from_distances(loo),
    )
    cal_feats = [feats_n[i] for i in cal_n] + [feats_d[i] for i in cal_d]
    cal_imgs = [imgs_n[i] for i in cal_n] + [imgs_d[i] for i in cal_d]
    labels = np.array([0] * len(cal_n) + [1] * len(cal_d))
    cal_set = scored(model, cal_feats, cal_imgs) if len(labels) else None
    ref = cal_set.pick(list(range(len(cal_n)))) if len(cal_n) else loo_set
    model.calibrate(
        np.zeros(0) if cal_set is None else cal_set.scores,
        labels,
        reference=ref.references(),
        leave_one_out_scores=loo_set.scores,
    )
    t_n = scored(model, [feats_n[i] for i in test_n], [imgs_n[i] for i in test_n])
    t_d = scored(model, [feats_d[i] for i in test_d], [imgs_d[i] for i in test_d])
    a_n, a_d = model.assess(t_n.scores), model.assess(t_d.scores)
    out: dict = {"decision": model.decision_rule_ == "conformal"}
    if model.decision_rule_ == "conformal":  # the guarantee is the conformal threshold's
        out["far"] = float(a_n.decision.mean())
        out["detection"] = float(a_d.decision.mean())
    # Balanced evaluation set for the probabilities: as many defective as normal images.
    m = min(len(t_n.scores), len(t_d.scores))
    s_bal = np.r_[t_n.scores[:m], t_d.scores[:m]]
    y_bal = np.r_[np.zeros(m), np.ones(m)]
    out["auroc"] = auroc(y_bal, s_bal)
    out["nll_base"] = nll(np.full(2 * m, 0.5), y_bal)
    out["nll_score"] = nll(np.clip(s_bal, 0, 1), y_bal)
    if model.calibrator_ is not None:
        p = model.calibrator_.predict_proba(s_bal)
        out["nll_bayes"], out["ece_bayes"] = nll(p, y_bal), ece(p, y_bal)
    if len(cal_n) >= 2 and len(cal_d) >= 2:
        platt = make_calibrator("platt").fit(cal_set.scores, labels)
        p = platt.predict_proba(s_bal)
        out["nll_platt"], out["ece_platt"] = nll(p, y_bal), ece(p, y_bal)
    flag = model.flag_
    if flag is not None:
        stats = pool_flag_values  # the noise level reads the pixels alone: once per image
        clean_values = stats["clean"][test_n]
        out["flag_clean"] = float(flag.predict(clean_values).mean())
        for text in BENIGN:
            out[f"flag_{text}"] = float(flag.predict(stats[text][test_n]).mean())
        for eps in ATTACK_EPS:
            out[f"flag_auroc_{eps}"] = flagging_auroc(clean_values, stats[eps][test_n])
    return out


def coverage_simulation(n_cal: int, draws: int, rng: np.random.Generator) -> float:
    """Share of held-out points whose true P(y = 1 | s) lies in the 90 % credible interval,
    for scores ~ N(0, 1) (normal) and N(1.5, 1) (anomalous), balanced."""
    hits, total = 0, 0
    for _ in range(draws):
        y = np.r_[np.zeros(n_cal // 2), np.ones(n_cal - n_cal // 2)]
        s = rng.normal(1.5 * y, 1.0)
        cal = make_calibrator("bayes").fit(s, y)
        t = rng.normal(1.5 * rng.integers(0, 2, 200), 1.0)
        true = norm.pdf(t, 1.5) / (norm.pdf(t, 1.5) + norm.pdf(t, 0.0))
        lo, hi = cal.predict_interval(t).T
        hits += int(((lo <= true) & (true <= hi)).sum())
        total += t.size
    return hits / total


def summarise(rows: list[dict]) -> dict:
    # decision_share: draws with a finite conformal threshold (a guaranteed decision).
    out = {"draws": len(rows), "decision_share": float(np.mean([r["decision"] for r in rows]))}
    keys = sorted({k for r in rows for k in r if k != "decision"})
    for key in keys:
        values = np.array([r[key] for r in rows if key in r], dtype=float)
        out[key] = float(values.mean())
        if key == "far":
            out["far_p90"] = float(np.percentile(values, 90))
    return out


def _f(cell: dict, key: str, digits: int = 2) -> str:
    return "-" if key not in cell else f"{cell[key]:.{digits}f}"


def markdown(results: dict) -> str:
    """The tables of benchmarks/results/small_sample.md."""
    lines = [
        "| data | k | n_cal | finite threshold, % of draws | FAR mean | FAR p90 | detection | "
        "NLL bayes | NLL platt | NLL score | NLL base | ECE bayes | ECE platt |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in results["cells"]:
        lines.append(
            f"| {c['data']} ({c['category']}) | {c['k']} | {c['n_cal']} | "
            f"{100 * c['decision_share']:.0f} | {_f(c, 'far')} | {_f(c, 'far_p90')} | "
            f"{_f(c, 'detection')} | {_f(c, 'nll_bayes')} | {_f(c, 'nll_platt')} | "
            f"{_f(c, 'nll_score')} | {_f(c, 'nll_base')} | {_f(c, 'ece_bayes')} | "
            f"{_f(c, 'ece_platt')} |"
        )
    lines += [
        "",
        "| data | k | n_cal | flag rate clean | "
        + " | ".join(BENIGN)
        + " | AUROC 2/255 | AUROC 4/255 | AUROC 8/255 |",
        "|---|---|---|---|" + "---|" * (len(BENIGN) + 3),
    ]
    for c in results["cells"]:
        if "flag_clean" not in c:
            continue
        benign = " | ".join(_f(c, f"flag_{t}") for t in BENIGN)
        aurocs = " | ".join(_f(c, f"flag_auroc_{e}") for e in ATTACK_EPS)
        lines.append(
            f"| {c['data']} ({c['category']}) | {c['k']} | {c['n_cal']} | "
            f"{_f(c, 'flag_clean')} | {benign} | {aurocs} |"
        )
    lines += ["", "| n_cal | coverage of the 90 % interval |", "|---|---|"]
    lines += [f"| {n} | {100 * v:.1f} % |" for n, v in results["coverage"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", nargs="+", default=["synthetic", "photos"])
    p.add_argument("--shots", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--n-cal", type=int, nargs="+", default=[0, 4, 8, 16])
    p.add_argument("--draws", type=int, default=20)
    p.add_argument("--categories", type=int, default=1, help="categories of each data kind")
    p.add_argument("--test", type=int, default=16, help="held-out images of each class")
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/small_sample.json")
    p.add_argument("--tables", metavar="JSON", help="print the Markdown tables of a result")
    args = p.parse_args()
    if args.tables:
        print(markdown(json.loads(Path(args.tables).read_text())))
        return
    torch.manual_seed(args.seed)
    backbone = load_backbone("dinov2_vits14")
    runtime = BackboneRuntime(backbone, resolution=args.resolution, batch_size=8)
    model = FittedDetector(runtime, resolution=args.resolution, rotate=False)
    results: dict = {"args": vars(args), "cells": [], "coverage": {}}
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for data, name, normal, defect in pools(args, Path(tmp)):
            feats_n, feats_d = runtime.features(normal), runtime.features(defect)
            levels = noise_levels(normal, args.seed)
            rng = np.random.default_rng([args.seed, len(name)])
            for k in args.shots:
                for n_cal in args.n_cal:
                    rows = [
                        one_draw(
                            model, (feats_n, normal), (feats_d, defect), levels, k, n_cal, rng, args
                        )
                        for _ in range(args.draws)
                    ]
                    cell = {"data": data, "category": name, "k": k, "n_cal": n_cal}
                    results["cells"].append({**cell, **summarise(rows)})
                    print(json.dumps(results["cells"][-1]), flush=True)
    rng = np.random.default_rng(args.seed)
    for n_cal in (4, 8, 16, 32):
        results["coverage"][n_cal] = coverage_simulation(n_cal, 200, rng)
    results["seconds"] = time.time() - t0
    print(json.dumps(results["coverage"]))
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
