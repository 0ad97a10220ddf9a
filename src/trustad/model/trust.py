"""The trust engine: everything a prediction carries beyond the raw score.

One object fits, on calibration images, and applies to any scored images: the calibrators
(the first named gives the prediction's probability), the conformal threshold (p-values
and the decision), the flags (the first named is the prediction's flag and the gate) and
the gate (a flagged image's probability becomes the calibration images' anomaly rate).
``trustad fit``/``predict``/``serve`` use it through the fitted detector, and ``trustad
evaluate`` fits one per (category, shots, seed) and applies it to every condition: the
study measures exactly what is deployed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike

from ..calibration import (
    Calibrator,
    ConformalThreshold,
    Uncalibrated,
    entropy,
    fit_calibrator_safely,
)
from ..corruptions import benign_variants
from ..flags import (
    DEFAULT_FALSE_FLAG_RATE,
    DEFAULT_FLAG,
    BaseFlag,
    FlagInputs,
    flag_from_state,
    gate_probabilities,
    make_flag,
)
from .state import calibrator_from_state, calibrator_state

# Bayesian Platt: no step function on a handful of images, and a credible interval.
DEFAULT_CALIBRATOR = "bayes"
DEFAULT_CONFORMAL_ALPHA = 0.1
# What the engine was fitted on: normal and anomalous calibration images, and support images
# scored leave-one-out.
COUNTS = ("n_normal", "n_anomalous", "n_leave_one_out")


@dataclass(frozen=True)
class TrustOptions:
    """What the engine fits. ``calibrators``: the first gives the prediction's probability;
    ``flag``: the prediction's flag and the gate (None: none); ``other_flags``: fitted and
    measured too (the study's)."""

    calibrators: tuple[str, ...] = (DEFAULT_CALIBRATOR,)
    calibrator_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    conformal_alpha: float | None = DEFAULT_CONFORMAL_ALPHA
    flag: str | None = DEFAULT_FLAG
    other_flags: tuple[str, ...] = ()
    false_flag_rate: float = DEFAULT_FALSE_FLAG_RATE
    # Pool the support images' leave-one-out scores with the normal calibration scores for
    # the conformal threshold (PROTOCOL: decisions from good images alone).
    leave_one_out: bool = True
    # Set the thresholds of flags that read the pixels alone over benign variants of the
    # normal images too (``trustad.corruptions.BENIGN_ENVELOPE``): ordinary camera noise,
    # JPEG, blur, lighting and shifts stay unflagged.
    benign_envelope: bool = True

    def __post_init__(self) -> None:
        if self.conformal_alpha is not None:
            ConformalThreshold(self.conformal_alpha)  # checks the range
        if not 0.0 <= self.false_flag_rate <= 1.0:
            raise ValueError(f"false-flag rate must lie in [0, 1], got {self.false_flag_rate}")
        for name in self.flags:
            make_flag(name)  # checks the name

    @property
    def calibrator(self) -> str | None:
        return self.calibrators[0] if self.calibrators else None

    @property
    def flags(self) -> tuple[str, ...]:
        """Every flag fitted, the prediction's first."""
        first = () if self.flag is None else (self.flag,)
        return tuple(dict.fromkeys((*first, *self.other_flags)))


@dataclass
class FlagReference:
    """Normal images a flag's threshold is set on: their flag inputs (equally sized), their
    raw scores (for the entropy flag's probabilities) and the seed of their benign
    variants."""

    inputs: FlagInputs
    scores: np.ndarray
    seed: int = 0

    def variants(self) -> list[FlagInputs]:
        """The inputs of each benign variant of ``BENIGN_ENVELOPE`` (images only: the flags
        that use them read nothing else)."""
        if self.inputs.images is None:
            return []
        return [
            FlagInputs(torch.zeros(len(images), 1, 1), images=images)
            for _, images in benign_variants(self.inputs.images, self.seed)
        ]


@dataclass
class Assessment:
    """Per-image fields of a set of scored images (arrays; None where the part that gives
    them was not fitted or could not be computed)."""

    score: np.ndarray
    probabilities: dict[str, np.ndarray]  # every fitted calibrator's, fallbacks included
    probability: np.ndarray | None  # the prediction's (None when its calibrator fell back)
    probability_interval: np.ndarray | None  # (n, 2) credible interval, where it has one
    p_value: np.ndarray | None
    decision: np.ndarray | None
    entropy: np.ndarray | None
    flag_values: dict[str, np.ndarray]  # statistic of every fitted flag
    flagged: dict[str, np.ndarray]  # every fitted flag's decision
    flag: np.ndarray | None  # the prediction's flag (the gate)
    gated_probability: np.ndarray | None
    flag_reason: list[str | None] | None  # why the prediction's flag fired (None: it did not)

    def prediction_fields(self, i: int) -> dict[str, Any]:
        """Image ``i``'s fields of a ``Prediction`` (plain Python values)."""
        names = ("score", "probability", "p_value", "decision", "entropy", "flag")
        out = {n: _item(getattr(self, n), i) for n in names}
        out["gated_probability"] = _item(self.gated_probability, i)
        out["flag_reason"] = None if self.flag_reason is None else self.flag_reason[i]
        interval = self.probability_interval
        out["probability_interval"] = None if interval is None else interval[i].tolist()
        return out


def _item(values: np.ndarray | None, i: int) -> Any:
    return None if values is None else values[i].item()


class TrustEngine:
    """Calibrators, conformal threshold, flags and gate, fitted on calibration images."""

    def __init__(self, options: TrustOptions | None = None) -> None:
        self.options = options or TrustOptions()
        self.calibrators_: dict[str, Calibrator] = {}
        self.conformal_: ConformalThreshold | None = None
        self.flags_: dict[str, BaseFlag] = {}
        self.counts_ = dict.fromkeys(COUNTS, 0)
        self.notes_: list[str] = []

    # -- fitting ----------------------------------------------------------------------
    def fit(
        self,
        detector: Any,
        scores: ArrayLike,
        labels: ArrayLike | None = None,
        reference: Sequence[FlagReference] = (),
        leave_one_out_scores: ArrayLike | None = None,
    ) -> TrustEngine:
        """Fit on calibration images' raw ``scores`` and ``labels`` (0 normal, 1 anomalous;
        None: all normal), the support images' ``leave_one_out_scores`` (each scored
        against a bank without it) and the flags' ``reference``: normal images as the fitted
        ``detector`` sees them (:class:`FlagReference`).

        Calibrators need both classes (with fewer, a fallback to the raw score keeps study
        metrics defined and the prediction has no probability). The conformal threshold is
        set on the normal calibration scores, pooled with the leave-one-out scores
        (``leave_one_out``). Each flag's threshold is set on the reference images, and, for
        flags that read the pixels alone, raised where needed so that none of their benign
        variants is flagged (the envelope is a bound on ordinary camera variation)."""
        s = np.asarray(scores, dtype=np.float64).ravel()
        y = np.zeros(s.size) if labels is None else np.asarray(labels, dtype=np.float64).ravel()
        if y.size != s.size:
            raise ValueError(f"{y.size} calibration labels for {s.size} scores")
        o = self.options
        normal = s[y == 0]
        loo = np.asarray([] if leave_one_out_scores is None else leave_one_out_scores, float)
        n_anomalous = int((y == 1).sum())
        self.counts_ = {"n_normal": int(normal.size), "n_anomalous": n_anomalous}
        self.notes_ = []
        self.calibrators_ = {}
        for name in o.calibrators:
            if s.size == 0:
                self.calibrators_[name] = Uncalibrated()
                continue
            cal, note = fit_calibrator_safely(name, s, y, **o.calibrator_options.get(name, {}))
            self.calibrators_[name] = cal
            if note:
                self.notes_.append(note)
        if o.calibrator is not None and self.calibrator_ is None:
            self.notes_.append(
                f"no probability: {o.calibrator} could not be fitted on {normal.size} normal "
                f"and {n_anomalous} anomalous calibration images"
            )
        pooled = np.concatenate([normal, loo.ravel()]) if o.leave_one_out else normal
        self.conformal_ = None
        self.counts_["n_leave_one_out"] = int(loo.size) if o.leave_one_out else 0
        if o.conformal_alpha is not None and pooled.size:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                self.conformal_ = ConformalThreshold(o.conformal_alpha).fit(pooled)
            self.notes_ += [f"conformal: {w.message}" for w in caught]
        self.flags_ = {}
        if reference:
            self._fit_flags(detector, reference)
        elif o.flags:
            self.notes_.append("no flag: no normal image to set its threshold on")
        return self

    def _fit_flags(self, detector: Any, reference: Sequence[FlagReference]) -> None:
        o = self.options
        parts = [self._with_probabilities(r.inputs, r.scores) for r in reference]
        variants: list[FlagInputs] | None = None  # made when a flag first needs them
        for name in o.flags:
            flag = make_flag(name)
            missing = [k for k in flag.needs if getattr(parts[0], k) is None]
            if missing:
                what = "a calibrated probability" if name == "entropy" else ", ".join(missing)
                self.notes_.append(f"no {name} flag: it needs {what}")
                continue
            flag.prepare(detector, parts[0])
            flag.fit(np.concatenate([flag.statistic(p) for p in parts]), o.false_flag_rate)
            if flag.image_only and o.benign_envelope:
                if variants is None:
                    variants = [v for r in reference for v in r.variants()]
                # The envelope is a bound, not a sample: none of its variants is flagged.
                for v in variants:
                    flag.threshold_ = max(flag.threshold_, float(flag.statistic(v).max()))
            self.flags_[name] = flag

    @property
    def calibrator_(self) -> Calibrator | None:
        """The prediction's calibrator; None when none was fitted (or it fell back)."""
        name = self.options.calibrator
        cal = self.calibrators_.get(name) if name else None
        return cal if getattr(cal, "name", None) == name else None

    @property
    def flag_(self) -> BaseFlag | None:
        return self.flags_.get(self.options.flag) if self.options.flag else None

    @property
    def decision_rule_(self) -> str | None:
        """``"conformal"`` when a finite conformal threshold was fitted (anomalous when the
        p-value <= alpha), else ``"probability"`` when a calibrator was (anomalous when
        probability >= 0.5), else None (no decision)."""
        if self.conformal_ is not None and math.isfinite(self.conformal_.threshold_):
            return "conformal"
        return "probability" if self.calibrator_ is not None else None

    @property
    def anomaly_rate(self) -> float:
        """The share of anomalous images among the calibration images."""
        n_anom = self.counts_["n_anomalous"]
        return n_anom / max(n_anom + self.counts_["n_normal"], 1)

    # -- applying ---------------------------------------------------------------------
    def _with_probabilities(self, inputs: FlagInputs, scores: np.ndarray) -> FlagInputs:
        """``inputs`` with the prediction's probabilities, which the entropy flag reads."""
        cal = self.calibrator_
        if cal is None or inputs.probabilities is not None:
            return inputs
        return FlagInputs(
            inputs.distances,
            inputs.features,
            inputs.images,
            cal.predict_proba(scores),
            memo=inputs.memo,
        )

    def flag_values(self, scores: ArrayLike, inputs: FlagInputs) -> dict[str, np.ndarray]:
        """Every fitted flag's statistic on the images of ``inputs`` (scored ``scores``)."""
        if not self.flags_:
            return {}
        inputs = self._with_probabilities(inputs, np.asarray(scores, dtype=np.float64).ravel())
        return {name: flag.statistic(inputs) for name, flag in self.flags_.items()}

    def assess(
        self, scores: ArrayLike, flag_values: Mapping[str, ArrayLike] | None = None
    ) -> Assessment:
        """Every per-image field from raw scores and the flags' statistics
        (:meth:`flag_values`; flags without values give no decision)."""
        s = np.asarray(scores, dtype=np.float64).ravel()
        probabilities = {n: c.predict_proba(s) for n, c in self.calibrators_.items()}
        p = None if self.calibrator_ is None else probabilities[self.options.calibrator]
        conf = self.conformal_
        decision = None
        if self.decision_rule_ == "conformal":
            decision = conf.predict(s).astype(bool)
        elif self.decision_rule_ == "probability":
            decision = p >= 0.5
        values = {n: np.asarray(v, dtype=np.float64) for n, v in (flag_values or {}).items()}
        flagged = {n: f.predict(values[n]) for n, f in self.flags_.items() if n in values}
        flag = flagged.get(self.options.flag) if self.options.flag else None
        return Assessment(
            score=s,
            probabilities=probabilities,
            probability=p,
            probability_interval=None
            if p is None or not hasattr(self.calibrator_, "predict_interval")
            else self.calibrator_.predict_interval(s),
            p_value=None if conf is None else conf.p_values(s),
            decision=decision,
            entropy=None if p is None else entropy(p),
            flag_values=values,
            flagged=flagged,
            flag=flag,
            gated_probability=None if p is None or flag is None else self.gate(p, flag),
            flag_reason=None
            if flag is None
            else [
                self.flag_.reason(v) if f else None for f, v in zip(flag, values[self.options.flag])
            ],
        )

    def gate(self, probabilities: ArrayLike, flagged: ArrayLike) -> np.ndarray:
        """``probabilities`` with the anomaly rate of the calibration images where
        ``flagged``."""
        return gate_probabilities(probabilities, flagged, self.anomaly_rate)

    # -- saving -----------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The prediction's parts as JSON-able model-file fields (the study's other
        calibrators and flags are not saved)."""
        cal, conf, flag = self.calibrator_, self.conformal_, self.flag_
        return {
            "calibrator": None if cal is None else calibrator_state(cal),
            "conformal": None
            if conf is None
            else {
                "alpha": conf.alpha,
                "threshold": conf.threshold_,
                "n": conf.calibration_scores_.size,
            },
            "flag": None if flag is None else flag.state(),
            "decision_rule": self.decision_rule_,
        }

    @classmethod
    def from_state(
        cls,
        options: TrustOptions,
        state: Mapping[str, Any],
        counts: Mapping[str, int],
        conformal_scores: np.ndarray | None,
        detector: Any,
        notes: Sequence[str] = (),
    ) -> TrustEngine:
        """The engine a model file recorded (:meth:`state`), for ``detector``."""
        out = cls(options)
        out.counts_ = {k: int(counts.get(k, 0)) for k in COUNTS}
        out.notes_ = list(notes)
        if state["calibrator"] is not None:
            out.calibrators_ = {options.calibrator: calibrator_from_state(state["calibrator"])}
        if state["conformal"] is not None:
            out.conformal_ = ConformalThreshold(state["conformal"]["alpha"])
            out.conformal_.calibration_scores_ = np.asarray(conformal_scores, dtype=np.float64)
            out.conformal_.threshold_ = float(state["conformal"]["threshold"])
        if state["flag"] is not None:
            name = state["flag"]["name"]
            out.flags_ = {name: flag_from_state(name, state["flag"], detector)}
        return out
