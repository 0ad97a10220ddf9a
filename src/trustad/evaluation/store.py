"""results.csv, scores.csv and run.json in one folder: persist each unit, resume a run.

A unit of work is one (dataset, category, shots, seed, condition, eps) row of results.csv
with its scores.csv rows. Scores are written first and the results row last, so a results
row marks its unit done. On resume every row is checked field by field: a row torn by a
crash or a full disk is dropped and its unit is computed again.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .. import calibration as cal
from ..flags import FLAGS
from .settings import RESUME_FREE, EvaluationSettings

KEY_COLUMNS = ("dataset", "category", "shots", "seed", "condition", "eps")
SCORE_KEY_COLUMNS = (*KEY_COLUMNS, "image", "label", "split", "score")
# The fields of a prediction (``trustad predict``) that the unit's trust engine gives each
# test image; "flag" is the gate flag's decision.
PREDICTION_COLUMNS = ("probability", "p_value", "decision", "flag", "gated_probability")
SCORE_COLUMNS = (
    *SCORE_KEY_COLUMNS,
    *(f"prob_{c}" for c in cal.CALIBRATORS),
    *PREDICTION_COLUMNS,
    "probability_interval_low",
    "probability_interval_high",
)
DETECTION_COLUMNS = ("auroc", "ap", "f1_max", "g_mean")
PIXEL_COLUMNS = ("pixel_auroc", "aupro")
CALIBRATION_METRICS = ("ece", "classwise_ece", "nll", "brier", "entropy")
FLAG_METRICS = ("flag_auroc", "flag_tpr")
FLAGGED_CALIBRATORS = ("uncal", "platt")
# Calibration metrics after the gate flag set flagged images' probabilities to the base rate.
GATED_METRICS = ("gated_ece", "gated_nll", "gated_brier")
# Seconds spent on a unit; they vary from run to run, so they are not results to compare.
# Rows written before these columns existed stay valid (read back blank).
TIMING_COLUMNS = ("seconds_features", "seconds_attack", "seconds_metrics")


def result_columns() -> list[str]:
    """results.csv columns: the key, counts, detection, pixel, calibration, flagging."""
    cols = [*KEY_COLUMNS, "n_images", "n_anomalous", *DETECTION_COLUMNS, *PIXEL_COLUMNS]
    cols += [f"{m}_{c}" for m in CALIBRATION_METRICS for c in cal.CALIBRATORS]
    cols += [f"{m}_{c}" for m in FLAG_METRICS for c in FLAGGED_CALIBRATORS]
    cols += [f"{m}_{f}" for f in FLAGS for m in (*FLAG_METRICS, "flag_ffr", "flag_rate")]
    cols += [f"{m}_{c}" for m in GATED_METRICS for c in cal.CALIBRATORS] + ["gated_share"]
    cols += ["conformal_threshold", "conformal_far", "conformal_tpr"]
    cols += ["n_calibration", "n_evaluation", "linf", "psnr", "note", *TIMING_COLUMNS]
    return cols


def result_key(dataset: Any, category: Any, shots: Any, seed: Any, cond: Any, eps: Any) -> tuple:
    """The identity of one result row, the same whether its values come from a CSV file
    (strings) or from a running evaluation; eps is compared to 6 significant digits."""
    eps = float(f"{float(eps):.6g}")
    return (str(dataset), str(category), int(shots), int(seed), str(cond), eps)


def row_key(row: dict[str, Any]) -> tuple:
    return result_key(*(row[c] for c in KEY_COLUMNS))


def unique_rows(rows: Iterable[dict[str, Any]], extra: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Rows without repeats of the same unit key (plus ``extra`` columns); the first stays."""
    seen: set[tuple] = set()
    out = []
    for r in rows:
        key = (*row_key(r), *(str(r[c]) for c in extra))
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def _is_whole(row: dict[str, Any], numeric: Sequence[str]) -> bool:
    """True when a row read back has every column of its file's header and its key and
    numbers parse (a row torn by a crash lacks its last fields). Columns added to the
    format later are simply absent from older files."""
    if None in row or any(v is None for v in row.values()):
        return False
    try:
        row_key(row)
        for c in numeric:
            if row.get(c, ""):
                float(row[c])
    except (ValueError, TypeError, KeyError):
        return False
    return True


def _fmt(value: Any) -> Any:
    # Floats in full (repr round-trips), so that a row read back holds the computed value.
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(float(value))  # not "np.float64(...)"
    return "" if value is None else value


