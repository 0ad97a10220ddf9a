"""Image inputs on the command line: files and folders, and labelled calibration folders."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..data import IMAGE_EXTENSIONS

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
