"""Stability: how far the patch-distance map moves under a few cheap input transforms.

Adversarial perturbations are tuned to one exact input; re-encoding it as JPEG, blurring it
slightly or shifting it by two pixels tends to undo part of their effect, while a clean
image's map (defect or not) barely moves. Costs one backbone pass per transform and image.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .base import BaseFlag, FlagInputs

JPEG_QUALITY = 75
BLUR_SIGMA = 1.0  # pixels
SHIFT_PX = 2

Transform = Callable[[Tensor], Tensor]


def jpeg(x: Tensor, quality: int = JPEG_QUALITY) -> Tensor:
    """8-bit JPEG round trip of each image (B, 3, H, W). The backward pass treats it as the
    identity (straight-through), so attackers can differentiate through it."""
    out = []
    for img in x.detach().float().cpu():
        arr = (img.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
        back = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        out.append(torch.from_numpy(back.copy()).permute(2, 0, 1).float() / 255.0)
    coded = torch.stack(out).to(device=x.device, dtype=x.dtype)
    return x + (coded - x).detach()


def blur(x: Tensor, sigma: float = BLUR_SIGMA) -> Tensor:
    """Separable Gaussian blur (radius 2 sigma, reflected borders), differentiable."""
    radius = max(1, round(2 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    y = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(y, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def shift(x: Tensor, px: int = SHIFT_PX) -> Tensor:
    """Translate by ``px`` pixels down and right, repeating the first rows and columns."""
    h, w = x.shape[-2:]
    return F.pad(x, (px, 0, px, 0), mode="replicate")[..., :h, :w]


TRANSFORMS: dict[str, Transform] = {"jpeg": jpeg, "blur": blur, "shift": shift}


class StabilityFlag(BaseFlag):
    """Mean absolute change of the patch-distance map under each transform in
    ``TRANSFORMS``, averaged over the transforms (one backbone pass each)."""

    name = "stability"
    advice = "the answer moves under slight re-encoding, blur or a 2-pixel shift, as a manipulated image does: re-take the picture"
    needs = ("distances", "images")

    def __init__(self, transforms: tuple[str, ...] = tuple(TRANSFORMS)) -> None:
        unknown = [t for t in transforms if t not in TRANSFORMS]
        if unknown or not transforms:
            raise ValueError(
                f"stability transforms must be a non-empty subset of {tuple(TRANSFORMS)}, "
                f"got {transforms}"
            )
        self.transforms = tuple(transforms)
        self.cost = len(self.transforms)

    def transformed_distances(self, x: Tensor) -> list[Tensor]:
        """Distance grids (B, h, w) of each transformed batch, masked as the detector masks."""
        det = self.detector_
        return [
            det.pixel_distances(TRANSFORMS[name](x.to(det.device)))[1] for name in self.transforms
        ]

    def compute(self, inputs: FlagInputs) -> Tensor:
        d = inputs.distances.to(self.detector_.device)
        changes = [
            (d_t - d).abs().flatten(1).mean(dim=1)
            for d_t in self.transformed_distances(inputs.images)
        ]
        return torch.stack(changes).mean(dim=0)
