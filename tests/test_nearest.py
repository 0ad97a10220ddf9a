"""The 1-NN bank search: blocked, by sub-block maxima, and by parts of the bank (one per
support image, reused across banks) gives the indices of one plain argmax, to the bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import trustad.detector as detector
from trustad.detector import AnomalyDINO, memory_bank, merge_nearest, nearest_rows, query_rows
from trustad.evaluation.nearest import NearestParts


def _rows(n: int, dim: int = 16, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return memory_bank(torch.randn(n, dim, generator=gen))


def _with_ties(bank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A bank with repeated rows (ties inside and across blocks and sub-blocks) and queries
    that hit some of them exactly."""
    bank = torch.cat([bank, bank[:70], bank[100:130], bank[5:6]])
    query = _rows(90, bank.shape[1], seed=1)
    query[:4] = bank[[5, 120, 299, len(bank) - 1]]
    return query, bank


@pytest.mark.parametrize(("block", "sub"), [(1 << 30, 1 << 30), (64, 8), (96, 32), (7, 2)])
def test_nearest_rows_is_one_argmax(monkeypatch, block, sub):
    query, bank = _with_ties(_rows(300))
    want_values, want_idx = (query @ bank.T).max(dim=1)
    monkeypatch.setattr(detector, "CPU_BANK_BLOCK", block)
    monkeypatch.setattr(detector, "CPU_SUB_BLOCK", sub)
    monkeypatch.setattr(detector, "CPU_QUERY_BLOCK", 32)
    values, idx = nearest_rows(query, bank)
    assert torch.equal(idx, want_idx)
    # A product of another shape may round its last bit otherwise (narrow blocks here).
    torch.testing.assert_close(values, want_values, rtol=0, atol=1e-6)


def test_nearest_rows_nan_counts_as_largest(monkeypatch):
    query, bank = _with_ties(_rows(256))
    bank = bank.clone()
    bank[200, 3] = float("nan")  # every query's similarity to row 200 is NaN
    monkeypatch.setattr(detector, "CPU_SUB_BLOCK", 16)
    _, idx = nearest_rows(query, bank)
    assert torch.equal(idx, (query @ bank.T).argmax(dim=1))
    assert (idx == 200).all()


def test_merged_parts_are_the_whole_bank(monkeypatch):
    monkeypatch.setattr(detector, "CPU_BANK_BLOCK", 64)
    monkeypatch.setattr(detector, "CPU_SUB_BLOCK", 16)
    query, bank = _with_ties(_rows(300))
    sizes = [128, 1, 100, 64, len(bank) - 293]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    parts = [nearest_rows(query, bank[s : s + n]) for s, n in zip(starts, sizes)]
    assert torch.equal(merge_nearest(parts, sizes), nearest_rows(query, bank)[1])


def test_nearest_parts_give_the_detectors_distances(tiny_vit):
    """Banks of several support sets that share images, searched part by part through one
    cache, give the distances the detector computes on each whole bank."""
    gen = torch.Generator().manual_seed(3)
    support = {Path(f"s{i}.png"): [torch.randn(4, 5, 32, generator=gen)] * 2 for i in range(4)}
    support[Path("s2.png")][1] = torch.randn(4, 5, 32, generator=gen)
    test = [torch.randn(4, 5, 32, generator=gen) for _ in range(3)]
    test[0][0, 0] = support[Path("s1.png")][0][2, 3]  # an exact match, present twice
    det = AnomalyDINO(tiny_vit, resolution=56)
    cache = NearestParts()
    for names in (["s0", "s1"], ["s0", "s1", "s2", "s3"], ["s1", "s3"], ["s2"]):
        paths = [Path(f"{n}.png") for n in names]
        det.fit_features([f for p in paths for f in support[p]])
        sizes = [sum(v[..., 0].numel() for v in support[p]) for p in paths]
        nearest = cache.indices("clean", test, det.memory_bank_, paths, sizes)
        got = det.distances_from_nearest(test, nearest)
        want = det.distances_from_features(test)
        assert all(torch.equal(a, b) for a, b in zip(got, want))
    cache.forget("clean")
    assert cache.indices("clean", test, det.memory_bank_, paths, sizes)[0].shape == (20,)
    with pytest.raises(ValueError, match="parts of 19 rows for a bank of 40"):
        cache.indices("clean", test, det.memory_bank_, paths, [19])


def test_query_rows_are_the_searched_rows():
    bank = _rows(10, 8)
    feats = torch.randn(2, 3, 8, dtype=torch.float64)
    q = query_rows(feats, bank)
    assert q.dtype == bank.dtype and q.shape == (6, 8)
    assert torch.allclose(q.norm(dim=1), torch.ones(6))
