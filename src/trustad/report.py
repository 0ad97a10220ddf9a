"""Tables in the shape of the paper's Tables 1-3, built from results.csv rows.

Every figure is the mean over categories per seed, then the mean (and standard deviation)
over seeds, as PROTOCOL section 4 prescribes.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .evaluation.settings import CLEAN
from .evaluation.store import unique_rows


def read_results(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if path.is_dir():
        path = path / "results.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no results file at {path} (run `trustad evaluate` first)")
    with path.open(newline="") as fh:
        # A folder written before repeats were prevented may hold one unit twice.
        return unique_rows(csv.DictReader(fh))


def _num(v: Any) -> float:
    if v is None or v == "":
        return math.nan
    return float(v)


def aggregate(rows: Sequence[dict[str, Any]], column: str) -> dict[tuple, tuple[float, float]]:
    """(dataset, shots, condition, eps) -> (mean, std over seeds) of the per-seed mean over
    categories of ``column``; NaNs (undefined metrics) are left out of the category mean."""
    per_seed: dict[tuple, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        key = (r["dataset"], int(r["shots"]), r["condition"], round(_num(r["eps"]), 8))
        v = _num(r.get(column))
        if not math.isnan(v):
            per_seed[key][int(r["seed"])].append(v)
    out = {}
    for key, seeds in per_seed.items():
        means = [float(np.mean(v)) for v in seeds.values()]
        out[key] = (float(np.mean(means)), float(np.std(means)))
    return out


def _conditions(rows: Sequence[dict[str, Any]]) -> list[tuple[str, float]]:
    seen = dict.fromkeys((r["condition"], round(_num(r["eps"]), 8)) for r in rows)
    return sorted(seen, key=lambda c: (c[0] != CLEAN, c[0], c[1]))


def _groups(rows: Sequence[dict[str, Any]]) -> list[tuple[str, int]]:
    return sorted(dict.fromkeys((r["dataset"], int(r["shots"])) for r in rows))


def _label(cond: str, eps: float) -> str:
    return cond if cond == CLEAN else f"{cond} eps={eps * 255:.3g}/255"


def _table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _cell(stats: dict, key: tuple, scale: float = 100.0, digits: int = 2) -> str:
    if key not in stats:
        return "-"
    mean, std = stats[key]
    if math.isnan(mean):
        return "-"
    return f"{mean * scale:.{digits}f}"


def detection_table(rows: Sequence[dict[str, Any]]) -> str:
    """Table 1: AUROC, AP, F1-max, G-mean in %, clean / each attack side by side."""
    conds = _conditions(rows)
    cols = ("auroc", "ap", "f1_max", "g_mean")
    stats = {c: aggregate(rows, c) for c in cols}
    header = ["dataset", "shots", "condition(s)", "AUROC", "AP", "F1-max", "G-mean"]
    body = []
    attacked = [c for c in conds if c[0] != CLEAN] or [(CLEAN, 0.0)]
    for ds, k in _groups(rows):
        for cond, eps in attacked:
            label = "clean" if cond == CLEAN else f"clean / {_label(cond, eps)}"
            cells = []
            for c in cols:
                clean = _cell(stats[c], (ds, k, CLEAN, 0.0))
                cells.append(
                    clean if cond == CLEAN else f"{clean} / {_cell(stats[c], (ds, k, cond, eps))}"
                )
            body.append([ds, str(k), label, *cells])
    return _table(header, body)


def seed_spread_table(rows: Sequence[dict[str, Any]]) -> str:
    """AUROC mean +- std over seeds for every condition."""
    stats = aggregate(rows, "auroc")
    header = ["dataset", "shots", "condition", "AUROC mean", "AUROC std over seeds"]
    body = []
    for ds, k in _groups(rows):
        for cond, eps in _conditions(rows):
            if (ds, k, cond, eps) in stats:
                m, s = stats[(ds, k, cond, eps)]
                body.append([ds, str(k), _label(cond, eps), f"{m * 100:.2f}", f"{s * 100:.2f}"])
    return _table(header, body)


def pixel_table(rows: Sequence[dict[str, Any]]) -> str | None:
    stats = {c: aggregate(rows, c) for c in ("pixel_auroc", "aupro")}
    if not any(not math.isnan(m) for s in stats.values() for m, _ in s.values()):
        return None
    header = ["dataset", "shots", "condition", "pixel AUROC", "AUPRO@0.3"]
    body = []
    for ds, k in _groups(rows):
        for cond, eps in _conditions(rows):
            key = (ds, k, cond, eps)
            body.append(
                [
                    ds,
                    str(k),
                    _label(cond, eps),
                    _cell(stats["pixel_auroc"], key),
                    _cell(stats["aupro"], key),
                ]
            )
    return _table(header, body)


def calibration_table(rows: Sequence[dict[str, Any]]) -> str:
    """Table 2: ECE, NLL, Brier, uncalibrated vs Platt, on clean evaluation data (x10^-1 in
    the paper; plain values here)."""
    header = [
        "dataset",
        "shots",
        "ECE uncal",
        "ECE Platt",
        "NLL uncal",
        "NLL Platt",
        "Brier uncal",
        "Brier Platt",
    ]
    stats = {
        f"{m}_{c}": aggregate(rows, f"{m}_{c}")
        for m in ("ece", "nll", "brier")
        for c in ("uncal", "platt")
    }
    body = []
    for ds, k in _groups(rows):
        key = (ds, k, CLEAN, 0.0)
        body.append([ds, str(k)] + [_cell(stats[c], key, 1.0, 4) for c in stats])
    return _table(header, body)


def calibrator_table(rows: Sequence[dict[str, Any]]) -> str:
    """ECE of every calibrator on clean evaluation data."""
    names = [c[len("ece_") :] for c in rows[0] if c.startswith("ece_")] if rows else []
    stats = {n: aggregate(rows, f"ece_{n}") for n in names}
    body = []
    for ds, k in _groups(rows):
        key = (ds, k, CLEAN, 0.0)
        body.append([ds, str(k)] + [_cell(stats[n], key, 1.0, 4) for n in names])
    return _table(["dataset", "shots"] + [f"ECE {n}" for n in names], body)


def entropy_table(rows: Sequence[dict[str, Any]]) -> str | None:
    """Table 3: mean predictive entropy, clean vs attacked, uncalibrated vs Platt, and the
    AUROC / TPR at the set false-flag rate of entropy as an attack flag (Platt)."""
    attacked = [c for c in _conditions(rows) if c[0] != CLEAN]
    if not attacked:
        return None
    stats = {
        c: aggregate(rows, c)
        for c in ("entropy_uncal", "entropy_platt", "flag_auroc_platt", "flag_tpr_platt")
    }
    header = [
        "dataset", "shots", "attack", "H uncal clean", "H uncal adv", "H Platt clean",
        "H Platt adv", "delta Platt", "flag AUROC (Platt)", "flag TPR (Platt)",
    ]  # fmt: skip
    body = []
    for ds, k in _groups(rows):
        for cond, eps in attacked:
            clean, adv = (ds, k, CLEAN, 0.0), (ds, k, cond, eps)
            hp_c, hp_a = stats["entropy_platt"].get(clean), stats["entropy_platt"].get(adv)
            delta = f"{hp_a[0] - hp_c[0]:.3f}" if hp_c and hp_a else "-"
            body.append([
                ds, str(k), _label(cond, eps),
                _cell(stats["entropy_uncal"], clean, 1.0, 3), _cell(stats["entropy_uncal"], adv, 1.0, 3),
                _cell(stats["entropy_platt"], clean, 1.0, 3), _cell(stats["entropy_platt"], adv, 1.0, 3),
                delta, _cell(stats["flag_auroc_platt"], adv, 100.0, 1), _cell(stats["flag_tpr_platt"], adv, 100.0, 1),
            ])  # fmt: skip
    return _table(header, body)


def summary(rows: Sequence[dict[str, Any]]) -> str:
    """The printed summary: detection side by side, then calibration and entropy."""
    if not rows:
        return "no results yet"
    parts = ["Detection, % (mean over categories, then over seeds):", detection_table(rows)]
    ent = entropy_table(rows)
    parts += ["", "Calibration on clean evaluation data:", calibration_table(rows)]
    if ent:
        parts += ["", "Predictive entropy and attack flagging:", ent]
    return "\n".join(parts)


def markdown_report(rows: Sequence[dict[str, Any]]) -> str:
    sections = [
        "# trustad evaluation report",
        "",
        "Means over categories per seed, then over seeds. Detection metrics on the whole test "
        "set; calibration metrics and entropies on the evaluation part (calibrators fitted on "
        "clean calibration scores).",
        "",
        "## Detection (%)",
        detection_table(rows),
        "",
        "## Spread over seeds",
        seed_spread_table(rows),
    ]
    pix = pixel_table(rows)
    if pix:
        sections += ["", "## Pixel level (%)", pix]
    sections += [
        "",
        "## Calibration (clean)",
        calibration_table(rows),
        "",
        "## ECE by calibrator (clean)",
        calibrator_table(rows),
    ]
    ent = entropy_table(rows)
    if ent:
        sections += ["", "## Entropy under attack", ent]
    return "\n".join(sections) + "\n"


def write_report(out: str | Path) -> Path:
    """Write ``out/report.md`` from ``out/results.csv``; returns its path."""
    out = Path(out)
    path = out / "report.md"
    path.write_text(markdown_report(read_results(out)))
    return path


def calibrated_scores(
    scores_rows: Sequence[dict[str, Any]], shots: int
) -> dict[str, dict[str, np.ndarray]]:
    """Pooled evaluation-part probabilities at ``shots``, uncalibrated and Platt, per
    condition label, as the evaluation computed them (scores.csv's ``prob_*`` columns).
    Returns {condition: {"y", "uncal", "platt"}}."""
    pooled: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in scores_rows:
        if int(r["shots"]) != shots or r["split"] != "evaluation":
            continue
        label = _label(r["condition"], _num(r["eps"]))
        pooled[label]["y"].append(int(r["label"]))
        for name in ("uncal", "platt"):
            pooled[label][name].append(_num(r.get(f"prob_{name}")))
    return {c: {k: np.array(v) for k, v in d.items()} for c, d in pooled.items()}


def write_figures(out: str | Path, shots: int | None = None) -> list[Path]:
    """The paper's Figures 4 and 5 for this run: reliability diagrams and probability
    histograms (uncalibrated vs Platt, clean), and entropy histograms clean vs each attack."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import calibration as cal

    out = Path(out)
    with (out / "scores.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return []
    if "prob_platt" not in rows[0]:
        return []  # written before scores.csv kept the probabilities
    shots = shots if shots is not None else min(int(r["shots"]) for r in rows)
    pooled = calibrated_scores(rows, shots)
    paths = []
    clean = pooled.get(CLEAN)
    if clean is not None and len(clean["y"]):
        fig, axes = plt.subplots(2, 2, figsize=(8, 7))
        for col, name in enumerate(("uncal", "platt")):
            d = cal.reliability_diagram(clean[name], clean["y"])
            centres = (d["edges"][:-1] + d["edges"][1:]) / 2
            ax = axes[0, col]
            ax.plot([0, 1], [0, 1], "k--", lw=1)
            ok = d["prob_count"] > 0
            ax.plot(d["mean_prob"][ok], d["frac_pos"][ok], "o-")
            ax.set_title(
                f"{name}: class-wise ECE {d['classwise_ece']:.3f}, ECE {d['ece']:.3f}", fontsize=9
            )
            ax.set_xlabel("predicted probability of anomaly")
            ax.set_ylabel("fraction anomalous")
            axes[1, col].bar(centres, d["prob_count"], width=0.09)
            axes[1, col].set_xlabel("predicted probability")
            axes[1, col].set_ylabel("count")
        fig.suptitle(f"Reliability, clean evaluation data, {shots} shot(s)")
        fig.tight_layout()
        paths.append(out / f"reliability_{shots}shot.png")
        fig.savefig(paths[-1], dpi=90)
        plt.close(fig)
    attacked = [c for c in pooled if c != CLEAN]
    if clean is not None and attacked:
        fig, axes = plt.subplots(
            1, len(attacked), figsize=(4.5 * len(attacked), 3.5), squeeze=False
        )
        for ax, cond in zip(axes[0], attacked):
            for label, data in ((CLEAN, clean), (cond, pooled[cond])):
                h = cal.entropy(data["platt"])
                ax.hist(
                    h,
                    bins=20,
                    range=(0, np.log(2)),
                    alpha=0.6,
                    label=f"{label}: {h.mean():.3f} +- {h.std():.3f}",
                )
            ax.set_xlabel("predictive entropy (Platt)")
            ax.legend(fontsize=7)
        fig.suptitle(f"Entropy, {shots} shot(s)")
        fig.tight_layout()
        paths.append(out / f"entropy_{shots}shot.png")
        fig.savefig(paths[-1], dpi=90)
        plt.close(fig)
    return paths
