"""Tables in the shape of the paper's Tables 1-3, built from results.csv rows.

Every figure is the mean over categories per seed, then the mean (and standard deviation)
over seeds, as PROTOCOL section 4 prescribes; the per-category tables take the mean and
standard deviation over seeds of each category. A ``Table`` is data; ``markdown``,
``csv_text`` and ``latex`` render it.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..evaluation.settings import CLEAN
from ..evaluation.store import unique_rows
from ..flags import FLAGS

PM = " ± "


@dataclass
class Table:
    name: str  # file stem of its CSV / LaTeX files
    title: str
    header: list[str]
    body: list[list[str]]


def read_results(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if path.is_dir():
        path = path / "results.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no results file at {path} (run `trustad evaluate` first)")
    with path.open(newline="") as fh:
        # A folder written before repeats were prevented may hold one unit twice.
        return unique_rows(csv.DictReader(fh))


def num(v: Any) -> float:
    if v is None or v == "":
        return math.nan
    return float(v)


def aggregate(
    rows: Sequence[dict[str, Any]], column: str, per_category: bool = False
) -> dict[tuple, tuple[float, float]]:
    """(dataset, shots, condition, eps) -> (mean, std over seeds; NaN from one seed) of the
    per-seed mean over categories of ``column``; NaNs (undefined metrics) are left out of the category mean.
    ``per_category``: (dataset, category, shots, condition, eps) -> over seeds only."""
    per_seed: dict[tuple, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        key = (r["dataset"], int(r["shots"]), r["condition"], round(num(r["eps"]), 8))
        if per_category:
            key = (key[0], r["category"], *key[1:])
        v = num(r.get(column))
        if not math.isnan(v):
            per_seed[key][int(r["seed"])].append(v)
    out = {}
    for key, seeds in per_seed.items():
        means = [float(np.mean(v)) for v in seeds.values()]
        # One seed has no spread to report: NaN, shown as the mean alone.
        out[key] = (float(np.mean(means)), float(np.std(means)) if len(means) > 1 else math.nan)
    return out


def conditions(rows: Sequence[dict[str, Any]]) -> list[tuple[str, float]]:
    seen = dict.fromkeys((r["condition"], round(num(r["eps"]), 8)) for r in rows)
    return sorted(seen, key=lambda c: (c[0] != CLEAN, c[0], c[1]))


def _groups(rows: Sequence[dict[str, Any]], per_category: bool) -> list[tuple]:
    if per_category:
        return sorted(dict.fromkeys((r["dataset"], r["category"], int(r["shots"])) for r in rows))
    return sorted(dict.fromkeys((r["dataset"], int(r["shots"])) for r in rows))


def condition_label(cond: str, eps: float) -> str:
    return cond if cond == CLEAN else f"{cond} eps={eps * 255:.3g}/255"


def _cell(stats: dict, key: tuple, scale: float = 100.0, digits: int = 2) -> str:
    """``mean ± std`` over seeds (the mean alone from a single seed)."""
    if key not in stats or math.isnan(stats[key][0]):
        return "-"
    mean, std = stats[key]
    if math.isnan(std):
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f}{PM}{std * scale:.{digits}f}"


def _head(per_category: bool) -> list[str]:
    return ["dataset", "category", "shots"] if per_category else ["dataset", "shots"]


def _name(base: str, per_category: bool) -> str:
    return f"{base}_per_category" if per_category else base


def detection_rows(rows: Sequence[dict[str, Any]], per_category: bool = False) -> Table:
    """Table 1: AUROC, AP, F1-max, G-mean in %, clean / each attack side by side."""
    cols = ("auroc", "ap", "f1_max", "g_mean")
    stats = {c: aggregate(rows, c, per_category) for c in cols}
    attacked = [c for c in conditions(rows) if c[0] != CLEAN] or [(CLEAN, 0.0)]
    body = []
    for group in _groups(rows, per_category):
        for cond, eps in attacked:
            label = CLEAN if cond == CLEAN else f"clean / {condition_label(cond, eps)}"
            cells = []
            for c in cols:
                clean = _cell(stats[c], (*group, CLEAN, 0.0))
                adv = "" if cond == CLEAN else f" / {_cell(stats[c], (*group, cond, eps))}"
                cells.append(clean + adv)
            body.append([*map(str, group), label, *cells])
    header = [*_head(per_category), "condition(s)", "AUROC", "AP", "F1-max", "G-mean"]
    title = "Table 1: detection, % (mean ± std over seeds)"
    return Table(_name("table1_detection", per_category), title, header, body)


def pixel_rows(rows: Sequence[dict[str, Any]], per_category: bool = False) -> Table | None:
    stats = {c: aggregate(rows, c, per_category) for c in ("pixel_auroc", "aupro")}
    if not any(not math.isnan(m) for s in stats.values() for m, _ in s.values()):
        return None
    body = []
    for group in _groups(rows, per_category):
        for cond, eps in conditions(rows):
            key = (*group, cond, eps)
            body.append(
                [
                    *map(str, group),
                    condition_label(cond, eps),
                    _cell(stats["pixel_auroc"], key),
                    _cell(stats["aupro"], key),
                ]
            )
    header = [*_head(per_category), "condition", "pixel AUROC", "AUPRO@0.3"]
    title = "Pixel level, % (mean ± std over seeds)"
    return Table(_name("pixel", per_category), title, header, body)


def calibration_rows(rows: Sequence[dict[str, Any]], per_category: bool = False) -> Table:
    """Table 2: ECE, NLL, Brier, uncalibrated vs Platt, on clean evaluation data (x10^-1 in
    the paper; plain values here)."""
    names = [f"{m}_{c}" for m in ("ece", "nll", "brier") for c in ("uncal", "platt")]
    stats = {n: aggregate(rows, n, per_category) for n in names}
    body = []
    for group in _groups(rows, per_category):
        key = (*group, CLEAN, 0.0)
        body.append([*map(str, group)] + [_cell(stats[n], key, 1.0, 4) for n in names])
    header = [
        *_head(per_category),
        *("ECE uncal", "ECE Platt", "NLL uncal", "NLL Platt", "Brier uncal", "Brier Platt"),
    ]
    title = "Table 2: calibration on clean evaluation data (mean ± std over seeds)"
    return Table(_name("table2_calibration", per_category), title, header, body)


def calibrator_rows(rows: Sequence[dict[str, Any]], per_category: bool = False) -> Table:
    """Every calibrator on clean evaluation data: one row per calibrator."""
    names = [c[len("ece_") :] for c in rows[0] if c.startswith("ece_")] if rows else []
    metrics = ("ece", "classwise_ece", "nll", "brier")
    stats = {(m, n): aggregate(rows, f"{m}_{n}", per_category) for m in metrics for n in names}
    body = []
    for group in _groups(rows, per_category):
        key = (*group, CLEAN, 0.0)
        for n in names:
            body.append([*map(str, group), n] + [_cell(stats[m, n], key, 1.0, 4) for m in metrics])
    header = [*_head(per_category), "calibrator", "ECE", "class-wise ECE", "NLL", "Brier"]
    title = "Calibrators compared on clean evaluation data (mean ± std over seeds)"
    return Table(_name("calibrators", per_category), title, header, body)


def entropy_rows(rows: Sequence[dict[str, Any]], per_category: bool = False) -> Table | None:
    """Table 3: mean predictive entropy, clean vs attacked, uncalibrated vs Platt, and the
    AUROC / TPR at the set false-flag rate of entropy as an attack flag (Platt)."""
    attacked = [c for c in conditions(rows) if c[0] != CLEAN]
    if not attacked:
        return None
    names = ("entropy_uncal", "entropy_platt", "flag_auroc_platt", "flag_tpr_platt")
    stats = {c: aggregate(rows, c, per_category) for c in names}
    body = []
    for group in _groups(rows, per_category):
        for cond, eps in attacked:
            clean, adv = (*group, CLEAN, 0.0), (*group, cond, eps)
            hp_c, hp_a = stats["entropy_platt"].get(clean), stats["entropy_platt"].get(adv)
            delta = f"{hp_a[0] - hp_c[0]:.3f}" if hp_c and hp_a else "-"
            body.append([
                *map(str, group), condition_label(cond, eps),
                _cell(stats["entropy_uncal"], clean, 1.0, 3), _cell(stats["entropy_uncal"], adv, 1.0, 3),
                _cell(stats["entropy_platt"], clean, 1.0, 3), _cell(stats["entropy_platt"], adv, 1.0, 3),
                delta, _cell(stats["flag_auroc_platt"], adv, 100.0, 1), _cell(stats["flag_tpr_platt"], adv, 100.0, 1),
            ])  # fmt: skip
    header = [
        *_head(per_category), "attack", "H uncal clean", "H uncal adv", "H Platt clean",
        "H Platt adv", "delta Platt", "flag AUROC (Platt), %", "flag TPR (Platt), %",
    ]  # fmt: skip
    title = "Table 3: predictive entropy and attack flagging (mean ± std over seeds)"
    return Table(_name("table3_entropy", per_category), title, header, body)


def flag_rows(rows: Sequence[dict[str, Any]], per_category: bool = False) -> Table | None:
    """Table 3b: every attack flag's AUROC (attacked vs clean evaluation images) and TPR at
    the threshold set on clean calibration images, beside the entropy flag (Platt); the
    best flag (highest AUROC) of each row is marked."""
    attacked = [c for c in conditions(rows) if c[0] != CLEAN]
    present = [f for f in FLAGS if any(not math.isnan(num(r.get(f"flag_auroc_{f}"))) for r in rows)]
    if not attacked or not present:
        return None
    names = ["platt", *present]
    auroc = {n: aggregate(rows, f"flag_auroc_{n}", per_category) for n in names}
    tpr = {n: aggregate(rows, f"flag_tpr_{n}", per_category) for n in names}
    body = []
    for group in _groups(rows, per_category):
        for cond, eps in attacked:
            key = (*group, cond, eps)
            means = {n: auroc[n][key][0] for n in present if key in auroc[n]}
            means = {n: m for n, m in means.items() if not math.isnan(m)}
            best = max(means, key=means.get) if means else "-"
            cells = [
                f"{_cell(auroc[n], key, 100.0, 1)} / {_cell(tpr[n], key, 100.0, 1)}" for n in names
            ]
            body.append([*map(str, group), condition_label(cond, eps), *cells, best])
    header = [
        *_head(per_category),
        "attack",
        "entropy (Platt)",
        *present,
        "best flag",
    ]
    title = (
        "Table 3b: attack flags, AUROC / TPR at the set false-flag rate, % "
        "(thresholds from normal calibration images and their benign variants)"
    )
    return Table(_name("table3b_flags", per_category), title, header, body)


def gated_rows(rows: Sequence[dict[str, Any]], per_category: bool = False) -> Table | None:
    """Table 3c: calibration of every condition per calibrator, as fitted on clean
    calibration images and after the gate (flagged images get the calibration images'
    anomaly rate), with the share of evaluation images gated."""
    if not any(not math.isnan(num(r.get("gated_share"))) for r in rows):
        return None
    names = [c[len("gated_ece_") :] for c in rows[0] if c.startswith("gated_ece_")]
    metrics = ("ece", "nll", "brier")
    cols = [f"{g}{m}_{n}" for m in metrics for g in ("", "gated_") for n in names]
    stats = {c: aggregate(rows, c, per_category) for c in (*cols, "gated_share")}
    body = []
    for group in _groups(rows, per_category):
        for cond, eps in conditions(rows):
            key = (*group, cond, eps)
            share = _cell(stats["gated_share"], key, 100.0, 1)
            for n in names:
                cells = [
                    _cell(stats[f"{g}{m}_{n}"], key, 1.0, 3)
                    for m in metrics
                    for g in ("", "gated_")
                ]
                body.append([*map(str, group), condition_label(cond, eps), n, *cells, share])
    header = [
        *_head(per_category), "condition", "calibrator", "ECE", "ECE gated", "NLL",
        "NLL gated", "Brier", "Brier gated", "gated, %",
    ]  # fmt: skip
    title = (
        "Table 3c: calibration per condition, as fitted on clean data and gated by the flag "
        "(mean ± std over seeds)"
    )
    return Table(_name("table3c_gated", per_category), title, header, body)


def all_tables(rows: Sequence[dict[str, Any]], per_category: bool = False) -> list[Table]:
    """The report's tables in order, those that have content."""
    tables = [
        detection_rows(rows, per_category),
        calibration_rows(rows, per_category),
        entropy_rows(rows, per_category),
        flag_rows(rows, per_category),
        gated_rows(rows, per_category),
        pixel_rows(rows, per_category),
        calibrator_rows(rows, per_category),
    ]
    return [t for t in tables if t is not None]


