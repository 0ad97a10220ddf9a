"""What every attack / out-of-distribution flag shares: its inputs, its threshold, its test.

A flag turns what the detector already computed for a batch of images (their patch-distance
grids, patch features and, for flags that re-run the backbone, the preprocessed images) into
one statistic per image, higher meaning more suspicious. Its threshold is set on clean
calibration images only, for a chosen false-flag rate; the defender never sees an attack.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor

from .threshold import DEFAULT_FALSE_FLAG_RATE, rate_threshold


def _stack(items: Tensor | Sequence[Tensor] | None, what: str) -> Tensor | None:
    if items is None or isinstance(items, Tensor):
        return items
    if len(items) == 0:
        raise ValueError(f"no {what} given")
    shapes = {tuple(t.shape) for t in items}
    if len(shapes) > 1:
        raise ValueError(
            f"{what} of one batch must share a shape, got {sorted(shapes)}; "
            "compute flags per group of equally-sized images"
        )
    return torch.stack(list(items))


@dataclass
class FlagInputs:
    """One batch as the detector sees it.

    ``distances`` (B, h, w): patch-distance grids as the detector scores them (masked where
    ``mask_test`` is on); ``features`` (B, h, w, D): the patch features; ``images``
    (B, 3, H, W) in [0, 1]: the preprocessed images (needed only by flags that read
    pixels); ``probabilities`` (B,): calibrated probabilities of anomaly (needed only by the
    entropy flag). Lists of equally-shaped tensors are stacked.

    ``memo`` keeps the values of flags that read the images alone (``image_only``), per
    flag name, for every image of the batch: pass the same dict for the same images (with
    other distances) to compute them once. A ``subset`` reads them from its parent.
    """

    distances: Tensor
    features: Tensor | None = None
    images: Tensor | None = None
    probabilities: Tensor | None = None
    memo: dict[str, Tensor] = field(default_factory=dict, repr=False, compare=False)
    parent: FlagInputs | None = field(default=None, repr=False, compare=False)
    index: Tensor | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.distances = _stack(self.distances, "distance grids")
        if self.distances is None:  # flags that need no map (entropy)
            self.distances = torch.zeros(len(self.probabilities), 0, 0)
        self.features = _stack(self.features, "patch features")
        self.images = _stack(self.images, "images")
        if self.probabilities is not None:
            self.probabilities = torch.as_tensor(np.asarray(self.probabilities, dtype=np.float64))
        if self.distances.ndim != 3:
            raise ValueError(f"distance grids must be (B, h, w), got {tuple(self.distances.shape)}")
        n = len(self.distances)
        for name in ("features", "images", "probabilities"):
            t = getattr(self, name)
            if t is not None and len(t) != n:
                raise ValueError(f"{len(t)} {name} for {n} distance grids")

    def __len__(self) -> int:
        return len(self.distances)

    def subset(self, index: ArrayLike) -> FlagInputs:
        """The images at ``index`` (integer indices or a boolean mask)."""
        idx = torch.as_tensor(np.asarray(index))
        if idx.dtype == torch.bool:
            idx = idx.nonzero()[:, 0]

        def pick(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[idx.to(t.device)]

        root = self if self.parent is None else self.parent
        in_root = idx if self.index is None else self.index[idx]
        return FlagInputs(
            pick(self.distances),
            pick(self.features),
            pick(self.images),
            pick(self.probabilities),
            parent=root,
            index=in_root,
        )


@runtime_checkable
class Flag(Protocol):
    """The interface of every flag (see :class:`BaseFlag`)."""

    name: str
    cost: int  # extra backbone forward passes per image, beyond the detector's own one
    needs: tuple[str, ...]

    def prepare(self, detector: Any, clean: FlagInputs) -> Flag: ...

    def statistic(self, inputs: FlagInputs) -> np.ndarray: ...

    def fit(self, clean_values: ArrayLike, false_flag_rate: float = ...) -> Flag: ...

    def reason(self, value: float) -> str:
        """Why an input with statistic ``value`` is flagged, for the person who reads it."""
        return f"{self.name} {value:.4g} above its threshold {self.threshold_:.4g}: {self.advice}"

    def predict(self, values: ArrayLike) -> np.ndarray: ...


class BaseFlag:
    """Shared machinery: ``prepare`` (references from clean calibration images), the
    ``statistic`` (numpy, no gradient) around the differentiable ``compute``, and the
    threshold (``fit``/``predict``).

    Subclasses set ``name``, ``cost``, ``needs`` and implement ``compute(inputs) -> (B,)``
    as a differentiable torch function; ``reference(clean)`` may store what ``compute``
    needs from clean data; ``surrogate`` is what an adaptive attacker differentiates (the
    statistic itself unless it is piecewise constant).
    """

    name = ""
    cost = 0
    needs: tuple[str, ...] = ("distances",)
    # What a flagged answer means and what to do, in plain words (``reason``).
    advice = "unlike the good images: check the set-up, then re-take"
    # True when the statistic depends on the images alone (not on the detector or a
    # reference): its values are then kept in the inputs' memo.
    image_only = False

    def prepare(self, detector: Any, clean: FlagInputs) -> BaseFlag:
        """Store the fitted detector and whatever reference the flag takes from the clean
        calibration images ``clean`` (e.g. the normal range of patch distances)."""
        self.detector_ = detector
        self.check_inputs(clean)
        self.reference(clean)
        self.prepared_ = True
        return self

    def reference(self, clean: FlagInputs) -> None:
        """Take references from clean calibration data; none by default."""

    def check_inputs(self, inputs: FlagInputs) -> None:
        missing = [k for k in self.needs if getattr(inputs, k) is None]
        if missing:
            raise ValueError(f"flag {self.name!r} needs {', '.join(missing)} in its inputs")

    def compute(self, inputs: FlagInputs) -> Tensor:
        raise NotImplementedError

    def surrogate(self, inputs: FlagInputs) -> Tensor:
        return self.compute(inputs)

    def values(self, inputs: FlagInputs) -> Tensor:
        """``compute`` without gradient; an ``image_only`` flag computes it once for all the
        images of the root batch and keeps it in the root's memo."""
        if not self.image_only:
            return self.compute(inputs).detach()
        root = inputs if inputs.parent is None else inputs.parent
        if self.name not in root.memo:
            root.memo[self.name] = self.compute(root).detach()
        values = root.memo[self.name]
        return values if inputs.index is None else values[inputs.index.to(values.device)]

    def statistic(self, inputs: FlagInputs) -> np.ndarray:
        """Per-image statistic (B,), float64; higher is more suspicious."""
        if not getattr(self, "prepared_", False):
            raise RuntimeError(
                f"flag {self.name!r} is not prepared: call prepare(detector, clean) first"
            )
        self.check_inputs(inputs)
        with torch.no_grad():
            values = self.values(inputs)
        return values.double().cpu().numpy()

    def fit(
        self, clean_values: ArrayLike, false_flag_rate: float = DEFAULT_FALSE_FLAG_RATE
    ) -> BaseFlag:
        """Threshold from clean calibration statistics: the smallest t with at most
        ``false_flag_rate`` of them strictly above it (:func:`rate_threshold`)."""
        values = np.asarray(clean_values, dtype=np.float64).ravel()
        self.false_flag_rate = false_flag_rate
        self.threshold_ = rate_threshold(values, false_flag_rate)
        self.clean_mean_ = float(values.mean())
        # A scale for standardising (combinations, adaptive losses); never zero.
        self.clean_scale_ = float(max(values.std(), 1e-3 * abs(values.mean()), 1e-12))
        return self

    def reason(self, value: float) -> str:
        """Why an input with statistic ``value`` is flagged, for the person who reads it."""
        return f"{self.name} {value:.4g} above its threshold {self.threshold_:.4g}: {self.advice}"

    def predict(self, values: ArrayLike) -> np.ndarray:
        """True where the statistic is above the threshold (the input is flagged)."""
        if not hasattr(self, "threshold_"):
            raise RuntimeError(f"flag {self.name!r} has no threshold: call fit first")
        return np.asarray(values, dtype=np.float64) > self.threshold_

    def calibrate(
        self,
        detector: Any,
        clean: FlagInputs,
        false_flag_rate: float = DEFAULT_FALSE_FLAG_RATE,
    ) -> BaseFlag:
        """``prepare`` then ``fit`` on the statistics of the same clean calibration images."""
        self.prepare(detector, clean)
        return self.fit(self.statistic(clean), false_flag_rate)

    def state(self) -> dict[str, Any]:
        """What a model file keeps of the fitted flag: its name, false-flag rate and every
        fitted number (threshold, clean mean and spread, references), as JSON."""
        fitted = {k[:-1]: v for k, v in vars(self).items() if k.endswith("_") and _is_number(v)}
        return {"name": self.name, "false_flag_rate": self.false_flag_rate, **fitted}

    def restore(self, detector: Any, state: dict[str, Any]) -> BaseFlag:
        """The fitted flag back from :meth:`state`, for ``detector``."""
        for key, value in state.items():
            if key not in STATE_KEYS:
                setattr(self, f"{key}_", float(value))
        if not hasattr(self, "threshold_"):
            raise ValueError(f"flag {self.name!r}: the recorded state has no threshold")
        self.false_flag_rate = float(state["false_flag_rate"])
        self.detector_ = detector
        self.prepared_ = True
        return self


# Keys of a flag's state that are not fitted numbers.
STATE_KEYS = ("name", "false_flag_rate", "members")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
