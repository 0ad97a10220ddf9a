"""One self-contained HTML page per run: tables, figures (embedded PNG), settings, weights
provenance and what is still missing. It opens offline from the single file."""

from __future__ import annotations

import base64
import html
import io
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ..evaluation.settings import EvaluationSettings
from ..evaluation.store import row_key
from ..evaluation.units import expected_keys
from .caveats import caveat_lines
from .figures import study_figures
from .tables import Table, read_results, write_tables
from .text import report_tables, write_report

STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
th, td { border: 1px solid #bbb; padding: 3px 7px; text-align: right; white-space: nowrap; }
th { background: #eee; } td:first-child, td:nth-child(2) { text-align: left; }
section { margin-bottom: 2.5em; } img { max-width: 100%; border: 1px solid #ddd; }
.missing { background: #fff3cd; border: 1px solid #e0c060; padding: 0.5em 1em; }
.complete { background: #e6f4e6; border: 1px solid #8c8; padding: 0.5em 1em; }
.wide { overflow-x: auto; }
table.kv td { text-align: left; font-family: monospace; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
"""

# Section ids, in page order (tests and links rely on them).
SECTIONS = (
    "status",
    "caveats",
    "table1",
    "table2",
    "table3",
    "flags",
    "figure1b",
    "figure4",
    "figure5",
    "pixel",
    "calibrators",
    "per-category",
    "settings",
)


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _table_html(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table.body
    )
    return (
        f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
        "</table></div>"
    )


def _key_values(d: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(json.dumps(v))}</td></tr>"
        for k, v in d.items()
    )
    return f'<table class="kv"><tbody>{rows}</tbody></table>'


def _settings_html(run: dict[str, Any]) -> str:
    parts = []
    if run.get("protocol"):
        parts.append(f"<p>Protocol preset: <b>{html.escape(run['protocol'])}</b></p>")
    parts.append("<h3>Weights</h3>")
    parts.append(_key_values(run["weights"]) if run.get("weights") else "<p>not recorded</p>")
    parts.append("<h3>Settings (run.json)</h3>" + _key_values(run.get("settings", {})))
    return "".join(parts)


def completeness(out: Path, run: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Units the settings ask for against those present, with the missing ones counted per
    (category, seed)."""
    if "settings" not in run:
        return {"expected": None, "present": len(rows), "missing": {}, "note": "no run.json"}
    settings = EvaluationSettings.from_dict(run["settings"])
    expected = expected_keys(settings, [r["category"] for r in rows])
    present = {row_key(r) for r in rows}
    missing = Counter((k[1], k[3]) for k in expected.keys - present)
    return {
        "expected": len(expected.keys),
        "present": len(present & expected.keys),
        "missing": dict(sorted(missing.items())),
        "note": expected.note,
    }


def _status_html(status: dict[str, Any], run: dict[str, Any]) -> str:
    shard = run.get("settings", {}).get("shard")
    merged = run.get("merged_from")
    lines = []
    if status["expected"] is None:
        lines.append(f"{status['present']} result rows; the settings are unknown (no run.json).")
    elif not status["missing"]:
        lines.append(f"Complete: all {status['expected']} result rows the settings ask for.")
    else:
        missing = sum(status["missing"].values())
        lines.append(
            f"<b>Partial run</b>: {status['present']} of {status['expected']} result rows "
            f"present, {missing} missing. Missing rows per (category, seed):"
        )
        items = "".join(
            f"<li>{html.escape(c)}, seed {s}: {n} rows</li>"
            for (c, s), n in status["missing"].items()
        )
        lines.append(f"<ul>{items}</ul>Rerun the same command to finish them.")
    if shard:
        lines.append(f"This folder holds shard {html.escape(shard)} of the grid only.")
    if merged:
        lines.append("Merged from: " + ", ".join(html.escape(str(m)) for m in merged))
    if status["note"]:
        lines.append(html.escape(status["note"]))
    cls = "complete" if status["expected"] and not status["missing"] else "missing"
    return f'<div class="{cls}">' + "<br>".join(lines) + "</div>"


def _caveats_html(rows: list[dict[str, Any]], skipped: list[str]) -> str:
    lines = caveat_lines(rows, skipped)
    if not lines:
        return "<p>Nothing to add.</p>"
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    return f'<div class="missing"><ul>{items}</ul></div>'


def _figure(figures: dict[str, str], prefix: str, caption: str) -> str:
    found = [(n, b) for n, b in figures.items() if n.startswith(prefix)]
    if not found:
        return "<p>Not available in this run.</p>"
    return "".join(
        f'<figure><img alt="{html.escape(n)}" src="data:image/png;base64,{b}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for n, b in found
    )


def render(out: Path, rows: list[dict[str, Any]], run: dict[str, Any], figures: dict) -> str:
    overall = {t.name: t for t in report_tables(rows)}
    per_cat = report_tables(rows, per_category=True)
    status = completeness(out, run, rows)

    def tables(*names: str) -> str:
        found = [overall[n] for n in names if n in overall]
        if not found:
            return "<p>Not available in this run.</p>"
        return "".join(f"<h3>{html.escape(t.title)}</h3>{_table_html(t)}" for t in found)

    body = {
        "status": ("Run status", _status_html(status, run)),
        "caveats": ("Read this first", _caveats_html(rows, run.get("skipped", []))),
        "table1": ("Table 1: detection", tables("table1_detection")),
        "table2": ("Table 2: calibration", tables("table2_calibration")),
        "table3": ("Table 3: entropy under attack", tables("table3_entropy")),
        "flags": (
            "Attack flags beyond entropy",
            tables("table3b_flags")
            + _figure(figures, "flags", "Flag AUROC per attack; 0.5 (dashed) is chance.")
            + tables("table3c_gated"),
        ),
        "figure1b": (
            "Figure 1b: clean and attacked images",
            _figure(figures, "figure1b", "Inputs as scored and their patch-distance maps."),
        ),
        "figure4": (
            "Figure 4: reliability, uncalibrated vs Platt",
            _figure(
                figures,
                "reliability",
                "Top: reliability diagram; bottom: histogram of "
                "predicted probabilities. Clean evaluation data, pooled over categories.",
            ),
        ),  # fmt: skip
        "figure5": (
            "Figure 5: entropy, clean vs attacked",
            _figure(
                figures,
                "entropy",
                "Predictive entropy of Platt probabilities, pooled "
                "over categories; the legend gives mean and standard deviation.",
            ),
        ),  # fmt: skip
        "pixel": ("Pixel-level metrics", tables("pixel")),
        "calibrators": ("Calibrators compared", tables("calibrators")),
        "per-category": (
            "Per category",
            "".join(f"<h3>{html.escape(t.title)}</h3>{_table_html(t)}" for t in per_cat),
        ),
        "settings": ("Settings and weights", _settings_html(run)),
    }
    nav = " · ".join(f'<a href="#{s}">{html.escape(body[s][0])}</a>' for s in SECTIONS)
    sections = "".join(
        f'<section id="{s}"><h2>{html.escape(body[s][0])}</h2>{body[s][1]}</section>'
        for s in SECTIONS
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>trustad report: "
        f"{html.escape(out.name)}</title><style>{STYLE}</style></head><body>"
        f"<h1>trustad evaluation report</h1><p>{html.escape(str(out))}, written "
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}. Means over categories per seed, then mean ± "
        "standard deviation over seeds; calibration metrics and entropies on the evaluation "
        f"part of each test set.</p><nav>{nav}</nav>{sections}</body></html>"
    )


def write_study_report(out: str | Path) -> dict[str, Any]:
    """report.md, report.html, tables/*.csv|tex and the figures' PNG files for a run folder;
    returns {"markdown", "html", "tables", "figures"} paths."""
    import matplotlib.pyplot as plt

    out = Path(out)
    rows = read_results(out)
    run_path = out / "run.json"
    run = json.loads(run_path.read_text()) if run_path.exists() else {}
    embedded, paths = {}, []
    for name, fig in study_figures(out).items():
        png = _png(fig)  # drawn once: written beside the page and embedded in it
        paths.append(out / f"{name}.png")
        paths[-1].write_bytes(png)
        embedded[name] = base64.b64encode(png).decode("ascii")
    plt.close("all")
    page = out / "report.html"
    page.write_text(render(out, rows, run, embedded))
    tables = write_tables(out, report_tables(rows) + report_tables(rows, per_category=True))
    return {"markdown": write_report(out), "html": page, "tables": tables, "figures": paths}
