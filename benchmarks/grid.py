"""The paper grid on an MVTec-sized synthetic set: seconds per test image, and where they go.

Builds (once, cached under ``--data``) a synthetic MVTec-layout set: 3 categories, 1024 px
images, 16 training and ``--test-per-category`` test images each (half good, half
defective, with masks). Then runs the grid through the evaluation runner: shots 1 2 4 8 16
x 3 seeds x clean + probe FGSM at 8/255, pixel metrics on, and prints the wall time of the
grid per test image (the run's time divided by the number of test images in the set) and
its split into phases:

  decode       reading image and mask files (Pillow); where test images are decoded and
               resized in worker threads, the main thread's wait for them
  preprocess   resizing, rotation of support images, masks to the patch grid
  backbone     backbone forward passes (with and without gradient) and feature batching
  attack       the attack outside the backbone's forward passes: backward passes, probe
               training, the L-inf/PSNR of the perturbations
  scoring      memory banks, nearest-neighbour distances, background masks, image scores
               and image-level metrics
  maps         anomaly maps (upsampling and Gaussian smoothing)
  pixel        pixel AUROC and AUPRO
  calibration  calibrators, calibration metrics, the entropy flag, conformal thresholds
  flags        the other attack flags and the gate flag, where the code has them
  writing      the result store (results.csv, scores.csv) and per-image score rows
  other        the rest of the run: the runner's own loop, planning, file listing

How the split is measured: explicit timers are put around the functions listed in
``PHASES`` (the runner has no timing hooks). The names are looked up in the package
that is imported, so the same script measures the code before the evaluation package
existed (``trustad.protocol.Evaluation``) and after (``trustad.evaluation.Evaluation``);
names missing in one version are skipped, and each phase lists its names for both. A
phase stack gives every moment of the main thread to the innermost timed function
running, so nested calls are not counted twice: a backbone pass inside an attack counts as
backbone, the attack's own time (its backward pass) as attack. Work in other threads
counts through the main thread's wait for it. On CUDA the timers synchronise the device
at phase boundaries (not inside a phase), so device work lands in the phase that queued
it; ``--no-sync`` leaves that out to time the grid alone. On CUDA the script also prints
how busy the GPU was: the driver's utilisation (NVML, else nvidia-smi) sampled every 0.2 s
during the grid; with ``--no-sync`` that figure is not lowered by the phase syncs.
(cProfile, offered by ``--profile N`` for a per-function listing, cannot do the split
itself: its call graph keeps only direct callers, so the time a function spends several
calls deep inside another cannot be separated exactly.)

Before the timed run, the grid's first unit runs once untimed (a warm-up): one-time costs
of a process (imports that torch and scikit-learn make on first use, GPU kernels) are not
charged to the grid.

``--tiny`` uses a tiny random ViT instead of DINOv2, so that on a machine without a GPU
everything except the backbone shows. Lower ``--size``, ``--resolution`` and
``--test-per-category`` there; on a shared or busy CPU ``--threads 1`` keeps torch's many
small operations from waiting on each other's threads.

Run (GPU):  python benchmarks/grid.py --data /tmp/grid-data
Run (CPU):  python benchmarks/grid.py --data /tmp/grid-data --tiny --size 256 \\
                --resolution 224 --test-per-category 20
Before and after on the same files: run it with PYTHONPATH set to each version's src/,
``--save`` the figures of the first and give them to the second with ``--baseline``.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import json
import os
import pstats
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import trustad
from trustad.backbone.dinov2 import DinoVisionTransformer, ViTConfig
from trustad.data import make_synthetic_dataset

try:
    from trustad.evaluation import Evaluation, EvaluationSettings
except ImportError:  # the code before the evaluation package
    from trustad.protocol import Evaluation, EvaluationSettings  # type: ignore[no-redef]

# Phase -> (module, qualified name) of the functions timed for it; either version of the
# code has some of them. Innermost wins (see the docstring).
PHASES: dict[str, list[tuple[str, str]]] = {
    "decode": [
        ("trustad.backbone.preprocess", "load_rgb8"),
        ("trustad.data.datasets", "load_mask"),
        ("trustad.data.datasets", "image_size"),
        ("trustad.evaluation.category", "load_state"),  # waits for the decode threads
    ],
    "preprocess": [
        ("trustad.backbone.preprocess", "preprocess"),
        ("trustad.backbone.preprocess", "rotate_rgb8"),  # before
        ("trustad.backbone.rotate", "rotate_rgb8"),  # after
        ("trustad.backbone.preprocess", "preprocess_mask"),
        ("trustad.backbone.preprocess", "patch_mask"),
        ("trustad.backbone.resize", "preprocess_batch"),
        ("trustad.detector", "AnomalyDINO.support_views"),
    ],
    "backbone": [
        ("trustad.backbone.dinov2", "DinoVisionTransformer.patch_features"),
        ("trustad.detector", "extract_features"),  # before
        ("trustad.backbone.runtime", "BackboneRuntime.features"),  # after
    ],
    "attack": [
        ("trustad.attacks", "run_attack"),
        ("trustad.attacks", "train_probe"),
        ("trustad.attacks", "linf"),
        ("trustad.attacks", "psnr"),
        ("trustad.attacks", "mean_linf_psnr"),
    ],
    "scoring": [
        ("trustad.detector", "AnomalyDINO.fit_features"),
        ("trustad.detector", "AnomalyDINO.foreground"),
        ("trustad.detector", "AnomalyDINO.distances_from_features"),
        ("trustad.detector", "AnomalyDINO.distances_from_nearest"),
        ("trustad.evaluation.nearest", "NearestParts.indices"),  # the 1-NN search by parts
        ("trustad.detector", "AnomalyDINO.scores_from_distances"),
        ("trustad.metrics", "image_metrics"),
    ],
    "maps": [
        ("trustad.detector", "anomaly_map"),
        ("trustad.maps", "anomaly_maps_grouped"),
        ("trustad.maps", "anomaly_maps_torch"),
    ],
    "pixel": [
        ("trustad.metrics", "pixel_auroc"),
        ("trustad.metrics", "aupro"),
        ("trustad.metrics", "pooled_truth"),
        ("trustad.pixel_metrics", "pixel_targets"),
        ("trustad.pixel_metrics", "pixel_auroc_torch"),
        ("trustad.pixel_metrics", "aupro_torch"),
        ("trustad.evaluation.runner", "Evaluation._pixel_columns"),  # map -> numpy copies
    ],
    "calibration": [
        ("trustad.protocol", "Evaluation._calibration"),  # before
        ("trustad.evaluation.rows", "result_row"),  # after (image metrics inside: scoring)
        ("trustad.evaluation.rows", "clean_calibration"),  # calibrators fitted once per detector
        ("trustad.model.trust", "TrustEngine.assess"),  # after the trust engine
    ],
    "flags": [
        ("trustad.evaluation.flagging", "UnitFlags.columns"),  # attack flags beyond entropy
        ("trustad.evaluation.flagging", "UnitFlags.gate"),  # the gate flag of every unit
        ("trustad.model.trust", "TrustEngine.fit"),  # after: calibrators, conformal, flags
        ("trustad.model.trust", "TrustEngine.flag_values"),
    ],
    "writing": [
        ("trustad.protocol", "ResultStore.add"),
        ("trustad.protocol", "ResultStore.clean_scores"),  # before: clean scores from the store
        ("trustad.evaluation.store", "ResultStore.add"),
        ("trustad.evaluation.rows", "score_rows"),
        ("trustad.evaluation.examples", "save_examples"),
    ],
}
ORDER = [*PHASES, "other"]


class PhaseClock:
    """Exclusive wall time per phase on the main thread: a stack of running phases, the
    innermost one takes the time."""

    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        self.seconds = {name: 0.0 for name in ORDER}
        self.calls = {name: 0 for name in ORDER}
        self.stack: list[list[Any]] = []  # [phase, start]
        self.sync = sync
        self.main = threading.get_ident()

    def timed(self, phase: str, fn: Callable) -> Callable:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() != self.main:
                return fn(*args, **kwargs)
            self._switch()
            self.stack.append([phase, time.perf_counter()])
            self.calls[phase] += 1
            try:
                return fn(*args, **kwargs)
            finally:
                self._switch()
                self.stack.pop()

        wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
        wrapper.__name__ = getattr(fn, "__name__", "timed")
        return wrapper

    def _switch(self) -> None:
        """Close the running phase's interval (and restart it: the caller pushes or pops)."""
        if self.sync is not None:
            self.sync()
        now = time.perf_counter()
        if self.stack:
            top = self.stack[-1]
            self.seconds[top[0]] += now - top[1]
            top[1] = now
        if len(self.stack) > 1:
            self.stack[-2][1] = now

    def install(self) -> list[str]:
        """Wrap every listed function found; returns the names found. A module-level
        function is replaced in every trustad module that holds it (``from x import f``)."""
        found = []
        modules = [m for n, m in sys.modules.items() if n.startswith("trustad") and m]
        for phase, names in PHASES.items():
            for module_name, qualname in names:
                module = sys.modules.get(module_name)
                if module is None:
                    continue
                owner: Any = module
                *path, attr = qualname.split(".")
                for part in path:
                    owner = getattr(owner, part, None)
                original = getattr(owner, attr, None) if owner is not None else None
                if original is None or not callable(original):
                    continue
                wrapped = self.timed(phase, original)
                if path:
                    setattr(owner, attr, wrapped)
                else:
                    for m in modules:
                        for key, value in list(vars(m).items()):
                            if value is original:
                                setattr(m, key, wrapped)
                found.append(f"{module_name}.{qualname}")
        return found


