"""Benign image corruptions: what an ordinary camera does to a good part's picture.

Each corruption takes preprocessed images, float tensors (3, H, W) or (B, 3, H, W) in
[0, 1] as ``trustad.backbone.preprocess`` gives them, and returns a tensor of the same
shape, dtype and device, quantised to 8 bits and clipped to [0, 1] like a real camera
frame. One function per name in ``CORRUPTIONS``, each called ``fn(images, level,
generator)``; only ``gaussian-noise`` draws random numbers (on the CPU, so a seed gives the
same frame on every device).

=================  ========================================  =============================
name               level                                     neutral level
=================  ========================================  =============================
gaussian-noise     sigma in grey levels (of 255), >= 0       0
jpeg               quality, an integer 1 to 100              none (100 is nearly lossless)
blur               Gaussian sigma in pixels, >= 0            0
brightness         gain in percent, -100 to 100              0
contrast           percent, -100 to 100 (about the mean)     0
shift              pixels, an integer (down and right; < 0:  0
                   up and left), reflected borders
=================  ========================================  =============================

``parse_corruption("jpeg:50")`` gives a ``Corruption`` that applies itself;
``BENIGN_ENVELOPE`` is the fixed set of variants that stands for "ordinary camera
variation" when flag thresholds are set, and ``benign_variants`` applies it to a batch.

With ``gaussian-noise`` of sigma grey levels, the noise-level flag
(``trustad.flags.NoiseLevelFlag``, a median absolute response) reads about
0.674 * sigma / 255 on a smooth image: 0.674 is the median of |N(0, 1)|.
"""

from __future__ import annotations

import io
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .backbone.preprocess import to_unit

Corrupt = Callable[[Tensor, float, torch.Generator], Tensor]

# ITU-R 601 luma weights: the grey whose mean contrast scales about, as Pillow and
# torchvision take it.
LUMA = (0.299, 0.587, 0.114)
BLUR_TRUNCATE = 4.0  # kernel radius in sigmas, as scipy.ndimage.gaussian_filter


def to_uint8(images: Tensor) -> Tensor:
    """Images in [0, 1] as the nearest of the 256 grey levels (uint8), clipped."""
    return (images.float() * 255.0).round().clamp(0.0, 255.0).to(torch.uint8)


def to_8bit_frame(images: Tensor) -> Tensor:
    """Images rounded to 8 bits and clipped to [0, 1], in their own dtype."""
    return to_unit(to_uint8(images)).to(images.dtype)


def gaussian_noise(images: Tensor, sigma: float, generator: torch.Generator) -> Tensor:
    """Sensor noise: independent N(0, sigma / 255) per pixel and channel."""
    noise = torch.randn(images.shape, generator=generator, dtype=torch.float32)
    return to_8bit_frame(images + noise.to(images.device, images.dtype) * (sigma / 255.0))


def jpeg(images: Tensor, quality: float, generator: torch.Generator) -> Tensor:
    """Pillow's JPEG encode and decode at ``quality`` (its default 4:2:0 chroma subsampling,
    as most cameras and encoders use)."""
    out = []
    for image in to_uint8(images.detach().cpu()):
        pixels = image.permute(1, 2, 0).numpy()
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=int(quality))
        decoded = np.asarray(Image.open(buffer).convert("RGB"))
        out.append(torch.from_numpy(decoded.copy()).permute(2, 0, 1))
    return to_unit(torch.stack(out)).to(images.device, images.dtype)


