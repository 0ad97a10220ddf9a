"""CPU inference engines side by side: latency, throughput and parity with torch fp32.

For each resolution: fit a model on one synthetic part (rotations, as `trustad fit`) with
a calibration set, export it to ONNX, then time each engine's work from preprocessed
images to patch-distance grids (backbone, 1-NN distances, background mask where asked):
torch fp32, torch bf16 (autocast; only where the CPU has native bfloat16), onnxruntime and
OpenVINO (fp32, and bf16 as the opt-in precision), at batch 1 and 8: p50 / p95 seconds per
call and images per second at the p50. Then the parity of each engine's predictions (image
score, anomaly map) with torch fp32, on synthetic parts and on photographs (scikit-image's
brick, grass, gravel). Real DINOv2 ViT-S/14 weights (``trustad.load_backbone()``).

    nice -n -5 python benchmarks/engines.py --sizes 224 448 --repeats 7 --out benchmarks/results/engines.md
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from trustad import load_backbone
from trustad.engines.export import export_model
from trustad.engines.parity import changes, keeps_parity, photo_images, synthetic_images
from trustad.engines.runners import load_exported
from trustad.model import FittedDetector


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def native_bf16() -> bool:
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def fitted(size: int) -> FittedDetector:
    """One clean support image, calibrated on synthetic parts (clean and defective)."""
    support = synthetic_images(size, per_texture=1, seed=1)[:1]
    cal = synthetic_images(size, per_texture=3, seed=2)
    labels = [0 if i % 3 == 0 else 1 for i in range(len(cal))]
    model = FittedDetector(load_backbone(), resolution=size, conformal_alpha=0.2)
    return model.fit(support, cal, labels)


def timings(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """p50 and p95 seconds of ``fn`` over ``repeats`` calls after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.percentile(times, 50)), float(np.percentile(times, 95))


def engines(model: FittedDetector, onnx_path: Path) -> dict[str, tuple[FittedDetector, bool]]:
    """Name -> (model scoring through that engine, whether torch bf16 autocast is on)."""
    out = {"torch fp32": (model, False)}
    if native_bf16():
        out["torch bf16"] = (model, True)
    out["onnxruntime fp32"] = (load_exported(onnx_path, "onnx"), False)
    out["openvino fp32"] = (load_exported(onnx_path, "openvino"), False)
    out["openvino bf16"] = (load_exported(onnx_path, "openvino", precision="bf16"), False)
    return out


def measure(size: int, repeats: int, batches: list[int]) -> list[dict]:
    model = fitted(size)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_model(model, Path(tmp) / "m.onnx")
        images = {
            "synthetic": synthetic_images(size, per_texture=2, seed=3),
            "photos": photo_images((size, size)),
        }
        inputs = model.detector.runtime.preprocess(images["synthetic"] * 2)[0]
        reference = {name: model.predict(imgs) for name, imgs in images.items()}
        for name, (engined, bf16) in engines(model, onnx_path).items():
            engined.detector.runtime.features_bf16 = bf16
            row = {"size": size, "engine": name}
            for batch in batches:
                engined.detector.runtime.batch_size = batch
                p50, p95 = timings(lambda b=batch, m=engined: m.engine.run(inputs[:b]), repeats)
                row[batch] = (p50, p95, batch / p50)
                print(
                    f"{size} px {name} batch {batch}: p50 {p50:.3f} s p95 {p95:.3f} s", flush=True
                )
            for set_name, imgs in images.items():
                row[set_name] = changes(reference[set_name], engined.predict(imgs))
            engined.detector.runtime.features_bf16 = False
            rows.append(row)
    return rows


def table(rows: list[dict], batches: list[int]) -> str:
    head = ["px", "engine"]
    for b in batches:
        head += [f"b{b} p50 s", f"b{b} p95 s", f"b{b} img/s"]
    head += ["score change (synthetic / photos)", "map change (synthetic / photos)", "fp32 parity"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r["size"]), r["engine"]]
        for b in batches:
            p50, p95, rate = r[b]
            cells += [f"{p50:.3f}", f"{p95:.3f}", f"{rate:.2f}"]
        syn, pho = r["synthetic"], r["photos"]
        cells += [
            f"{syn['score']:.1e} / {pho['score']:.1e}",
            f"{syn['map']:.1e} / {pho['map']:.1e}",
            "yes" if keeps_parity(syn) and keeps_parity(pho) else "no",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 448])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per cell")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--out", type=Path, default=None, help="Markdown file to write")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [row for size in args.sizes for row in measure(size, args.repeats, args.batches)]
    report = "\n".join(
        [
            f"CPU: {cpu_model()}, {torch.get_num_threads()} torch threads; native bf16: "
            f"{native_bf16()}; torch {torch.__version__}",
            f"Command: `{shlex.join(['python', *sys.argv])}`",
            "",
            table(rows, args.batches),
        ]
    )
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report + "\n")


if __name__ == "__main__":
    main()
