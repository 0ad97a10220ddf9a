"""The paper's figures from a run folder: Figure 1b (clean and attacked inputs with their
patch-distance maps), Figure 4 (reliability diagrams and probability histograms,
uncalibrated vs Platt) and Figure 5 (entropy clean vs attacked). Probabilities come from
scores.csv's ``prob_*`` columns, as the evaluation computed them: nothing is refitted."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import calibration as cal
from ..evaluation.settings import CLEAN
from ..flags import FLAGS
from .tables import condition_label, num, read_results


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_scores(out: str | Path) -> list[dict[str, Any]]:
    path = Path(out) / "scores.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


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
        label = condition_label(r["condition"], num(r["eps"]))
        pooled[label]["y"].append(int(r["label"]))
        for name in ("uncal", "platt"):
            pooled[label][name].append(num(r.get(f"prob_{name}")))
    return {c: {k: np.array(v) for k, v in d.items()} for c, d in pooled.items()}


def reliability_figure(pooled: dict[str, dict[str, np.ndarray]], title: str) -> Any:
    """Figure 4 for one dataset: reliability diagrams (top) and histograms of the predicted
    probability (bottom), uncalibrated (left) vs Platt (right), clean evaluation data."""
    plt = _pyplot()
    clean = pooled[CLEAN]
    fig, axes = plt.subplots(2, 2, figsize=(8, 7))
    for col, name in enumerate(("uncal", "platt")):
        d = cal.reliability_diagram(clean[name], clean["y"])
        centres = (d["edges"][:-1] + d["edges"][1:]) / 2
        ax = axes[0, col]
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        ok = d["prob_count"] > 0
        ax.plot(d["mean_prob"][ok], d["frac_pos"][ok], "o-", label=name)
        ax.set_title(
            f"{'uncalibrated' if name == 'uncal' else 'Platt'}: class-wise ECE "
            f"{d['classwise_ece']:.3f}, ECE {d['ece']:.3f}",
            fontsize=9,
        )
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("predicted probability of anomaly")
        ax.set_ylabel("fraction anomalous")
        ax.legend(fontsize=7, loc="upper left")
        axes[1, col].bar(centres, d["prob_count"], width=0.09)
        axes[1, col].set_xlim(0, 1)
        axes[1, col].set_xlabel("predicted probability of anomaly")
        axes[1, col].set_ylabel("images")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def entropy_figure(pooled: dict[str, dict[str, np.ndarray]], title: str) -> Any | None:
    """Figure 5: histograms of the Platt predictive entropy, clean vs each attack, with
    mean and standard deviation in the legend."""
    plt = _pyplot()
    attacked = [c for c in pooled if c != CLEAN]
    if CLEAN not in pooled or not attacked:
        return None
    fig, axes = plt.subplots(1, len(attacked), figsize=(5 * len(attacked), 3.8), squeeze=False)
    for ax, cond in zip(axes[0], attacked):
        for label, data in ((CLEAN, pooled[CLEAN]), (cond, pooled[cond])):
            h = cal.entropy(data["platt"])
            ax.hist(
                h,
                bins=20,
                range=(0, np.log(2)),
                alpha=0.6,
                label=f"{label}: mean {h.mean():.3f}, std {h.std():.3f}",
            )
        ax.set_xlabel("predictive entropy of Platt probability (nats)")
        ax.set_ylabel("images")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def example_entries(out: str | Path) -> dict[str, list[dict[str, Any]]]:
    """The example pictures a run saved, per category (``examples/<category>/index.json``)."""
    found = {}
    for index in sorted(Path(out).glob("examples/*/index.json")):
        entries = json.loads(index.read_text())
        for e in entries:
            e["folder"] = str(index.parent)
        found[index.parent.name] = entries
    return found


def examples_figure(out: str | Path, max_categories: int = 4) -> Any | None:
    """Figure 1b: for each example image (one row), the clean input and its patch-distance
    map, then each attacked input and its map, the maps of a row on one colour scale."""
    from PIL import Image

    plt = _pyplot()
    rows = []
    for category, entries in list(example_entries(out).items())[:max_categories]:
        by_image: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for e in entries:
            by_image[e["image"]].append(e)
        for image, versions in by_image.items():
            versions.sort(key=lambda e: (e["condition"] != CLEAN, e["condition"], e["eps"]))
            if versions[0]["condition"] == CLEAN and len(versions) > 1:
                rows.append((category, image, versions))
    if not rows:
        return None
    cols = 2 * max(len(v) for _, _, v in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.3 * cols, 2.5 * len(rows)), squeeze=False)
    for r, (category, image, versions) in enumerate(rows):
        maps = [np.load(Path(e["folder"]) / e["map"]) for e in versions]
        vmax = max(float(m.max()) for m in maps)
        for j, (e, m) in enumerate(zip(versions, maps)):
            label = condition_label(e["condition"], e["eps"])
            kind = "anomalous" if e["label"] else "normal"
            axes[r, 2 * j].imshow(Image.open(Path(e["folder"]) / e["input"]))
            axes[r, 2 * j].set_title(f"{category}/{image}\n{kind}, {label}", fontsize=7)
            shown = axes[r, 2 * j + 1].imshow(m, cmap="inferno", vmin=0, vmax=vmax)
            axes[r, 2 * j + 1].set_title(
                f"patch distances\nimage score {e['score']:.3f}", fontsize=7
            )
            fig.colorbar(shown, ax=axes[r, 2 * j + 1], fraction=0.046)
        for ax in axes[r]:
            ax.axis("off")
    fig.suptitle("Clean and attacked test images with their 1-NN patch-distance maps")
    fig.tight_layout()
    return fig


def flags_figure(results: Sequence[dict[str, Any]]) -> Any | None:
    """Flag AUROC (attacked vs clean) per attack condition, one bar per flag, the entropy
    flag (Platt) first; pooled as in Table 3b (mean over categories, then over seeds)."""
    from .tables import aggregate, conditions

    attacked = [c for c in conditions(results) if c[0] != CLEAN]
    names = ["platt", *(f for f in FLAGS if any(r.get(f"flag_auroc_{f}") for r in results))]
    if not attacked or len(names) < 2:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(attacked) * len(names) / 3), 3.6))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        stats = aggregate(results, f"flag_auroc_{name}")
        values = []
        for cond, eps in attacked:
            found = [v[0] for k, v in stats.items() if k[-2:] == (cond, eps)]
            values.append(float(np.nanmean(found)) if found else np.nan)
        label = "entropy (Platt)" if name == "platt" else name
        ax.bar(np.arange(len(attacked)) + i * width, values, width, label=label)
    ax.axhline(0.5, color="k", lw=0.8, ls="--")
    ax.set_xticks(np.arange(len(attacked)) + 0.4 - width / 2)
    ax.set_xticklabels([condition_label(c, e) for c, e in attacked], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("flag AUROC, attacked vs clean")
    ax.legend(fontsize=7, ncol=3)
    fig.suptitle("Attack flags: how well each tells attacked from clean inputs")
    fig.tight_layout()
    return fig


def study_figures(out: str | Path, shots: int | None = None) -> dict[str, Any]:
    """The figures of a run by name (matplotlib figures; the caller closes them)."""
    rows = read_scores(out)
    figures: dict[str, Any] = {}
    example = examples_figure(out)
    if example is not None:
        figures["figure1b"] = example
    if (Path(out) / "results.csv").exists():
        flags = flags_figure(read_results(out))
        if flags is not None:
            figures["flags"] = flags
    if not rows or "prob_platt" not in rows[0]:
        return figures  # written before scores.csv kept the probabilities
    shots = shots if shots is not None else min(int(r["shots"]) for r in rows)
    for dataset in sorted({r["dataset"] for r in rows}):
        pooled = calibrated_scores([r for r in rows if r["dataset"] == dataset], shots)
        if CLEAN in pooled and len(pooled[CLEAN]["y"]):
            figures[f"reliability_{dataset}_{shots}shot"] = reliability_figure(
                pooled, f"Reliability, {dataset}, clean evaluation data, {shots} shot(s)"
            )
        entropy = entropy_figure(pooled, f"Predictive entropy, {dataset}, {shots} shot(s)")
        if entropy is not None:
            figures[f"entropy_{dataset}_{shots}shot"] = entropy
    return figures


def write_figures(out: str | Path, shots: int | None = None) -> list[Path]:
    """The run's figures as PNG files in ``out``; returns their paths."""
    plt = _pyplot()
    paths = []
    for name, fig in study_figures(out, shots).items():
        paths.append(Path(out) / f"{name}.png")
        fig.savefig(paths[-1], dpi=90)
        plt.close(fig)
    return paths