def blur(images: Tensor, sigma: float, generator: torch.Generator) -> Tensor:
    """Gaussian blur of ``sigma`` pixels: a separable kernel of radius 4 sigma, borders
    reflected without repeating the edge pixel (scipy's "mirror", OpenCV's default)."""
    if sigma == 0:
        return to_8bit_frame(images)
    radius = math.ceil(BLUR_TRUNCATE * sigma)
    _check_fits(images, radius, f"blur of sigma {sigma:g} px (kernel radius {radius})")
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(images.device, images.dtype)
    channels = images.shape[1]
    x = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    x = F.conv2d(x, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    return to_8bit_frame(x)


def brightness(images: Tensor, percent: float, generator: torch.Generator) -> Tensor:
    """Exposure: every value times (1 + percent / 100)."""
    return to_8bit_frame(images * (1.0 + percent / 100.0))


def contrast(images: Tensor, percent: float, generator: torch.Generator) -> Tensor:
    """Distance from each image's mean grey times (1 + percent / 100)."""
    luma = torch.tensor(LUMA, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    mean = (images * luma).sum(dim=1, keepdim=True).mean(dim=(1, 2, 3), keepdim=True)
    return to_8bit_frame(mean + (images - mean) * (1.0 + percent / 100.0))


def shift(images: Tensor, pixels: float, generator: torch.Generator) -> Tensor:
    """Move the content ``pixels`` down and right (up and left when negative), filling the
    uncovered border by reflection (without repeating the edge pixel)."""
    k = int(pixels)
    if k == 0:
        return to_8bit_frame(images)
    _check_fits(images, abs(k), f"shift of {k} px")
    h, w = images.shape[-2:]
    if k > 0:
        moved = F.pad(images, (k, 0, k, 0), mode="reflect")[..., :h, :w]
    else:
        moved = F.pad(images, (0, -k, 0, -k), mode="reflect")[..., -k:, -k:]
    return to_8bit_frame(moved)


def _check_fits(images: Tensor, border: int, what: str) -> None:
    h, w = images.shape[-2:]
    if border >= min(h, w):
        raise ValueError(f"{what} needs images larger than {border} px, got {h}x{w}")


CORRUPTIONS: dict[str, Corrupt] = {
    "gaussian-noise": gaussian_noise,
    "jpeg": jpeg,
    "blur": blur,
    "brightness": brightness,
    "contrast": contrast,
    "shift": shift,
}


@dataclass(frozen=True)
class LevelRange:
    """The levels a corruption accepts, and what they mean."""

    low: float
    high: float
    integer: bool
    meaning: str

    def accepts(self, level: float) -> bool:
        if isinstance(level, bool) or not isinstance(level, numbers.Real):
            return False
        if not (math.isfinite(level) and self.low <= level <= self.high):
            return False
        return not self.integer or float(level).is_integer()


LEVELS: dict[str, LevelRange] = {
    "gaussian-noise": LevelRange(0, 255, False, "sigma in grey levels of 255, 0 to 255"),
    "jpeg": LevelRange(1, 100, True, "quality, an integer 1 to 100"),
    "blur": LevelRange(0, math.inf, False, "Gaussian sigma in pixels, >= 0"),
    "brightness": LevelRange(-100, 100, False, "percent, -100 to 100"),
    "contrast": LevelRange(-100, 100, False, "percent, -100 to 100"),
    "shift": LevelRange(
        -math.inf, math.inf, True, "pixels down and right (negative: up and left), an integer"
    ),
}


def valid_corruptions() -> str:
    """Every name with its levels, for error messages and help texts."""
    return "; ".join(f"{name}:LEVEL ({LEVELS[name].meaning})" for name in CORRUPTIONS)


@dataclass(frozen=True)
class Corruption:
    """One corruption at one level, e.g. ``Corruption("gaussian-noise", 2)``."""

    name: str
    level: float

    def __post_init__(self) -> None:
        if self.name not in CORRUPTIONS:
            raise ValueError(
                f"unknown corruption {self.name!r}; expected one of: {valid_corruptions()}"
            )
        if not LEVELS[self.name].accepts(self.level):
            raise ValueError(
                f"level {self.level!r} is not valid for {self.name!r}: expected "
                f"{LEVELS[self.name].meaning}"
            )

    @property
    def label(self) -> str:
        """The text that parses back to this corruption, e.g. "jpeg:50"."""
        level = float(self.level)
        return f"{self.name}:{int(level) if level.is_integer() else level!r}"

    def apply(self, images: Tensor, seed: int | torch.Generator = 0) -> Tensor:
        """The corrupted images, shaped like ``images``; the same seed (an int, or a CPU
        ``torch.Generator`` to draw from) gives the same result."""
        batch = _as_batch(images)
        if isinstance(seed, torch.Generator):
            generator = seed
        else:
            generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            out = CORRUPTIONS[self.name](batch, self.level, generator)
        return out if images.ndim == 4 else out[0]


def _as_batch(images: Tensor) -> Tensor:
    if not isinstance(images, Tensor):
        raise TypeError(f"expected a torch tensor of images, got {type(images).__name__}")
    if images.ndim not in (3, 4) or images.shape[-3] != 3:
        raise ValueError(f"expected images (3, H, W) or (B, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"expected float images in [0, 1], got dtype {images.dtype}")
    return images if images.ndim == 4 else images.unsqueeze(0)


def parse_corruption(text: str) -> Corruption:
    """``"NAME:LEVEL"`` (e.g. ``"gaussian-noise:2"``, ``"brightness:-10"``) as a Corruption."""
    name, sep, level_text = text.strip().partition(":")
    try:
        level = float(level_text)
    except ValueError:
        level = None
    if not sep or level is None:
        raise ValueError(
            f"cannot read corruption {text!r}: expected NAME:LEVEL, one of: {valid_corruptions()}"
        )
    try:
        return Corruption(name, int(level) if level.is_integer() else level)
    except ValueError as err:
        raise ValueError(f"cannot read corruption {text!r}: {err}") from None


# Ordinary camera variation: sensor noise up to 3 grey levels, JPEG at quality >= 50, blur
# up to 1 px, brightness and contrast +/-10 %, shifts up to 2 px.
BENIGN_ENVELOPE: tuple[Corruption, ...] = tuple(
    parse_corruption(text)
    for text in (
        "gaussian-noise:1",
        "gaussian-noise:2",
        "gaussian-noise:3",
        "jpeg:90",
        "jpeg:70",
        "jpeg:50",
        "blur:0.5",
        "blur:1",
        "brightness:-10",
        "brightness:10",
        "contrast:-10",
        "contrast:10",
        "shift:1",
        "shift:2",
    )
)


def benign_variants(images: Tensor, seed: int = 0) -> list[tuple[str, Tensor]]:
    """(label, corrupted images) for each corruption of ``BENIGN_ENVELOPE``, in its order;
    one generator seeded once serves them all, so each noise level draws its own noise."""
    generator = torch.Generator().manual_seed(seed)
    return [(c.label, c.apply(images, generator)) for c in BENIGN_ENVELOPE]
