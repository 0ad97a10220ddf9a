"""Compare two evaluation folders: the largest difference of every shared column of
results.csv and scores.csv, matched by unit key (and image for scores).

    python scripts/compare_runs.py RUN_A RUN_B

Exits 1 when a unit is missing on one side or a text column differs. The seconds columns
are left out: they measure the machine, not the results.
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

from trustad.evaluation.store import TIMING_COLUMNS

KEY = ("dataset", "category", "shots", "seed", "condition", "eps")


def _rows(path: Path, extra: tuple[str, ...]) -> dict[tuple, dict[str, str]]:
    with path.open(newline="") as fh:
        return {tuple(r[c] for c in (*KEY, *extra)): r for r in csv.DictReader(fh)}


def _number(text: str) -> float | None:
    try:
        return float(text) if text != "" else math.nan
    except ValueError:
        return None


def compare(a: Path, b: Path, name: str, extra: tuple[str, ...]) -> bool:
    ra, rb = _rows(a / name, extra), _rows(b / name, extra)
    ok = ra.keys() == rb.keys()
    if not ok:
        print(
            f"{name}: units only in A: {len(ra.keys() - rb.keys())}, only in B: "
            f"{len(rb.keys() - ra.keys())}"
        )
    shared = ra.keys() & rb.keys()
    columns = [
        c
        for c in next(iter(ra.values()), {})
        if c in next(iter(rb.values()), {}) and c not in TIMING_COLUMNS
    ]
    worst: dict[str, float] = {}
    for key in shared:
        for c in columns:
            x, y = _number(ra[key][c]), _number(rb[key][c])
            if x is None or y is None:
                if ra[key][c] != rb[key][c]:
                    print(f"{name}: {c} differs at {key}: {ra[key][c]!r} vs {rb[key][c]!r}")
                    ok = False
            elif math.isnan(x) != math.isnan(y):
                print(f"{name}: {c} is blank on one side only at {key}")
                ok = False
            elif not math.isnan(x):
                worst[c] = max(worst.get(c, 0.0), abs(x - y) if x != y else 0.0)
    largest = max(worst.values(), default=0.0)
    print(
        f"{name}: {len(shared)} rows, {len(columns)} shared columns, largest difference "
        f"{largest:.3g}" + (f" ({max(worst, key=worst.get)})" if largest else "")
    )
    return ok


if __name__ == "__main__":
    run_a, run_b = Path(sys.argv[1]), Path(sys.argv[2])
    same = compare(run_a, run_b, "results.csv", ()) & compare(
        run_a, run_b, "scores.csv", ("image",)
    )
    sys.exit(0 if same else 1)
