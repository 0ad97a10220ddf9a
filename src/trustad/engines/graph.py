"""The whole fitted detector as one torch module, traceable into an ONNX graph.

Preprocessed images (B, 3, H, W) in [0, 1] in; out: the patch features (B, h, w, D), the
1-NN cosine distances to the memory bank (B, h, w) and the image score (B,), the mean of
the top 1 % of those distances, with ``detector.py``'s arithmetic. The input size is fixed:
the position embedding is resampled once, in torch, for that patch grid (a traced bicubic
resampling with a data-dependent scale would not export), so the graph gives exactly the
features the torch backbone gives at that size.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbone.dinov2 import PATCH_SIZE
from ..backbone.preprocess import crop_to_patches, resized_size
from ..detector import top_count

INPUT = "images"
OUTPUTS = ("features", "distances", "score")


def input_size(resolution: int, image_size: tuple[int, int] | None = None) -> tuple[int, int]:
    """(height, width) of the preprocessed images of originals of ``image_size`` (width,
    height): smaller edge ``resolution``, cropped to the patch size; square without one."""
    width, height = resized_size(*(image_size or (resolution, resolution)), resolution)
    shape = crop_to_patches(torch.empty(0, height, width)).shape
    return int(shape[-2]), int(shape[-1])


class DetectorGraph(nn.Module):
    """``backbone`` + L2-normalised ``bank`` (M, D) as one module for a fixed ``size``
    (height, width); ``knn`` averages the k nearest bank rows, as ``patch_distances``."""

    def __init__(self, backbone: nn.Module, bank: Tensor, size: tuple[int, int], knn: int = 1):
        super().__init__()
        grid_h, grid_w = size[0] // PATCH_SIZE, size[1] // PATCH_SIZE
        position = backbone.position_embedding(grid_h, grid_w).detach().clone()
        # A copy whose position embedding is that constant: the caller's backbone is kept.
        self.backbone = copy.deepcopy(backbone).float().cpu()
        self.backbone.position_embedding = lambda h, w: position
        self.register_buffer("memory_bank", bank.detach().float().cpu().contiguous())
        self.size = size
        self.knn = min(knn, len(bank))
        self.top = top_count(grid_h * grid_w)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        features = self.backbone.patch_features(images)
        query = F.normalize(features.flatten(1, 2), dim=-1)
        sims = query @ self.memory_bank.T  # (B, P, M)
        if self.knn == 1:
            nearest = sims.max(dim=-1).values
        else:
            nearest = sims.topk(self.knn, dim=-1).values.mean(dim=-1)
        distances = (1.0 - nearest).reshape(features.shape[:-1])
        score = distances.flatten(1).topk(self.top, dim=1).values.mean(dim=1)
        return features, distances, score
