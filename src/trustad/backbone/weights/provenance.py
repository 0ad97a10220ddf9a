"""What a weights file is and where it lives: names, cache places, sha256, labels.

Also the one way files are written into the cache (``write_atomic``), so that a download
or a conversion that fails half-way never leaves a file that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..dinov2 import CONFIGS

# Official files with a published size and sha256: name -> (bytes, sha256).
OFFICIAL_FILES: dict[str, tuple[int, str]] = {
    "dinov2_vits14": (
        88_283_115,
        "b938bf1bc15cd2ec0feacfe3a1bb553fe8ea9ca46a7e1d8d00217f29aef60cd9",
    ),
}

T = TypeVar("T")


@dataclass(frozen=True)
class WeightsSource:
    """Where a backbone's weights came from, for provenance records."""

    name: str
    path: Path
    origin: str
    label: str
    sha256: str

    @classmethod
    def from_file(cls, name: str, path: Path, origin: str) -> WeightsSource:
        """Hash ``path`` and label it as weights for backbone ``name`` found via ``origin``."""
        sha = sha256_file(path)
        return cls(name, path, origin, weights_label(name, path, sha, origin), sha)

    def to_dict(self) -> dict[str, str]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


# ----------------------------------------------------------------------------- names and places


def trustad_home() -> Path:
    return Path(os.environ.get("TRUSTAD_HOME") or "~/.cache/trustad").expanduser()


def weights_dir() -> Path:
    return trustad_home() / "weights"


def offline() -> bool:
    return os.environ.get("TRUSTAD_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def check_name(name: str) -> None:
    """Raise a ``ValueError`` listing the known backbones unless ``name`` is one of them."""
    if name not in CONFIGS:
        raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(CONFIGS)}")


def base_name(name: str) -> str:
    """``dinov2_vitb14_reg`` -> ``dinov2_vitb14`` (the folder of the official files)."""
    return name[: -len("_reg")] if name.endswith("_reg") else name


def official_filename(name: str) -> str:
    """``dinov2_vits14_pretrain.pth``; register models are ``..._reg4_pretrain.pth``."""
    suffix = "_reg4_pretrain.pth" if name.endswith("_reg") else "_pretrain.pth"
    return base_name(name) + suffix


def pretty_name(name: str) -> str:
    """``dinov2_vits14`` -> ``DINOv2 ViT-S/14``."""
    m = re.fullmatch(r"dinov2_vit([sblg])14(_reg)?", name)
    if not m:
        return name
    return f"DINOv2 ViT-{m.group(1).upper()}/14" + (" with registers" if m.group(2) else "")


# ----------------------------------------------------------------------------- hashes and labels

_HASHES: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of a file, remembered per (path, size, mtime) since files are large."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def read_sidecar(path: Path) -> dict[str, Any] | None:
    """The JSON next to a converted weights file (same name, ``.json``), or None."""
    try:
        return json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None


def weights_label(name: str, path: Path, sha: str, origin: str) -> str:
    """A human description of the file: official release, a named conversion, or the user's."""
    known = OFFICIAL_FILES.get(name)
    pretty = pretty_name(name)
    if known and sha == known[1]:
        return f"official {pretty} release"
    side = read_sidecar(path)
    if side and isinstance(side.get("label"), str):
        return side["label"]
    if origin in ("cache", "torch-hub", "download") and path.name.startswith(
        official_filename(name).removesuffix(".pth")
    ):
        if known:
            return f"{pretty} under the official file name, but its sha256 differs from the official release"
        return f"official {pretty} release (no published sha256 to check against)"
    return f"user-supplied {pretty} weights"


# ----------------------------------------------------------------------------- files and messages


def write_atomic(dest: Path, write: Callable[[Path], T]) -> T:
    """Call ``write`` on a temporary file next to ``dest``, then rename it to ``dest``.

    Whatever ``write`` raises (a failed check included) removes the temporary file, so
    ``dest`` is either absent, the previous file, or complete. Returns ``write``'s result.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        result = write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes files private; a cache is shared
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return result


def error_summary(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, cut to ``limit`` characters."""
    text = str(exc).strip().splitlines()
    msg = text[0] if text else type(exc).__name__
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."
