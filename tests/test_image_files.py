"""Awkward and broken files through the folder dataset, the masks and the detector: the
readable ones give the right result, each bad one a clear ImageReadError, and none costs
the others."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import make_tiny_vit
from corpus import (
    REQUIRED,
    THIN_STRIPS,
    H,
    W,
    exif_with_orientation,
    extension,
    png_header_only,
    write_format,
    write_strip,
)
from PIL import Image

from trustad import images
from trustad.backbone import load_rgb8, preprocess
from trustad.data import Sample, image_size, load_category, load_mask
from trustad.detector import AnomalyDINO
from trustad.images import ImageReadError, ImageTooLargeError, read_size


def test_folder_dataset_lists_everything_and_reads_or_refuses(tmp_path: Path) -> None:
    cat = tmp_path / "parts"
    train, test_bad = cat / "train" / "good", cat / "test" / "dent"
    train.mkdir(parents=True)
    good: list[Path] = []
    for fmt in sorted(REQUIRED):
        path = train / f"img {fmt.lower()} é画{extension(fmt).upper()}"  # spaces, non-ASCII
        write_format(path, fmt)
        good.append(path)
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    rotated = train / "rotated.jpg"
    Image.fromarray(stored).save(rotated, exif=exif_with_orientation(6))
    good.append(rotated)
    modes = {
        "deep.png": Image.fromarray(np.full((5, 7), 40000, dtype=np.uint16)),
        "palette.png": Image.new("P", (6, 4), 3),
        "cmyk.jpg": Image.new("CMYK", (6, 4), (0, 255, 255, 0)),
        "rgba.png": Image.new("RGBA", (6, 4), (1, 2, 3, 0)),
        "bits.png": Image.new("1", (6, 4), 1),
        "pixel.png": Image.new("RGB", (1, 1)),
        "tall.png": Image.new("L", (1, 3000), 9),
    }
    for name, img in modes.items():
        img.save(train / name)
        good.append(train / name)
    bad = {
        "bomb.png": lambda p: p.write_bytes(png_header_only(60000, 60000)),
        "empty.png": lambda p: p.touch(),
        "text.png": lambda p: p.write_text("not an image"),
        "loop.png": lambda p: p.symlink_to(p),
        "cut.jpg": lambda p: p.write_bytes((train / "cmyk.jpg").read_bytes()[:200]),
        "dangling.bmp": lambda p: p.symlink_to(tmp_path / "nowhere.bmp"),
    }
    for name, make in bad.items():
        make(train / name)
    (train / ".hidden.png").write_bytes(b"")
    (train / "notes.txt").write_text("skip me")
    (train / "subdir.png").mkdir()
    (cat / "test" / "good").mkdir(parents=True)
    Image.new("RGB", (40, 20)).save(cat / "test" / "good" / "0.webp")
    test_bad.mkdir(parents=True)
    Image.new("RGB", (40, 20)).save(test_bad / "0.gif")
    Image.new("RGB", (40, 20)).save(test_bad / "1.tga")
    masks = cat / "ground_truth" / "dent"
    masks.mkdir(parents=True)
    Image.new("L", (40, 20), 255).save(masks / "0_mask.bmp")

    data = load_category("folder", tmp_path, "parts")
    listed = {p.name for p in data.train}
    assert listed == {p.name for p in good} | set(bad)
    for path in data.train:
        if path.name in bad:
            with pytest.raises(ImageReadError) as err:
                load_rgb8(path)
            assert str(path) in str(err.value)
        else:
            img = load_rgb8(path)
            assert img.mode == "RGB" and img.size == image_size(path)
    assert load_rgb8(rotated).size == (20, 40)

    assert [s.image_id for s in data.test] == [
        "test/dent/0.gif",
        "test/dent/1.tga",
        "test/good/0.webp",
    ]
    assert data.has_masks and [s.image_id for s in data.missing_masks] == ["test/dent/1.tga"]
    dent0 = data.test[0]
    assert load_mask(dent0, image_size(dent0.path)).all()


def test_unreadable_masks_named(tmp_path: Path) -> None:
    image = tmp_path / "img.png"
    Image.new("RGB", (W, H)).save(image)
    bomb = tmp_path / "bomb_mask.png"
    bomb.write_bytes(png_header_only(60000, 60000))
    with pytest.raises(ImageReadError) as err:
        load_mask(Sample(image, 1, "x", bomb, "img.png"), (W, H))
    assert str(bomb) in str(err.value) and str(image) in str(err.value)
    gone = tmp_path / "gone_mask.png"
    with pytest.raises(FileNotFoundError) as err:
        load_mask(Sample(image, 1, "x", gone, "img.png"), (W, H))
    assert str(gone) in str(err.value) and "mask of" in str(err.value)


def test_detector_reads_every_format_and_names_a_bad_file(tmp_path: Path) -> None:
    paths = []
    for fmt in sorted(REQUIRED):
        path = tmp_path / f"good{extension(fmt)}"
        write_format(path, fmt)
        paths.append(path)
    det = AnomalyDINO(make_tiny_vit(), resolution=28, rotate=False).fit(paths[:2])
    scores = det.score(paths)
    assert scores.shape == (len(paths),) and np.isfinite(scores).all()
    rotated = tmp_path / "rotated.jpg"  # stored 40 wide, 16 high; shown 16 wide, 40 high
    Image.fromarray(np.zeros((16, 40, 3), np.uint8)).save(rotated, exif=exif_with_orientation(6))
    assert det.anomaly_maps([rotated])[0].shape == (40, 16)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(60000, 60000))
    with pytest.raises(ImageReadError) as err:
        det.score([paths[0], bomb])
    assert str(bomb) in str(err.value) and "too large" in err.value.reason


@pytest.mark.parametrize(("width", "height"), THIN_STRIPS)
def test_thin_strips_refused_on_the_header_for_a_model(tmp_path: Path, width, height) -> None:
    path = write_strip(tmp_path, width, height)
    assert image_size(path) == (width, height)  # a plain read (no model) is fine
    with pytest.raises(ImageTooLargeError) as err:
        read_size(path, resolution=56)
    assert str(path) in str(err.value) and "aspect ratio" in err.value.reason
    with pytest.raises(ImageTooLargeError, match="aspect ratio"):
        preprocess(path, 448)
    with pytest.raises(ImageTooLargeError, match="aspect ratio"):
        load_rgb8(np.zeros((height, width, 3), np.uint8), 448)  # in memory as well


def test_thin_strips_through_the_detector(tmp_path: Path) -> None:
    det = AnomalyDINO(make_tiny_vit(), resolution=28, rotate=False)
    good = tmp_path / "good.png"
    write_format(good, "PNG")
    det.fit([good])
    for width, height in THIN_STRIPS:
        strip = write_strip(tmp_path, width, height)
        with pytest.raises(ImageTooLargeError) as err:
            det.score([good, strip])
        assert str(strip) in str(err.value)


def test_the_limits_after_resizing(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "tall.png"
    Image.new("RGB", (100, 500)).save(path)  # ratio 5: within the ratio limit
    assert read_size(path, resolution=448) == (100, 500)
    # at resolution 1000 it would become 1000x5000 = 5 MP
    assert_refused_at(path, 1000, "resized to the model's resolution 1000", "1000x5000")
    monkeypatch.setattr(images, "MAX_ASPECT_RATIO", 4.0)
    assert_refused_at(path, 448, "aspect ratio 5.0:1 is over the limit of 4:1")
    assert load_rgb8(path).size == (100, 500)  # no model: no resized limits


def assert_refused_at(path: Path, resolution: int, *words: str) -> None:
    with pytest.raises(ImageTooLargeError) as err:
        load_rgb8(path, resolution)
    for word in words:
        assert word in err.value.reason, err.value.reason
