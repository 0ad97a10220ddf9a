"""The image reader against a generated corpus of awkward and broken files: every outcome is
either the right pixels or an ImageReadError that names the file and the reason."""

from __future__ import annotations

import io
import os
import pickle
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
from corpus import (
    COLOURS,
    LOSSY,
    REQUIRED,
    RESIZED,
    WRITABLE,
    H,
    W,
    assert_refused,
    exif_with_orientation,
    extension,
    png_chunk,
    png_chunks,
    png_header_only,
    stripes,
    write_format,
)
from PIL import Image, ImageOps

from trustad import images
from trustad.backbone import load_rgb8
from trustad.data import image_size
from trustad.images import (
    IMAGE_EXTENSIONS,
    READABLE_FORMATS,
    ImageNotFoundError,
    ImageReadError,
    read_rgb8,
    read_size,
)

# ---------------------------------------------------------------- formats


def test_extensions_come_from_pillow_decoders() -> None:
    for ext in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm"):
        assert ext in IMAGE_EXTENSIONS
    assert ".tga" in IMAGE_EXTENSIONS and ".pgm" in IMAGE_EXTENSIONS
    # Formats Pillow writes but cannot read, only identifies, or decodes no pixels of.
    for ext in (".pdf", ".h5", ".grib", ".bufr", ".mpg", ".txt"):
        assert ext not in IMAGE_EXTENSIONS
    assert all(ext == ext.lower() and ext.startswith(".") for ext in IMAGE_EXTENSIONS)
    assert "MPEG" not in READABLE_FORMATS and "HDF5" not in READABLE_FORMATS


@pytest.mark.parametrize("fmt", WRITABLE)
def test_every_writable_format(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"img{extension(fmt)}"
    expected, _mode = write_format(path, fmt)
    got = np.asarray(load_rgb8(path))
    assert got.dtype == np.uint8 and got.ndim == 3 and got.shape[-1] == 3
    if fmt in RESIZED:
        return
    assert got.shape == expected.shape
    assert image_size(path) == (W, H) == read_size(path)
    diff = np.abs(got.astype(int) - expected.astype(int))
    if fmt in LOSSY:
        assert diff.mean() < 25, diff.mean()
    else:
        assert diff.max() == 0


def test_required_formats_are_writable_here() -> None:
    assert REQUIRED <= set(WRITABLE)


def test_gif_gives_its_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (W, H), c) for c in COLOURS[:3]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert (np.asarray(load_rgb8(path)) == COLOURS[0]).all()


# ---------------------------------------------------------------- modes


def test_modes_become_rgb8(tmp_path: Path) -> None:
    deep = np.array([[0, 1000, 30000], [40000, 65535, 257]], dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    got = np.asarray(load_rgb8(tmp_path / "deep.png"))[..., 0].astype(int)
    assert (got == np.round(deep * 255.0 / 65535.0)).all()

    pal = Image.new("P", (4, 3))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putpixel((1, 1), 1)
    pal.save(tmp_path / "pal.png", transparency=0)
    got = np.asarray(load_rgb8(tmp_path / "pal.png"))
    assert tuple(got[1, 1]) == (0, 0, 255) and tuple(got[0, 0]) == (255, 0, 0)

    cmyk = Image.new("CMYK", (5, 4), (0, 255, 255, 0))  # red in ink
    for ext in (".jpg", ".tif"):
        cmyk.save(tmp_path / f"cmyk{ext}")
        got = np.asarray(load_rgb8(tmp_path / f"cmyk{ext}")).astype(int)
        assert got.shape == (4, 5, 3) and (np.abs(got - [255, 0, 0]) <= 3).all()

    rgba = np.zeros((3, 4, 4), dtype=np.uint8)
    rgba[..., :3], rgba[..., 3] = (10, 20, 30), 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert (np.asarray(load_rgb8(tmp_path / "rgba.png")) == [10, 20, 30]).all()

    Image.new("LA", (3, 2), (77, 5)).save(tmp_path / "la.png")
    assert (np.asarray(load_rgb8(tmp_path / "la.png")) == 77).all()

    bits = Image.new("1", (9, 7))
    bits.putpixel((2, 3), 1)
    bits.save(tmp_path / "bits.png")
    got = np.asarray(load_rgb8(tmp_path / "bits.png"))
    assert got[3, 2].tolist() == [255] * 3 and got.sum() == 255 * 3

    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)).save(tmp_path / "f.tif")
    assert np.asarray(load_rgb8(tmp_path / "f.tif"))[0, :, 0].tolist() == [0, 128, 255]
    Image.fromarray(np.array([[0, 70000]], dtype=np.int32)).save(tmp_path / "i32.tif")
    assert np.asarray(load_rgb8(tmp_path / "i32.tif"))[0, :, 0].tolist() == [0, 0]


