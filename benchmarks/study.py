"""Wall time and peak memory of the quick protocol on the synthetic data: one process,
``--shard`` over two processes (then merged), and Ray with two local workers.

    PYTHONPATH=src python benchmarks/study.py            # tiny random ViT (fast)
    PYTHONPATH=src python benchmarks/study.py --real     # DINOv2 ViT-S/14 weights

Peak memory is the largest total resident memory of the whole process tree (the runs, and
Ray's own processes), sampled every 0.1 s from /proc (Linux).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve()
PAGE = os.sysconf("SC_PAGE_SIZE")


def tiny_backbone(device: str | torch.device = "cpu") -> torch.nn.Module:
    """A small DINOv2-shaped ViT with seeded random weights."""
    from trustad.backbone.dinov2 import DinoVisionTransformer, ViTConfig

    torch.manual_seed(0)
    model = DinoVisionTransformer(ViTConfig(embed_dim=64, depth=4, num_heads=4, img_size=56))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model.eval().requires_grad_(False).to(device)


def settings(root: Path, real: bool, **kw):
    from trustad.evaluation import EvaluationSettings
    from trustad.evaluation.presets import preset

    values = preset("quick")
    if not real:
        values["resolution"] = 224
    values.update(kw)
    return EvaluationSettings(dataset="folder", root=str(root), **values)


def factory(real: bool):
    import functools

    if not real:
        return tiny_backbone
    from trustad.backbone import load_backbone

    return functools.partial(load_backbone, "dinov2_vits14", None)


# -- one run (in a child process) --------------------------------------------------------
def worker(args: argparse.Namespace) -> None:
    from trustad.evaluation import Evaluation

    s = settings(args.root, args.real, shard=args.shard)
    if args.mode == "ray":
        import ray

        from trustad.evaluation.distributed import RayEvaluation

        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
        RayEvaluation(
            s, args.out, device="cpu", progress=False, backbone_factory=factory(args.real),
            backbone_key="bench",
        ).run()  # fmt: skip
        ray.shutdown()
    else:
        torch.set_num_threads(args.threads)
        Evaluation(s, factory(args.real)(device="cpu"), args.out, progress=False).run()


# -- measuring ---------------------------------------------------------------------------
def tree_rss(root_pid: int) -> int:
    """Total resident bytes of ``root_pid`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [root_pid]
    while todo:
        pid = todo.pop()
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            pass
        todo += children.get(pid, [])
    return total


def measure(commands: list[list[str]]) -> tuple[float, int]:
    """Run the commands at once; (wall seconds, peak total resident bytes)."""
    t0 = time.time()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen(c, env=env) for c in commands]
    peak = 0
    while any(p.poll() is None for p in procs):
        peak = max(peak, sum(tree_rss(p.pid) for p in procs if p.poll() is None))
        time.sleep(0.1)
    if any(p.returncode for p in procs):
        raise RuntimeError(f"a run failed: {[p.returncode for p in procs]}")
    return time.time() - t0, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--real", action="store_true", help="DINOv2 ViT-S/14 weights")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each mode (default 2)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="single", help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--shard", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    from trustad.data import make_synthetic_dataset
    from trustad.evaluation.merge import merge_runs
    from trustad.report import read_results

    tmp = Path(tempfile.mkdtemp(prefix="trustad_bench_"))
    root = make_synthetic_dataset(tmp / "data", n_train=2, n_test_good=8, n_test_defect=8)
    base = [sys.executable, str(HERE), "--worker", "--root", str(root)]
    base += ["--real"] if args.real else []
    s = settings(root, args.real)
    print(f"quick protocol on {root}: shots {s.shots}, {s.seeds} seed, {s.resolution} px, "
          f"{'DINOv2 ViT-S/14' if args.real else 'tiny random ViT'}; "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")  # fmt: skip
    modes = {
        "1 process (2 threads)": lambda r: [[*base, "--out", str(tmp / f"single{r}")]],
        "1 process (1 thread)": lambda r: [
            [*base, "--out", str(tmp / f"single1t{r}"), "--threads", "1"]
        ],
        "--shard 1/2 + 2/2 (1 thread each), merged": lambda r: [
            [*base, "--out", str(tmp / f"shard{i}_{r}"), "--shard", f"{i}/2", "--threads", "1"]
            for i in (1, 2)
        ],
        "Ray, 2 local workers": lambda r: [[*base, "--mode", "ray", "--out", str(tmp / f"ray{r}")]],
    }
    results: dict[str, list[tuple[float, int]]] = {name: [] for name in modes}
    for r in range(args.repeat):  # interleaved, so that a change of load hits every mode
        for name, commands in modes.items():
            wall, peak = measure(commands(r))
            if name.startswith("--shard"):
                t0 = time.time()
                merge_runs([tmp / f"shard1_{r}", tmp / f"shard2_{r}"], tmp / f"merged{r}")
                wall += time.time() - t0
            results[name].append((wall, peak))
            print(f"{name}, repeat {r}: {wall:.1f} s, {peak / 2**20:.0f} MiB, load "
                  f"{os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    rows = {f: len(read_results(tmp / f)) for f in ("single0", "merged0", "ray0")}
    print(f"result rows: {rows}")
    print("| run | wall s (best of repeats) | all repeats | peak memory MiB |\n|---|---|---|---|")
    for name, runs in results.items():
        walls = ", ".join(f"{w:.1f}" for w, _ in runs)
        peak = max(p for _, p in runs)
        print(f"| {name} | {min(w for w, _ in runs):.1f} | {walls} | {peak / 2**20:.0f} |")
    print(
        json.dumps({k: [{"wall_s": w, "peak_bytes": p} for w, p in v] for k, v in results.items()})
    )


if __name__ == "__main__":
    main()
