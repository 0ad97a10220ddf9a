"""Image preprocessing exactly as PROTOCOL section 1 fixes it.

Decode to 8-bit RGB, resize the smaller edge to ``resolution`` with Pillow's BICUBIC filter,
scale to [0, 1], crop top-left to multiples of the patch size. ImageNet normalisation is
not done here: it lives inside the backbone.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..images import array_to_uint8, check_size, read_rgb8, resized_size, to_rgb8
from .dinov2 import PATCH_SIZE

ImageInput = str | os.PathLike | bytes | Image.Image | np.ndarray | Tensor
DEFAULT_RESOLUTION = 448


def load_rgb8(image: ImageInput, resolution: int | None = None) -> Image.Image:
    """Any supported input as an 8-bit RGB PIL image (grayscale repeated, 16-bit scaled).

    A file (or its bytes) is read by ``trustad.images.read_rgb8`` (EXIF orientation applied, size limits
    checked on the header, with ``resolution`` also once resized, every failure an
    ``ImageReadError``); an image already in memory is taken as it is, its size checked
    against the same limits when ``resolution`` is given."""
    if isinstance(image, (str, os.PathLike, bytes)):
        return read_rgb8(image, resolution=resolution)
    rgb = _in_memory_rgb8(image)
    if resolution is not None:
        check_size(f"<in-memory image {rgb.width}x{rgb.height}>", rgb.size, resolution)
    return rgb


def _in_memory_rgb8(image: ImageInput) -> Image.Image:
    if isinstance(image, Image.Image):
        return to_rgb8(image)
    if isinstance(image, Tensor):
        t = image.detach().cpu()
        if t.ndim == 3 and t.shape[0] in (1, 3, 4) and t.shape[-1] not in (1, 3, 4):
            t = t.permute(1, 2, 0)  # CHW -> HWC
        image = t.numpy()
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim == 3 and arr.shape[-1] == 4:
            arr = arr[..., :3]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3):
            raise ValueError(f"expected an image array (H, W), (H, W, 1|3|4), got {arr.shape}")
        arr = array_to_uint8(arr)
        img = Image.fromarray(arr)
        return img.convert("RGB")
    raise TypeError(f"unsupported image input of type {type(image).__name__}")


def crop_to_patches(t: Tensor, patch_size: int = PATCH_SIZE) -> Tensor:
    """Crop the last two dimensions top-left to multiples of ``patch_size``."""
    h, w = t.shape[-2:]
    return t[..., : h - h % patch_size, : w - w % patch_size]


def preprocess(image: ImageInput, resolution: int = DEFAULT_RESOLUTION) -> Tensor:
    """A (3, H, W) float tensor in [0, 1], smaller edge ``resolution``, cropped to 14s."""
    return to_unit(preprocess_uint8(image, resolution))


def preprocess_uint8(image: ImageInput, resolution: int = DEFAULT_RESOLUTION) -> Tensor:
    """The 8-bit values (uint8 (3, H, W), contiguous) that ``preprocess`` scales to [0, 1]:
    Pillow's bicubic resize gives 8-bit values, so keeping these loses nothing."""
    img = load_rgb8(image, resolution)
    img = img.resize(resized_size(*img.size, resolution), Image.BICUBIC)
    return crop_to_patches(torch.from_numpy(np.array(img)).permute(2, 0, 1)).contiguous()


def to_unit(images: Tensor) -> Tensor:
    """uint8 image values as float32 in [0, 1] (value / 255, as ``preprocess`` scales)."""
    return images.float() / 255.0


def preprocess_mask(mask: np.ndarray, resolution: int = DEFAULT_RESOLUTION) -> Tensor:
    """A boolean (H, W) mask resized and cropped exactly like its image. A resized pixel is
    set when any source pixel under it is (a box filter, then > 0), so that small or thin
    defects survive the downscaling."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {mask.shape}")
    img = Image.fromarray((mask > 0).astype(np.float32))  # mode "F"
    img = img.resize(resized_size(*img.size, resolution), Image.BOX)
    return crop_to_patches(torch.from_numpy(np.asarray(img) > 0))


def patch_mask(mask: Tensor, patch_size: int = PATCH_SIZE) -> Tensor:
    """Max-pool a preprocessed (H, W) mask to the patch grid: a patch is anomalous if any
    of its pixels is."""
    h, w = mask.shape[-2] // patch_size, mask.shape[-1] // patch_size
    m = mask[..., : h * patch_size, : w * patch_size].float()
    m = m.reshape(*m.shape[:-2], h, patch_size, w, patch_size)
    return m.amax(dim=(-3, -1)) > 0
