"""``trustad predict``: run a saved model on image files and folders, one record (a JSON
line or a CSV row) each."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..backbone.preprocess import load_rgb8
from ..engines.runners import load_model
from ..model import FittedDetector, overlay_png
from .export import add_engine_option
from .inputs import add_verify_key, collect_images
from .options import add_device_option, add_setting_options, model_device
from .records import FORMATS, RecordWriter, format_for, resume


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="score images with a model file from `trustad fit`",
        description="Writes one record per image, as a JSON line or a CSV row (path, score, "
        "probability, p_value, decision, entropy, flag, gated_probability; error for a file "
        "that cannot be read). Exits with status 1 when any image failed. Rerunning with the "
        "same --out skips images already written.",
    )
    p.add_argument(
        "model", help="model file written by `trustad fit`, or a file from `trustad export`"
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    p.add_argument("--out", default=None, help="results file (default: standard output)")
    p.add_argument(
        "--format",
        choices=FORMATS,
        default=None,
        help="jsonl: one JSON object per line; csv: a header row, then one row per image "
        "(default: csv when --out ends in .csv, else jsonl)",
    )
    p.add_argument(
        "--maps",
        default=None,
        metavar="DIR",
        help="write heatmap overlay PNGs under DIR (default: none)",
    )
    add_setting_options(p, ["batch_size", "weights"])
    add_device_option(p)
    add_engine_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    add_verify_key(p)
    p.set_defaults(func=run)


def _key(path: str | Path) -> str:
    return os.path.abspath(path)


def map_paths(maps: Path, images: list[Path]) -> dict[Path, Path]:
    """Where each image's overlay goes: its path below the images' common folder,
    mirrored under ``maps``, as ``<stem>_map.png``."""
    resolved = [p.resolve() for p in images if p.exists()]
    if not resolved:
        return {}
    root = Path(os.path.commonpath([p.parent for p in resolved]))
    return {
        img: maps / img.resolve().parent.relative_to(root) / f"{img.stem}_map.png"
        for img in images
        if img.exists()
    }


class Progress:
    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.done = total, 0
        self.enabled = enabled and total > 0
        self.tty = sys.stderr.isatty()

    def step(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        if self.tty:
            width = 30
            filled = width * self.done // self.total
            bar = "#" * filled + "." * (width - filled)
            end = "\n" if self.done >= self.total else ""
            print(f"\rpredict [{bar}] {self.done}/{self.total}", end=end, file=sys.stderr)
        else:
            print(f"predict {self.done}/{self.total}", file=sys.stderr)


def _chunks(items: list[Path], n: int) -> Iterable[list[Path]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def predict_paths(
    model: FittedDetector,
    paths: list[Path],
    sink: RecordWriter,
    maps: Path | None,
    progress: Progress,
) -> list[dict[str, Any]]:
    """Predict each path, writing one record per image as soon as it is known."""
    records = []
    destinations = map_paths(maps, paths) if maps is not None else {}
    for chunk in _chunks(paths, model.detector.runtime.batch_size):
        found: dict[int, dict[str, Any]] = {}  # lines in input order within the chunk
        good, rgbs = [], []
        for i, path in enumerate(chunk):
            try:
                rgbs.append(load_rgb8(path, model.detector.resolution))
                good.append(i)
            except (ValueError, OSError) as exc:
                found[i] = {"path": str(path), "error": str(exc)}
        if good:
            tensors, _ = model.detector.runtime.preprocess(rgbs)
            feats, dists = model.engine.run(tensors)
            sizes = [r.size for r in rgbs]
            preds = model.predict_from_distances(feats, dists, sizes, maps is not None, tensors)
            for i, rgb, pred in zip(good, rgbs, preds):
                rec = {"path": str(chunk[i]), **pred.to_dict()}
                if maps is not None:
                    dest = destinations[chunk[i]]
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(overlay_png(rgb, pred.anomaly_map, model.map_range_))
                    rec["map"] = str(dest)
                found[i] = rec
        for i in sorted(found):
            records.append(found[i])
            sink.write(found[i])
        sink.flush()
        progress.step(len(chunk))
    return records


def run(args: argparse.Namespace) -> int:
    paths = collect_images(args.paths, missing_ok=True)
    if not paths:
        raise ValueError(f"no images found in {' '.join(args.paths)}")
    if args.out and Path(args.out).is_dir():
        raise IsADirectoryError(f"--out {args.out} is a folder; give the results file's name")
    model = load_model(
        args.model,
        args.engine,
        weights=args.weights,
        device=model_device(args.device, args.model),
        batch_size=args.batch_size,
        verify_key=args.verify_key,
    )
    out = Path(args.out) if args.out else None
    fmt = format_for(out, args.format)
    done = resume(out, fmt, _key) if out else set()
    todo = [p for p in paths if _key(p) not in done]
    maps = Path(args.maps) if args.maps else None
    progress = Progress(len(todo), not args.quiet)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        header = not out.is_file() or out.stat().st_size == 0
        with open(out, "a", newline="") as sink:
            records = predict_paths(model, todo, RecordWriter(sink, fmt, header), maps, progress)
    else:
        records = predict_paths(model, todo, RecordWriter(sys.stdout, fmt), maps, progress)
    failed = [r for r in records if "error" in r]
    ok = [r for r in records if "error" not in r]
    anomalous = sum(1 for r in ok if r["decision"])
    flagged = sum(1 for r in ok if r["flag"])
    skipped = len(paths) - len(todo)
    print(
        f"predicted {len(ok)} image(s): {anomalous} anomalous, {flagged} flagged, "
        f"{len(failed)} failed"
        + (f"; {skipped} skipped (already in {out})" if skipped else "")
        + (f"; results in {out}" if out else ""),
        file=sys.stderr,
    )
    for r in failed:
        print(f"  failed: {r['path']}: {r['error']}", file=sys.stderr)
    return 1 if failed else 0