def test_values_that_cannot_be_scaled_are_refused(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0.0, 3.0]], dtype=np.float32)).save(tmp_path / "hot.tif")
    assert_refused(tmp_path / "hot.tif", "mode F", "[0, 1]")
    Image.fromarray(np.array([[-5, 3]], dtype=np.int32)).save(tmp_path / "neg.tif")
    assert_refused(tmp_path / "neg.tif", "negative")


def test_large_16bit_scaled_block_by_block_as_a_whole(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 65536, size=(1000, 37), dtype=np.uint16)  # several blocks of rows
    got = images.array_to_uint8(arr)
    assert (got == np.round(arr.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)).all()


@pytest.mark.parametrize("size", [(1, 1), (1, 3000), (3000, 1)])
def test_tiny_and_extreme_aspect(tmp_path: Path, size: tuple[int, int]) -> None:
    path = tmp_path / f"{size[0]}x{size[1]}.png"
    Image.new("RGB", size, (1, 2, 3)).save(path)
    img = load_rgb8(path)
    assert img.size == size == image_size(path)
    assert (np.asarray(img) == [1, 2, 3]).all()


# ---------------------------------------------------------------- EXIF orientation


def test_exif_orientation_6_turns_the_image_as_a_viewer_does(tmp_path: Path) -> None:
    stored = np.zeros((20, 40, 3), dtype=np.uint8)  # 40 wide, 20 high as stored
    stored[:5, :5] = (255, 0, 0)  # the stored top-left corner is red
    path = tmp_path / "camera.jpg"
    Image.fromarray(stored).save(path, exif=exif_with_orientation(6), quality=95)
    # Orientation 6: a viewer turns the picture 90 degrees clockwise, so it shows 20 wide,
    # 40 high, and the stored top-left corner lands at the top right.
    assert image_size(path) == (20, 40) == read_size(path)
    got = np.asarray(load_rgb8(path)).astype(int)
    assert got.shape == (40, 20, 3)
    assert got[1, 18, 0] > 200 and got[1, 18, 1] < 60  # top right: red
    assert got[1, 1].max() < 60 and got[38, 1].max() < 60 and got[38, 18].max() < 60


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF", "WEBP"])
def test_every_orientation_agrees_with_pillow(tmp_path: Path, fmt: str, orientation: int) -> None:
    arr = np.zeros((6, 10, 3), dtype=np.uint8)
    arr[0, 0], arr[5, 9] = (255, 255, 255), (0, 255, 0)
    path = tmp_path / f"o{orientation}.{fmt.lower()}"
    kwargs = {"lossless": True} if fmt == "WEBP" else {"quality": 100} if fmt == "JPEG" else {}
    Image.fromarray(arr).save(path, format=fmt, exif=exif_with_orientation(orientation), **kwargs)
    with Image.open(path) as img:
        want = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    got = np.asarray(load_rgb8(path))
    assert got.shape == want.shape and (got == want).all()
    assert image_size(path) == (got.shape[1], got.shape[0])


def test_png_orientation_after_the_pixel_data(tmp_path: Path) -> None:
    """A PNG may put its eXIf chunk after IDAT, where Pillow sees it only by decoding: the
    size from the header must still agree with the decoded image."""
    buf = io.BytesIO()
    Image.new("RGB", (10, 4), (9, 9, 9)).save(buf, "PNG", exif=exif_with_orientation(8))
    chunks = png_chunks(buf.getvalue())
    exif = [c for c in chunks if c[0] == b"eXIf"]
    rest = [c for c in chunks if c[0] not in (b"eXIf", b"IEND")]
    assert exif, "Pillow wrote no eXIf chunk"
    late = rest + exif + [(b"IEND", b"")]
    path = tmp_path / "late.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"".join(png_chunk(k, d) for k, d in late))
    assert load_rgb8(path).size == (4, 10) == image_size(path)


def test_broken_exif_counts_as_none(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (8, 4)).save(buf, "JPEG", exif=b"Exif\x00\x00MM\x00*garbage")
    path = tmp_path / "badexif.jpg"
    path.write_bytes(buf.getvalue())
    assert load_rgb8(path).size == (8, 4) == image_size(path)


# ---------------------------------------------------------------- limits and bombs


def test_decompression_bomb_refused_from_the_header(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(60000, 60000))
    assert path.stat().st_size < 200
    err = assert_refused(path, "too large")
    assert "60000" in str(err) or "3600000000" in str(err)
    with pytest.raises(ImageReadError):
        image_size(path)


