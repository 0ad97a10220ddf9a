"""AnomalyDINO: 1-NN patch distances to a memory bank of DINOv2 patch features.

The functional core (``memory_bank``, ``patch_distances``, ``image_scores``,
``background_mask``, ``anomaly_map``) works on features, so that the evaluation protocol
can compute each image's features once and reuse them across shots, seeds and conditions.
``AnomalyDINO`` wraps it in a scikit-learn style estimator that takes images.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor

from .backbone.preprocess import DEFAULT_RESOLUTION, ImageInput, load_rgb8
from .backbone.rotate import rotate_rgb8
from .backbone.runtime import DEFAULT_BATCH_SIZE, BackboneRuntime
from .maps import MAP_SIGMA, anomaly_maps_torch

ROTATION_ANGLES = (0, 45, 90, 135, 180, 225, 270, 315)
TOP_FRACTION = 0.01
# Background masking (PROTOCOL section 2): threshold on the first principal component, the
# central part of the grid that must be kept, and the fraction of it that must survive.
MASK_THRESHOLD = 10.0
MASK_BORDER = 0.2
MASK_MIN_CENTRE_KEPT = 0.35
# Elements of the (query chunk x bank) similarity matrix computed at once: bounds memory.
SIMILARITY_BUDGET = 1 << 24
# On the CPU the nearest bank row is searched in blocks of this many bank rows and query
# rows, so that the similarities stay in cache (benchmarks/results/grid.md).
CPU_BANK_BLOCK = 2048
CPU_QUERY_BLOCK = 256
# Columns per sub-block of that search's maximum (faster than torch's max over a row:
# benchmarks/results/grid.md).
CPU_SUB_BLOCK = 64


def memory_bank(features: Tensor, keep: Tensor | None = None) -> Tensor:
    """L2-normalised bank (M, D) from support patch features (n, h, w, D) or (N, D).

    ``keep``: optional boolean (n, h, w) selecting the patches that enter the bank.
    """
    flat = features.reshape(-1, features.shape[-1])
    if keep is not None:
        flat = flat[keep.reshape(-1).to(flat.device)]
    if len(flat) == 0:
        raise ValueError("the memory bank is empty: no support patch was kept")
    # At least float32 (features may come from bfloat16 autocast); float64 stays float64.
    return F.normalize(flat.to(torch.promote_types(flat.dtype, torch.float32)), dim=-1)


def _best_in_block(sims: Tensor) -> tuple[Tensor, Tensor]:
    """``sims.max(dim=1)``: the largest value of each row and its first index (NaN counts
    as largest). On the CPU in two steps: the maxima of sub-blocks of ``CPU_SUB_BLOCK``
    columns (a vectorised max, where torch's max with indices is not), then the first index
    in the first sub-block that holds the row's maximum."""
    rows, cols = sims.shape
    n = cols // CPU_SUB_BLOCK
    if sims.device.type != "cpu" or n < 2 or cols % CPU_SUB_BLOCK or not sims.is_contiguous():
        return sims.max(dim=1)
    sub = sims.view(rows, n, CPU_SUB_BLOCK)
    sub_max = sub.amax(dim=2)
    best = sub_max.amax(dim=1)
    if bool(best.isnan().any()):  # amax has no index of the first NaN
        return sims.max(dim=1)
    first = (sub_max == best[:, None]).to(torch.uint8).argmax(dim=1)
    inner = sub[torch.arange(rows), first].argmax(dim=1)
    return best, first * CPU_SUB_BLOCK + inner


def _take_better(best: tuple[Tensor, Tensor], other: tuple[Tensor, Tensor], offset: int) -> None:
    """Merge the (values, indices) of later bank rows into ``best`` in place: strictly
    larger only, so that on a tie the earlier rows keep their (first) index; NaN wins."""
    value, idx = other
    take = (value > best[0]) | (value.isnan() & ~best[0].isnan())
    best[0].copy_(torch.where(take, value, best[0]))
    best[1].copy_(torch.where(take, idx + offset, best[1]))


def nearest_rows(query: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    """The largest similarity (P,) of each normalised query row (P, D) to ``rows`` (M, D),
    and the first row index holding it (NaN counts as largest), i.e.
    ``(query @ rows.T).max(dim=1)``, computed in bounded memory; on the CPU in blocks of
    rows that keep the similarities in cache (a product of another shape can round a
    similarity's last bit otherwise; only exact near-ties could then pick another row). The
    result of a bank made of parts is that of its parts, merged in order
    (``merge_nearest``)."""
    if len(rows) == 0:
        raise ValueError("no rows to search")
    if rows.device.type == "cpu":
        block, chunk = CPU_BANK_BLOCK, CPU_QUERY_BLOCK
    else:
        block, chunk = len(rows), max(1, SIMILARITY_BUDGET // len(rows))
    values, indices = [], []
    for start in range(0, len(query), chunk):
        q = query[start : start + chunk]
        best = _best_in_block(q @ rows[:block].T)
        for first in range(block, len(rows), block):
            _take_better(best, _best_in_block(q @ rows[first : first + block].T), first)
        values.append(best[0])
        indices.append(best[1])
    return torch.cat(values), torch.cat(indices)


def merge_nearest(parts: Sequence[tuple[Tensor, Tensor]], sizes: Sequence[int]) -> Tensor:
    """Indices into the bank made of parts of ``sizes`` rows (in that order), from each
    part's ``nearest_rows``: the same as ``nearest_rows`` on the whole bank."""
    if not parts:
        raise ValueError("no parts to merge")
    best = (parts[0][0].clone(), parts[0][1].clone())
    offset = sizes[0]
    for part, size in zip(parts[1:], sizes[1:]):
        _take_better(best, part, offset)
        offset += size
    return best[1]


def _nearest_indices(query: Tensor, bank: Tensor, k: int) -> Tensor:
    """Indices (P, k) of the k most similar bank rows for each normalised query row."""
    if k == 1:
        return nearest_rows(query, bank)[1][:, None]
    chunk = max(1, SIMILARITY_BUDGET // len(bank))
    out = []
    for start in range(0, len(query), chunk):
        out.append((query[start : start + chunk] @ bank.T).topk(k, dim=1).indices)
    return torch.cat(out)


def patch_distances(query: Tensor, bank: Tensor, knn: int = 1) -> Tensor:
    """Cosine distances (B, h, w) of query patches (B, h, w, D) to their nearest bank rows.

    s_j = 1 - max_m cos(z_j, bank_m); with ``knn`` > 1 the mean over the k nearest.
    Exact and differentiable with respect to ``query``: neighbours are found without
    gradient in bounded-memory chunks, then their similarities are recomputed with it.
    """
    shape = query.shape[:-1]
    # Full precision even inside an outer bfloat16 autocast: near 1, bfloat16 similarities
    # cannot tell neighbours apart.
    with torch.autocast(query.device.type, enabled=False):
        q = F.normalize(query.reshape(-1, query.shape[-1]).to(bank.dtype), dim=-1)
        bank = bank.to(q.device)
        k = min(knn, len(bank))
        with torch.no_grad():
            idx = _nearest_indices(q.detach(), bank, k)
        return _distances_at(q, bank, idx).reshape(shape)


def _distances_at(q: Tensor, bank: Tensor, idx: Tensor) -> Tensor:
    """1 - the mean cosine similarity (P,) of normalised query rows to the bank rows ``idx``
    (P, k), recomputed (with gradient) from those rows."""
    sims = (q.unsqueeze(1) * bank[idx]).sum(-1)  # (P, k)
    return 1.0 - sims.mean(dim=1)


def query_rows(features: Tensor, bank: Tensor) -> Tensor:
    """Patch features (..., D) as the normalised query rows (P, D) that ``patch_distances``
    searches ``bank`` with."""
    with torch.autocast(features.device.type, enabled=False):
        q = features.reshape(-1, features.shape[-1]).to(bank.device, bank.dtype)
        return F.normalize(q, dim=-1)


def top_count(n_patches: int) -> int:
    """How many of the largest patch scores the image score averages: floor(1% N), >= 1."""
    return max(1, int(n_patches * TOP_FRACTION))


def image_scores(distances: Tensor, foreground: Tensor | None = None) -> Tensor:
    """Image scores (B,): mean of the floor(0.01 N) largest patch scores (the maximum when
    that is 0). Background patches (``foreground`` False) score 0 and still count in N."""
    d = distances.reshape(len(distances), -1)
    if foreground is not None:
        d = d * foreground.reshape(len(distances), -1).to(d.device, d.dtype)
    return d.topk(top_count(d.shape[1]), dim=1).values.mean(dim=1)


MASK_MORPHOLOGY = ("grid", "flat")


def background_mask(features: Tensor, morphology: str = "grid") -> Tensor:
    """Zero-shot foreground mask (h, w) of one image from its own patch features (h, w, D).

    A 1-component PCA of the image's patch features; keep patches whose component exceeds
    10; if that keeps 35% or less of the central 60% of the grid, use the negated component;
    then a 3x3 dilation and a 3x3 closing. ``morphology="grid"`` applies them on the patch
    grid (PROTOCOL section 2); ``"flat"`` applies them to the mask as an (N, 1) column, i.e.
    along the row-major token order, which is what the public AnomalyDINO code effectively
    does (its mask is not reshaped to the grid before the morphology).
    """
    if morphology not in MASK_MORPHOLOGY:
        raise ValueError(f"morphology must be one of {MASK_MORPHOLOGY}, got {morphology!r}")
    h, w, _ = features.shape
    x = features.reshape(h * w, -1).double().cpu()
    x = x - x.mean(dim=0)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    v = vh[0]
    v = v * torch.sign(v[v.abs().argmax()])  # scikit-learn's sign convention
    pc = (x @ v).numpy().reshape(h, w)
    mask = pc > MASK_THRESHOLD
    r0, r1 = int(h * MASK_BORDER), int(h * (1 - MASK_BORDER))
    c0, c1 = int(w * MASK_BORDER), int(w * (1 - MASK_BORDER))
    centre = mask[r0:r1, c0:c1]
    if centre.sum() <= centre.size * MASK_MIN_CENTRE_KEPT:
        mask = -pc > MASK_THRESHOLD
    if morphology == "flat":
        mask = mask.reshape(-1, 1)
    kernel = np.ones((3, 3), dtype=bool)
    # OpenCV's morphology ignores the outside of the image; so do these border values.
    mask = ndimage.binary_dilation(mask, kernel, border_value=0)
    mask = ndimage.binary_dilation(mask, kernel, border_value=0)  # closing = dilate, erode
    mask = ndimage.binary_erosion(mask, kernel, border_value=1)
    return torch.from_numpy(mask.reshape(h, w))


def anomaly_map(distances: Tensor, size: tuple[int, int]) -> np.ndarray:
    """Patch-score grid (h, w) -> float32 map at ``size`` = (width, height): bilinear, then
    a Gaussian blur with sigma 4 (``maps.anomaly_maps_torch`` batches this on any device)."""
    return anomaly_maps_torch(distances[None], size, MAP_SIGMA)[0].cpu().numpy()


class AnomalyDINO:
    """The AnomalyDINO few-shot detector.

    >>> det = AnomalyDINO(backbone).fit(["good1.png"])
    >>> det.score(["test.png"]), det.anomaly_maps(["test.png"])

    Parameters follow PROTOCOL section 2: ``rotate`` adds the 8 rotations of every support
    image to the bank; ``mask_test`` / ``mask_support`` apply zero-shot background masking;
    ``knn`` averages the k nearest bank patches.

    ``backbone`` is a plain backbone module, run as ``resolution``, ``batch_size`` and
    ``bf16`` (bfloat16 autocast for features and gradients; faster where supported, scores
    change slightly) say, or a ``BackboneRuntime``, which brings its own.
    """

    def __init__(
        self,
        backbone: torch.nn.Module | BackboneRuntime,
        *,
        resolution: int = DEFAULT_RESOLUTION,
        rotate: bool = True,
        mask_test: bool = False,
        mask_support: bool = False,
        mask_morphology: str = "grid",
        knn: int = 1,
        batch_size: int = DEFAULT_BATCH_SIZE,
        bf16: bool = False,
    ) -> None:
        if knn < 1:
            raise ValueError(f"knn must be >= 1, got {knn}")
        if resolution % 14:
            raise ValueError(f"resolution must be a multiple of 14, got {resolution}")
        if mask_morphology not in MASK_MORPHOLOGY:
            raise ValueError(
                f"mask morphology must be one of {MASK_MORPHOLOGY}, got {mask_morphology!r}"
            )
        if not isinstance(backbone, BackboneRuntime):
            backbone = BackboneRuntime(
                backbone,
                resolution=resolution,
                batch_size=batch_size,
                features_bf16=bf16,
                gradients_bf16=bf16,
            )
        self.runtime = backbone
        self.backbone = backbone.backbone
        self.resolution = backbone.resolution
        self.rotate = rotate
        self.mask_test = mask_test
        self.mask_support = mask_support
        self.mask_morphology = mask_morphology
        self.knn = knn

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    # -- features ---------------------------------------------------------------------
    def support_views(self, image: ImageInput) -> list[Tensor]:
        """The preprocessed views of one support image: itself, and its rotations."""
        rgb = load_rgb8(image, self.resolution)
        if not self.rotate:
            return self.runtime.preprocess([rgb])[0]
        chw = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)
        views = rotate_rgb8(chw, ROTATION_ANGLES).permute(0, 2, 3, 1).numpy()
        return self.runtime.preprocess(list(views))[0]

    def features(self, images: Sequence[Tensor]) -> list[Tensor]:
        return self.runtime.features(images)

    def fit_features(self, support_features: Sequence[Tensor]) -> AnomalyDINO:
        """Build the bank from precomputed support patch features (each (h, w, D))."""
        if len(support_features) == 0:
            raise ValueError("fit needs at least one support image")
        keep = None
        if self.mask_support:
            keep = torch.cat([self._mask(f).reshape(-1) for f in support_features])
        flat = torch.cat([f.reshape(-1, f.shape[-1]) for f in support_features])
        self.memory_bank_ = memory_bank(flat, keep).to(self.device)
        return self

    def leave_one_out_distances(self, support: Sequence[Sequence[Tensor]]) -> list[Tensor]:
        """Each support image's patch-distance grid against a bank built without any of its
        views, its first view (unrotated) scored as a test image is; ``support`` holds each
        image's view features. Empty with fewer than two images. The fitted bank is kept."""
        if len(support) < 2:
            return []
        fitted = getattr(self, "memory_bank_", None)
        out = []
        try:
            for i, views in enumerate(support):
                self.fit_features([f for j, other in enumerate(support) if j != i for f in other])
                out += self.distances_from_features([views[0]])
        finally:
            if fitted is None:
                del self.memory_bank_
            else:
                self.memory_bank_ = fitted
        return out

    def fit(self, support: Sequence[ImageInput]) -> AnomalyDINO:
        """Build the memory bank from a few normal images (paths, PIL images or arrays)."""
        if isinstance(support, (str, bytes)) or not isinstance(support, Sequence):
            support = [support]
        views = [v for img in support for v in self.support_views(img)]
        return self.fit_features(self.features(views))

    def _check_fitted(self) -> None:
        if not hasattr(self, "memory_bank_"):
            raise RuntimeError("this AnomalyDINO is not fitted yet: call fit(support) first")

    # -- scoring from features --------------------------------------------------------
    def _mask(self, features: Tensor) -> Tensor:
        return background_mask(features, self.mask_morphology)

    def foreground(self, features: Sequence[Tensor]) -> list[Tensor] | None:
        """Per-image foreground masks when ``mask_test`` is on, else None."""
        if not self.mask_test:
            return None
        return [self._mask(f) for f in features]

    def distances_from_features(
        self, features: Sequence[Tensor], foreground: Sequence[Tensor] | None = None
    ) -> list[Tensor]:
        """Masked patch-distance grids (h, w) for precomputed test features; ``foreground``
        passes masks computed earlier (else they are computed when ``mask_test`` is on)."""
        self._check_fitted()
        with torch.no_grad():
            dists = [
                patch_distances(f[None].to(self.device), self.memory_bank_, self.knn)[0]
                for f in features
            ]
        return self._masked(dists, features, foreground)

    def distances_from_nearest(
        self,
        features: Sequence[Tensor],
        nearest: Sequence[Tensor],
        foreground: Sequence[Tensor] | None = None,
    ) -> list[Tensor]:
        """``distances_from_features`` (1-NN) with each image's nearest bank rows (P,)
        found already (``nearest_rows`` / ``merge_nearest`` on this bank)."""
        self._check_fitted()
        bank = self.memory_bank_
        with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
            dists = [
                _distances_at(query_rows(f, bank), bank, idx[:, None]).reshape(f.shape[:-1])
                for f, idx in zip(features, nearest, strict=True)
            ]
        return self._masked(dists, features, foreground)

    def _masked(
        self,
        dists: list[Tensor],
        features: Sequence[Tensor],
        foreground: Sequence[Tensor] | None,
    ) -> list[Tensor]:
        masks = self.foreground(features) if foreground is None else foreground
        out = []
        for i, d in enumerate(dists):
            if masks is not None:
                d = d * masks[i].to(d.device)
            out.append(d)
        if self.device.type == "cpu" or not out:
            return out
        # One copy to the host for all images: no wait for the device per image.
        flat = torch.cat([d.reshape(-1) for d in out]).cpu()
        return [part.reshape(d.shape) for part, d in zip(flat.split([d.numel() for d in out]), out)]

    def scores_from_distances(self, distances: Sequence[Tensor]) -> np.ndarray:
        return np.array([float(image_scores(d[None])[0]) for d in distances])

    # -- public API on images ---------------------------------------------------------
    def _preprocess_all(self, images: Sequence[ImageInput]) -> tuple[list[Tensor], list]:
        if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
            images = [images]
        return self.runtime.preprocess(images)

    def score(self, images: Sequence[ImageInput]) -> np.ndarray:
        """Image anomaly scores (higher is more anomalous)."""
        self._check_fitted()
        tensors, _ = self._preprocess_all(images)
        return self.scores_from_distances(self.distances_from_features(self.features(tensors)))

    def anomaly_maps(self, images: Sequence[ImageInput]) -> list[np.ndarray]:
        """Anomaly maps at each image's original size (bilinear, Gaussian sigma 4)."""
        self._check_fitted()
        tensors, sizes = self._preprocess_all(images)
        dists = self.distances_from_features(self.features(tensors))
        return [anomaly_map(d, size) for d, size in zip(dists, sizes)]

    def pixel_distances(self, x: Tensor, foreground: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Differentiable patch features (B, h, w, D) and masked patch-distance grids
        (B, h, w) of preprocessed images x (B, 3, H, W) in [0, 1], the forward pass at the
        runtime's gradient precision: what attacks and flags differentiate.

        With ``mask_test`` and no ``foreground`` given, each image's mask is computed from
        its own (detached) features, as the detector does at test time.
        """
        self._check_fitted()
        feats = self.runtime.patch_features(x)
        if foreground is None and self.mask_test:
            foreground = torch.stack([self._mask(f.detach()) for f in feats])
        dist = patch_distances(feats, self.memory_bank_, self.knn)
        if foreground is not None:
            dist = dist * foreground.to(dist.device, dist.dtype)
        return feats, dist

    def score_pixels(self, x: Tensor, foreground: Tensor | None = None) -> Tensor:
        """Differentiable image scores (B,) of preprocessed images x (B, 3, H, W) in [0, 1]
        (see :meth:`pixel_distances`)."""
        return image_scores(self.pixel_distances(x, foreground)[1])
