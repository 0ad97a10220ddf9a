"""Device paths the per-operation tests leave out: maps of mixed shapes batched by group,
patch distances brought back from the device, a whole run on CUDA against the CPU, and the
TF32 setting. (Maps, pixel metrics, rotation,
preprocessing and L-inf/PSNR on each device: test_maps, test_pixel_metrics,
test_device_ops.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_tiny_vit

from trustad.backbone.runtime import BackboneRuntime
from trustad.cli import build_parser
from trustad.detector import AnomalyDINO, anomaly_map
from trustad.evaluation import Evaluation, EvaluationSettings
from trustad.evaluation.arguments import from_arguments
from trustad.maps import anomaly_maps_grouped

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")


def test_grouped_maps_keep_the_order_and_equal_single_maps(torch_device):
    gen = torch.Generator().manual_seed(3)
    shapes = [(4, 4), (5, 3), (4, 4), (5, 3), (4, 4)]
    sizes = [(40, 40), (30, 50), (40, 40), (30, 50), (20, 24)]  # three groups, interleaved
    grids = [torch.rand(s, generator=gen) for s in shapes]
    maps = anomaly_maps_grouped(grids, sizes, torch_device)
    assert len(maps) == len(grids)
    for got, grid, (w, h) in zip(maps, grids, sizes):
        assert got.device.type == torch_device.type and got.shape == (h, w)
        np.testing.assert_allclose(got.cpu().numpy(), anomaly_map(grid, (w, h)), rtol=0, atol=1e-6)


def test_distances_on_each_device_equal_the_cpu(torch_device):
    """Patch distances of images of two grid shapes, masked, come back to the host in order."""
    gen = torch.Generator().manual_seed(5)
    support = [torch.randn(4, 4, 32, generator=gen) for _ in range(3)]
    queries = [torch.randn(*hw, 32, generator=gen) for hw in [(4, 4), (3, 5), (4, 4)]]
    masks = [torch.rand(q.shape[:2], generator=gen) > 0.3 for q in queries]
    dists = {}
    for device in ("cpu", torch_device):
        det = AnomalyDINO(make_tiny_vit().to(device), rotate=False).fit_features(support)
        dists[device] = det.distances_from_features(queries, masks)
    for got, ref, q in zip(dists[torch_device], dists["cpu"], queries):
        assert got.device.type == "cpu" and got.shape == q.shape[:2]
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    from trustad.data import make_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_dataset(
        root, categories=("brick",), n_train=2, n_test_good=3, n_test_defect=3, size=64
    )
    return root


def _settings(root, **kw) -> EvaluationSettings:
    base = dict(dataset="folder", root=str(root), shots=[1, 2], seeds=1, resolution=56)
    return EvaluationSettings(**{**base, **kw})


@needs_cuda
def test_a_run_on_cuda_equals_the_cpu(small_set, tmp_path):
    """Features, distances, maps and pixel metrics on the device; the CPU run uses numpy for
    the pixel metrics. fp32 both (TF32 off by default)."""
    rows = {}
    for device in ("cpu", "cuda"):
        run = Evaluation(
            _settings(small_set), make_tiny_vit().to(device), tmp_path / device, progress=False
        )
        rows[device] = run.run()
    assert len(rows["cpu"]) == len(rows["cuda"]) == 2
    for cpu, cuda in zip(rows["cpu"], rows["cuda"]):
        for column in ("auroc", "pixel_auroc", "aupro", "ece_platt"):
            assert cuda[column] == pytest.approx(cpu[column], abs=1e-5), column


def test_tf32_is_off_by_default_and_offered_on_the_command_line():
    assert EvaluationSettings(dataset="folder", root="r").tf32 is False
    parser = build_parser()
    base = ("evaluate", "--dataset", "folder", "--root", "r", "--out", "o")
    assert from_arguments(parser.parse_args(base)).tf32 is False
    assert from_arguments(parser.parse_args([*base, "--tf32"])).tf32 is True


def test_tf32_leaves_torch_alone_off_cuda():
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    runtime = BackboneRuntime(make_tiny_vit(), tf32=not flags[0])
    assert runtime.tf32 is not flags[0]
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == flags


@needs_cuda
def test_tf32_setting_reaches_torch_on_cuda(small_set, tmp_path):
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        for allowed in (True, False):
            settings = _settings(small_set, tf32=allowed)
            Evaluation(settings, make_tiny_vit().cuda(), tmp_path / str(allowed), progress=False)
            assert torch.backends.cuda.matmul.allow_tf32 is allowed
            assert torch.backends.cudnn.allow_tf32 is allowed
        BackboneRuntime(make_tiny_vit().cuda())  # the default: off, even for convolutions
        assert not torch.backends.cuda.matmul.allow_tf32
        assert not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
