"""Dataset loaders, masks, few-shot support and the per-category defaults table."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trustad.data import (
    DATASETS,
    MVTEC_CATEGORIES,
    VISA_CATEGORIES,
    CategoryDefaults,
    MissingMaskError,
    Sample,
    category_defaults,
    image_size,
    list_categories,
    load_category,
    load_mask,
    support_paths,
)

W, H = 40, 30  # non-square, so width/height mix-ups show


def write_image(path: Path, size: tuple[int, int] = (W, H), value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    arr[0, 0] = value
    Image.fromarray(arr).save(path)
    return path


def write_mask(path: Path, size: tuple[int, int] = (W, H), box=(2, 3, 10, 12), value=255) -> Path:
    """A mask with the box x0, y0, x1, y1 set to ``value`` (grayscale)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size[1], size[0]), dtype=np.uint8)
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1] = value
    Image.fromarray(arr).save(path)
    return path


def make_mvtec_category(cat: Path) -> Path:
    for name in ("002.png", "000.png", "010.png", "001.png"):
        write_image(cat / "train" / "good" / name)
    write_image(cat / "train" / "good" / ".hidden.png")
    (cat / "train" / "good" / "notes.txt").write_text("not an image")
    write_image(cat / "test" / "good" / "000.png")
    write_image(cat / "test" / "good" / "001.png")
    write_image(cat / "test" / "crack" / "000.png")
    write_image(cat / "test" / "crack" / "001.PNG")
    write_image(cat / "test" / "scratch" / "000.png")
    write_mask(cat / "ground_truth" / "crack" / "000_mask.png", value=1)  # binarised > 0
    write_mask(cat / "ground_truth" / "crack" / "001_mask.png")
    write_mask(cat / "ground_truth" / "scratch" / "000_mask.png")
    return cat


# ---------------------------------------------------------------- MVTec and folder


def test_mvtec_layout(tmp_path: Path) -> None:
    cat = make_mvtec_category(tmp_path / "bottle")
    make_mvtec_category(tmp_path / "screw")
    (tmp_path / "not_a_category").mkdir()
    assert list_categories("mvtec", tmp_path) == ["bottle", "screw"]
    assert list_categories("mvtec", tmp_path, ["screw"]) == ["screw"]

    data = load_category("mvtec", tmp_path, "bottle")
    assert data.dataset == "mvtec" and data.category == "bottle" and data.root == cat
    assert [p.name for p in data.train] == ["000.png", "001.png", "002.png", "010.png"]
    ids = [s.image_id for s in data.test]
    assert ids == [
        "test/crack/000.png",
        "test/crack/001.PNG",
        "test/good/000.png",
        "test/good/001.png",
        "test/scratch/000.png",
    ]
    by_id = {s.image_id: s for s in data.test}
    crack = by_id["test/crack/000.png"]
    assert crack.label == 1 and crack.defect == "crack"
    assert crack.mask_path == cat / "ground_truth" / "crack" / "000_mask.png"
    assert crack.path == cat / "test" / "crack" / "000.png"
    good = by_id["test/good/000.png"]
    assert good.label == 0 and good.defect == "good" and good.mask_path is None
    assert data.has_masks

    mask = load_mask(crack, image_size(crack.path))
    assert mask.dtype == bool and mask.shape == (H, W)
    assert mask.sum() == 8 * 9 and mask[3:12, 2:10].all()
    assert not load_mask(good, image_size(good.path)).any()
    assert load_mask(good, (W, H)).shape == (H, W)


def test_root_may_be_one_category(tmp_path: Path) -> None:
    cat = make_mvtec_category(tmp_path / "carpet")
    for dataset in ("mvtec", "folder"):
        assert list_categories(dataset, cat) == ["carpet"]
        data = load_category(dataset, cat, "carpet")
        assert data.root == cat and len(data.test) == 5 and data.dataset == dataset


def test_folder_of_categories_and_selection(tmp_path: Path) -> None:
    for name in ("widgets", "bolts", "cans"):
        make_mvtec_category(tmp_path / name)
    assert list_categories("folder", tmp_path) == ["bolts", "cans", "widgets"]
    assert list_categories("folder", tmp_path, ["widgets", "bolts"]) == ["widgets", "bolts"]
    with pytest.raises(ValueError) as err:
        list_categories("folder", tmp_path, ["bolts", "nuts"])
    msg = str(err.value)
    assert "nuts" in msg and str(tmp_path) in msg and "bolts, cans, widgets" in msg
    with pytest.raises(FileNotFoundError) as err:
        load_category("folder", tmp_path, "nuts")
    assert str(tmp_path / "nuts") in str(err.value) and "widgets" in str(err.value)
    data = load_category("folder", tmp_path, "cans")
    assert data.dataset == "folder" and data.category == "cans"


