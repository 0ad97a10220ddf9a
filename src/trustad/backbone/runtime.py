"""The one way to run the backbone: device, precision, batching and preprocessing.

The detector, the attacks and the evaluation runner all go through a ``BackboneRuntime``,
so that the device, the precision switches (features, attack gradients, TF32 on CUDA) and
the batch size are decided once.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from .preprocess import DEFAULT_RESOLUTION, ImageInput, load_rgb8, preprocess

DEFAULT_BATCH_SIZE = 8


@functools.cache
def _warn_if_cpu_lacks_bf16() -> None:
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        warnings.warn(
            "this CPU has no native bfloat16: bf16 autocast runs several times slower than "
            "fp32 here; leave it off on this machine",
            stacklevel=3,
        )


def autocast_context(
    device: torch.device | str, enabled: bool
) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on ``device`` when ``enabled``, else a no-op."""
    if not enabled:
        return contextlib.nullcontext()
    kind = torch.device(device).type
    if kind == "cpu":
        _warn_if_cpu_lacks_bf16()
    return torch.autocast(kind, dtype=torch.bfloat16)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> the first CUDA device when there is one, else the CPU; other names are
    checked, so that a missing GPU is a clear error before any work starts."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {name!r}; expected auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but this machine has no CUDA device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {name!r} asked for, but this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
    return device


def batches(tensors: Sequence[Tensor], batch_size: int) -> Iterator[tuple[int, Tensor]]:
    """Consecutive runs of equally-sized tensors, stacked, with their start index."""
    start = 0
    while start < len(tensors):
        end = start + 1
        while (
            end < len(tensors)
            and end - start < batch_size
            and tensors[end].shape == tensors[start].shape
        ):
            end += 1
        yield start, torch.stack(list(tensors[start:end]))
        start = end


def set_tf32(device: torch.device, allowed: bool) -> None:
    """On CUDA, let float32 matrix products and convolutions use TF32 (inputs rounded to
    10 mantissa bits: faster on Ampere and later GPUs, no longer float32-exact) or not.
    torch's flags are process-wide; on other devices nothing is changed."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = allowed
        torch.backends.cudnn.allow_tf32 = allowed


class BackboneRuntime:
    """A frozen backbone with the settings that say how to run it.

    ``features_bf16`` runs feature extraction under bfloat16 autocast; ``gradients_bf16``
    runs the forward passes of attacks and differentiable scores under it. ``tf32`` allows
    TF32 for float32 work on CUDA; off, float32 stays float32 there (torch's own default
    allows it for convolutions).
    """

    def __init__(
        self,
        backbone: torch.nn.Module,
        *,
        resolution: int = DEFAULT_RESOLUTION,
        batch_size: int = DEFAULT_BATCH_SIZE,
        features_bf16: bool = False,
        gradients_bf16: bool = False,
        tf32: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        self.backbone = backbone
        self.resolution = resolution
        self.batch_size = batch_size
        self.features_bf16 = features_bf16
        self.gradients_bf16 = gradients_bf16
        self.tf32 = tf32
        set_tf32(self.device, tf32)
        self.images_seen = 0  # images passed through the backbone without gradient

    @property
    def device(self) -> torch.device:
        # A backbone run outside torch (an exported graph) has no parameters: the CPU.
        param = next(self.backbone.parameters(), None)
        return torch.device("cpu") if param is None else param.device

    def preprocess(self, images: Sequence[ImageInput]) -> tuple[list[Tensor], list]:
        """Model inputs (3, H, W) in [0, 1] and original (width, height) sizes."""
        rgbs = [load_rgb8(img, self.resolution) for img in images]
        return [preprocess(rgb, self.resolution) for rgb in rgbs], [rgb.size for rgb in rgbs]

    @torch.no_grad()  # not inference_mode: its tensors could not be used with autograd later
    def features(self, images: Sequence[Tensor]) -> list[Tensor]:
        """Patch features (h, w, D), float32 on the CPU, of preprocessed images (3, H, W)."""
        out: list[Tensor] = []
        for _, batch in batches(images, self.batch_size):
            with autocast_context(self.device, self.features_bf16):
                feats = self.backbone.patch_features(batch.to(self.device))
            out.extend(feats.float().cpu())
        self.images_seen += len(images)
        return out

    def gradient_autocast(self) -> contextlib.AbstractContextManager:
        """The precision of forward passes that are differentiated (attacks, score_pixels)."""
        return autocast_context(self.device, self.gradients_bf16)

    def patch_features(self, x: Tensor) -> Tensor:
        """Differentiable patch features of a batch, at the gradient precision, in float32."""
        with self.gradient_autocast():
            return self.backbone.patch_features(x.to(self.device)).float()
