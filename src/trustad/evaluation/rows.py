"""Result rows as pure functions of arrays: scores, labels, maps, masks (PROTOCOL sections
4 and 6). Nothing here runs a model or touches a file."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from torch import Tensor

from .. import calibration as cal
from .. import metrics
from ..attacks import mean_linf_psnr
from ..flags import flagging_auroc, tpr_at_fpr
from ..model import Assessment, TrustEngine
from .settings import CLEAN
from .store import FLAGGED_CALIBRATORS, PREDICTION_COLUMNS, TIMING_COLUMNS

IMAGE_LABEL_PROBE = "probe trained on image labels: no masks, every patch takes its image's label"


@dataclass(frozen=True)
class ResultKey:
    """The identity of one result row."""

    dataset: str
    category: str
    shots: int
    seed: int
    condition: str
    eps: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Split:
    """Which test images fit the calibrators and which are evaluated; ``note`` says why
    there is no calibration part when there is none."""

    calibration: np.ndarray
    evaluation: np.ndarray
    note: str | None = None


def calibration_split(labels: np.ndarray, fraction: float, seed: int) -> Split:
    try:
        return Split(*cal.calibration_split(labels, fraction, seed))
    except cal.CalibrationSplitError as exc:
        note = f"no calibration split ({exc}); calibration metrics use the uncalibrated scores"
        return Split(np.array([], dtype=int), np.arange(len(labels)), note)


def score_rows(
    unit: ResultKey,
    image_ids: Sequence[str],
    labels: np.ndarray,
    split: Split,
    fields: Assessment,
) -> list[dict[str, Any]]:
    """One scores.csv row per test image: its score, its probability under every
    calibrator, and the fields of the prediction the unit's trust engine gives it (blank
    where it gives none)."""
    in_cal = np.zeros(len(fields.score), dtype=bool)
    in_cal[split.calibration] = True
    key = unit.to_dict()
    return [
        dict(
            key,
            image=image_id,
            label=int(labels[i]),
            split="calibration" if in_cal[i] else "evaluation",
            score=float(fields.score[i]),
            **{f"prob_{name}": float(p[i]) for name, p in fields.probabilities.items()},
            **{
                name: "" if value is None else _csv_value(value)
                for name, value in fields.prediction_fields(i).items()
                if name in PREDICTION_COLUMNS
            },
            **_interval_columns(fields, i),
        )
        for i, image_id in enumerate(image_ids)
    ]


def _interval_columns(fields: Assessment, i: int) -> dict[str, Any]:
    interval = fields.probability_interval
    if interval is None:
        return {"probability_interval_low": "", "probability_interval_high": ""}
    return {
        "probability_interval_low": float(interval[i, 0]),
        "probability_interval_high": float(interval[i, 1]),
    }


def _csv_value(value: Any) -> Any:
    return int(value) if isinstance(value, bool) else value


def calibration_columns(
    probs: dict[str, np.ndarray],
    clean_probs: dict[str, np.ndarray],
    labels: np.ndarray,
    split: Split,
    flagged: bool,
    flag_rate: float,
) -> dict[str, float]:
    """Calibration metrics of this condition's evaluation part; with ``flagged``, how well
    the entropy tells these inputs from the clean ones."""
    out: dict[str, float] = {}
    idx = split.evaluation
    y = labels[idx]
    for name, p_all in probs.items():
        p = p_all[idx]
        out[f"ece_{name}"] = cal.ece(p, y)
        out[f"classwise_ece_{name}"] = cal.classwise_ece(p, y)
        out[f"nll_{name}"] = cal.nll(p, y)
        out[f"brier_{name}"] = cal.brier(p, y)
        out[f"entropy_{name}"] = float(np.mean(cal.entropy(p)))
        if flagged and name in FLAGGED_CALIBRATORS:
            h_clean = cal.entropy(clean_probs[name][idx])
            h_adv = cal.entropy(p)
            out[f"flag_auroc_{name}"] = flagging_auroc(h_clean, h_adv)
            out[f"flag_tpr_{name}"] = tpr_at_fpr(h_clean, h_adv, flag_rate)
    return out


def gated_columns(fields: Assessment, labels: np.ndarray, split: Split, trust: TrustEngine) -> dict:
    """Calibration metrics of the evaluation part after the gate: where the gate flag
    (``fields.flag``) fired, every calibrator's probability is the anomaly rate of the
    calibration images (``trust.gate``). ``gated_share``: the share of evaluation images
    gated."""
    idx = split.evaluation
    y, gate = labels[idx], fields.flag[idx]
    probs = fields.probabilities
    out = {"gated_share": float(gate.mean())}
    for name, p_all in probs.items():
        p = trust.gate(p_all[idx], gate)
        out[f"gated_ece_{name}"] = cal.ece(p, y)
        out[f"gated_nll_{name}"] = cal.nll(p, y)
        out[f"gated_brier_{name}"] = cal.brier(p, y)
    return out


def conformal_columns(
    trust: TrustEngine, scores: np.ndarray, labels: np.ndarray, notes: list[str]
) -> dict[str, float]:
    """The trust engine's conformal threshold; its false-alarm rate and true-positive rate
    on ``scores``."""
    if trust.conformal_ is None:
        notes.append("conformal: no normal calibration image")
        return {}
    flagged = trust.conformal_.predict(scores).astype(bool)
    out = {"conformal_threshold": trust.conformal_.threshold_}
    if (labels == 0).any():
        out["conformal_far"] = float(flagged[labels == 0].mean())
    if (labels == 1).any():
        out["conformal_tpr"] = float(flagged[labels == 1].mean())
    return out


def pixel_columns(
    masks: Sequence[np.ndarray] | metrics.PooledTruth, maps: Sequence[np.ndarray]
) -> dict[str, float]:
    return {"pixel_auroc": metrics.pixel_auroc(masks, maps), "aupro": metrics.aupro(masks, maps)}


def perturbation_columns(images: Sequence[Tensor], attacked: Sequence[Tensor]) -> dict:
    """Mean L-inf distance and PSNR between clean and attacked inputs."""
    mean_linf, mean_psnr = mean_linf_psnr(list(images), list(attacked))
    return {"linf": float(mean_linf), "psnr": float(mean_psnr)}


def result_row(
    unit: ResultKey,
    labels: np.ndarray,
    fields: Assessment,
    clean: Assessment,
    trust: TrustEngine,
    split: Split,
    flag_rate: float,
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """The results.csv row of one unit without its pixel, flag and perturbation columns:
    detection metrics of its scores, calibration metrics of its probabilities (the trust
    engine was fitted on the clean calibration part of the same (category, shots, seed);
    metrics use this condition's evaluation part; entropy flagging compares with the
    ``clean`` fields) and the conformal threshold's rates."""
    all_notes = [split.note] if split.note else []
    all_notes += notes
    scores = fields.score
    row: dict[str, Any] = dict(unit.to_dict(), n_images=len(scores), n_anomalous=int(labels.sum()))
    row.update(metrics.image_metrics(labels, scores))
    attacked = unit.condition != CLEAN
    row.update(
        calibration_columns(
            fields.probabilities, clean.probabilities, labels, split, attacked, flag_rate
        )
    )
    all_notes += trust.notes_
    eval_idx = split.evaluation
    row.update(conformal_columns(trust, scores[eval_idx], labels[eval_idx], all_notes))
    row["n_calibration"], row["n_evaluation"] = len(split.calibration), len(eval_idx)
    row["note"] = "; ".join(dict.fromkeys(all_notes))
    return row


def share_seconds(seconds: dict[str, float], n: int) -> dict[str, float]:
    """Seconds of work shared by ``n`` units: each unit's part."""
    return {k: v / max(n, 1) for k, v in seconds.items()}


def timing_columns(parts: list[dict[str, float]]) -> dict[str, float]:
    """results.csv's seconds columns from the parts of a unit's time (features, attack,
    metrics)."""
    total = {c: 0.0 for c in TIMING_COLUMNS}
    for part in parts:
        for what, seconds in part.items():
            total[f"seconds_{what}"] += seconds
    return total
