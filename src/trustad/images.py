"""The one way the package reads image files.

Every format Pillow can decode is accepted (a GIF, APNG or multi-page TIFF gives its first
frame); EXIF orientation is applied, so pixels come out the way a viewer shows them; the
size declared in the header is checked before any pixel is decoded: against ``MAX_PIXELS``
and ``MAX_SIDE``, and, given the model's ``resolution``, against ``MAX_ASPECT_RATIO`` and
``MAX_RESIZED_PIXELS`` once resized (a thin strip is tiny on disk but grows to hundreds of
millions of pixels when its smaller edge is resized to the resolution); and every failure
(missing, empty, truncated, corrupt, not an image, too large, unsupported mode, out of
memory) is raised as ``ImageReadError`` naming the file and the reason.

The limits are module-level defaults (``trustad.images.MAX_PIXELS = ...``); the pixel and
side limits are also arguments of every reader. Pillow's own bomb guard
(``PIL.Image.MAX_IMAGE_PIXELS``) still refuses images over twice its value (about 179
million pixels): raise it as well to read larger ones.
"""

from __future__ import annotations

import errno
import io
import mmap
import os
import stat
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import EpsImagePlugin, ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

MAX_PIXELS = 100_000_000  # width * height; a 100 MP RGB image decodes to 300 MB
MAX_SIDE = 20_000  # pixels along either side
# Longer side / shorter side. With the pixel limit after resizing this bounds the backbone's
# work: at 448 the largest image allowed peaks under 1 GB on the CPU path
# (benchmarks/results/hostile.md).
MAX_ASPECT_RATIO = 10.0
MAX_RESIZED_PIXELS = 2_100_000  # pixels after resizing the smaller edge to the resolution

ImageSource = str | os.PathLike | bytes | BinaryIO


class ImageReadError(ValueError):
    """An image file that cannot be read; ``path`` names it, ``reason`` says why."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"cannot read image {path}: {reason}")

    def __reduce__(self) -> tuple:  # pickled whole, so that worker processes can report it
        return type(self), (self.path, self.reason)


class ImageTooLargeError(ImageReadError):
    """An image over the pixel or side limits (refused before its pixels are decoded)."""


class NotAnImageError(ImageReadError):
    """A file that no Pillow decoder recognises as an image."""


class ImageNotFoundError(ImageReadError, FileNotFoundError):
    """No file at the path given (also a ``FileNotFoundError``)."""

    def __str__(self) -> str:  # OSError would otherwise format its own message
        return f"cannot read image {self.path}: {self.reason}"


# ---------------------------------------------------------------- formats


def _readable_formats() -> tuple[str, ...]:
    """Pillow formats that decode pixels here: not the stubs that only identify a file
    (HDF5, GRIB, BUFR, WMF outside Windows), not MPEG (size only), and EPS only with
    Ghostscript installed."""
    Image.init()
    out = []
    for name, (factory, _accept) in Image.OPEN.items():
        if isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile):
            continue
        if name == "MPEG" or (name == "EPS" and not EpsImagePlugin.has_ghostscript()):
            continue
        out.append(name)
    return tuple(sorted(out))


READABLE_FORMATS = _readable_formats()
# File name extensions (lower case, with the dot) of the formats above.
IMAGE_EXTENSIONS = frozenset(
    ext for ext, fmt in Image.registered_extensions().items() if fmt in READABLE_FORMATS
)


# ---------------------------------------------------------------- conversions

_ROWS_PER_BLOCK = 256  # scaling high-bit-depth images block by block bounds the float copy


def array_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale (never clip) an integer or float array to 8 bits: 16-bit types span
    0..65535, wider integer types are read by their largest value, floats must lie in
    [0, 1]."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):
        peak = int(arr.max(initial=0))
        if arr.dtype.itemsize == 2 or 255 < peak <= 65535:
            top = 65535.0
        elif peak <= 255:
            top = 255.0
        else:
            top = float(np.iinfo(arr.dtype).max)
        scale = 255.0 / top
    else:
        low, high = float(arr.min(initial=0)), float(arr.max(initial=0))
        if low < 0 or high > 1:
            raise ValueError(f"float image values must lie in [0, 1], got range [{low}, {high}]")
        scale = 255.0
    out = np.empty(arr.shape, dtype=np.uint8)
    for start in range(0, arr.shape[0], _ROWS_PER_BLOCK):
        block = arr[start : start + _ROWS_PER_BLOCK].astype(np.float64)
        out[start : start + _ROWS_PER_BLOCK] = np.round(block * scale)
    return out


def to_rgb8(img: Image.Image) -> Image.Image:
    """A PIL image of any mode as 8-bit RGB: grey repeated, 16-bit and float scaled (not
    clipped), palettes through RGBA, alpha dropped, CMYK converted by Pillow."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img)
        if img.mode.startswith("I;16"):
            arr = arr.astype(np.uint16, copy=False)
        elif img.mode == "I":
            if int(arr.min(initial=0)) < 0:
                raise ValueError("32-bit integer images with negative values are not supported")
            arr = arr.astype(np.uint32 if int(arr.max(initial=0)) > 65535 else np.uint16)
        img = Image.fromarray(array_to_uint8(arr))
    if img.mode == "P":
        img = img.convert("RGBA")
    return img if img.mode == "RGB" else img.convert("RGB")  # no copy of a large RGB image