def test_folder_without_ground_truth(tmp_path: Path) -> None:
    cat = tmp_path / "parts"
    write_image(cat / "train" / "good" / "a.png")
    write_image(cat / "test" / "good" / "a.png")
    write_image(cat / "test" / "dent" / "a.png")
    data = load_category("folder", tmp_path, "parts")
    dent = [s for s in data.test if s.defect == "dent"][0]
    assert dent.label == 1 and dent.mask_path is None and not data.has_masks
    assert data.missing_masks == (dent,)
    with pytest.raises(ValueError) as err:
        load_mask(dent, (W, H))
    assert str(dent.path) in str(err.value)


def test_partial_masks(tmp_path: Path) -> None:
    cat = make_mvtec_category(tmp_path / "bottle")
    (cat / "ground_truth" / "crack" / "001_mask.png").unlink()
    data = load_category("mvtec", tmp_path, "bottle")  # loading does not fail
    assert data.has_masks  # the other anomalous images keep their pixel metrics
    missing = [s for s in data.test if s.image_id == "test/crack/001.PNG"][0]
    assert missing.mask_path is None and not missing.mask_available
    assert data.missing_masks == (missing,)
    assert all(s.mask_available for s in data.test if s is not missing)
    with pytest.raises(MissingMaskError, match="no mask") as err:
        load_mask(missing, (W, H))
    assert str(missing.path) in str(err.value) and isinstance(err.value, ValueError)


def test_mask_size_mismatch(tmp_path: Path) -> None:
    image = write_image(tmp_path / "img.png")
    mask = write_mask(tmp_path / "img_mask.png", size=(W + 1, H))
    sample = Sample(image, 1, "crack", mask, "img.png")
    with pytest.raises(ValueError) as err:
        load_mask(sample, image_size(image))
    msg = str(err.value)
    assert str(mask) in msg and f"{W + 1}x{H}" in msg and f"{W}x{H}" in msg


