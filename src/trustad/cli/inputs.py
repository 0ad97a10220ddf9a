"""Image inputs on the command line: files and folders, and labelled calibration folders."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ..data import IMAGE_EXTENSIONS
from ..images import ImageReadError, read_size
from ..model.file import read_key

NORMAL_FOLDER = "good"


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def collect_images(paths: Sequence[str | Path], missing_ok: bool = False) -> list[Path]:
    """Files as given, and the image files under each folder (recursive, sorted by path).

    A file named explicitly is kept whatever its extension, so that a bad input gets
    reported rather than silently skipped; inside folders only image extensions count.
    A path that does not exist raises FileNotFoundError, or with ``missing_ok`` is kept
    (for the caller to report along with the other inputs).
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and is_image_name(f))
        elif p.exists() or missing_ok:
            out.append(p)
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    return list(dict.fromkeys(out))


def check_images(paths: Sequence[Path], resolution: int, what: str) -> None:
    """Read every image's header (no pixels) as the model will, and refuse them all at once,
    each bad file named with its reason, before any work starts."""
    bad = []
    for path in paths:
        try:
            read_size(path, resolution=resolution)
        except ImageReadError as exc:
            bad.append(f"{path}: {exc.reason}")
    if bad:
        raise ValueError(
            f"{len(bad)} of {len(paths)} {what} image(s) cannot be used; fix or remove them: "
            + "; ".join(bad)
        )


def key_file(text: str) -> bytes:
    """The secret key of a --sign-key/--verify-key file, refused at parsing with the reason."""
    try:
        return read_key(text)
    except (ValueError, OSError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_verify_key(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--verify-key",
        metavar="FILE",
        type=key_file,
        default=None,
        help="refuse the model file unless it was signed with this key (`trustad fit "
        "--sign-key`) (default: any model file, signed or not)",
    )


def calibration_images(folder: str | Path) -> tuple[list[Path], list[int], str]:
    """(paths, labels, description) of a calibration folder.

    In the test layout (``good/`` plus one sub-folder per defect type) ``good/`` is normal
    (0) and every other sub-folder anomalous (1); a folder of images without ``good/`` is
    all normal.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"calibration folder not found: {root}")
    good = root / NORMAL_FOLDER
    if not good.is_dir():
        paths = collect_images([root])
        if not paths:
            raise ValueError(f"calibration folder {root} holds no images")
        return paths, [0] * len(paths), f"{len(paths)} normal images (no {NORMAL_FOLDER}/ folder)"
    paths, labels, kinds = collect_images([good]), [], []
    labels = [0] * len(paths)
    for sub in sorted(d for d in root.iterdir() if d.is_dir() and d.name != NORMAL_FOLDER):
        found = collect_images([sub])
        if found:
            paths += found
            labels += [1] * len(found)
            kinds.append(f"{sub.name}: {len(found)}")
    if not paths:
        raise ValueError(f"calibration folder {root} holds no images")
    n_good = labels.count(0)
    what = f"{n_good} normal ({NORMAL_FOLDER}/)"
    if kinds:
        what += f", {len(paths) - n_good} anomalous ({', '.join(kinds)})"
    return paths, labels, what
