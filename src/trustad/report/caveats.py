"""What a reader must know before trusting a report's numbers: how many images each cell
rests on, which fits were degenerate, what the gated metrics and the flags do not show."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from .tables import CLEAN, Table, num

# Notes of result rows that mean a fit rests on too little or degenerate data.
DEGENERATE = (
    "did not converge",
    "needs at least",
    "could not be fitted",
    "too few",
    "no calibration",
    "no normal",
    "perfectly separated",
    "no probability",
)


def _group_key(row: dict[str, Any], per_category: bool) -> tuple[str, ...]:
    key = (row["dataset"], row["category"], row["shots"]) if per_category else None
    return key or (row["dataset"], row["shots"])


def image_counts(rows: Sequence[dict[str, Any]], per_category: bool) -> dict[tuple, str]:
    """Per table group: the calibration / evaluation images of one category's clean rows
    (the mean over categories and seeds, rounded)."""
    counts: dict[tuple, list[tuple[float, float]]] = {}
    for r in rows:
        if r["condition"] == CLEAN:
            pair = (num(r.get("n_calibration")), num(r.get("n_evaluation")))
            counts.setdefault(_group_key(r, per_category), []).append(pair)
    out = {}
    for key, pairs in counts.items():
        cal, ev = np.nanmean(np.array(pairs), axis=0)
        out[key] = "-" if math.isnan(cal) else f"{cal:.0f} / {ev:.0f}"
    return out


def with_image_counts(table: Table, rows: Sequence[dict[str, Any]], per_category: bool) -> Table:
    """``table`` with a column of how many images each of its rows rests on."""
    n = 3 if per_category else 2
    counts = image_counts(rows, per_category)
    header = [*table.header[:n], "images cal / eval", *table.header[n:]]
    body = [[*r[:n], counts.get(tuple(r[:n]), "-"), *r[n:]] for r in table.body]
    return Table(table.name, table.title, header, body)


def degenerate_fits(rows: Sequence[dict[str, Any]]) -> list[tuple[str, int]]:
    """(note, number of result rows) of every note that says a fit was degenerate or
    rested on too few images, most frequent first."""
    found: Counter[str] = Counter()
    for r in rows:
        for note in str(r.get("note") or "").split("; "):
            if any(word in note for word in DEGENERATE):
                found[note] += 1
    return found.most_common()


def caveats(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Plain sentences on what the numbers rest on and what they do not show."""
    out = []
    seeds = {r["seed"] for r in rows}
    if len(seeds) == 1:
        out.append("1 seed: no spread over seeds is shown (± omitted); one draw of support images.")
    n_cal = [num(r.get("n_calibration")) for r in rows if r["condition"] == CLEAN]
    n_cal = [v for v in n_cal if not math.isnan(v)]
    if n_cal and min(n_cal) < 20:
        out.append(
            f"Calibrators and flag thresholds were fitted on as few as {min(n_cal):.0f} images "
            "per category and seed: probabilities, ECE and false-flag rates from so few images "
            "vary a lot between draws."
        )
    if any(not math.isnan(num(r.get("gated_share"))) for r in rows):
        out.append(
            "Gated metrics: where the gate flag fires, the probability becomes the calibration "
            "images' anomaly rate (the prior). A gated ECE near 0 under an attack the gate "
            "catches entirely measures that prior against the evaluation split's anomaly "
            "rate, not the detector; the 'gated, %' column says how much was replaced."
        )
    if any(k.startswith("flag_auroc_") and r.get(k) not in (None, "") for r in rows for k in r):
        out.append(
            "Flags are measured against attackers who do not know them. An attacker who "
            "knows a flag can evade it (the 'adaptive' condition: score-PGD that keeps the "
            "flag down with a smooth perturbation); no flag here is robust to that."
        )
    return out


def caveat_lines(rows: Sequence[dict[str, Any]], skipped: Sequence[str] = ()) -> list[str]:
    """Caveats, the degenerate fits with how many result rows each concerns, and what the
    run left out (run.json's ``skipped``: unreadable images, masks, units)."""
    lines = caveats(rows)
    lines += [f"Warning ({n} result rows): {note}" for note, n in degenerate_fits(rows)]
    lines += [f"Left out: {item}" for item in skipped]
    return lines
