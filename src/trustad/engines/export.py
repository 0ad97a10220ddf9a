"""``export_model``: a fitted detector as one ONNX graph or OpenVINO IR that carries its
model file's settings, so that the exported file alone serves ``predict`` and ``serve``.

Metadata (ONNX ``metadata_props``; OpenVINO ``rt_info`` under ``trustad``), all text:

- ``format``: ``"trustad-exported"``; ``format_version``: an integer as text;
- ``settings``: the model file's settings JSON (``FittedDetector.settings()``: calibration,
  threshold, flag parameters, provenance);
- ``conformal_scores``: JSON list of the conformal threshold's calibration scores (its
  p-values need them), or ``null``;
- ``graph``: JSON: the input name and shape, the output names, where the background mask
  of ``mask_test`` models is applied (outside the graph: it needs an SVD and binary
  morphology per image, which the engines run on the graph's features) and the precision
  the engines run at by default.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from ..model import FORMAT_VERSION as MODEL_FORMAT_VERSION
from ..model import FittedDetector
from .graph import INPUT, OUTPUTS, DetectorGraph, input_size

FORMAT = "trustad-exported"
FORMAT_VERSION = 1
EXPORT_FORMATS = {"onnx": ".onnx", "openvino": ".xml"}
ONNX_OPSET = 17
# bf16: OpenVINO's bfloat16 inference, where the CPU has it natively (opt-in: scores move).
PRECISIONS = ("fp32", "bf16")
METADATA_KEYS = ("format", "format_version", "settings", "conformal_scores", "graph")


def graph_metadata(
    model: FittedDetector, size: tuple[int, int], precision: str = "fp32"
) -> dict[str, str]:
    """The text metadata an exported file carries (see the module docstring)."""
    conformal = model.conformal_
    graph = {
        "input": {"name": INPUT, "shape": ["batch", 3, *size], "range": [0.0, 1.0]},
        "outputs": list(OUTPUTS),
        "mask_test": "outside the graph" if model.detector.mask_test else None,
        "precision": precision,
    }
    return {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "settings": json.dumps(
            {**model.settings(), "format_version": MODEL_FORMAT_VERSION}, sort_keys=True
        ),
        "conformal_scores": json.dumps(
            None if conformal is None else conformal.calibration_scores_.tolist()
        ),
        "graph": json.dumps(graph),
    }


def export_model(
    model: FittedDetector,
    out: str | os.PathLike,
    fmt: str = "onnx",
    image_size: tuple[int, int] | None = None,
    precision: str = "fp32",
) -> Path:
    """Write ``model`` as ``fmt`` (``EXPORT_FORMATS``) to ``out``; the input size is that of
    images of ``image_size`` (width, height) after preprocessing (square by default).
    ``precision`` is the one the engines run it at by default (``PRECISIONS``; the weights
    stay float32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {list(EXPORT_FORMATS)}")
    out = Path(out)
    if out.suffix != EXPORT_FORMATS[fmt]:
        raise ValueError(f"{out}: a {fmt} export is written to a {EXPORT_FORMATS[fmt]} file")
    size = input_size(model.detector.resolution, image_size)
    graph = DetectorGraph(model.backbone, model.detector.memory_bank_, size, model.detector.knn)
    metadata = graph_metadata(model, size, precision)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "onnx":
        write_onnx(graph, out, metadata)
        return out
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = write_onnx(graph, Path(tmp) / "graph.onnx", metadata)
        return write_openvino(onnx_path, out, metadata)


def write_onnx(graph: DetectorGraph, path: Path, metadata: dict[str, str]) -> Path:
    """Trace ``graph`` into an ONNX file at ``path`` with ``metadata``; batch size dynamic."""
    import onnx

    example = torch.rand(2, 3, *graph.size)
    tmp = path.with_name(path.name + ".partial")
    # The tracer warns about the backbone's shape checks: constants at a fixed size.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            graph.eval(),
            (example,),
            str(tmp),
            dynamo=False,
            input_names=[INPUT],
            output_names=list(OUTPUTS),
            dynamic_axes={INPUT: {0: "batch"}, **{name: {0: "batch"} for name in OUTPUTS}},
            opset_version=ONNX_OPSET,
            # Parameters keep their names (the bank is read back by name); the runtimes fold
            # the constants when they load the graph.
            do_constant_folding=False,
        )
    proto = onnx.load(str(tmp))
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(tmp))
    os.replace(tmp, path)
    return path


def write_openvino(onnx_path: Path, out: Path, metadata: dict[str, str]) -> Path:
    """Convert the ONNX file to OpenVINO IR (``out`` .xml and its .bin), weights in fp32."""
    ov = openvino_module()
    model = ov.convert_model(str(onnx_path))
    for key, value in metadata.items():
        model.set_rt_info(value, ["trustad", key])
    ov.save_model(model, str(out), compress_to_fp16=False)
    return out


def openvino_module() -> Any:
    try:
        import openvino
    except ImportError as exc:
        raise RuntimeError("OpenVINO is not installed: pip install 'trustad[openvino]'") from exc
    return openvino
