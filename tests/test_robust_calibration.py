"""The calibration-under-attack options that benchmarks/flags.py measures
(benchmarks/robust_calibration.py)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from trustad import calibration as cal

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from robust_calibration import abstaining_metrics, fit_mixed_calibrator  # noqa: E402


def test_mixed_calibrator_fits_clean_and_perturbed_scores_together():
    clean = np.array([0.1, 0.2, 0.6, 0.7])
    pert = np.array([0.4, 0.5, 0.3, 0.35])
    y = np.array([0, 0, 1, 1])
    got, _ = fit_mixed_calibrator("platt", clean, pert, y)
    want = cal.make_calibrator("platt").fit(np.r_[clean, pert], np.r_[y, y])
    assert got.a_ == pytest.approx(want.a_) and got.b_ == pytest.approx(want.b_)
    with pytest.raises(ValueError, match="one of each"):
        fit_mixed_calibrator("platt", clean, pert[:3], y)


def test_abstaining_metrics_count_abstentions():
    p = np.array([0.9, 0.1, 0.9, 0.2])
    y = np.array([1, 0, 0, 0])
    m = abstaining_metrics(p, y, [False, False, True, False])
    assert m["abstention"] == 0.25
    assert m["ece"] == pytest.approx(cal.ece(p[[0, 1, 3]], y[[0, 1, 3]]))
    none_kept = abstaining_metrics(p, y, [True] * 4)
    assert none_kept["abstention"] == 1.0 and math.isnan(none_kept["ece"])