def test_just_over_the_limits(tmp_path: Path) -> None:
    over = tmp_path / "over.png"
    over.write_bytes(png_header_only(10001, 10000))  # 100,010,000 pixels, under Pillow's
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning may escape either
        err = assert_refused(over, "100010000", str(images.MAX_PIXELS))
        with pytest.raises(ImageReadError):
            read_size(over)
    side = tmp_path / "side.png"
    side.write_bytes(png_header_only(images.MAX_SIDE + 1, 1))
    assert_refused(side, "side", str(images.MAX_SIDE))
    assert "limit" in err.reason
    # Just under: the header passes (the pixels are missing, so decoding then fails).
    under = tmp_path / "under.png"
    under.write_bytes(png_header_only(9000, 9000))  # over Pillow's warning threshold
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_size(under) == (9000, 9000)


def test_limits_settable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "small.png"
    Image.new("RGB", (101, 100)).save(path)
    assert read_rgb8(path, max_pixels=10100).size == (101, 100)
    with pytest.raises(ImageReadError, match="over the limit of 10099 pixels"):
        read_rgb8(path, max_pixels=10099)
    with pytest.raises(ImageReadError, match="limit of 100 pixels"):
        read_size(path, max_side=100)
    monkeypatch.setattr(images, "MAX_PIXELS", 5000)
    with pytest.raises(ImageReadError, match="5000"):
        load_rgb8(path)  # the module default governs every reader
    with pytest.raises(ImageReadError, match="5000"):
        image_size(path)


# ---------------------------------------------------------------- broken files


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("ext", [".png", ".jpg", ".webp", ".gif", ".tif", ".bmp"])
def test_truncated(tmp_path: Path, ext: str) -> None:
    rng = np.random.default_rng(1)
    path = tmp_path / f"cut{ext}"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    _truncate(path)
    assert_refused(path)


def test_zero_byte_text_and_garbage(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.touch()
    assert_refused(empty, "empty")
    text = tmp_path / "notes.png"
    text.write_text("these are my notes, not a picture\n")
    assert_refused(text, "not an image")
    fake = tmp_path / "fake.jpg"
    noise = np.random.default_rng(2).integers(0, 256, 300, dtype=np.uint8).tobytes()
    fake.write_bytes(b"\xff\xd8\xff\xe0" + noise)  # a JPEG signature, then noise
    assert_refused(fake)


def test_errors_survive_pickling(tmp_path: Path) -> None:
    for exc in (ImageReadError(tmp_path / "a.png", "why"), ImageNotFoundError("b.png", "gone")):
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is type(exc) and str(back) == str(exc)
        assert (back.path, back.reason) == (exc.path, exc.reason)


def test_missing_folder_loop_and_special_files(tmp_path: Path) -> None:
    gone = tmp_path / "gone.png"
    with pytest.raises(ImageNotFoundError) as err:
        load_rgb8(gone)
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, ValueError)
    assert str(gone) in str(err.value) and "no such file" in str(err.value)

    folder = tmp_path / "folder.png"
    folder.mkdir()
    assert_refused(folder, "folder")

    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.symlink_to(b)
    b.symlink_to(a)
    assert_refused(a, "loop")

    dangling = tmp_path / "dangling.png"
    dangling.symlink_to(tmp_path / "nowhere.png")
    assert isinstance(assert_refused(dangling, "broken symbolic link"), FileNotFoundError)

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    assert_refused(fifo, "not a regular file")  # refused, not waited on


def test_unexpected_decoder_failures_become_image_read_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ok.png"
    Image.new("RGB", (4, 4)).save(path)
    for exc in (MemoryError(), struct.error("unpack requires 4 bytes"), IndexError("x")):

        def fail(self, exc=exc):
            raise exc

        monkeypatch.setattr(Image.Image, "load", fail)
        monkeypatch.setattr("PIL.ImageFile.ImageFile.load", fail)
        err = assert_refused(path)
        assert err.__cause__ is exc
        if isinstance(exc, MemoryError):
            assert "out of memory" in err.reason
        else:
            assert type(exc).__name__ in err.reason


def test_sources_other_than_paths(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(stripes()).save(buf, "PNG")
    assert (np.asarray(read_rgb8(buf.getvalue())) == stripes()).all()
    assert (np.asarray(load_rgb8(buf.getvalue())) == stripes()).all()
    buf.seek(0)
    assert read_size(buf) == (W, H)
    with pytest.raises(ImageReadError, match="<bytes>"):
        read_rgb8(b"")
    with pytest.raises(ImageReadError, match="<bytes>"):
        read_rgb8(b"hello")