# -- rendering ---------------------------------------------------------------------------
def markdown(table: Table) -> str:
    lines = ["| " + " | ".join(table.header) + " |", "|" + "---|" * len(table.header)]
    lines += ["| " + " | ".join(row) + " |" for row in table.body]
    return "\n".join(lines)


def csv_text(table: Table) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(table.header)
    writer.writerows(table.body)
    return buf.getvalue()


def _tex(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&")):
        text = text.replace(a, b)
    return text.replace(PM.strip(), r"$\pm$")


def latex(table: Table) -> str:
    """A booktabs tabular inside a table float, captioned with the table's title."""
    spec = "l" * len(_head("category" in table.header)) + "r" * (
        len(table.header) - len(_head("category" in table.header))
    )
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{_tex(table.title)}}}",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(_tex(h) for h in table.header) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(_tex(c) for c in row) + r" \\" for row in table.body]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_tables(out: str | Path, tables: Sequence[Table]) -> list[Path]:
    """``out/tables/<name>.csv`` and ``.tex`` for every table; returns the paths."""
    folder = Path(out) / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for t in tables:
        for suffix, text in ((".csv", csv_text(t)), (".tex", latex(t))):
            path = folder / f"{t.name}{suffix}"
            path.write_text(text)
            paths.append(path)
    return paths


# -- the Markdown summary ----------------------------------------------------------------
