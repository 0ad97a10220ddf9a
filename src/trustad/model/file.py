"""The trustad model file: one safetensors file, never unpickled.

Layout: the tensors (memory bank, conformal calibration scores) in safetensors; in the
safetensors metadata (string -> string):

- ``format``: ``"trustad-model"``;
- ``format_version``: an integer as text (``FORMAT_VERSION``);
- ``settings``: JSON with everything else (settings, calibrator parameters, thresholds,
  provenance);
- ``tensors_sha256`` / ``settings_sha256``: hex sha256 of the tensor contents (every
  tensor's name, dtype, shape and bytes, in name order) and of the settings JSON text.

Reading checks, in order: the file is safetensors at all (a pickle or zip renamed to
``.safetensors`` is refused before anything is parsed), it is a trustad model, its format
is not newer than this code, and both hashes match.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import Tensor

FORMAT = "trustad-model"
FORMAT_VERSION = 1
MODEL_SUFFIX = ".safetensors"
# Largest safetensors header accepted (the header is JSON; ours is a few KiB).
MAX_HEADER_BYTES = 64 << 20


class ModelFileError(ValueError):
    """A model file that trustad refuses to load; the message says which file and why."""


def tensors_digest(tensors: Mapping[str, Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and raw bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _text_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def write_model_file(
    path: str | os.PathLike, tensors: Mapping[str, Tensor], settings: Mapping[str, Any]
) -> Path:
    """Write ``tensors`` and ``settings`` (JSON-able) as a model file; returns its path.

    Written to a temporary name first, then renamed, so a crash leaves no half file.
    """
    path = Path(path)
    text = json.dumps(settings, sort_keys=True)
    cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "settings": text,
        "tensors_sha256": tensors_digest(cpu),
        "settings_sha256": _text_digest(text),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    # Written by Python, not safetensors' save_file (which makes the file 0600): the file
    # gets the mode of the umask, so that a service running as another user can read it.
    tmp.unlink(missing_ok=True)  # a leftover keeps its old mode
    tmp.write_bytes(save(cpu, metadata=metadata))
    os.replace(tmp, path)
    return path


def _sniff(path: Path) -> None:
    """Refuse anything that is not a safetensors file before a parser sees it."""
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
    kind = ""
    if head[:1] == b"\x80":
        kind = " (it starts like a Python pickle)"
    elif head[:2] == b"PK":
        kind = " (it is a zip archive, e.g. a torch.save checkpoint)"
    if len(head) < 9:
        raise ModelFileError(f"{path} is not a trustad model: only {size} bytes long")
    (header_len,) = struct.unpack("<Q", head[:8])
    if kind or header_len > min(MAX_HEADER_BYTES, size - 8) or head[8:9] != b"{":
        raise ModelFileError(
            f"{path} is not a safetensors file{kind}; trustad model files are safetensors "
            "and are never unpickled"
        )


def read_model_file(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(tensors on the CPU, settings) of a model file, after every check; else
    :class:`ModelFileError` saying which check failed."""
    path = Path(path)
    _sniff(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{path} is not a readable safetensors file: {exc}") from exc
    if meta.get("format") != FORMAT:
        raise ModelFileError(
            f"{path} is a safetensors file but not a trustad model (no format={FORMAT!r} in "
            "its metadata; backbone weights, for instance, are not a fitted model)"
        )
    try:
        version = int(meta.get("format_version", ""))
    except ValueError:
        raise ModelFileError(
            f"{path}: format_version {meta.get('format_version')!r} is not an integer"
        ) from None
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path} was written in model format {version}, newer than the {FORMAT_VERSION} "
            "this trustad reads; upgrade trustad to load it"
        )
    text = meta.get("settings", "")
    if meta.get("settings_sha256") != _text_digest(text):
        raise ModelFileError(
            f"{path}: the settings do not match their recorded sha256; the file was modified "
            "or damaged after it was written"
        )
    if meta.get("tensors_sha256") != tensors_digest(tensors):
        raise ModelFileError(
            f"{path}: the tensor contents do not match their recorded sha256; the file was "
            "modified or damaged after it was written"
        )
    try:
        settings = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path}: the settings are not valid JSON: {exc}") from exc
    settings["format_version"] = version
    return tensors, settings
