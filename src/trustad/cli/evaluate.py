"""``trustad evaluate`` (the protocol grid) and ``trustad report`` (tables from results)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..evaluation import settings as run_settings


def add_runtime_options(p: argparse.ArgumentParser) -> None:
    """Options that say where and how loudly to run; they change no result."""
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--quiet", action="store_true", help="no progress output")
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
    run_settings.add_arguments(p)
    add_runtime_options(p)
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
    settings: run_settings.EvaluationSettings,
    out: str | Path,
    device: str,
    quiet: bool,
    executor: str = "local",
    address: str | None = None,
    protocol: str | None = None,
) -> list[dict]:
    """Run the grid (in this process or as Ray tasks), write the report, print the summary."""
    from ..report import summary, write_study_report

    if executor == "ray":
        from ..evaluation.distributed import RayEvaluation

        run = RayEvaluation(settings, out, device=device, address=address, progress=not quiet)
    else:
        from ..backbone import load_backbone
        from ..backbone.runtime import resolve_device
        from ..evaluation import Evaluation

        target = resolve_device(device)
        backbone = load_backbone(settings.backbone, settings.weights, device=target)
        source = backbone.weights_source
        print(
            f"device: {target}; weights: {source.label}, {source.path} "
            f"(sha256 {source.sha256[:12]})"
        )
        run = Evaluation(settings, backbone, out, progress=not quiet)
    if protocol:
        run.store.record("protocol", protocol)
    rows = run.run()
    print(summary(rows))
    if rows:
        paths = write_study_report(out)
        print(
            f"\nresults: {Path(out) / 'results.csv'}  scores: {Path(out) / 'scores.csv'}\n"
            f"report: {paths['html']} (also {paths['markdown'].name}, tables/*.csv|tex)"
        )
    if run.failures:
        lines = [f"  {c}: {msg}" for c, msg in run.failures.items()]
        raise RuntimeError("these categories failed (the others are saved):\n" + "\n".join(lines))
    return rows


def run_evaluate(args: argparse.Namespace) -> int:
    settings = run_settings.from_arguments(args, root=str(Path(args.root)))
    protocol = getattr(args, "protocol", None)
    execute(settings, args.out, args.device, args.quiet, args.executor, args.address, protocol)
    return 0


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