def read_csv(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def whole_results(path: Path) -> list[dict[str, Any]]:
    """The rows of a results.csv that are whole (torn rows dropped), without repeats."""
    numeric = [c for c in result_columns() if c not in KEY_COLUMNS and c != "note"]
    rows = read_csv(path)
    return unique_rows(r for r in rows if _is_whole(r, numeric))


def check_resumable(out: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    """Refuse to resume a run whose recorded settings differ in a setting that changes
    results (``old``, ``new``: settings dictionaries)."""
    changed = sorted(k for k in new if k not in RESUME_FREE and old.get(k, new[k]) != new[k])
    if changed:
        raise ValueError(
            f"{out} holds a run with other settings ({', '.join(changed)}); "
            "use another --out folder or the same settings to resume"
        )


def read_run_file(path: Path) -> dict[str, Any]:
    """run.json's content, {} when there is none."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not a trustad run file: {exc}") from exc
    if not isinstance(data, dict) or "settings" not in data:
        raise ValueError(f"{path} is not a trustad run file: no settings")
    return data


def done_results(out: str | Path, settings: EvaluationSettings) -> set[tuple]:
    """ResultKey keys already done in ``out``, read without writing anything (for a plan).
    Raises like a run would when the folder holds a run with other settings."""
    out = Path(out)
    data = read_run_file(out / "run.json") if out.is_dir() else {}
    if data:
        check_resumable(out, data["settings"], settings.to_dict())
    return {row_key(r) for r in whole_results(out / "results.csv")} if out.is_dir() else set()


def forget_empty_run(out: str | Path) -> bool:
    """After a run that failed before any result: drop the settings it recorded in
    ``out``/run.json, so that they do not refuse the corrected command as "a run with other
    settings". Returns whether it did (never when a result was kept)."""
    out = Path(out)
    run_file = out / "run.json"
    if not run_file.is_file() or whole_results(out / "results.csv"):
        return False
    run_file.unlink()
    return True


class ResultStore:
    """Persists units as they finish and tells which are done; nothing else."""

    def __init__(self, out: str | Path, settings: EvaluationSettings) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.results_path = self.out / "results.csv"
        self.scores_path = self.out / "scores.csv"
        self.settings_path = self.out / "run.json"
        self._check_settings(settings)
        columns = result_columns()
        self.rows = whole_results(self.results_path)
        self._done = {row_key(r) for r in self.rows}
        # Score rows without their results row belong to an interrupted unit: drop them.
        scores = [
            r
            for r in read_csv(self.scores_path)
            if _is_whole(r, ("label", "score")) and row_key(r) in self._done
        ]
        self._rewrite(self.scores_path, SCORE_COLUMNS, unique_rows(scores, extra=("image",)))
        self._rewrite(self.results_path, columns, self.rows)

    def run_file(self) -> dict[str, Any]:
        return read_run_file(self.settings_path)

    def _write_run_file(self, data: dict[str, Any]) -> None:
        tmp = self.settings_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, default=str))
        tmp.replace(self.settings_path)

    def _check_settings(self, settings: EvaluationSettings) -> None:
        new = settings.to_dict()
        data = self.run_file()
        if data:
            check_resumable(self.out, data["settings"], new)
        data["settings"] = new  # keeps what else the file records (the weights)
        self._write_run_file(data)

    def record(self, name: str, value: Any) -> None:
        """Keep ``value`` under ``name`` in run.json beside the settings."""
        data = self.run_file()
        data[name] = value
        self._write_run_file(data)

    def record_weights(self, source: dict[str, Any]) -> None:
        """Record the weights' provenance; refuse to add results computed with other weights
        (the same settings can resolve to another file, e.g. once a download succeeds)."""
        data = self.run_file()
        old = data.get("weights")
        if old and old.get("sha256") != source.get("sha256"):
            raise ValueError(
                f"{self.out} holds results computed with other weights: {old.get('label')} "
                f"({old.get('path')}, sha256 {str(old.get('sha256'))[:12]}); this run would use "
                f"{source.get('label')} ({source.get('path')}, sha256 "
                f"{str(source.get('sha256'))[:12]}). Pass --weights with the earlier file to "
                "resume, or use another --out folder"
            )
        self.record("weights", source)

    @staticmethod
    def _rewrite(path: Path, columns: Sequence[str], rows: list[dict[str, Any]]) -> None:
        tmp = path.with_suffix(".tmp")
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows({k: _fmt(v) for k, v in r.items()} for r in rows)
        tmp.replace(path)

    @staticmethod
    def _append(path: Path, columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> None:
        with path.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, columns, extrasaction="ignore")
            writer.writerows({k: _fmt(v) for k, v in r.items()} for r in rows)

    def done(
        self, dataset: str, category: str, shots: int, seed: int, cond: str, eps: float
    ) -> bool:
        return result_key(dataset, category, shots, seed, cond, eps) in self._done

    def add(self, results: list[dict[str, Any]], scores: list[dict[str, Any]]) -> None:
        """Write one unit: its scores first, then its results (which mark it done)."""
        self._append(self.scores_path, SCORE_COLUMNS, scores)
        self._append(self.results_path, result_columns(), results)
        self.rows.extend(results)
        self._done.update(row_key(r) for r in results)
