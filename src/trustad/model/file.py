"""The trustad model file: one safetensors file, never unpickled.

Layout: the tensors (memory bank, conformal calibration scores) in safetensors; in the
safetensors metadata (string -> string):

- ``format``: ``"trustad-model"``;
- ``format_version``: an integer as text (``FORMAT_VERSION``);
- ``settings``: JSON with everything else (settings, calibrator parameters, thresholds,
  provenance);
- ``tensors_sha256`` / ``settings_sha256``: hex sha256 of the tensor contents (every
  tensor's name, dtype, shape and bytes, in name order) and of the settings JSON text;
- ``signature_hmac_sha256`` (optional): HMAC-SHA256 with a secret key over the format,
  version and both hashes. The hashes detect damage; only the signature detects an edit
  whose author recomputed them.

Reading checks, in order: the file is safetensors at all (a pickle or zip renamed to
``.safetensors`` is refused before anything is parsed), it is a trustad model of a format
version this code knows, both hashes match, the signature matches when a key to verify it
is given, and the settings hold every field with its type and range
(``trustad.model.schema``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import Tensor

from .schema import KNOWN_FORMAT_VERSIONS, settings_problem

FORMAT = "trustad-model"
FORMAT_VERSION = 1
SIGNATURE = "signature_hmac_sha256"
MIN_KEY_BYTES = 16
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


def read_key(path: str | os.PathLike) -> bytes:
    """The secret key in a key file (surrounding white space dropped, so that a key
    written as text with a final newline works); refused when missing or short."""
    path = Path(path)
    try:
        key = path.read_bytes().strip()
    except OSError as exc:
        raise OSError(exc.errno, f"cannot read key file {path}: {exc.strerror}") from None
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(
            f"key file {path} holds {len(key)} bytes; a signing key needs at least "
            f"{MIN_KEY_BYTES} (e.g. `openssl rand -hex 32 > {path.name}`)"
        )
    return key


def signature(key: bytes, metadata: Mapping[str, str]) -> str:
    """HMAC-SHA256 (hex) of what the file's hashes and format fix."""
    fields = ("format", "format_version", "settings_sha256", "tensors_sha256")
    message = "\n".join(f"{f}={metadata.get(f, '')}" for f in fields).encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def write_model_file(
    path: str | os.PathLike,
    tensors: Mapping[str, Tensor],
    settings: Mapping[str, Any],
    sign_key: bytes | None = None,
) -> Path:
    """Write ``tensors`` and ``settings`` (JSON-able) as a model file, signed with
    ``sign_key`` if given; returns its path.

    Written to a temporary name first, then renamed, so a crash leaves no half file (and
    a failed write no temporary one).
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
    if sign_key is not None:
        metadata[SIGNATURE] = signature(sign_key, metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    try:
        # Written by Python, not safetensors' save_file (which makes the file 0600): the
        # file gets the mode of the umask, so that a service running as another user can
        # read it. A leftover temporary file would keep its old mode: removed first.
        tmp.unlink(missing_ok=True)
        tmp.write_bytes(save(cpu, metadata=metadata))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def partial_path(path: Path) -> Path:
    """Where a model file is written before it is renamed into place."""
    return path.with_name(path.name + ".partial")


def check_writable(path: str | os.PathLike) -> Path:
    """Refuse, before any work, a model path that could not be written: an existing
    folder, or a folder that cannot be created or written in. A file is created and
    removed there: the only check that holds for root too (read-only mounts stop it)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"--out {path} is a folder; give the model file's name")
    if partial_path(path).is_dir():
        raise IsADirectoryError(
            f"--out {path}: {partial_path(path)}, where the file is written first, is a folder"
        )
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the first existing ancestor: the folders below it get made
    if not folder.is_dir():
        raise NotADirectoryError(f"--out {path}: {folder} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise PermissionError(
            f"--out {path}: cannot write in {folder} ({exc.strerror or exc})"
        ) from None
    return path


def _sniff(path: Path) -> None:
    """Refuse anything that is not a safetensors file before a parser sees it."""
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        raise ModelFileError(f"{path} is not a trustad model: only {size} bytes long")
    (header_len,) = struct.unpack("<Q", head[:8])
    if header_len <= min(MAX_HEADER_BYTES, size - 8) and head[8:9] == b"{":
        return  # the layout of safetensors (whose length can start with any byte)
    kind = ""
    if head[:1] == b"\x80":
        kind = " (it starts like a Python pickle)"
    elif head[:2] == b"PK":
        kind = " (it is a zip archive, e.g. a torch.save checkpoint)"
    raise ModelFileError(
        f"{path} is not a safetensors file{kind}; trustad model files are safetensors "
        "and are never unpickled"
    )


def read_model_file(
    path: str | os.PathLike, verify_key: bytes | None = None
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(tensors on the CPU, settings) of a model file, after every check (the signature
    only with ``verify_key``); else :class:`ModelFileError` saying which check failed."""
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
    if version not in KNOWN_FORMAT_VERSIONS:
        raise ModelFileError(
            f"{path}: format_version {version} is not a model format trustad ever wrote "
            f"(known: {', '.join(map(str, KNOWN_FORMAT_VERSIONS))})"
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
    if verify_key is not None:
        _verify(path, meta, verify_key)
    try:
        settings = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path}: the settings are not valid JSON: {exc}") from exc
    problem = settings_problem(settings, tensors)
    if problem:
        raise ModelFileError(f"{path}: not a valid trustad model: {problem}")
    settings["format_version"] = version
    return tensors, settings


def _verify(path: Path, meta: Mapping[str, str], key: bytes) -> None:
    recorded = meta.get(SIGNATURE)
    if recorded is None:
        raise ModelFileError(
            f"{path} is not signed, and a key to verify it was given; sign it with "
            "`trustad fit --sign-key FILE`"
        )
    if not hmac.compare_digest(recorded, signature(key, meta)):
        raise ModelFileError(
            f"{path}: the signature does not match the key; the file was edited after it "
            "was signed, or signed with another key"
        )
