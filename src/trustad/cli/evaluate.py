"""``trustad evaluate`` (the protocol grid) and ``trustad report`` (tables from results)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..evaluation import Evaluation
from ..evaluation import settings as run_settings

if TYPE_CHECKING:
    import torch


def add_runtime_options(p: argparse.ArgumentParser) -> None:
    """Options that say where and how loudly to run; they change no result."""
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument(
        "--quiet",
        action="store_true",
        help="nothing on the terminal but the closing summary (run.log keeps everything)",
    )


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
    p.add_argument(
        "--plan",
        action="store_true",
        help="list the units to do and those done in --out, count the backbone passes and "
        "estimate the time from a short timing of the backbone; starts and writes nothing",
    )
    p.set_defaults(func=run_evaluate)

    r = sub.add_parser("report", help="print and write report.md from an evaluation folder")
    r.add_argument("out", help="folder holding results.csv")
    r.set_defaults(func=run_report)


def execute(
    settings: run_settings.EvaluationSettings, out: str | Path, device: str, quiet: bool
) -> Evaluation:
    """Check the output folder and the device, load the backbone, run the grid, write the
    report, print the tables and the closing summary. Everything shown is also written to
    ``out``/run.log."""
    import time

    from ..backbone.runtime import resolve_device
    from ..evaluation.progress import LOGGER, Progress
    from ..evaluation.runlog import RunSummary, always, check_output_folder, run_logging
    from ..report import summary, write_figures, write_report

    check_output_folder(out)  # before anything is loaded or written
    target = resolve_device(device)
    t0 = time.time()
    with run_logging(out, quiet) as log_path:
        backbone = _load_backbone(settings, target)
        progress = Progress(not quiet)
        run = Evaluation(settings, backbone, out, progress=progress)
        rows = run.run()
        with progress.bar("report and figures", 2, "file") as bar:
            path = write_report(out)
            bar.update()
            figures = write_figures(out)
            bar.update()
        table = summary(rows)
        LOGGER.debug("results:\n" + table)
        print(table)
        print(
            f"\nresults: {Path(out) / 'results.csv'}  scores: {Path(out) / 'scores.csv'}  "
            f"report: {path}  log: {log_path}"
        )
        if figures:
            print("figures: " + ", ".join(str(f) for f in figures))
        closing = RunSummary(
            run.computed,
            run.already_done,
            [*run.impossible, *run.skipped],
            run.failures,
            time.time() - t0,
        )
        always(closing.text(), quiet)  # never hidden by --quiet
    return run


def left_out(run: Evaluation) -> int:
    """1 when the run left out files or categories (listed in the closing summary)."""
    return 1 if run.failures or run.skipped else 0


def _load_backbone(settings: run_settings.EvaluationSettings, device: torch.device) -> Any:
    from ..backbone import load_backbone
    from ..evaluation.progress import LOGGER

    backbone = load_backbone(settings.backbone, settings.weights, device=device)
    source = backbone.weights_source
    LOGGER.info(
        f"device: {device}; weights: {source.label}, {source.path} (sha256 {source.sha256[:12]})"
    )
    return backbone


def show_plan(settings: run_settings.EvaluationSettings, out: str | Path, device: str) -> None:
    """Print what ``execute`` would do, with a time estimate; writes nothing."""
    from ..backbone.runtime import BackboneRuntime, resolve_device
    from ..evaluation.plan import done_in, make_plan, time_backbone
    from ..evaluation.runlog import check_output_folder
    from ..evaluation.store import done_units

    check_output_folder(out)
    plan = make_plan(settings, done_in(done_units(out, settings)))
    target = resolve_device(device)
    timing = None
    if plan.forward or plan.gradient:
        runtime = BackboneRuntime(
            _load_backbone(settings, target),
            resolution=settings.resolution,
            batch_size=settings.batch_size,
            features_bf16=settings.bf16,
            gradients_bf16=settings.attack_bf16,
        )
        timing = time_backbone(runtime, min(settings.batch_size, 4))
    print(f"plan for {out}:")
    print(plan.text(timing))


def run_evaluate(args: argparse.Namespace) -> int:
    settings = run_settings.from_arguments(args, root=str(Path(args.root)))
    if args.plan:
        show_plan(settings, args.out, args.device)
        return 0
    return left_out(execute(settings, args.out, args.device, args.quiet))


def run_report(args: argparse.Namespace) -> int:
    from ..report import read_results, summary, write_figures, write_report

    rows = read_results(args.out)
    print(summary(rows))
    print(f"\nreport: {write_report(args.out)}")
    for figure in write_figures(args.out):
        print(f"figure: {figure}")
    return 0
