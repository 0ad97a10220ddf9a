"""``trustad evaluate`` (the protocol grid) and ``trustad report`` (tables from results)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..evaluation import Evaluation
from ..evaluation import settings as run_settings


def add_runtime_options(p: argparse.ArgumentParser) -> None:
    """Options that say where and how loudly to run; they change no result."""
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="run the evaluation protocol (shots x seeds x attacks) on a dataset",
        description="Runs AnomalyDINO over categories x shots x seeds x conditions, writes "
        "results.csv, scores.csv, run.json and report.md into --out, and prints a summary. "
        "Rerunning with the same --out resumes.",
    )
    p.add_argument("--out", required=True, help="output folder")
    run_settings.add_arguments(p)
    add_runtime_options(p)
    p.set_defaults(func=run_evaluate)

    r = sub.add_parser("report", help="print and write report.md from an evaluation folder")
    r.add_argument("out", help="folder holding results.csv")
    r.set_defaults(func=run_report)


def execute(
    settings: run_settings.EvaluationSettings, out: str | Path, device: str, quiet: bool
) -> Evaluation:
    """Load the backbone, run the grid, write the report, print the summary."""
    from ..backbone import load_backbone
    from ..backbone.runtime import resolve_device
    from ..report import summary, write_figures, write_report

    target = resolve_device(device)
    backbone = load_backbone(settings.backbone, settings.weights, device=target)
    source = backbone.weights_source
    print(f"device: {target}; weights: {source.label}, {source.path} (sha256 {source.sha256[:12]})")
    run = Evaluation(settings, backbone, out, progress=not quiet)
    rows = run.run()
    path = write_report(out)
    figures = write_figures(out)
    print(summary(rows))
    print(
        f"\nresults: {Path(out) / 'results.csv'}  scores: {Path(out) / 'scores.csv'}  report: {path}"
    )
    if figures:
        print("figures: " + ", ".join(str(f) for f in figures))
    return run


def left_out(run: Evaluation) -> int:
    """Say what the run left out (never hidden by --quiet); 1 when anything was."""
    lines = [f"  category {c} failed: {msg}" for c, msg in run.failures.items()]
    lines += [f"  {message}" for message in run.skipped]
    if lines:
        print("left out (the rest is saved):\n" + "\n".join(lines), file=sys.stderr)
    return 1 if lines else 0


def run_evaluate(args: argparse.Namespace) -> int:
    settings = run_settings.from_arguments(args, root=str(Path(args.root)))
    return left_out(execute(settings, args.out, args.device, args.quiet))


def run_report(args: argparse.Namespace) -> int:
    from ..report import read_results, summary, write_figures, write_report

    rows = read_results(args.out)
    print(summary(rows))
    print(f"\nreport: {write_report(args.out)}")
    for figure in write_figures(args.out):
        print(f"figure: {figure}")
    return 0
