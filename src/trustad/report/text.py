"""The report's text forms: the printed summary and report.md, with the tables and the
caveats a reader must see first."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .caveats import caveat_lines, with_image_counts
from .tables import (
    Table,
    all_tables,
    calibration_rows,
    detection_rows,
    entropy_rows,
    flag_rows,
    markdown,
    read_results,
)


def report_tables(rows: Sequence[dict[str, Any]], per_category: bool = False) -> list[Table]:
    """The report's tables, each with the number of images its rows rest on."""
    return [with_image_counts(t, rows, per_category) for t in all_tables(rows, per_category)]


def detection_table(rows: Sequence[dict[str, Any]]) -> str:
    return markdown(detection_rows(rows))


def calibration_table(rows: Sequence[dict[str, Any]]) -> str:
    return markdown(calibration_rows(rows))


def entropy_table(rows: Sequence[dict[str, Any]]) -> str | None:
    t = entropy_rows(rows)
    return markdown(t) if t else None


def summary(rows: Sequence[dict[str, Any]]) -> str:
    """The printed summary: detection side by side, then calibration and entropy."""
    if not rows:
        return "no results yet"
    parts = ["Detection, % (mean over categories, then over seeds):", detection_table(rows)]
    ent = entropy_table(rows)
    parts += ["", "Calibration on clean evaluation data:", calibration_table(rows)]
    if ent:
        parts += ["", "Predictive entropy and attack flagging:", ent]
    flags = flag_rows(rows)
    if flags:
        parts += ["", flags.title + ":", markdown(flags)]
    notes = caveat_lines(rows)
    if notes:
        parts += ["", "Read this first:", *(f"- {line}" for line in notes)]
    return "\n".join(parts)


def markdown_report(rows: Sequence[dict[str, Any]], skipped: Sequence[str] = ()) -> str:
    sections = [
        "# trustad evaluation report",
        "",
        "Means over categories per seed, then over seeds (± the standard deviation over "
        "seeds). Detection metrics on the whole test set; calibration metrics and entropies "
        "on the evaluation part (calibrators fitted on clean calibration scores).",
    ]
    notes = caveat_lines(rows, skipped)
    if notes:
        sections += ["", "## Read this first", *(f"- {line}" for line in notes)]
    for t in report_tables(rows):
        sections += ["", f"## {t.title}", markdown(t)]
    return "\n".join(sections) + "\n"


def write_report(out: str | Path) -> Path:
    """Write ``out/report.md`` from ``out/results.csv``; returns its path."""
    out = Path(out)
    path = out / "report.md"
    run_path = out / "run.json"
    skipped = json.loads(run_path.read_text()).get("skipped", []) if run_path.exists() else []
    path.write_text(markdown_report(read_results(out), skipped))
    return path