# ---------------------------------------------------------------- reading


def _name(source: ImageSource) -> str | os.PathLike:
    """How errors name the source: a path as given, else a description."""
    if isinstance(source, (str, os.PathLike)):
        return source
    if isinstance(source, bytes):
        return "<bytes>"
    return str(getattr(source, "name", "<stream>"))


def _check_file(path: Path) -> None:
    """Refuse what is not a readable regular file, each case with its own reason."""
    try:
        st = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise ImageNotFoundError(
                path, "broken symbolic link (its target does not exist)"
            ) from None
        raise ImageNotFoundError(path, "no such file") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageReadError(path, "symbolic link loop") from None
        raise ImageReadError(path, exc.strerror or str(exc)) from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageReadError(path, "is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise ImageReadError(path, "not a regular file")
    if st.st_size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")


def resized_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """(width, height) after resizing the smaller edge to ``resolution`` (torchvision's rule)."""
    if width <= height:
        return resolution, int(resolution * height / width)
    return int(resolution * width / height), resolution


def size_problem(
    size: tuple[int, int],
    resolution: int | None = None,
    max_pixels: int | None = None,
    max_side: int | None = None,
) -> str:
    """The reason an image of ``size`` (width, height) is refused, or '': the pixel and
    side limits, and for a model of ``resolution`` the aspect ratio and the pixels once
    resized to it."""
    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
    max_side = MAX_SIDE if max_side is None else max_side
    width, height = size
    if width < 1 or height < 1:
        return f"declares an empty size {width}x{height}"
    if max(width, height) > max_side:
        return f"{width}x{height} pixels: a side is over the limit of {max_side} pixels"
    if width * height > max_pixels:
        return (
            f"{width}x{height} = {width * height} pixels is over the limit of {max_pixels} pixels"
        )
    if resolution is None:
        return ""
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT_RATIO:
        return (
            f"{width}x{height} pixels: its aspect ratio {ratio:.1f}:1 is over the limit of "
            f"{MAX_ASPECT_RATIO:g}:1 (resized for the model it would be "
            f"{ratio:.1f} times the work of a square image)"
        )
    rw, rh = resized_size(width, height, resolution)
    if rw * rh > MAX_RESIZED_PIXELS:
        return (
            f"{width}x{height} pixels, resized to the model's resolution {resolution} "
            f"(smaller edge) {rw}x{rh} = {rw * rh} pixels, over the limit of "
            f"{MAX_RESIZED_PIXELS} pixels"
        )
    return ""


def check_size(name: str | os.PathLike, size: tuple[int, int], resolution: int | None) -> None:
    """Refuse an image already in memory as the readers refuse a file's header: raise
    ``ImageTooLargeError`` naming it."""
    problem = size_problem(size, resolution)
    if problem:
        raise ImageTooLargeError(name, problem)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, Image.DecompressionBombError):
        return f"too large, refused before decoding ({exc})"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image in a format Pillow can decode"
    if isinstance(exc, MemoryError):
        return "out of memory while decoding"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextmanager
def _opened(
    source: ImageSource, max_pixels: int | None, max_side: int | None, resolution: int | None
) -> Iterator[Image.Image]:
    """The image opened (header only) with its declared size checked; any failure inside
    the block, decoding included, becomes ``ImageReadError``."""
    name = _name(source)
    if isinstance(source, (str, os.PathLike)):
        _check_file(Path(source))
    elif isinstance(source, bytes):
        if not source:
            raise ImageReadError(name, "empty file (0 bytes)")
        source = io.BytesIO(source)
    try:
        with warnings.catch_warnings():
            # The limits below replace Pillow's warning for images between its limit and
            # twice it; its error over twice the limit still stops a bomb at the header.
            # (Before Python 3.14 this filter is process-wide while the block runs.)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source, formats=READABLE_FORMATS) as img:
                refused = size_problem(img.size, resolution, max_pixels, max_side)
                if refused:
                    raise ImageTooLargeError(name, refused)
                yield img
    except ImageReadError:
        raise
    except Exception as exc:  # noqa: BLE001  Pillow's plugins raise many types on bad data
        kind = ImageReadError
        if isinstance(exc, Image.DecompressionBombError):
            kind = ImageTooLargeError
        elif isinstance(exc, UnidentifiedImageError):
            kind = NotAnImageError
        raise kind(name, _reason(exc)) from exc


def _orientation(img: Image.Image) -> int:
    """The EXIF (or XMP) orientation, 1..8; unreadable metadata counts as none, as in
    most viewers."""
    try:
        value = img.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # noqa: BLE001  broken metadata must not hide intact pixels
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


_PNG_EXIF_MARKERS = (b"eXIf", b"Raw profile type exif", b"XML:com.adobe.xmp")


def _png_may_have_late_exif(img: Image.Image) -> bool:
    """Whether a PNG may carry orientation after its pixel data, where Pillow finds it
    only by decoding: a search of the raw bytes for the chunks that can hold it."""
    fp = getattr(img, "fp", None)
    if fp is None:
        return True
    try:
        with mmap.mmap(fp.fileno(), 0, access=mmap.ACCESS_READ) as raw:
            return any(raw.find(marker) >= 0 for marker in _PNG_EXIF_MARKERS)
    except (OSError, ValueError, io.UnsupportedOperation):
        return True


def read_image(
    source: ImageSource,
    *,
    max_pixels: int | None = None,
    max_side: int | None = None,
    resolution: int | None = None,
) -> Image.Image:
    """The decoded first frame of an image file (a path, bytes or a binary file), in its
    own mode, turned the way its EXIF orientation says. ``resolution``: the model's, to
    refuse what would be too large once resized to it."""
    with _opened(source, max_pixels, max_side, resolution) as img:
        img.load()
        if _orientation(img) != 1:
            ImageOps.exif_transpose(img, in_place=True)
        return img  # leaving the block closes the file; the decoded pixels stay


def read_rgb8(
    source: ImageSource,
    *,
    max_pixels: int | None = None,
    max_side: int | None = None,
    resolution: int | None = None,
) -> Image.Image:
    """``read_image`` converted to 8-bit RGB by ``to_rgb8``."""
    img = read_image(source, max_pixels=max_pixels, max_side=max_side, resolution=resolution)
    try:
        return to_rgb8(img)
    except Exception as exc:  # noqa: BLE001  e.g. a mode Pillow cannot convert
        raise ImageReadError(_name(source), f"image mode {img.mode}: {_reason(exc)}") from exc


def read_size(
    source: ImageSource,
    *,
    max_pixels: int | None = None,
    max_side: int | None = None,
    resolution: int | None = None,
) -> tuple[int, int]:
    """(width, height) of the image ``read_image`` gives, from the header (EXIF
    orientation applied) without decoding pixels, except for a PNG whose orientation may
    follow its pixel data. Limits are checked as when reading."""
    with _opened(source, max_pixels, max_side, resolution) as img:
        width, height = img.size
        if img.format == "TIFF":  # Pillow reports a TIFF's size turned, and turns it on load
            return width, height
        if img.format == "PNG" and "exif" not in img.info and not _png_may_have_late_exif(img):
            return width, height
        return (height, width) if _orientation(img) in (5, 6, 7, 8) else (width, height)