def tiny_vit(seed: int = 0) -> DinoVisionTransformer:
    """A small DINOv2-shaped ViT with random weights, frozen (the tests' recipe)."""
    gen = torch.Generator().manual_seed(seed)
    model = DinoVisionTransformer(ViTConfig(embed_dim=32, depth=2, num_heads=2, img_size=56))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma") or ("norm" in name and name.endswith("weight")):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model.eval().requires_grad_(False)


class BusySampler:
    """How busy the GPU is during the grid: its utilisation (the share of time a kernel ran,
    as the driver reports it) sampled every ``interval`` seconds in a background thread,
    through NVML (torch.cuda.utilization) or else nvidia-smi. Nothing on other devices."""

    def __init__(self, device: torch.device, interval: float = 0.2) -> None:
        self.device, self.interval = device, interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def read(self) -> float | None:
        index = self.device.index or 0
        try:
            return float(torch.cuda.utilization(index))
        except Exception:  # no NVML bindings: ask nvidia-smi
            pass
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                 "-i", str(index)],
                capture_output=True, text=True, timeout=5, check=True,
            ).stdout  # fmt: skip
            return float(out.strip().splitlines()[0])
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            return None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            value = self.read()
            if value is not None:
                self.samples.append(value)

    def __enter__(self) -> BusySampler:
        if self.device.type == "cuda":
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def summary(self) -> str | None:
        if self.device.type != "cuda":
            return None
        if not self.samples:
            return "GPU busy: not measured (neither NVML nor nvidia-smi answered)"
        mean = sum(self.samples) / len(self.samples)
        return f"GPU busy: {mean:.0f}% of the grid's time ({len(self.samples)} samples)"


