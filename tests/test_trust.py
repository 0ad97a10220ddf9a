"""The trust engine: the study's fields are exactly those `trustad predict` gives."""

from __future__ import annotations

import csv

import pytest
from conftest import make_tiny_vit, small_synthetic

from trustad.data import load_category
from trustad.evaluation import Evaluation, EvaluationSettings
from trustad.model import FittedDetector

FIELDS = ("probability", "p_value", "decision", "flag", "gated_probability")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return small_synthetic(tmp_path_factory)


def _read(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _number(text: str) -> float | None:
    return None if text == "" else float(text)


def test_predict_with_a_saved_model_reproduces_scores_csv(dataset, tmp_path):
    settings = EvaluationSettings(
        dataset="folder",
        root=str(dataset),
        categories=["brick"],
        shots=[1, 2],
        seeds=1,
        resolution=56,
        probe_steps=5,
        attacks=["noise"],
        calibration_fraction=0.5,
        conformal_alpha=0.4,
        save_models=str(tmp_path / "models"),
    )
    backbone = make_tiny_vit()
    Evaluation(settings, backbone, tmp_path / "run", progress=False).run()
    scores = _read(tmp_path / "run" / "scores.csv")
    paths = {s.image_id: s.path for s in load_category("folder", str(dataset), "brick").test}
    checked = 0
    for shots in (1, 2):
        model = FittedDetector.load(
            tmp_path / "models" / f"brick-{shots}shot-seed0.safetensors", backbone
        )
        rows = [
            r
            for r in scores
            if r["shots"] == str(shots) and r["condition"] == "clean" and r["split"] == "evaluation"
        ]
        preds = model.predict([paths[r["image"]] for r in rows], maps=False)
        for row, pred in zip(rows, preds):
            assert pred.score == pytest.approx(float(row["score"]), abs=1e-6)
            assert float(row["probability"]) == float(row["prob_bayes"])  # the default
            lo, hi = pred.probability_interval
            assert lo == pytest.approx(float(row["probability_interval_low"]), abs=1e-6)
            assert hi == pytest.approx(float(row["probability_interval_high"]), abs=1e-6)
            assert lo <= pred.probability <= hi
            for name in FIELDS:
                want, got = _number(row[name]), getattr(pred, name)
                assert (want is None) == (got is None), name
                if want is not None:
                    assert float(got) == pytest.approx(want, abs=1e-6), name
            checked += 1
        assert any(r["flag"] != "" for r in rows) and any(r["p_value"] != "" for r in rows)
    assert checked >= 8


def test_benign_corruptions_are_conditions_with_flag_rates(dataset, tmp_path):
    settings = EvaluationSettings(
        dataset="folder",
        root=str(dataset),
        categories=["brick"],
        shots=[1],
        seeds=1,
        resolution=56,
        attacks=["noise"],
        corruptions=["gaussian-noise:2", "jpeg:70"],
        calibration_fraction=0.5,
    )
    assert [c for c, _ in settings.conditions()] == [
        "clean",
        "noise",
        "gaussian-noise:2",
        "jpeg:70",
    ]
    rows = Evaluation(settings, make_tiny_vit(), tmp_path, progress=False).run()
    by_condition = {r["condition"]: r for r in rows}
    assert set(by_condition) == {"clean", "noise", "gaussian-noise:2", "jpeg:70"}
    for row in rows:
        assert 0.0 <= row["auroc"] <= 1.0 and 0.0 <= row["ece_bayes"] <= 1.0
        assert 0.0 <= row["flag_rate_noise_level"] <= 1.0
    # 8/255 sign noise is outside the benign envelope; 2 grey levels of camera noise inside.
    assert by_condition["noise"]["flag_rate_noise_level"] == 1.0
    assert by_condition["gaussian-noise:2"]["flag_rate_noise_level"] == 0.0
    with pytest.raises(ValueError, match="bogus"):
        EvaluationSettings(dataset="folder", root=str(dataset), corruptions=["bogus:1"])


def test_test_images_of_several_sizes_keep_their_flags_and_gate(dataset, tmp_path):
    import shutil

    from PIL import Image

    root = tmp_path / "data"
    shutil.copytree(dataset, root)
    good = sorted((root / "brick").glob("test/good/*.png"))
    assert len(good) >= 2
    for path in good[:2]:  # two normal test images of another shape
        Image.open(path).resize((96, 72)).save(path)
    settings = EvaluationSettings(
        dataset="folder",
        root=str(root),
        categories=["brick"],
        shots=[1],
        seeds=1,
        resolution=56,
        attacks=["noise"],
        calibration_fraction=0.5,
    )
    rows = Evaluation(settings, make_tiny_vit(), tmp_path / "run", progress=False).run()
    noise = next(r for r in rows if r["condition"] == "noise")
    assert "flags left out" not in noise["note"]
    assert noise["gated_share"] == 1.0 and noise["flag_rate_noise_level"] == 1.0
    assert 0.0 <= noise["flag_auroc_noise_level"] <= 1.0
