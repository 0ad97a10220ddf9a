"""Result rows as pure functions of arrays: scores, labels, maps, masks (PROTOCOL sections
4 and 6). Nothing here runs a model or touches a file."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from torch import Tensor

from .. import calibration as cal
from .. import metrics
from ..attacks import linf, psnr
from ..flags.robust import gate_probabilities
from .settings import CLEAN
from .store import FLAGGED_CALIBRATORS, TIMING_COLUMNS

IMAGE_LABEL_PROBE = "probe trained on image labels: no masks, every patch takes its image's label"


@dataclass(frozen=True)
class Unit:
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


@dataclass(frozen=True)
class CalibrationOptions:
    calibrator_options: dict[str, dict[str, Any]]  # constructor options per calibrator
    flag_rate: float
    conformal_alpha: float


def fitted_calibrators(
    clean_scores: np.ndarray, labels: np.ndarray, split: Split, options: CalibrationOptions
) -> tuple[dict[str, cal.Calibrator], list[str]]:
    """Every calibrator fitted on the clean calibration scores, and notes on fallbacks."""
    fitted, notes = {}, []
    idx = split.calibration
    for name in cal.CALIBRATORS:
        if len(idx):
            calibrator, note = cal.fit_calibrator_safely(
                name, clean_scores[idx], labels[idx], **options.calibrator_options.get(name, {})
            )
        else:
            calibrator, note = cal.make_calibrator("uncal"), None
        if note:
            notes.append(note)  # names the calibrator already
        fitted[name] = calibrator
    return fitted, notes


def probabilities(calibrators: dict[str, cal.Calibrator], scores: np.ndarray) -> dict:
    return {name: c.predict_proba(scores) for name, c in calibrators.items()}


@dataclass(frozen=True)
class CleanCalibration:
    """Every calibrator fitted on the clean calibration scores of one detector (category,
    shots, seed), the notes on their fallbacks, and every clean test image's probabilities:
    the same for every condition scored with that detector, so fitted once for all."""

    scores: np.ndarray  # clean scores of every test image
    calibrators: dict[str, cal.Calibrator]
    notes: list[str]
    probs: dict[str, np.ndarray]


def clean_calibration(
    clean_scores: np.ndarray, labels: np.ndarray, split: Split, options: CalibrationOptions
) -> CleanCalibration:
    calibrators, notes = fitted_calibrators(clean_scores, labels, split, options)
    return CleanCalibration(
        clean_scores, calibrators, notes, probabilities(calibrators, clean_scores)
    )


def score_rows(
    unit: Unit,
    image_ids: Sequence[str],
    labels: np.ndarray,
    split: Split,
    scores: np.ndarray,
    probs: dict[str, np.ndarray],
    gated: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """One scores.csv row per test image, with its probability under every calibrator and
    whether the gate flag fired on it (blank without a gate)."""
    in_cal = np.zeros(len(scores), dtype=bool)
    in_cal[split.calibration] = True
    key = unit.to_dict()
    return [
        dict(
            key,
            image=image_id,
            label=int(labels[i]),
            split="calibration" if in_cal[i] else "evaluation",
            score=float(scores[i]),
            **{f"prob_{name}": float(p[i]) for name, p in probs.items()},
            gated="" if gated is None else int(gated[i]),
        )
        for i, image_id in enumerate(image_ids)
    ]


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
            out[f"flag_auroc_{name}"] = cal.flagging_auroc(h_clean, h_adv)
            out[f"flag_tpr_{name}"] = cal.tpr_at_fpr(h_clean, h_adv, flag_rate)
    return out


def gated_columns(
    probs: dict[str, np.ndarray], labels: np.ndarray, split: Split, fired: np.ndarray
) -> dict[str, float]:
    """Calibration metrics of the evaluation part after the gate: where the gate flag
    ``fired`` (one decision per test image), the probability is the anomaly rate of the
    calibration images. ``gated_share``: the share of evaluation images gated."""
    idx = split.evaluation
    y, gate = labels[idx], fired[idx]
    base_rate = float(labels[split.calibration].mean())
    out = {"gated_share": float(gate.mean())}
    for name, p_all in probs.items():
        p = gate_probabilities(p_all[idx], gate, base_rate)
        out[f"gated_ece_{name}"] = cal.ece(p, y)
        out[f"gated_nll_{name}"] = cal.nll(p, y)
        out[f"gated_brier_{name}"] = cal.brier(p, y)
    return out


def conformal_columns(
    normal_calibration: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    alpha: float,
    notes: list[str],
) -> dict[str, float]:
    """The conformal threshold on normal calibration scores; its false-alarm rate and
    true-positive rate on ``scores``."""
    if len(normal_calibration) == 0:
        notes.append("conformal: no normal calibration image")
        return {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        conformal = cal.ConformalThreshold(alpha).fit(normal_calibration)
    notes += [f"conformal: {w.message}" for w in caught]
    flagged = conformal.predict(scores).astype(bool)
    out = {"conformal_threshold": conformal.threshold_}
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
    pairs = [(a[None], b[None]) for a, b in zip(images, attacked)]
    return {
        "linf": float(np.mean([float(linf(a, b)[0]) for a, b in pairs])),
        "psnr": float(np.mean([float(psnr(a, b)[0]) for a, b in pairs])),
    }


def result_row(
    unit: Unit,
    labels: np.ndarray,
    scores: np.ndarray,
    clean: np.ndarray | CleanCalibration,
    split: Split,
    options: CalibrationOptions,
    notes: Sequence[str] = (),
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The results.csv row of one unit without its pixel and perturbation columns, and the
    probabilities of every test image under every calibrator (for scores.csv).

    Calibrators are fitted on the clean calibration scores of the same (category, shots,
    seed) (``clean``: those scores, or the ``clean_calibration`` made of them); metrics use
    this condition's evaluation part; flagging compares with the clean evaluation part."""
    if not isinstance(clean, CleanCalibration):
        clean = clean_calibration(clean, labels, split, options)
    all_notes = [split.note] if split.note else []
    all_notes += notes
    clean_scores, clean_probs, fit_notes = clean.scores, clean.probs, clean.notes
    same = np.array_equal(scores, clean_scores)  # a clean unit: its probabilities are known
    probs = clean_probs if same else probabilities(clean.calibrators, scores)
    row: dict[str, Any] = dict(unit.to_dict(), n_images=len(scores), n_anomalous=int(labels.sum()))
    row.update(metrics.image_metrics(labels, scores))
    attacked = unit.condition != CLEAN
    row.update(calibration_columns(probs, clean_probs, labels, split, attacked, options.flag_rate))
    all_notes += fit_notes
    cal_idx, eval_idx = split.calibration, split.evaluation
    normal_cal = clean_scores[cal_idx][labels[cal_idx] == 0]
    row.update(
        conformal_columns(
            normal_cal, scores[eval_idx], labels[eval_idx], options.conformal_alpha, all_notes
        )
    )
    row["n_calibration"], row["n_evaluation"] = len(cal_idx), len(eval_idx)
    row["note"] = "; ".join(dict.fromkeys(all_notes))
    return row, probs


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
