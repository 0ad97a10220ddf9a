"""AnomalyDINO against independent plain-numpy computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_tiny_vit
from scipy import ndimage

from trustad.backbone import preprocess
from trustad.detector import (
    AnomalyDINO,
    anomaly_map,
    background_mask,
    image_scores,
    memory_bank,
    patch_distances,
    top_count,
)


def _numpy_distances(query: np.ndarray, support: np.ndarray, k: int = 1) -> np.ndarray:
    """1 - cosine similarity to the nearest support rows, one query row at a time."""
    s = support / np.linalg.norm(support, axis=1, keepdims=True)
    out = []
    for q in query:
        cos = s @ (q / np.linalg.norm(q))
        out.append(1.0 - np.sort(cos)[::-1][:k].mean())
    return np.array(out)


def test_patch_distances_match_numpy():
    rng = np.random.default_rng(0)
    support = rng.normal(size=(3, 4, 5, 16))
    query = rng.normal(size=(2, 4, 5, 16))
    bank = memory_bank(torch.tensor(support))
    assert bank.shape == (60, 16)
    for k in (1, 3):
        got = patch_distances(torch.tensor(query), bank, knn=k).numpy()
        want = _numpy_distances(query.reshape(-1, 16), support.reshape(-1, 16), k).reshape(2, 4, 5)
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_patch_distances_chunked_equals_unchunked(monkeypatch):
    import trustad.detector as detector

    rng = np.random.default_rng(1)
    bank = memory_bank(torch.tensor(rng.normal(size=(50, 8)), dtype=torch.float32))
    query = torch.tensor(rng.normal(size=(1, 6, 7, 8)), dtype=torch.float32)
    full = patch_distances(query, bank)
    monkeypatch.setattr(detector, "SIMILARITY_BUDGET", 120)  # 2 query rows per chunk
    np.testing.assert_allclose(patch_distances(query, bank).numpy(), full.numpy(), atol=1e-6)


def test_blocked_bank_search_on_the_cpu_equals_one_pass(monkeypatch):
    """The same distances, to the bit, whatever the block size: the bank holds repeated rows
    (ties across blocks) and the block sizes do not divide it."""
    import trustad.detector as detector

    gen = torch.Generator().manual_seed(2)
    rows = torch.randn(300, 16, generator=gen)
    bank = memory_bank(torch.cat([rows, rows[:70], rows[100:130]]))
    query = torch.randn(2, 6, 7, 16, generator=gen)
    query[0, 0, :3] = rows[[5, 120, 299]]  # exact matches, each also repeated or last
    monkeypatch.setattr(detector, "CPU_BANK_BLOCK", 1 << 30)
    one_pass = patch_distances(query, bank)
    for block in (64, 7):
        monkeypatch.setattr(detector, "CPU_BANK_BLOCK", block)
        assert torch.equal(patch_distances(query, bank), one_pass)


def test_patch_distances_are_differentiable():
    rng = np.random.default_rng(2)
    bank = memory_bank(torch.tensor(rng.normal(size=(30, 8)), dtype=torch.float64))
    q = torch.tensor(rng.normal(size=(1, 2, 2, 8)), requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: patch_distances(x, bank.double()), (q,))


@pytest.mark.parametrize(("n", "count"), [(1024, 10), (100, 1), (99, 1), (50, 1), (250, 2)])
def test_top_count(n, count):
    assert top_count(n) == count


def test_image_score_rounding_and_masking():
    rng = np.random.default_rng(3)
    d = rng.random(1024)
    got = float(image_scores(torch.tensor(d).reshape(1, 32, 32))[0])
    assert got == pytest.approx(np.sort(d)[-10:].mean())  # N = 1024: mean of the top 10
    small = rng.random(64)
    got = float(image_scores(torch.tensor(small).reshape(1, 8, 8))[0])
    assert got == pytest.approx(small.max())  # N < 100: the maximum
    # Masked patches score 0 and still count in N.
    fg = np.ones(1024, dtype=bool)
    fg[np.argsort(d)[-5:]] = False  # hide the 5 largest
    got = float(
        image_scores(torch.tensor(d).reshape(1, 32, 32), torch.tensor(fg).reshape(1, 32, 32))[0]
    )
    assert got == pytest.approx(np.sort(d * fg)[-10:].mean())


def _numpy_mask(feats: np.ndarray, flat: bool = False) -> np.ndarray:
    """The masking rule written out independently (PCA by eigen-decomposition)."""
    h, w, dim = feats.shape
    x = feats.reshape(-1, dim) - feats.reshape(-1, dim).mean(0)
    vals, vecs = np.linalg.eigh(x.T @ x)
    v = vecs[:, -1]
    v = v if v[np.argmax(np.abs(v))] > 0 else -v
    pc = x @ v
    mask = (pc > 10).reshape(h, w)
    centre = mask[int(h * 0.2) : int(h * 0.8), int(w * 0.2) : int(w * 0.8)]
    if centre.sum() <= 0.35 * centre.size:
        mask = (-pc > 10).reshape(h, w)
    if flat:
        mask = mask.reshape(-1, 1)
    k = np.ones((3, 3), bool)
    mask = ndimage.binary_dilation(mask, k)
    # closing where the outside never erodes: pad with ones, close, crop.
    padded = np.pad(ndimage.binary_dilation(mask, k), 1, constant_values=True)
    mask = ndimage.binary_erosion(padded, k)[1:-1, 1:-1]
    return mask.reshape(h, w)


@pytest.mark.parametrize("flip", [False, True])
def test_background_mask(flip):
    rng = np.random.default_rng(4)
    h, w, dim = 12, 12, 16
    feats = rng.normal(size=(h, w, dim))
    # A bright object in the centre along one direction: its patches have a large component.
    direction = rng.normal(size=dim)
    direction /= np.linalg.norm(direction)
    obj = np.zeros((h, w), bool)
    obj[3:9, 4:10] = True
    obj[0, 0] = True  # a stray patch that the morphology grows
    feats[obj] += (-30.0 if flip else 30.0) * direction
    got = background_mask(torch.tensor(feats)).numpy()
    np.testing.assert_array_equal(got, _numpy_mask(feats))
    assert got[3:9, 4:10].all()
    np.testing.assert_array_equal(
        background_mask(torch.tensor(feats), "flat").numpy(), _numpy_mask(feats, flat=True)
    )


def test_anomaly_map_size_and_blur():
    grid = torch.zeros(4, 4)
    grid[1, 2] = 1.0
    amap = anomaly_map(grid, (70, 50))
    assert amap.shape == (50, 70)
    up = torch.nn.functional.interpolate(
        grid[None, None], size=(50, 70), mode="bilinear", align_corners=False
    )
    np.testing.assert_allclose(amap, ndimage.gaussian_filter(up[0, 0].numpy(), 4.0), atol=1e-6)


def test_detector_api_on_images():
    model = make_tiny_vit()
    rng = np.random.default_rng(5)
    support = [rng.integers(0, 256, (60, 70, 3), dtype=np.uint8) for _ in range(2)]
    det = AnomalyDINO(model, resolution=56, rotate=True).fit(support)
    grid = preprocess(support[0], 56).shape[1:]
    assert det.memory_bank_.shape[0] == 2 * 8 * (grid[0] // 14) * (grid[1] // 14)
    test = support + [rng.integers(0, 256, (60, 70, 3), dtype=np.uint8)]
    scores = det.score(test)
    assert scores.shape == (3,)
    assert scores[0] == pytest.approx(0.0, abs=1e-5)  # a support image is in the bank
    assert scores[2] > scores[0]
    maps = det.anomaly_maps(test[2:])
    assert maps[0].shape == (60, 70)
    # The differentiable path agrees with the no-gradient path.
    x = torch.stack([preprocess(t, 56) for t in test]).requires_grad_(True)
    diff = det.score_pixels(x)
    np.testing.assert_allclose(diff.detach().numpy(), scores, atol=1e-5)
    diff.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_detector_requires_fit():
    det = AnomalyDINO(make_tiny_vit(), resolution=56)
    with pytest.raises(RuntimeError, match="fit"):
        det.score([np.zeros((56, 56, 3), np.uint8)])
