"""The fitted detector: AnomalyDINO's memory bank plus the trust engine (calibrator,
conformal threshold, flag, gate: ``trustad.model.trust``).

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

import os
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
from ..detector import AnomalyDINO, anomaly_map
from ..engines.base import InferenceEngine, TorchEngine
from ..flags import DEFAULT_FALSE_FLAG_RATE, DEFAULT_FLAG, FlagInputs
from ..maps import DEFAULT_FALSE_PIXEL_RATE, pixel_threshold
from .file import ModelFileError, read_model_file, write_model_file
from .schema import BANK, CONFORMAL_SCORES
from .scored import ScoredImages, grouped_flag_values
from .state import Prediction, image_record, json_safe
from .trust import (
    DEFAULT_CALIBRATOR,
    DEFAULT_CONFORMAL_ALPHA,
    Assessment,
    FlagReference,
    TrustEngine,
    TrustOptions,
)

# Calibrators whose fitted state is a few numbers, so that they can be saved as JSON.
SAVABLE_CALIBRATORS = ("bayes", "platt", "temperature", "beta")


class FittedDetector:
    """AnomalyDINO plus the trust engine: an optional calibrator, conformal threshold and
    flag; savable.

    ``calibrator``: a name from ``SAVABLE_CALIBRATORS`` or None; ``conformal_alpha``: the
    guaranteed false-alarm rate of the conformal threshold, or None for none; ``flag``: a
    name from ``trustad.flags.FLAGS`` or None, with ``flag_options`` (``false_flag_rate``);
    ``leave_one_out`` and ``benign_envelope``: see ``TrustOptions``.
    ``detector_options`` are AnomalyDINO's (resolution, rotate, mask_test, mask_support,
    mask_morphology, knn, batch_size, bf16). ``trust``: the engine's options in full (the
    study's several calibrators and flags), instead of the four above.
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
        leave_one_out: bool = True,
        benign_envelope: bool = True,
        trust: TrustOptions | None = None,
        **detector_options: Any,
    ) -> None:
        if calibrator is not None and calibrator not in SAVABLE_CALIBRATORS:
            raise ValueError(
                f"calibrator {calibrator!r} cannot be saved in a model file; choose one of "
                f"{', '.join(SAVABLE_CALIBRATORS)} or none"
            )
        unknown = set(flag_options or {}) - {"false_flag_rate"}
        if unknown:
            raise ValueError(f"unknown flag option(s) {sorted(unknown)}; known: false_flag_rate")
        if trust is None:
            trust = TrustOptions(
                calibrators=() if calibrator is None else (calibrator,),
                calibrator_options={}
                if calibrator is None
                else {calibrator: calibrator_options or {}},
                conformal_alpha=conformal_alpha,
                flag=flag,
                false_flag_rate=(flag_options or {}).get(
                    "false_flag_rate", DEFAULT_FALSE_FLAG_RATE
                ),
                leave_one_out=leave_one_out,
                benign_envelope=benign_envelope,
            )
        self.detector = AnomalyDINO(backbone, **detector_options)
        # Images -> features and distances; an exported graph's runner may replace it.
        self.engine: InferenceEngine = TorchEngine(self.detector)
        self.trust_options = trust
        self._reset_calibration()

    def _reset_calibration(self) -> None:
        self.trust_ = TrustEngine(self.trust_options)
        self.map_range_: tuple[float, float] | None = None
        # The map value above which overlays outline and masks mark a pixel.
        self.pixel_threshold_: float | None = None
        self.calibration_images_: list[dict] = []

    # What the trust engine fitted, under the names the model file and the CLI use.
    calibrator = property(lambda self: self.trust_options.calibrator)
    conformal_alpha = property(lambda self: self.trust_options.conformal_alpha)
    flag = property(lambda self: self.trust_options.flag)
    calibrator_ = property(lambda self: self.trust_.calibrator_)
    conformal_ = property(lambda self: self.trust_.conformal_)
    flag_ = property(lambda self: self.trust_.flag_)
    decision_rule_ = property(lambda self: self.trust_.decision_rule_)
    anomaly_rate = property(lambda self: self.trust_.anomaly_rate)
    notes_ = property(lambda self: self.trust_.notes_)

    @property
    def calibration_(self) -> dict[str, Any]:
        return {"images": self.calibration_images_, **self.trust_.counts_}

    @property
    def backbone(self) -> torch.nn.Module:
        return self.detector.backbone

    @property
    def batch_size(self) -> int:
        return self.detector.runtime.batch_size

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
        reference: Sequence[FlagReference] = (),
        leave_one_out_scores: ArrayLike | None = None,
        normal_distances: Sequence[Tensor] | None = None,
    ) -> FittedDetector:
        """Fit the trust engine (``TrustEngine.fit``) on calibration images' raw scores,
        the support images' leave-one-out scores and the flags' normal ``reference``.

        ``labels``: 0 normal, 1 anomalous; None means all normal. ``images`` records them
        for provenance; ``normal_distances`` (patch-distance grids of normal images) set the
        colour range of heatmap overlays and the pixel threshold of their outlines and masks.
        """
        self.trust_ = TrustEngine(self.trust_options).fit(
            self.detector, scores, labels, reference, leave_one_out_scores
        )
        self.calibration_images_ = [dict(r) for r in images or []]
        self.map_range_, self.pixel_threshold_ = None, None
        if normal_distances:
            values = torch.cat([d.reshape(-1) for d in normal_distances]).double()
            self.map_range_ = (float(values.median()), float(values.max()))
            self.pixel_threshold_ = pixel_threshold(normal_distances, DEFAULT_FALSE_PIXEL_RATE)
        return self

    def fit(
        self,
        support: Sequence[ImageInput],
        calibration: Sequence[ImageInput] | None = None,
        calibration_labels: ArrayLike | None = None,
    ) -> FittedDetector:
        """Fit on normal support images, then calibrate on ``calibration`` images (labels
        0/1; None: all normal) and on the support images themselves, each scored against a
        bank without it (leave-one-out: decisions and flags from good images alone). Images:
        paths, PIL images or arrays."""
        if isinstance(support, (str, bytes, os.PathLike)) or not isinstance(support, Sequence):
            support = [support]
        det = self.detector
        views = [det.support_views(img) for img in support]
        feats = det.features([v for image_views in views for v in image_views])
        per_image, start = [], 0
        for image_views in views:
            per_image.append(feats[start : start + len(image_views)])
            start += len(image_views)
        records = [image_record(img, i) for i, img in enumerate(support)]
        self.fit_features(feats, records)
        loo = det.leave_one_out_distances(per_image)
        loo_scores = det.scores_from_distances(loo)
        loo_set = ScoredImages(loo, [f[0] for f in per_image], [v[0] for v in views], loo_scores)
        # The flags' normal reference: the normal calibration images, else the support
        # images as scored leave-one-out.
        reference, scores, labels, recs, normal_dists = loo_set, np.zeros(0), np.zeros(0), [], []
        if calibration:
            tensors, _ = det.runtime.preprocess(calibration)
            cal_feats = det.features(tensors)
            dists = det.distances_from_features(cal_feats)
            labels = np.zeros(len(dists)) if calibration_labels is None else calibration_labels
            labels = np.asarray(labels).ravel()
            recs = [
                {**image_record(img, i), "label": int(lab)}
                for i, (img, lab) in enumerate(zip(calibration, labels))
            ]
            cal_set = ScoredImages(dists, cal_feats, tensors, det.scores_from_distances(dists))
            scores = cal_set.scores
            normal = cal_set.pick([i for i, lab in enumerate(labels) if lab == 0])
            normal_dists = normal.distances
            if normal_dists:
                reference = normal
        self.calibrate(
            scores,
            labels,
            images=recs,
            reference=reference.references(),
            leave_one_out_scores=loo_scores,
            normal_distances=normal_dists + loo,
        )
        return self

    # -- predicting -------------------------------------------------------------------
    def assess(self, scores: ArrayLike, inputs: FlagInputs | None = None) -> Assessment:
        """Every per-image field but the map, from raw scores and the images' flag
        ``inputs`` (without them: no flag)."""
        values = {} if inputs is None else self.trust_.flag_values(scores, inputs)
        return self.trust_.assess(scores, values)

    def predict_from_features(
        self,
        features: Sequence[Tensor],
        sizes: Sequence[tuple[int, int]],
        maps: bool = True,
        images: Sequence[Tensor] | None = None,
    ) -> list[Prediction]:
        """Predictions for test patch features (h, w, D); ``sizes`` are the original
        (width, height) of the images, for their maps; ``images``, the preprocessed images,
        are needed by the flags that read pixels."""
        dists = self.detector.distances_from_features(features)
        return self.predict_from_distances(features, dists, sizes, maps, images)

    def predict_from_distances(
        self,
        features: Sequence[Tensor],
        dists: Sequence[Tensor],
        sizes: Sequence[tuple[int, int]],
        maps: bool = True,
        images: Sequence[Tensor] | None = None,
    ) -> list[Prediction]:
        """:meth:`predict_from_features` with the patch-distance grids (h, w) found already
        (by :attr:`engine`)."""
        scores = self.detector.scores_from_distances(dists)
        values = grouped_flag_values(self.trust_, scores, dists, features, images)
        fields = self.trust_.assess(scores, values)
        return [
            Prediction(
                **fields.prediction_fields(i), anomaly_map=anomaly_map(d, size) if maps else None
            )
            for i, (d, size) in enumerate(zip(dists, sizes))
        ]

    def predict(self, images: Sequence[ImageInput], maps: bool = True) -> list[Prediction]:
        """One :class:`Prediction` per image (paths, PIL images or arrays)."""
        if isinstance(images, (str, bytes, os.PathLike)) or not isinstance(images, Sequence):
            images = [images]
        out: list[Prediction] = []
        step = self.batch_size
        for start in range(0, len(images), step):
            tensors, sizes = self.detector.runtime.preprocess(images[start : start + step])
            feats, dists = self.engine.run(tensors)
            out += self.predict_from_distances(feats, dists, sizes, maps, tensors)
        return out

    # -- saving -----------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """Settings and provenance as recorded in the model file (no tensors)."""
        if not hasattr(self, "support_"):
            raise RuntimeError("this FittedDetector is not fitted yet: call fit first")
        source = getattr(self.backbone, "weights_source", None)
        bank = self.detector.memory_bank_
        o = self.trust_options
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
            **self.trust_.state(),  # calibrator, conformal, flag, decision_rule
            # What was asked for (what a later calibrate() fits), besides what was fitted.
            "requested": {
                "calibrator": o.calibrator,
                "calibrator_options": dict(o.calibrator_options.get(o.calibrator, {})),
                "conformal_alpha": o.conformal_alpha,
                "flag": o.flag,
                "flag_options": {"false_flag_rate": o.false_flag_rate},
                "leave_one_out": o.leave_one_out,
                "benign_envelope": o.benign_envelope,
            },
            "map_range": None if self.map_range_ is None else list(self.map_range_),
            "pixel_threshold": self.pixel_threshold_,
        }

    def describe(self) -> dict[str, Any]:
        """:meth:`settings` in strict JSON (infinite thresholds as strings)."""
        return json_safe(self.settings())

    def save(self, path: str | os.PathLike, sign_key: bytes | None = None) -> Path:
        """Write the model file (see ``trustad.model.file``), signed with ``sign_key``."""
        tensors = {BANK: self.detector.memory_bank_}
        if self.conformal_ is not None:
            tensors[CONFORMAL_SCORES] = torch.from_numpy(self.conformal_.calibration_scores_)
        return write_model_file(path, tensors, self.settings(), sign_key)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        backbone: torch.nn.Module | None = None,
        *,
        weights: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = DEFAULT_BATCH_SIZE,
        verify_key: bytes | None = None,
    ) -> FittedDetector:
        """A model file back in memory. Without ``backbone`` the recorded backbone is
        loaded (``weights``: an explicit file); either way its weights must have the
        recorded sha256, else :class:`ModelFileError`. With ``verify_key`` the file must
        carry a signature made with that key."""
        tensors, s = read_model_file(path, verify_key)
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
        return cls.from_contents(backbone, tensors, s, batch_size)

    @classmethod
    def from_contents(
        cls, backbone: torch.nn.Module, tensors: Mapping, s: Mapping, batch_size: int = 8
    ) -> FittedDetector:
        """The model of a file's ``tensors`` and settings ``s``, on a checked backbone."""
        bank = tensors[BANK]
        model = cls(backbone, **s["preprocessing"], batch_size=batch_size, **s["requested"])
        model.detector.memory_bank_ = bank.to(model.detector.device)
        model.support_ = s["support"]
        model.created_ = s["created"]
        calibration = s["calibration"]
        model.calibration_images_ = list(calibration["images"])
        model.trust_ = TrustEngine.from_state(
            model.trust_options,
            s,
            calibration,
            tensors[CONFORMAL_SCORES].numpy() if s["conformal"] is not None else None,
            model.detector,
            calibration.get("notes", []),
        )
        model.map_range_ = None if s["map_range"] is None else tuple(s["map_range"])
        model.pixel_threshold_ = s.get("pixel_threshold")  # absent from older files
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
