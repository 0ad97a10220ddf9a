"""Reading checkpoints and loading them strictly into a DINOv2.

Reads an official ``.pth`` (``torch.load(weights_only=True)``) or a ``.safetensors`` file,
strips training wrappers, renames Hugging Face ``Dinov2Model`` tensors to the official
names, and loads strictly: every missing, unexpected, misshapen or non-finite tensor is a
``ValueError`` that names the file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..dinov2 import CONFIGS, DEFAULT_BACKBONE, build_model
from .provenance import (
    OFFICIAL_FILES,
    check_name,
    error_summary,
    sha256_file,
    weights_label,
)

_WRAPPERS = ("model", "state_dict", "teacher")
_PREFIXES = ("module.", "backbone.")


def _unwrap(obj: Any) -> Any:
    """Strip {"model": ...}-style wrappers and "module."/"backbone." prefixes."""
    while isinstance(obj, dict):
        inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if isinstance(obj, dict) and obj:
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if all(isinstance(k, str) and k.startswith(prefix) for k in obj):
                    obj = {k[len(prefix) :]: v for k, v in obj.items()}
                    changed = True
    return obj


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Tensors of an official ``.pth`` or a ``.safetensors`` file, on the CPU.

    Wrapped checkpoints are unwrapped and Hugging Face ``Dinov2Model`` names are converted
    to the official ones. Raises ``FileNotFoundError`` or a ``ValueError`` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the file is empty")
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors starts with an 8-byte header length and then the JSON header's "{".
    is_safetensors = path.suffix == ".safetensors" or head[8:9] == b"{"
    try:
        if is_safetensors:
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        kind = "safetensors" if is_safetensors else "PyTorch checkpoint"
        raise ValueError(
            f"{path}: cannot be read as a {kind} (truncated, corrupt or another format): "
            f"{error_summary(exc)}"
        ) from exc
    obj = _unwrap(obj)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad:
        raise ValueError(f"{path}: entries that are not tensors: {_few(bad)}")
    if any(k.startswith("embeddings.patch_embeddings.") for k in obj):
        obj = hf_to_official(obj)
    return obj


def _few(names: list[str], n: int = 5) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" (and {len(names) - n} more)" if len(names) > n else "")


def _model_name(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return next((n for n, c in CONFIGS.items() if c == config), "given")


def _guess_backbone(state: dict[str, Tensor]) -> str | None:
    """The CONFIGS entry whose shape the checkpoint has, for a helpful error message."""
    cls = state.get("cls_token")
    if cls is None:
        return None
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    regs = state.get("register_tokens")
    nreg = 0 if regs is None else regs.shape[1]
    for n, c in CONFIGS.items():
        if (c.embed_dim, c.depth, c.num_register_tokens) == (cls.shape[-1], depth, nreg):
            return n
    return None


def load_weights_into(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load ``path`` into ``model`` strictly; every mismatch is a ``ValueError`` naming it."""
    path = Path(path)
    state = read_state_dict(path)
    expected = model.state_dict()
    mname = _model_name(model)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} has shape {list(state[k].shape)}, the {mname} model expects {list(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensors: {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} tensors: {_few(unexpected)}")
    if wrong:
        problems.append(
            "; ".join(wrong[:3]) + (f" (and {len(wrong) - 3} more)" if len(wrong) > 3 else "")
        )
    if problems:
        guess = _guess_backbone(state)
        hint = f" (the file looks like {guess})" if guess and guess != mname else ""
        raise ValueError(f"{path}: does not fit the {mname} model{hint}: " + "; ".join(problems))
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{path}: non-finite values (corrupt file?) in {_few(bad)}")
    model.load_state_dict(state, strict=True)
    return model


def verify(path: str | os.PathLike, name: str = DEFAULT_BACKBONE) -> dict[str, Any]:
    """Load ``path`` strictly into ``name`` and report its hash, size and parameter count."""
    check_name(name)
    path = Path(path)
    model = build_model(name)
    load_weights_into(model, path)
    sha = sha256_file(path)
    known = OFFICIAL_FILES.get(name)
    return {
        "path": str(path),
        "backbone": name,
        "size_bytes": path.stat().st_size,
        "sha256": sha,
        "official_sha256": known[1] if known else None,
        "matches_official": (sha == known[1]) if known else None,
        "num_params": sum(p.numel() for p in model.parameters()),
        "label": weights_label(name, path, sha, "explicit"),
    }


# ----------------------------------------------------------------------------- Hugging Face names


def _hf_key(key: str) -> str | None:
    """The official name of one Hugging Face ``Dinov2Model`` tensor (None for q/k/v)."""
    fixed = {
        "embeddings.cls_token": "cls_token",
        "embeddings.mask_token": "mask_token",
        "embeddings.position_embeddings": "pos_embed",
        "embeddings.register_tokens": "register_tokens",
        "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
        "layernorm.weight": "norm.weight",
        "layernorm.bias": "norm.bias",
    }
    if key in fixed:
        return fixed[key]
    m = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)", key)
    if not m:
        return key
    i, rest = m.groups()
    for hf, off in (
        ("attention.output.dense.", "attn.proj."),
        ("layer_scale1.lambda1", "ls1.gamma"),
        ("layer_scale2.lambda1", "ls2.gamma"),
        ("mlp.weights_in.", "mlp.w12."),
        ("mlp.weights_out.", "mlp.w3."),
    ):
        if rest.startswith(hf):
            rest = off + rest[len(hf) :]
            break
    if rest.startswith("attention.attention."):
        return None  # query/key/value are merged into qkv by the caller
    return f"blocks.{i}.{rest}"


def hf_to_official(hf: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename a Hugging Face ``Dinov2Model`` state dict to the official DINOv2 names."""
    out: dict[str, Tensor] = {}
    for key, value in hf.items():
        new = _hf_key(key)
        if new is not None:
            out[new] = value
    layers = sorted({int(m.group(1)) for k in hf if (m := re.match(r"encoder\.layer\.(\d+)\.", k))})
    for i in layers:
        pre = f"encoder.layer.{i}.attention.attention."
        for part in ("weight", "bias"):
            qkv = [hf.get(f"{pre}{p}.{part}") for p in ("query", "key", "value")]
            if all(t is not None for t in qkv):
                # The official fused layer's output rows are ordered q, k, v.
                out[f"blocks.{i}.attn.qkv.{part}"] = torch.cat(qkv, dim=0)
    return out
