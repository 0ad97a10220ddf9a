"""Generators of awkward and broken image files for the tests (nothing is committed)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image

from trustad.backbone import load_rgb8
from trustad.images import READABLE_FORMATS, ImageReadError

W, H = 24, 16
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0), (128, 64, 32)]


def stripes() -> np.ndarray:
    """An (H, W, 3) image of six colour stripes: few colours, so GIF stays exact."""
    arr = np.zeros((H, W, 3), dtype=np.uint8)
    for i, colour in enumerate(COLOURS):
        arr[:, i * 4 : (i + 1) * 4] = colour
    return arr


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int, colour_type: int = 0) -> bytes:
    """A tiny PNG that declares ``width`` x ``height`` with a few bytes of pixel data: a
    decompression bomb as far as any reader that trusts the header is concerned."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


# Thin strips: a few dozen bytes on disk that the model's resize would grow to tens or
# hundreds of millions of pixels (the smaller edge goes to the resolution).
THIN_STRIPS = [(3000, 1), (19000, 1), (20000, 26), (20000, 100)]


def write_strip(folder: Path, width: int, height: int) -> Path:
    """A black ``width`` x ``height`` PNG (really decodable, not a header only)."""
    path = folder / f"strip_{width}x{height}.png"
    Image.new("RGB", (width, height)).save(path)
    return path


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        out.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return out


def exif_with_orientation(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    return exif


def assert_refused(path: Path, *words: str) -> ImageReadError:
    with pytest.raises(ImageReadError) as err:
        load_rgb8(path)
    assert err.value.path == path or Path(err.value.path) == path
    msg = str(err.value)
    assert str(path) in msg and err.value.reason in msg
    for word in words:
        assert word in err.value.reason, err.value.reason
    return err.value


def extension(fmt: str) -> str | None:
    exts = sorted(e for e, f in Image.registered_extensions().items() if f == fmt)
    return exts[0] if exts else None


# Every format Pillow can both write and read here; the ones named by the task must work.
REQUIRED = {"PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF", "PPM", "TGA"}
WRITABLE = sorted(f for f in set(Image.SAVE) & set(READABLE_FORMATS) if extension(f))
LOSSY = {"JPEG", "WEBP", "AVIF"}
RESIZED = {"ICO", "ICNS"}  # icon containers store their own sizes


def write_format(path: Path, fmt: str) -> tuple[np.ndarray, str]:
    """Save the stripes in ``fmt`` in the first mode it accepts; the expected RGB pixels."""
    err: Exception | None = None
    for mode in ("RGB", "L", "1"):
        img = Image.fromarray(stripes()).convert(mode)
        try:
            img.save(path, format=fmt)
        except (OSError, ValueError, KeyError) as exc:
            err = exc
            continue
        return np.asarray(img.convert("RGB")), mode
    if fmt in REQUIRED:
        raise AssertionError(f"Pillow cannot write {fmt}: {err}")
    pytest.skip(f"Pillow cannot write {fmt} here: {err}")
