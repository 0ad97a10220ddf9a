"""What a run keeps per category: test images as uint8 (read back as the floats that
preprocessing gives), support views made ahead in threads, unreadable support images."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import make_tiny_vit, small_synthetic

from trustad.backbone.preprocess import preprocess
from trustad.backbone.runtime import BackboneRuntime
from trustad.data import load_category
from trustad.evaluation import Evaluation, EvaluationSettings
from trustad.evaluation.category import CategoryImages, load_state
from trustad.evaluation.progress import Progress
from trustad.evaluation.support import prefetched
from trustad.images import ImageReadError


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return small_synthetic(tmp_path_factory, categories=("brick",))


def test_test_images_kept_as_uint8_read_as_the_preprocessed_floats(dataset):
    runtime = BackboneRuntime(make_tiny_vit(), resolution=56, batch_size=4)
    data = load_category("folder", str(dataset), "brick")
    st = load_state(data, runtime, Progress(False), lambda message: None)
    assert isinstance(st.images, CategoryImages)
    assert all(t.dtype == torch.uint8 for t in st.images.uint8)
    want = [preprocess(s.path, 56) for s in data.test]
    assert all(torch.equal(a, b) for a, b in zip(st.images, want, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(st.images[2:5], want[2:5], strict=True))
    # The same features, hence the same scores, as from the float images.
    got = runtime.features(list(st.images))
    assert all(torch.equal(a, b) for a, b in zip(got, runtime.features(want), strict=True))
    stored = sum(t.nbytes for t in st.images.uint8)
    assert stored * 4 == sum(t.nbytes for t in want)
    with pytest.raises(ValueError, match="uint8"):
        CategoryImages(want)


def test_prefetched_keeps_order_and_returns_read_errors():
    def work(i: int) -> int:
        if i == 3:
            raise ImageReadError(f"img{i}.png", "broken")
        return i * i

    out = list(prefetched(work, list(range(7)), workers=2))
    assert [item for item, _ in out] == list(range(7))
    assert [r for i, r in out if i != 3] == [i * i for i in range(7) if i != 3]
    assert isinstance(out[3][1], ImageReadError) and "img3.png" in str(out[3][1])


def test_an_unreadable_support_image_gives_way_to_the_next_readable_one(dataset, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(dataset, root)
    broken = root / "brick" / "train" / "good" / "001.png"
    broken.write_bytes(b"not a png")
    settings = EvaluationSettings(
        dataset="folder", root=str(root), shots=[1, 2], seeds=2, resolution=56, batch_size=4
    )
    run = Evaluation(settings, make_tiny_vit(), tmp_path / "out", progress=False)
    rows = run.run()
    # Drawn from the readable img0, img2, img3: seed 0 img0 | img0, img2; seed 1 img2 |
    # (4 images needed, 3 readable: skipped).
    assert sorted((r["seed"], r["shots"]) for r in rows) == [(0, 1), (0, 2), (1, 1)]
    left_out, skipped = run.skipped
    assert "left out of the support draws" in left_out and str(broken) in left_out
    assert "2 shots, seed 1 skipped: 3 readable training images are too few" in skipped


def test_every_unreadable_support_image_is_named_at_once(dataset, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(dataset, root)
    broken = [root / "brick" / "train" / "good" / f"00{i}.png" for i in (2, 3)]
    for path in broken:
        path.write_bytes(b"not a png")
    settings = EvaluationSettings(
        dataset="folder", root=str(root), shots=[1], seeds=3, resolution=56, batch_size=4
    )
    run = Evaluation(settings, make_tiny_vit(), tmp_path / "out", progress=False)
    rows = run.run()
    # seed 2 draws img2, unreadable, then img3, unreadable: both named in one message, and
    # with 2 readable images left seed 2 cannot be drawn.
    assert sorted(r["seed"] for r in rows) == [0, 1]
    left_out = run.skipped[0]
    assert all(str(p) in left_out for p in broken)
    assert "1 shots, seed 2 skipped" in run.skipped[1]