def device_of(name: str) -> torch.device:
    try:
        from trustad.backbone.runtime import resolve_device
    except ImportError:  # before --device auto existed
        if name == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(name)
    return resolve_device(name)


def dataset(folder: Path, size: int, per_category: int) -> tuple[Path, int]:
    """The cached synthetic set for these sizes (made once, then reused as it is, whichever
    version of the code runs) and its number of test images."""
    good = per_category // 2
    root = folder / f"synthetic-{size}px-{per_category}test"
    if not (root / "dataset.json").is_file():
        make_synthetic_dataset(
            root, n_train=16, n_test_good=good, n_test_defect=per_category - good, size=size
        )
    n_test = sum(1 for p in root.glob("*/test/*/*.png"))
    return root, n_test


def settings_for(args: argparse.Namespace, root: Path, warm_up: bool = False) -> Any:
    """The grid's settings; ``warm_up``: its first unit only (one category, shot, seed)."""
    values = dict(
        dataset="mvtec",
        root=str(root),
        categories=sorted(p.name for p in root.iterdir() if p.is_dir())[:1] if warm_up else None,
        shots=[min(args.shots)] if warm_up else sorted(set(args.shots)),
        seeds=1 if warm_up else args.seeds,
        resolution=args.resolution,
        attacks=["fgsm"],
        eps=[8 / 255],
        pixel_metrics=not args.no_pixel_metrics,
        batch_size=args.batch_size,
    )
    names = {f.name for f in dataclasses.fields(EvaluationSettings)}
    if args.no_flags and "flags" in names:
        values["flags"] = ["none"]
    if args.no_flags and "gate_flag" in names:
        values["gate_flag"] = "none"
    if "tf32" in names:
        values["tf32"] = args.tf32
    elif args.tf32:  # a version without the setting: set torch's flags directly
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    return EvaluationSettings(**values)


