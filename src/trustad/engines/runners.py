"""Run an exported detector graph (``trustad.engines.export``) with onnxruntime or
OpenVINO, and load the file back as a ``FittedDetector`` that scores through it.

An ``.onnx`` file runs on either runtime, an OpenVINO ``.xml`` on OpenVINO. Both run in
float32 unless ``precision="bf16"`` is asked for (OpenVINO only: it would otherwise pick
bfloat16 by itself on CPUs that have it, and the scores would move).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..backbone.runtime import batches
from ..backbone.weights import WeightsSource
from ..detector import AnomalyDINO
from ..model import FittedDetector, ModelFileError
from ..model.fitted import BANK, CONFORMAL_SCORES
from .base import ENGINES
from .export import (
    EXPORT_FORMATS,
    FORMAT,
    FORMAT_VERSION,
    METADATA_KEYS,
    PRECISIONS,
    openvino_module,
)
from .graph import INPUT


def read_metadata(path: Path) -> tuple[dict[str, str], Tensor]:
    """(text metadata, memory bank) of an exported file, checked to be one."""
    if not path.is_file():
        raise FileNotFoundError(f"exported model not found: {path}")
    if path.suffix == ".onnx":
        import onnx
        from onnx import numpy_helper

        try:
            proto = onnx.load(str(path))
        except Exception as exc:  # protobuf's own parse errors, of several types
            raise ModelFileError(f"{path} is not a readable ONNX file: {exc}") from exc
        meta = {p.key: p.value for p in proto.metadata_props}
        found = [numpy_helper.to_array(t) for t in proto.graph.initializer if t.name == BANK]
    elif path.suffix == ".xml":
        model = openvino_module().Core().read_model(str(path))
        meta = {
            key: model.get_rt_info(["trustad", key]).astype(str)
            for key in METADATA_KEYS
            if model.has_rt_info(["trustad", key])
        }
        found = [
            op.get_data()
            for op in model.get_ordered_ops()
            if op.get_type_name() == "Constant" and op.get_friendly_name() == BANK
        ]
    else:
        raise ModelFileError(
            f"{path}: an exported model is an .onnx or OpenVINO .xml file, not {path.suffix!r}"
        )
    if meta.get("format") != FORMAT or not found:
        raise ModelFileError(f"{path} is not a model exported by `trustad export`")
    if int(meta.get("format_version", "0")) > FORMAT_VERSION:
        raise ModelFileError(f"{path}: exported by a newer trustad; upgrade trustad to load it")
    return meta, torch.from_numpy(np.array(found[0], dtype=np.float32))


class OnnxRuntimeRunner:
    """An ``.onnx`` graph in an onnxruntime session (CPU)."""

    name = "onnx"

    def __init__(self, path: Path, precision: str = "fp32") -> None:
        if precision != "fp32":
            raise ValueError("the onnx engine runs in fp32 only; bf16 needs --engine openvino")
        try:
            import onnxruntime
        except ImportError as exc:
            raise RuntimeError("onnxruntime is not installed: pip install 'trustad[onnx]'") from exc
        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(self, images: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {INPUT: images})


class OpenVinoRunner:
    """An ``.onnx`` or ``.xml`` graph compiled by OpenVINO for the CPU, at ``precision``."""

    name = "openvino"

    def __init__(self, path: Path, precision: str = "fp32") -> None:
        ov = openvino_module()
        hint = {"fp32": "f32", "bf16": "bf16"}[precision]
        self.compiled = ov.Core().compile_model(
            str(path), "CPU", {"INFERENCE_PRECISION_HINT": hint}
        )

    def run(self, images: np.ndarray) -> list[np.ndarray]:
        result = self.compiled(images)
        return [result[out] for out in self.compiled.outputs]


RUNNERS = {"onnx": OnnxRuntimeRunner, "openvino": OpenVinoRunner}


class GraphBackbone(nn.Module):
    """The graph's backbone part as a torch backbone (``patch_features``): for the flags
    that take features of transformed images. No parameters: it runs on the CPU."""

    def __init__(self, runner: Any, embed_dim: int, source: WeightsSource | None) -> None:
        super().__init__()
        self.runner = runner
        self.embed_dim = embed_dim
        self.weights_source = source

    def patch_features(self, x: Tensor) -> Tensor:
        return torch.from_numpy(self.runner.run(x.detach().float().cpu().numpy())[0])


class GraphEngine:
    """Features and distance grids from the graph's outputs, background-masked outside the
    graph for ``mask_test`` models (the mask is the detector's, from those features)."""

    def __init__(self, runner: Any, detector: AnomalyDINO, shape: Sequence[int]) -> None:
        self.runner = runner
        self.name = runner.name
        self.detector = detector
        self.shape = tuple(shape)

    def run(self, images: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        features: list[Tensor] = []
        distances: list[Tensor] = []
        for _, batch in batches(images, self.detector.runtime.batch_size):
            if tuple(batch.shape[1:]) != self.shape:
                raise ValueError(
                    f"this exported model takes preprocessed images of shape {self.shape} "
                    f"(channels, height, width), got {tuple(batch.shape[1:])}: the graph's "
                    "size is fixed at export (trustad export --image-size WIDTHxHEIGHT)"
                )
            feats, dists, _ = self.runner.run(batch.float().numpy())
            feats, dists = list(torch.from_numpy(feats)), list(torch.from_numpy(dists))
            masks = self.detector.foreground(feats)
            features += feats
            distances += dists if masks is None else [d * m for d, m in zip(dists, masks)]
        return features, distances


def default_engine(path: Path) -> str:
    """The fastest installed engine that keeps fp32 parity and reads ``path``."""
    if path.suffix == ".xml":
        return "openvino"
    try:
        openvino_module()
        return "openvino"
    except RuntimeError:
        return "onnx"


def load_exported(
    path: str | os.PathLike,
    engine: str | None = None,
    *,
    batch_size: int = 8,
    precision: str | None = None,
) -> FittedDetector:
    """An exported file back as a ``FittedDetector`` scoring through ``engine`` (onnx or
    openvino; default: ``default_engine``) at ``precision`` (default: the recorded one)."""
    path = Path(path)
    meta, bank = read_metadata(path)
    graph = json.loads(meta["graph"])
    precision = precision or graph.get("precision", "fp32")
    engine = engine or ("openvino" if precision != "fp32" else default_engine(path))
    if engine not in RUNNERS:
        raise ValueError(
            f"{path} is an exported graph: run it with --engine onnx or openvino, not {engine!r}"
            + (" (the torch engine needs the .safetensors model file)" if engine == "torch" else "")
        )
    if engine == "onnx" and path.suffix != ".onnx":
        raise ValueError(f"{path}: onnxruntime runs .onnx files; use --engine openvino")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    runner = RUNNERS[engine](path, precision)
    settings = json.loads(meta["settings"])
    recorded = settings["backbone"]["weights"]
    source = None
    if recorded is not None:
        name = settings["backbone"]["name"]
        source = WeightsSource(
            name, path, recorded["origin"], recorded["label"], recorded["sha256"]
        )
    backbone = GraphBackbone(runner, int(bank.shape[1]), source)
    scores = json.loads(meta["conformal_scores"])
    tensors = {BANK: bank}
    if scores is not None:
        tensors[CONFORMAL_SCORES] = torch.tensor(scores, dtype=torch.float64)
    model = FittedDetector.from_contents(backbone, tensors, settings, batch_size)
    model.engine = GraphEngine(runner, model.detector, graph["input"]["shape"][1:])
    return model


def load_model(
    path: str | os.PathLike,
    engine: str | None = None,
    *,
    weights: str | os.PathLike | None = None,
    device: str = "cpu",
    batch_size: int = 8,
    verify_key: bytes | None = None,
) -> FittedDetector:
    """A model file (torch engine) or an exported graph (its engines), by the extension;
    ``verify_key``: the model file must be signed with it (exported graphs carry no
    signature: verify the model file before exporting it)."""
    if engine is not None and engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    if Path(path).suffix in EXPORT_FORMATS.values():
        if str(device) != "cpu":
            raise ValueError(f"{path}: exported graphs run on the CPU, not on {device!r}")
        if verify_key is not None:
            raise ValueError(
                f"{path}: an exported graph carries no signature to verify; verify the signed "
                "model file (trustad export --verify-key) and keep the export where it is trusted"
            )
        return load_exported(path, engine, batch_size=batch_size)
    if engine not in (None, "torch"):
        raise ValueError(
            f"{path} is a model file, run by the torch engine; for --engine {engine}, export it "
            f"first: trustad export {path} --format "
            f"{'openvino' if engine == 'openvino' else 'onnx'} --out FILE"
        )
    return FittedDetector.load(
        path, weights=weights, device=device, batch_size=batch_size, verify_key=verify_key
    )