def test_colour_and_palette_masks(tmp_path: Path) -> None:
    image = write_image(tmp_path / "img.png")
    rgb = np.zeros((H, W, 3), dtype=np.uint8)
    rgb[5, 6, 2] = 7
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    got = load_mask(Sample(image, 1, "x", tmp_path / "rgb.png", "img.png"), (W, H))
    assert got.sum() == 1 and got[5, 6]
    pal = Image.fromarray((np.arange(W * H).reshape(H, W) % 2).astype(np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    pal.save(tmp_path / "pal.png")
    got = load_mask(Sample(image, 1, "x", tmp_path / "pal.png", "img.png"), (W, H))
    assert got.sum() == W * H // 2


# ---------------------------------------------------------------- VisA


def make_visa_raw(root: Path) -> None:
    cat = root / "candle" / "Data"
    for name in ("0003.JPG", "0001.JPG", "0002.JPG", "0004.JPG"):
        write_image(cat / "Images" / "Normal" / name)
    write_image(cat / "Images" / "Anomaly" / "000.JPG")
    write_image(cat / "Images" / "Anomaly" / "001.JPG")
    write_mask(cat / "Masks" / "Anomaly" / "000.png", value=3)
    write_mask(cat / "Masks" / "Anomaly" / "001.png")
    write_image(root / "pcb1" / "Data" / "Images" / "Normal" / "0000.JPG")
    write_image(root / "pcb1" / "Data" / "Images" / "Normal" / "0001.JPG")
    rows = [
        "object,split,label,image,mask",
        "candle,train,normal,candle/Data/Images/Normal/0003.JPG,",
        "candle,train,normal,candle/Data/Images/Normal/0001.JPG,",
        "candle,train,normal,candle/Data/Images/Normal/0002.JPG,",
        "candle,test,normal,candle/Data/Images/Normal/0004.JPG,",
        "candle,test,anomaly,candle/Data/Images/Anomaly/001.JPG,candle/Data/Masks/Anomaly/001.png",
        "candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,candle/Data/Masks/Anomaly/000.png",
        "pcb1,train,normal,pcb1/Data/Images/Normal/0000.JPG,",
        "pcb1,test,normal,pcb1/Data/Images/Normal/0001.JPG,",
    ]
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")


def test_visa_raw(tmp_path: Path) -> None:
    make_visa_raw(tmp_path)
    assert list_categories("visa", tmp_path) == ["candle", "pcb1"]
    data = load_category("visa", tmp_path, "candle")
    assert data.dataset == "visa" and data.root == tmp_path / "candle"
    assert [p.name for p in data.train] == ["0001.JPG", "0002.JPG", "0003.JPG"]
    assert [s.image_id for s in data.test] == [
        "Data/Images/Anomaly/000.JPG",
        "Data/Images/Anomaly/001.JPG",
        "Data/Images/Normal/0004.JPG",
    ]
    bad = data.test[0]
    assert bad.label == 1 and bad.defect == "anomaly"
    assert bad.mask_path == tmp_path / "candle" / "Data" / "Masks" / "Anomaly" / "000.png"
    assert data.test[2].label == 0 and data.test[2].defect == "good"
    assert data.has_masks
    mask = load_mask(bad, image_size(bad.path))
    assert mask.shape == (H, W) and mask.sum() == 72  # value 3 binarised
    # The category folder itself as root: the split file is found beside it.
    assert load_category("visa", tmp_path / "candle", "candle").test == data.test


@pytest.mark.parametrize(
    ("header", "row", "expect"),
    [
        ("object,split,image,mask", None, "label"),
        (None, "candle,test,broken,candle/Data/Images/Anomaly/000.JPG,", "broken"),
        (None, "candle,val,normal,candle/Data/Images/Anomaly/000.JPG,", "val"),
        (None, "candle,test,normal,candle/Data/Images/Normal/9999.JPG,", "9999.JPG"),
        (
            None,
            "candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,candle/Data/Masks/Anomaly/x.png",
            "x.png",
        ),
    ],
)
def test_visa_csv_errors(tmp_path: Path, header: str | None, row: str | None, expect: str) -> None:
    make_visa_raw(tmp_path)
    csv_path = tmp_path / "split_csv" / "1cls.csv"
    lines = csv_path.read_text().splitlines()
    if header is not None:
        lines = [header] + [",".join(x.split(",")[:2] + x.split(",")[3:]) for x in lines[1:]]
    if row is not None:
        lines.append(row)
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        load_category("visa", tmp_path, "candle")
    assert str(csv_path) in str(err.value) and expect in str(err.value)


def test_visa_csv_missing(tmp_path: Path) -> None:
    make_visa_raw(tmp_path)
    (tmp_path / "split_csv" / "1cls.csv").unlink()
    with pytest.raises(FileNotFoundError) as err:
        load_category("visa", tmp_path, "candle")
    assert str(tmp_path / "split_csv" / "1cls.csv") in str(err.value)


def test_visa_1cls(tmp_path: Path) -> None:
    cat = tmp_path / "pcb2"
    for name in ("b.JPG", "a.JPG"):
        write_image(cat / "train" / "good" / name)
    write_image(cat / "test" / "good" / "c.JPG")
    write_image(cat / "test" / "bad" / "d.JPG")
    write_image(cat / "test" / "bad" / "e.JPG")
    write_mask(cat / "ground_truth" / "bad" / "d.png")
    write_mask(cat / "ground_truth" / "bad" / "e_mask.png")
    assert list_categories("visa", tmp_path) == ["pcb2"]
    data = load_category("visa", tmp_path, "pcb2")
    assert [p.name for p in data.train] == ["a.JPG", "b.JPG"]
    assert [(s.image_id, s.label, s.defect) for s in data.test] == [
        ("test/bad/d.JPG", 1, "bad"),
        ("test/bad/e.JPG", 1, "bad"),
        ("test/good/c.JPG", 0, "good"),
    ]
    assert data.test[0].mask_path == cat / "ground_truth" / "bad" / "d.png"
    assert data.test[1].mask_path == cat / "ground_truth" / "bad" / "e_mask.png"
    assert data.has_masks


# ---------------------------------------------------------------- errors


def test_root_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as err:
        list_categories("mvtec", missing)
    assert str(missing) in str(err.value)
    with pytest.raises(FileNotFoundError) as err:
        load_category("mvtec", missing, "bottle")
    assert str(missing) in str(err.value)
    empty = tmp_path / "empty"
    (empty / "bottle" / "train").mkdir(parents=True)
    for dataset in DATASETS:
        with pytest.raises(ValueError) as err:
            list_categories(dataset, empty)
        assert str(empty) in str(err.value) and "train/good" in str(err.value)
    with pytest.raises(ValueError, match="unknown dataset"):
        list_categories("mvtec_ad", empty)


def test_category_errors(tmp_path: Path) -> None:
    cat = tmp_path / "bottle"
    (cat / "train" / "good").mkdir(parents=True)
    with pytest.raises(ValueError) as err:
        load_category("mvtec", tmp_path, "bottle")
    assert str(cat / "train" / "good") in str(err.value)
    write_image(cat / "train" / "good" / "000.png")
    with pytest.raises(FileNotFoundError) as err:
        load_category("mvtec", tmp_path, "bottle")
    assert str(cat / "test") in str(err.value)
    (cat / "test" / "good").mkdir(parents=True)
    with pytest.raises(ValueError) as err:
        load_category("mvtec", tmp_path, "bottle")
    assert str(cat / "test") in str(err.value) and "no test images" in str(err.value)


def test_image_size_errors(tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(ValueError) as err:
        image_size(bad)
    assert str(bad) in str(err.value)
    with pytest.raises(FileNotFoundError) as err:
        image_size(tmp_path / "gone.png")
    assert str(tmp_path / "gone.png") in str(err.value)


def test_grayscale_16bit_odd_sizes(tmp_path: Path) -> None:
    from trustad.backbone import load_rgb8

    cat = tmp_path / "odd"
    gray = cat / "train" / "good" / "gray.png"
    gray.parent.mkdir(parents=True)
    Image.fromarray(np.full((17, 23), 90, dtype=np.uint8)).save(gray)
    deep = cat / "test" / "good" / "deep.png"
    deep.parent.mkdir(parents=True)
    Image.fromarray(np.full((31, 13), 40000, dtype=np.uint16)).save(deep)
    tif = cat / "test" / "hole" / "x.TIF"
    tif.parent.mkdir(parents=True)
    Image.fromarray(np.zeros((9, 11, 3), dtype=np.uint8)).save(tif)
    write_mask(cat / "ground_truth" / "hole" / "x_mask.png", size=(11, 9), box=(1, 1, 3, 3))
    data = load_category("folder", tmp_path, "odd")
    assert image_size(gray) == (23, 17)
    assert image_size(deep) == (13, 31)
    assert image_size(tif) == (11, 9)
    assert load_rgb8(deep).size == (13, 31)
    hole = [s for s in data.test if s.defect == "hole"][0]
    assert load_mask(hole, image_size(hole.path)).sum() == 4


# ---------------------------------------------------------------- few-shot support


def test_support_paths() -> None:
    train = [Path(f"/d/train/good/{i:03d}.png") for i in range(20)][::-1]
    ordered = sorted(train)
    for k in (1, 2, 4, 8):
        for seed in (0, 1, 2):
            if (seed + 1) * k <= len(train):  # 8 shots, seed 2 needs 24: checked below
                assert support_paths(train, k, seed) == ordered[seed * k : (seed + 1) * k]
    assert support_paths(train, 16, 0) == ordered[:16]
    with pytest.raises(ValueError) as err:
        support_paths(train, 8, 2)
    msg = str(err.value)
    assert "24" in msg and "20" in msg and "/d/train/good" in msg
    with pytest.raises(ValueError):
        support_paths(train, 0, 0)


# ---------------------------------------------------------------- defaults table


def test_category_defaults() -> None:
    assert len(MVTEC_CATEGORIES) == 15 and len(VISA_CATEGORIES) == 12
    assert category_defaults("mvtec", "screw") == CategoryDefaults(rotate=True, mask_test=True)
    assert category_defaults("mvtec", "carpet") == CategoryDefaults(rotate=True, mask_test=False)
    assert not category_defaults("mvtec", "carpet", "informed").rotate
    assert category_defaults("mvtec", "hazelnut", "informed") == CategoryDefaults(True, True)
    assert category_defaults("mvtec", "pill", "informed") == CategoryDefaults(False, True)
    assert category_defaults("visa", "candle").mask_test
    assert category_defaults("folder", "anything") == CategoryDefaults(True, False)
    assert category_defaults("mvtec", "screw", "none") == CategoryDefaults(False, False)
    assert category_defaults("visa", "pcb1", "none") == CategoryDefaults(False, False)
    masked = {c for c in MVTEC_CATEGORIES if category_defaults("mvtec", c).mask_test}
    assert masked == {"capsule", "hazelnut", "pill", "screw", "toothbrush"}
    assert all(category_defaults("visa", c).mask_test for c in VISA_CATEGORIES)
    assert all(category_defaults("visa", c, "informed").mask_test for c in VISA_CATEGORIES)
    assert category_defaults("mvtec", "new_thing") == CategoryDefaults(True, False)
    with pytest.raises(ValueError) as err:
        category_defaults("mvtec", "screw", "clever")
    assert "agnostic" in str(err.value) and "informed" in str(err.value)


def test_root_given_as_dot_keeps_the_category_name(tmp_path, monkeypatch):
    from trustad.data import make_synthetic_dataset

    make_synthetic_dataset(
        tmp_path, categories=("brick",), n_train=1, n_test_good=1, n_test_defect=1, size=32
    )
    monkeypatch.chdir(tmp_path / "brick")
    assert list_categories("folder", ".") == ["brick"]
    assert load_category("folder", ".", "brick").category == "brick"
