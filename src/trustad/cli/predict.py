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
from ..model import (
    DEFAULT_MAP_SCALE,
    MAP_SCALES,
    FittedDetector,
    mask_png,
    prediction_overlay_png,
)
from .export import add_engine_option
from .inputs import add_verify_key, collect_images
from .options import add_device_option, add_setting_options, model_device
from .records import FORMATS, RecordWriter, format_for, resume


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="score images with a model file from `trustad fit`",
        description="Writes one record per image, as a JSON line or a CSV row (path, score, "
        "probability, probability_interval, p_value, decision, entropy, flag, flag_reason, "
        "gated_probability; error for a file that cannot be read). Exits with status 1 when "
        "any image failed. Rerunning with the same --out skips images already written.",
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
        help="write heatmap overlay PNGs (colour bar, score, decision, outline of the "
        "anomalous region) as DIR/<path below the inputs' common folder>_map.png, e.g. "
        "sub/ok.png -> DIR/sub/ok.png_map.png (default: none)",
    )
    p.add_argument(
        "--masks",
        default=None,
        metavar="DIR",
        help="write binary masks of the anomalous region (8-bit PNG at the image's size, "
        "255 anomalous) as DIR/<path>_mask.png; needs a model fitted on two or more "
        "normal images or with normal calibration images (its pixel threshold) (default: "
        "none)",
    )
    p.add_argument(
        "--map-scale",
        choices=MAP_SCALES,
        default=DEFAULT_MAP_SCALE,
        help="colour scale of the overlays: 'normal' runs from the median to the largest "
        "patch distance of the model's normal images (normal calibration images and the "
        "support images scored leave-one-out), the same for every image (red means beyond "
        "anything normal; each image's own range when the model has none); 'image' runs "
        "from each image's own minimum to its maximum (default: %(default)s)",
    )
    add_setting_options(p, ["batch_size", "weights"])
    add_device_option(p)
    add_engine_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    add_verify_key(p)
    p.set_defaults(func=run)


def _key(path: str | Path) -> str:
    return os.path.abspath(path)


def output_paths(images: list[Path], folders: dict[str, Path]) -> dict[str, dict[Path, Path]]:
    """Where each image's outputs go, by kind ("map", "mask": the folder given for it): its
    path below the images' common folder, mirrored under the folder, with its whole name
    kept and ``_<kind>.png`` added (``sub/ok.png`` -> ``sub/ok.png_map.png``), so that
    ``ok.png`` and ``ok.bmp`` stay apart. Checked before anything is written: a ValueError
    names the images whose outputs would share a name (compared as a file system that
    ignores case would), an input inside an output folder (an output could
    overwrite it, and a later run would read the outputs as images), and an output name
    taken by a folder."""
    resolved = {p: p.resolve() for p in images if p.exists()}
    if not resolved or not folders:
        return {kind: {} for kind in folders}
    root = Path(os.path.commonpath([r.parent for r in resolved.values()]))
    out = {
        kind: {
            img: folder / r.parent.relative_to(root) / f"{r.name}_{kind}.png"
            for img, r in resolved.items()
        }
        for kind, folder in folders.items()
    }
    for kind, folder in folders.items():
        inside = [img for img, r in resolved.items() if r.is_relative_to(folder.resolve())]
        if inside:
            raise ValueError(
                f"{inside[0]} lies in the --{kind}s folder {folder}: earlier outputs would be "
                "read as images; give a folder apart from the images"
            )
    taken: dict[str, Path] = {}
    for kind, dests in out.items():
        for img, dest in dests.items():
            key = str(dest.resolve()).casefold()
            if key in taken:
                raise ValueError(
                    f"{img} and {taken[key]} would both write {dest}: give them distinct "
                    "names (they differ only in letter case) or predict them separately"
                )
            if dest.is_dir():
                raise ValueError(f"the {kind} of {img} would go to {dest}, which is a folder")
            taken[key] = img
    return out


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
    outputs: dict[str, dict[Path, Path]],
    progress: Progress,
    scale: str = DEFAULT_MAP_SCALE,
) -> list[dict[str, Any]]:
    """Predict each path, writing one JSON line per image as soon as it is known, and its
    overlay and mask where ``outputs`` (from ``output_paths``) has their kind."""
    records = []
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
            preds = model.predict_from_distances(feats, dists, sizes, bool(outputs), tensors)
            for i, rgb, pred in zip(good, rgbs, preds):
                rec = {"path": str(chunk[i]), **pred.to_dict()}
                for kind, dests in outputs.items():
                    dest = dests[chunk[i]]
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    if kind == "map":
                        dest.write_bytes(prediction_overlay_png(rgb, pred, model, scale))
                    else:
                        dest.write_bytes(mask_png(pred.anomaly_map, model.pixel_threshold_))
                    rec[kind] = str(dest)
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
    folders = {kind: Path(d) for kind, d in (("map", args.maps), ("mask", args.masks)) if d}
    # Named from all the inputs, so that a resumed run puts its files where the first did.
    outputs = output_paths(paths, folders)
    model = load_model(
        args.model,
        args.engine,
        weights=args.weights,
        device=model_device(args.device, args.model),
        batch_size=args.batch_size,
        verify_key=args.verify_key,
    )
    if "mask" in folders and model.pixel_threshold_ is None:
        raise ValueError(
            f"{args.model} has no pixel threshold for masks: fit it on two or more --normal "
            "images, or with normal calibration images (--calibration)"
        )
    out = Path(args.out) if args.out else None
    fmt = format_for(out, args.format)
    done = resume(out, fmt, _key) if out else set()
    todo = [p for p in paths if _key(p) not in done]
    progress = Progress(len(todo), not args.quiet)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        header = not out.is_file() or out.stat().st_size == 0
        with open(out, "a", newline="") as sink:
            writer = RecordWriter(sink, fmt, header)
            records = predict_paths(model, todo, writer, outputs, progress, args.map_scale)
    else:
        writer = RecordWriter(sys.stdout, fmt)
        records = predict_paths(model, todo, writer, outputs, progress, args.map_scale)
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
