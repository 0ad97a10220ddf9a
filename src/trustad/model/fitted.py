"""The fitted detector: AnomalyDINO's memory bank plus calibration, thresholds and a flag.

>>> model = FittedDetector(backbone).fit(good_images, calib_images, calib_labels)
>>> model.save("part.safetensors")
>>> [p.to_dict() for p in FittedDetector.load("part.safetensors").predict(["new.png"])]

Decision rule (``decision_rule_``, fixed at calibration and recorded in the model file):
``"conformal"`` when a conformal threshold with a finite value was fitted (anomalous when
the score is above it, i.e. its p-value <= alpha: at most alpha of normal parts are
rejected); else ``"probability"`` when a calibrator was fitted (anomalous when
probability >= 0.5); else ``None`` (no decision, only the raw score).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor

from .. import __version__
from ..backbone import load_backbone, resolve_weights
from ..backbone.preprocess import ImageInput
from ..backbone.runtime import DEFAULT_BATCH_SIZE, BackboneRuntime
from ..calibration import ConformalThreshold, entropy, fit_calibrator_safely
from ..detector import AnomalyDINO, anomaly_map
from ..flags import DEFAULT_FLAG, gate_probabilities
from .file import ModelFileError, read_model_file, write_model_file
from .flags import flag_from_state, image_statistics, make_flag
from .state import Prediction, calibrator_from_state, calibrator_state, image_record, json_safe

DEFAULT_CALIBRATOR = "platt"
# Calibrators whose fitted state is a few numbers, so that they can be saved as JSON.
SAVABLE_CALIBRATORS = ("platt", "temperature", "beta")
DEFAULT_CONFORMAL_ALPHA = 0.1
BANK = "memory_bank"
CONFORMAL_SCORES = "conformal.calibration_scores"


class FittedDetector:
    """AnomalyDINO plus optional calibrator, conformal threshold and flag; savable.

    ``calibrator``: a name from ``SAVABLE_CALIBRATORS`` or None; ``conformal_alpha``: the
    guaranteed false-alarm rate of the conformal threshold, or None for none; ``flag``: a
    name from ``model.flags.FLAGS`` or None. ``detector_options`` are AnomalyDINO's
    (resolution, rotate, mask_test, mask_support, mask_morphology, knn, batch_size, bf16).
    """

    def __init__(
        self,
        backbone: torch.nn.Module | BackboneRuntime,
        *,
        calibrator: str | None = DEFAULT_CALIBRATOR,
        calibrator_options: dict[str, Any] | None = None,
        conformal_alpha: float | None = DEFAULT_CONFORMAL_ALPHA,
        flag: str | None = DEFAULT_FLAG,
        flag_options: dict[str, Any] | None = None,
        **detector_options: Any,
    ) -> None:
        if calibrator is not None and calibrator not in SAVABLE_CALIBRATORS:
            raise ValueError(
                f"calibrator {calibrator!r} cannot be saved in a model file; choose one of "
                f"{', '.join(SAVABLE_CALIBRATORS)} or none"
            )
        if conformal_alpha is not None:
            ConformalThreshold(conformal_alpha)  # checks the range
        self.detector = AnomalyDINO(backbone, **detector_options)
        self.calibrator = calibrator
        self.calibrator_options = dict(calibrator_options or {})
        self.conformal_alpha = conformal_alpha
        self.flag = flag
        self.flag_options = dict(flag_options or {})
        if flag is not None:
            make_flag(flag, **self.flag_options)  # checks the name and options
        self._reset_calibration()

    def _reset_calibration(self) -> None:
        self.calibrator_ = None
        self.conformal_ = None
        self.flag_ = None
        self.decision_rule_: str | None = None
        self.map_range_: tuple[float, float] | None = None
        self.calibration_: dict[str, Any] = {"images": [], "n_normal": 0, "n_anomalous": 0}
        self.notes_: list[str] = []

    @property
    def backbone(self) -> torch.nn.Module:
        return self.detector.backbone

    @property
    def preprocessing(self) -> dict[str, Any]:
        d = self.detector
        return {
            "resolution": d.resolution,
            "rotate": d.rotate,
            "mask_test": d.mask_test,
            "mask_support": d.mask_support,
            "mask_morphology": d.mask_morphology,
            "knn": d.knn,
            "bf16": d.runtime.features_bf16,
        }

    # -- fitting ----------------------------------------------------------------------
    def fit_features(
        self, support_features: Sequence[Tensor], support: Sequence[dict] | None = None
    ) -> FittedDetector:
        """Build the bank from support patch features (each (h, w, D), rotations included);
        ``support`` records the support images' names and sha256 for provenance."""
        self.detector.fit_features(support_features)
        self.support_ = [dict(r) for r in support or []]
        self.created_ = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._reset_calibration()
        return self

    def calibrate(
        self,
        scores: ArrayLike,
        labels: ArrayLike | None = None,
        *,
        images: Sequence[dict] | None = None,
        normal_distances: Sequence[Tensor] | None = None,
        statistics: Mapping[str, ArrayLike] | None = None,
    ) -> FittedDetector:
        """Fit the calibrator (needs both classes), the conformal threshold (on the normal
        scores) and the flag (the entropy flag needs the calibrator) on calibration images'
        raw scores.

        ``labels``: 0 normal, 1 anomalous; None means all normal. ``images`` records them
        for provenance; ``normal_distances`` (patch-distance grids of the normal images)
        set the colour range of heatmap overlays; ``statistics``: the calibration images'
        statistics by name (``model.flags.image_statistics``), for the flags that need them.
        """
        self._reset_calibration()
        s = np.asarray(scores, dtype=np.float64).ravel()
        y = np.zeros(s.size) if labels is None else np.asarray(labels, dtype=np.float64).ravel()
        if y.size != s.size:
            raise ValueError(f"{y.size} calibration labels for {s.size} scores")
        normal = s[y == 0]
        n_anom = int((y == 1).sum())
        self.calibration_ = {
            "images": [dict(r) for r in images or []],
            "n_normal": int(normal.size),
            "n_anomalous": n_anom,
        }
        if self.calibrator is not None:
            if n_anom == 0 or normal.size == 0:
                self.notes_.append(
                    f"no probability: {self.calibrator} needs normal and anomalous calibration "
                    f"images, got {normal.size} normal and {n_anom} anomalous"
                )
            else:
                options = self.calibrator_options
                cal, note = fit_calibrator_safely(self.calibrator, s, y, **options)
                if note:
                    self.notes_.append(note)
                if getattr(cal, "name", None) == self.calibrator:
                    self.calibrator_ = cal
        if self.conformal_alpha is not None and normal.size:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                self.conformal_ = ConformalThreshold(self.conformal_alpha).fit(normal)
            self.notes_ += [f"conformal: {w.message}" for w in caught]
        if self.flag is not None:
            flag = make_flag(self.flag, **self.flag_options)
            signals = self._signals(s, statistics)
            missing = [k for k in flag.needs if k not in signals]
            if missing:
                self.notes_.append(f"no {self.flag} flag: it needs {', '.join(missing)}")
            else:
                self.flag_ = flag.fit(signals)
        if self.conformal_ is not None and math.isfinite(self.conformal_.threshold_):
            self.decision_rule_ = "conformal"
        elif self.calibrator_ is not None:
            self.decision_rule_ = "probability"
        if normal_distances:
            values = torch.cat([d.reshape(-1) for d in normal_distances]).double()
            self.map_range_ = (float(values.median()), float(values.max()))
        return self

    def fit(
        self,
        support: Sequence[ImageInput],
        calibration: Sequence[ImageInput] | None = None,
        calibration_labels: ArrayLike | None = None,
    ) -> FittedDetector:
        """Fit on normal support images, then calibrate on ``calibration`` images (labels
        0/1; None: all normal). Images: paths, PIL images or arrays."""
        if isinstance(support, (str, bytes, os.PathLike)) or not isinstance(support, Sequence):
            support = [support]
        det = self.detector
        views = [v for img in support for v in det.support_views(img)]
        records = [image_record(img, i) for i, img in enumerate(support)]
        self.fit_features(det.features(views), records)
        if calibration:
            tensors, _ = det.runtime.preprocess(calibration)
            feats = det.features(tensors)
            dists = det.distances_from_features(feats)
            scores = det.scores_from_distances(dists)
            labels = np.zeros(len(scores)) if calibration_labels is None else calibration_labels
            labels = np.asarray(labels).ravel()
            recs = [
                {**image_record(img, i), "label": int(lab)}
                for i, (img, lab) in enumerate(zip(calibration, labels))
            ]
            normal = [d for d, lab in zip(dists, labels) if lab == 0]
            self.calibrate(
                scores,
                labels,
                images=recs,
                normal_distances=normal,
                statistics=self._statistics(dists, tensors),
            )
        return self

    # -- predicting -------------------------------------------------------------------
    def _statistics(
        self, dists: Sequence[Tensor], images: Sequence[Tensor]
    ) -> dict[str, np.ndarray]:
        """The image statistics the flag needs (stability: 3 extra backbone passes each)."""
        if self.flag is None:
            return {}
        return image_statistics(self.detector, make_flag(self.flag).needs, dists, images)

    def _signals(
        self, scores: np.ndarray, statistics: Mapping[str, ArrayLike] | None = None
    ) -> dict[str, np.ndarray]:
        out = {"score": scores}
        for name, values in (statistics or {}).items():
            out[name] = np.asarray(values, dtype=np.float64)
        if self.calibrator_ is not None:
            out["probability"] = self.calibrator_.predict_proba(scores)
            out["entropy"] = entropy(out["probability"])
        return out

    def assess(
        self, scores: ArrayLike, statistics: Mapping[str, ArrayLike] | None = None
    ) -> dict[str, np.ndarray | None]:
        """Every per-image field but the map, from raw scores (arrays; None when the part
        that gives it was not fitted, or, for a flag on image statistics, when they are not
        in ``statistics``)."""
        s = np.asarray(scores, dtype=np.float64).ravel()
        sig = self._signals(s, statistics)
        p = sig.get("probability")
        decision = None
        if self.decision_rule_ == "conformal":
            decision = self.conformal_.predict(s).astype(bool)
        elif self.decision_rule_ == "probability":
            decision = p >= 0.5
        flag = None
        if self.flag_ is not None and all(k in sig for k in self.flag_.needs):
            flag = self.flag_.flag(sig)
        return {
            "score": s,
            "probability": p,
            "p_value": None if self.conformal_ is None else self.conformal_.p_values(s),
            "decision": decision,
            "entropy": sig.get("entropy"),
            "flag": flag,
            "gated_probability": None
            if p is None or flag is None
            else gate_probabilities(p, flag, self.anomaly_rate),
        }

    @property
    def anomaly_rate(self) -> float:
        """The share of anomalous images among the calibration images."""
        n_anom = self.calibration_["n_anomalous"]
        return n_anom / max(n_anom + self.calibration_["n_normal"], 1)

    def predict_from_features(
        self,
        features: Sequence[Tensor],
        sizes: Sequence[tuple[int, int]],
        maps: bool = True,
        images: Sequence[Tensor] | None = None,
    ) -> list[Prediction]:
        """Predictions for test patch features (h, w, D); ``sizes`` are the original
        (width, height) of the images, for their maps; ``images``, the preprocessed images,
        are needed by the flags on image statistics."""
        dists = self.detector.distances_from_features(features)
        stats = None if images is None or self.flag_ is None else self._statistics(dists, images)
        fields = self.assess(self.detector.scores_from_distances(dists), stats)
        out = []
        for i, (d, size) in enumerate(zip(dists, sizes)):
            value = {k: None if v is None else v[i].item() for k, v in fields.items()}
            out.append(Prediction(**value, anomaly_map=anomaly_map(d, size) if maps else None))
        return out

    def predict(self, images: Sequence[ImageInput], maps: bool = True) -> list[Prediction]:
        """One :class:`Prediction` per image (paths, PIL images or arrays)."""
        if isinstance(images, (str, bytes, os.PathLike)) or not isinstance(images, Sequence):
            images = [images]
        out: list[Prediction] = []
        step = self.detector.runtime.batch_size
        for start in range(0, len(images), step):
            tensors, sizes = self.detector.runtime.preprocess(images[start : start + step])
            feats = self.detector.features(tensors)
            out += self.predict_from_features(feats, sizes, maps, tensors)
        return out

    # -- saving -----------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """Settings and provenance as recorded in the model file (no tensors)."""
        if not hasattr(self, "support_"):
            raise RuntimeError("this FittedDetector is not fitted yet: call fit first")
        source = getattr(self.backbone, "weights_source", None)
        bank = self.detector.memory_bank_
        cal = self.calibrator_
        conf = self.conformal_
        return {
            "trustad_version": __version__,
            "created": self.created_,
            "backbone": {
                "name": None if source is None else source.name,
                "embed_dim": int(bank.shape[1]),
                "weights": None
                if source is None
                else {k: source.to_dict()[k] for k in ("sha256", "label", "origin")},
            },
            "preprocessing": self.preprocessing,
            "memory_bank": {"patches": int(bank.shape[0]), "dtype": str(bank.dtype)},
            "support": self.support_,
            "calibration": {**self.calibration_, "notes": list(self.notes_)},
            "calibrator": None if cal is None else calibrator_state(cal),
            "conformal": None
            if conf is None
            else {
                "alpha": conf.alpha,
                "threshold": conf.threshold_,
                "n": conf.calibration_scores_.size,
            },
            "flag": None if self.flag_ is None else {"name": self.flag, **self.flag_.state()},
            "decision_rule": self.decision_rule_,
            # What was asked for (what a later calibrate() fits), besides what was fitted.
            "requested": {
                "calibrator": self.calibrator,
                "calibrator_options": self.calibrator_options,
                "conformal_alpha": self.conformal_alpha,
                "flag": self.flag,
                "flag_options": self.flag_options,
            },
            "map_range": None if self.map_range_ is None else list(self.map_range_),
        }

    def describe(self) -> dict[str, Any]:
        """:meth:`settings` in strict JSON (infinite thresholds as strings)."""
        return json_safe(self.settings())

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model file (see ``trustad.model.file``)."""
        tensors = {BANK: self.detector.memory_bank_}
        if self.conformal_ is not None:
            tensors[CONFORMAL_SCORES] = torch.from_numpy(self.conformal_.calibration_scores_)
        return write_model_file(path, tensors, self.settings())

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        backbone: torch.nn.Module | None = None,
        *,
        weights: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> FittedDetector:
        """A model file back in memory. Without ``backbone`` the recorded backbone is
        loaded (``weights``: an explicit file); either way its weights must have the
        recorded sha256, else :class:`ModelFileError`."""
        tensors, s = read_model_file(path)
        bb = s["backbone"]
        recorded = bb["weights"]
        if backbone is None:
            if bb["name"] is None:
                raise ModelFileError(
                    f"{path}: the model records no backbone name; pass the backbone it was "
                    "fitted with"
                )
            source = resolve_weights(bb["name"], weights)
            _check_weights(path, recorded, source)
            backbone = load_backbone(bb["name"], str(source.path), device)
            backbone.weights_source = source  # where it was found, not the explicit path
        else:
            _check_weights(path, recorded, getattr(backbone, "weights_source", None))
        bank = tensors[BANK]
        if getattr(backbone, "embed_dim", bank.shape[1]) != bank.shape[1]:
            raise ModelFileError(
                f"{path}: memory bank features have {bank.shape[1]} dimensions, the backbone "
                f"gives {backbone.embed_dim}"
            )
        cal, conf, flag = s["calibrator"], s["conformal"], s["flag"]
        model = cls(backbone, **s["preprocessing"], batch_size=batch_size, **s["requested"])
        model.detector.memory_bank_ = bank.to(model.detector.device)
        model.support_ = s["support"]
        model.created_ = s["created"]
        model.calibration_ = {k: v for k, v in s["calibration"].items() if k != "notes"}
        model.notes_ = list(s["calibration"].get("notes", []))
        if cal is not None:
            model.calibrator_ = calibrator_from_state(cal)
        if conf is not None:
            model.conformal_ = ConformalThreshold(conf["alpha"])
            model.conformal_.calibration_scores_ = tensors[CONFORMAL_SCORES].numpy()
            model.conformal_.threshold_ = float(conf["threshold"])
        if flag is not None:
            model.flag_ = flag_from_state(flag["name"], flag)
        model.decision_rule_ = s["decision_rule"]
        model.map_range_ = None if s["map_range"] is None else tuple(s["map_range"])
        model.format_version_ = s["format_version"]
        return model


def _check_weights(path: Any, recorded: dict | None, source: Any) -> None:
    """Refuse a backbone whose weights are not the ones the model was fitted with."""
    if recorded is None:
        return
    if source is None:
        raise ModelFileError(
            f"{path}: the model was fitted with weights sha256 {recorded['sha256']} "
            f"({recorded['label']}), but the given backbone records no weights source to check"
        )
    if source.sha256 != recorded["sha256"]:
        raise ModelFileError(
            f"{path}: the model was fitted with backbone weights sha256 {recorded['sha256']} "
            f"({recorded['label']}), but the weights resolve to sha256 {source.sha256} "
            f"({source.label}, {source.path}); scores would not mean the same. Pass the "
            "recorded weights file (--weights)"
        )