def table(seconds: dict[str, float], total: float, n_test: int, base: dict[str, Any] | None) -> str:
    head = f"{'phase':<12} {'s total':>9} {'s/image':>9} {'share':>6}"
    head += f" {'before':>9} {'x less':>7}" if base else ""
    lines = [head]
    rows = [*((p, seconds[p]) for p in ORDER), ("total", total)]
    rows.append(("non-backbone", total - seconds["backbone"]))
    for name, sec in rows:
        line = f"{name:<12} {sec:9.2f} {sec / n_test:9.4f} {sec / total:6.1%}"
        if base:
            before = base["per_image"].get(name, 0.0)  # a phase it did not have: 0
            ratio = f"{before / (sec / n_test):7.1f}" if sec > 0 else f"{'-':>7}"
            line += f" {before:9.4f} {ratio}"
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", type=Path, required=True, help="folder for the cached data set")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--resolution", type=int, default=448)
    ap.add_argument("--size", type=int, default=1024, help="image edge in pixels")
    ap.add_argument("--test-per-category", type=int, default=40)
    ap.add_argument("--shots", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--tiny", action="store_true", help="a tiny random ViT, not DINOv2")
    ap.add_argument("--backbone", default="dinov2_vits14")
    ap.add_argument("--weights", default=None, help="weights file (default: the usual lookup)")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 on CUDA")
    ap.add_argument("--no-pixel-metrics", action="store_true")
    ap.add_argument(
        "--no-flags",
        action="store_true",
        help="no attack flags besides the entropy and no gate flag (as before)",
    )
    ap.add_argument("--no-sync", action="store_true", help="no device syncs at phase bounds")
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="cProfile: top N")
    ap.add_argument("--out", type=Path, default=None, help="run folder (default: temporary)")
    ap.add_argument("--save", type=Path, default=None, help="write the figures as JSON")
    ap.add_argument("--baseline", type=Path, default=None, help="figures saved by --save")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = device_of(args.device)
    t0 = time.perf_counter()
    root, n_test = dataset(args.data, args.size, args.test_per_category)
    print(f"data: {root} ({n_test} test images), ready in {time.perf_counter() - t0:.1f} s")
    if args.tiny:
        backbone = tiny_vit().to(device)
    else:
        from trustad.backbone import load_backbone

        backbone = load_backbone(args.backbone, args.weights, device)
    settings = settings_for(args, root)
    sync = torch.cuda.synchronize if device.type == "cuda" and not args.no_sync else None
    clock = PhaseClock(sync)
    found = clock.install()
    print(f"trustad from {Path(trustad.__file__).parent}; runner {Evaluation.__module__}")
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs before the run")
    print(f"timed: {len(found)} functions")

    with tempfile.TemporaryDirectory() as tmp:
        # Untimed: what a process does once (imports torch and scikit-learn make on first
        # use, kernels a GPU compiles) is not charged to the grid.
        Evaluation(
            settings_for(args, root, warm_up=True), backbone, Path(tmp) / "warm-up", progress=False
        ).run()
        clock.seconds, clock.calls = dict.fromkeys(ORDER, 0.0), dict.fromkeys(ORDER, 0)
        out = args.out or Path(tmp) / "run"
        run = Evaluation(settings, backbone, out, progress=False)
        profiler = cProfile.Profile() if args.profile else None
        start = time.perf_counter()
        if profiler:
            profiler.enable()
        with BusySampler(device) as busy:
            rows = run.run()
            if sync:
                sync()
        if profiler:
            profiler.disable()
        total = time.perf_counter() - start
        load = os.getloadavg()[0]
    if getattr(run, "failures", None):
        raise SystemExit(f"categories failed: {run.failures}")
    seconds = dict(clock.seconds)
    seconds["other"] = total - sum(v for k, v in seconds.items() if k != "other")
    print(
        f"\n{len(rows)} result rows; shots {settings.shots} x {settings.seeds} seeds x "
        f"{len(settings.conditions())} conditions; {n_test} test images at {args.size} px, "
        f"resolution {args.resolution}{', tiny ViT' if args.tiny else ''}; "
        f"load average {load:.1f} after it"
    )
    base = json.loads(args.baseline.read_text()) if args.baseline else None
    print(table(seconds, total, n_test, base))
    if busy.summary():
        print(busy.summary())
    if args.save:
        per_image = {k: v / n_test for k, v in seconds.items()}
        per_image["total"] = total / n_test
        per_image["non-backbone"] = (total - seconds["backbone"]) / n_test
        args.save.write_text(
            json.dumps(dict(seconds=seconds, total=total, n_test=n_test, per_image=per_image))
        )
    if profiler:
        print()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile)


if __name__ == "__main__":
    main()
