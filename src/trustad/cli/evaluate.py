"""``trustad evaluate`` (the protocol grid) and ``trustad report`` (tables from results)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..evaluation import Evaluation
from ..evaluation import arguments as run_arguments
from ..evaluation.settings import EvaluationSettings
from .options import add_device_option

if TYPE_CHECKING:
    import torch


def add_runtime_options(p: argparse.ArgumentParser) -> None:
    """Options that say where and how loudly to run; they change no result."""
    add_device_option(p)
    p.add_argument(
        "--quiet",
        action="store_true",
        help="nothing on the terminal but the closing summary (run.log keeps everything)",
    )
    p.add_argument(
        "--executor",
        default="local",
        choices=("local", "ray"),
        help="local: this process; ray: one Ray task per (category, seed), on the cluster at "
        "--address (needs `pip install trustad[ray]`)",
    )
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster address (default: a local Ray instance, or RAY_ADDRESS)",
    )


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="run the evaluation protocol (shots x seeds x attacks) on a dataset",
        description="Runs AnomalyDINO over categories x shots x seeds x conditions, writes "
        "results.csv, scores.csv, run.json, report.html, report.md and tables/ into --out, "
        "and prints a summary. Rerunning with the same --out resumes. --protocol paper runs "
        "the paper's study (PROTOCOL.md); options given beside it override it.",
    )
    p.add_argument("--out", required=True, help="output folder")
    run_arguments.add_arguments(p)
    add_runtime_options(p)
    p.add_argument(
        "--plan",
        action="store_true",
        help="list the units to do and those done in --out, count the backbone passes and "
        "estimate the time from a short timing of the backbone; starts and writes nothing",
    )
    p.set_defaults(func=run_evaluate)

    r = sub.add_parser(
        "report",
        help="write report.html, report.md and tables from run folders (several: merged)",
        description="Writes report.html (self-contained), report.md, tables/*.csv|tex and "
        "the figures into the run folder. Several folders (shards) are first merged into "
        "--out, refusing folders whose settings or weights differ.",
    )
    r.add_argument("folders", nargs="+", metavar="DIR", help="run folders")
    r.add_argument("--out", help="merged folder (required with several DIRs)")
    r.set_defaults(func=run_report)

    m = sub.add_parser(
        "merge",
        help="combine shard folders into one run folder and report it",
        description="Merges run folders computed with equal settings (apart from --shard "
        "and batch size) and the same weights into --out, then writes its report.",
    )
    m.add_argument("folders", nargs="+", metavar="DIR", help="run folders (shards)")
    m.add_argument("--out", required=True, help="merged folder")
    m.set_defaults(func=run_report)


def execute(
    settings: EvaluationSettings,
    out: str | Path,
    device: str,
    quiet: bool,
    executor: str = "local",
    address: str | None = None,
    protocol: str | None = None,
) -> Evaluation:
    """Check the output folder and the device, load the backbone, run the grid, write the
    report, print the tables and the closing summary. Everything shown is also written to
    ``out``/run.log. ``executor`` "ray" runs the work units as Ray tasks instead."""
    import time

    from ..backbone.runtime import resolve_device
    from ..evaluation.progress import LOGGER, Progress
    from ..evaluation.runlog import RunSummary, always, check_output_folder, run_logging
    from ..report import summary, write_study_report

    check_output_folder(out)  # before anything is loaded or written
    target = resolve_device(device)
    t0 = time.time()
    with run_logging(out, quiet) as log_path:
        progress = Progress(not quiet)
        if executor == "ray":
            from ..evaluation.distributed import RayEvaluation

            run = RayEvaluation(settings, out, device=device, address=address, progress=progress)
        else:
            run = Evaluation(settings, _load_backbone(settings, target), out, progress=progress)
        if protocol:
            run.store.record("protocol", protocol)
        rows = run.run()
        paths = None
        if rows:
            with progress.bar("report and figures", 1, "report") as bar:
                paths = write_study_report(out)
                bar.update()
        table = summary(rows)
        LOGGER.debug("results:\n" + table)
        print(table)
        print(
            f"\nresults: {Path(out) / 'results.csv'}  scores: {Path(out) / 'scores.csv'}  "
            f"log: {log_path}"
        )
        if paths:
            print(f"report: {paths['html']} (also {paths['markdown'].name}, tables/*.csv|tex)")
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


def _load_backbone(settings: EvaluationSettings, device: torch.device) -> Any:
    from ..backbone import load_backbone
    from ..evaluation.progress import LOGGER

    backbone = load_backbone(settings.backbone, settings.weights, device=device)
    source = backbone.weights_source
    LOGGER.info(
        f"device: {device}; weights: {source.label}, {source.path} (sha256 {source.sha256[:12]})"
    )
    return backbone


def show_plan(settings: EvaluationSettings, out: str | Path, device: str) -> None:
    """Print what ``execute`` would do, with a time estimate; writes nothing."""
    from ..backbone.runtime import resolve_device
    from ..evaluation.plan import done_in, make_plan, run_runtime, time_backbone
    from ..evaluation.runlog import check_output_folder
    from ..evaluation.store import done_results

    check_output_folder(out)
    plan = make_plan(settings, done_in(done_results(out, settings)))
    target = resolve_device(device)
    timing = None
    if plan.forward or plan.gradient:
        runtime = run_runtime(settings, _load_backbone(settings, target))
        timing = time_backbone(runtime, min(settings.batch_size, 4))
    print(f"plan for {out}:")
    print(plan.text(timing))


def run_evaluate(args: argparse.Namespace) -> int:
    settings = run_arguments.from_arguments(args, root=str(Path(args.root)))
    if args.plan:
        show_plan(settings, args.out, args.device)
        return 0
    protocol = getattr(args, "protocol", None)
    try:
        run = execute(
            settings, args.out, args.device, args.quiet, args.executor, args.address, protocol
        )
    except BaseException:
        from ..evaluation.store import forget_empty_run

        forget_empty_run(args.out)  # a run that computed nothing must not block the next
        raise
    return left_out(run)


def run_report(args: argparse.Namespace) -> int:
    from ..evaluation.merge import merge_runs
    from ..report import read_results, summary, write_study_report

    folder = args.folders[0]
    if len(args.folders) > 1 or args.out:
        if not args.out:
            raise ValueError("several run folders are merged: give the merged folder as --out")
        store = merge_runs(args.folders, args.out)
        folder = store.out
        print(f"merged {len(args.folders)} folders into {folder}: {len(store.rows)} result rows")
    print(summary(read_results(folder)))
    paths = write_study_report(folder)
    print(f"\nreport: {paths['html']} (also {paths['markdown'].name}, tables/*.csv|tex)")
    for figure in paths["figures"]:
        print(f"figure: {figure}")
    return 0
