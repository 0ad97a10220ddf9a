"""The evaluation grid end to end on a tiny ViT and a small synthetic dataset."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from conftest import make_tiny_vit, small_synthetic

from trustad import calibration as cal
from trustad import metrics
from trustad.evaluation import Evaluation, EvaluationSettings, result_columns
from trustad.flags import FLAGS, ZERO_COST_FLAGS
from trustad.report import aggregate, read_results, summary


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return small_synthetic(tmp_path_factory)


def _settings(root, **kw) -> EvaluationSettings:
    base = dict(
        dataset="folder",
        root=str(root),
        shots=[1, 2],
        seeds=2,
        resolution=56,
        probe_steps=20,
        batch_size=4,
    )
    base.update(kw)
    return EvaluationSettings(**base)


def _read(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_clean_grid_reuses_features_and_resumes(dataset, tmp_path):
    settings = _settings(dataset)
    run = Evaluation(settings, make_tiny_vit(), tmp_path, progress=False)
    rows = run.run()
    # 2 categories x 2 shots x 2 seeds, clean only.
    assert len(rows) == 8
    # One backbone pass per distinct image: 10 test images and the 8 rotated views of the
    # distinct support images (seed 0: img0 | img0,img1; seed 1: img1 | img2,img3) per category.
    assert run.backbone_images == 2 * (10 + 4 * 8)
    results = _read(tmp_path / "results.csv")
    assert list(results[0]) == result_columns()
    scores = _read(tmp_path / "scores.csv")
    assert len(scores) == 8 * 10
    assert {r["split"] for r in scores} == {"calibration", "evaluation"}
    # Every metric can be recomputed from scores.csv.
    r0 = results[0]
    mine = [
        s for s in scores if all(s[k] == r0[k] for k in ("category", "shots", "seed", "condition"))
    ]
    labels = np.array([int(s["label"]) for s in mine])
    values = np.array([float(s["score"]) for s in mine])
    assert float(r0["auroc"]) == pytest.approx(metrics.auroc(labels, values), abs=1e-5)
    for col in (
        "auroc",
        "ap",
        "f1_max",
        "g_mean",
        "pixel_auroc",
        "aupro",
        "ece_platt",
        "nll_uncal",
    ):
        assert 0.0 <= float(r0[col]) <= max(1.0, float(r0[col]))  # defined, finite
    # Two calibration images (one per class) cannot fit Platt: a fallback, said once.
    assert r0["note"].count("platt: calibration set has 1 normal and 1 anomalous") == 1
    assert "platt: platt" not in r0["note"]
    # A second run with the same folder computes nothing.
    again = Evaluation(settings, make_tiny_vit(), tmp_path, progress=False)
    again.run()
    assert again.backbone_images == 0
    assert len(_read(tmp_path / "results.csv")) == 8


def test_attacks_add_conditions(dataset, tmp_path):
    settings = _settings(
        dataset,
        categories=["brick"],
        seeds=1,
        attacks=["noise", "fgsm", "score-fgsm"],
        eps=[8 / 255, 16 / 255],
        save_examples=1,
    )
    run = Evaluation(settings, make_tiny_vit(), tmp_path, progress=False)
    rows = run.run()
    conds = {(r["condition"], round(float(r["eps"]) * 255)) for r in rows}
    assert conds == {
        ("clean", 0),
        ("noise", 8),
        ("noise", 16),
        ("fgsm", 8),
        ("fgsm", 16),
        ("score-fgsm", 8),
        ("score-fgsm", 16),
    }
    for r in rows:
        if r["condition"] != "clean":
            assert float(r["linf"]) <= float(r["eps"]) + 1e-6
            assert r["flag_auroc_platt"] != ""
    text = summary(read_results(tmp_path))
    assert "clean / fgsm eps=8/255" in text
    examples = sorted(p.name for p in (tmp_path / "examples" / "brick").glob("*.png"))
    assert len(examples) == 2 * 7  # one anomalous image: input PNG and panel, 7 conditions
    assert len(list((tmp_path / "examples" / "brick").glob("*_map.npy"))) == 7
    assert "test_color_spot_000_fgsm_eps8_input.png" in examples
    # eps is written in full, so the attack units are found done on resume.
    written = _read(tmp_path / "results.csv")
    assert {float(r["eps"]) for r in written} == {0.0, 8 / 255, 16 / 255}
    again = Evaluation(settings, make_tiny_vit(), tmp_path, progress=False)
    again.run()
    assert again.backbone_images == 0
    assert len(_read(tmp_path / "results.csv")) == len(written)


def test_resume_rejects_other_settings(dataset, tmp_path):
    Evaluation(
        _settings(dataset, categories=["brick"], seeds=1, shots=[1]),
        make_tiny_vit(),
        tmp_path,
        progress=False,
    ).run()
    with pytest.raises(ValueError, match="other settings"):
        Evaluation(_settings(dataset, resolution=42), make_tiny_vit(), tmp_path, progress=False)


def test_interrupted_unit_is_redone(dataset, tmp_path):
    settings = _settings(dataset, categories=["brick"], seeds=1)
    Evaluation(settings, make_tiny_vit(), tmp_path, progress=False).run()
    results = tmp_path / "results.csv"
    lines = results.read_text().splitlines()
    results.write_text("\n".join(lines[:-1]) + "\n")  # lose the last unit's result row
    run = Evaluation(settings, make_tiny_vit(), tmp_path, progress=False)
    run.run()
    assert len(_read(results)) == 2
    assert len(_read(tmp_path / "scores.csv")) == 2 * 10  # stale score rows were dropped


def test_aggregate_means_categories_then_seeds():
    rows = [
        dict(
            dataset="d", shots="1", condition="clean", eps="0", seed="0", category="a", auroc="1.0"
        ),
        dict(
            dataset="d", shots="1", condition="clean", eps="0", seed="0", category="b", auroc="0.5"
        ),
        dict(
            dataset="d", shots="1", condition="clean", eps="0", seed="1", category="a", auroc="0.25"
        ),
        dict(dataset="d", shots="1", condition="clean", eps="0", seed="1", category="b", auroc=""),
    ]
    mean, std = aggregate(rows, "auroc")[("d", 1, "clean", 0.0)]
    assert mean == pytest.approx((0.75 + 0.25) / 2)
    assert std == pytest.approx(0.25)


def test_bad_settings_are_rejected(dataset):
    with pytest.raises(ValueError, match="unknown attack"):
        _settings(dataset, attacks=["cw"])
    with pytest.raises(ValueError, match="multiple of 14"):
        _settings(dataset, resolution=50)


def test_an_unreadable_image_is_left_out_and_said(dataset, tmp_path):
    import json
    import shutil

    root = tmp_path / "data"
    shutil.copytree(dataset, root)
    broken = root / "gravel" / "test" / "good" / "000.png"
    broken.write_bytes(b"not a png")
    settings = _settings(root, seeds=1, shots=[1])
    run = Evaluation(settings, make_tiny_vit(), tmp_path / "out", progress=False)
    rows = run.run()
    gravel = next(r for r in rows if r["category"] == "gravel")
    assert gravel["n_images"] == 9
    assert "1 unreadable test image(s) left out" in gravel["note"]
    assert run.failures == {}
    assert len(run.skipped) == 1 and str(broken) in run.skipped[0]
    recorded = json.loads((tmp_path / "out" / "run.json").read_text())["skipped"]
    assert recorded == run.skipped


def test_a_broken_category_does_not_cost_the_others(dataset, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(dataset, root)
    for image in (root / "gravel" / "test").rglob("*.png"):
        image.write_bytes(b"not a png")
    settings = _settings(root, seeds=1, shots=[1])
    run = Evaluation(settings, make_tiny_vit(), tmp_path / "out", progress=False)
    rows = run.run()
    assert {r["category"] for r in rows} == {"brick"}
    assert list(run.failures) == ["gravel"]
    assert "none of its 10 test images is readable" in run.failures["gravel"]


def test_a_missing_mask_costs_only_that_image_its_pixel_metrics(dataset, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(dataset, root)
    masks = sorted((root / "brick" / "ground_truth").rglob("*.png"))
    masks[0].unlink()
    settings = _settings(root, categories=["brick"], seeds=1, shots=[1])
    run = Evaluation(settings, make_tiny_vit(), tmp_path / "out", progress=False)
    row = run.run()[0]
    assert row["pixel_auroc"] == row["pixel_auroc"]  # a number, not NaN
    assert "pixel metrics without 1 anomalous image(s)" in row["note"]
    assert len(run.skipped) == 1 and "no mask file" in run.skipped[0]


def test_without_masks_the_probe_uses_image_labels(dataset, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(dataset / "brick", root / "brick")
    shutil.rmtree(root / "brick" / "ground_truth")
    settings = _settings(root, seeds=1, shots=[1], attacks=["fgsm"])
    rows = {
        r["condition"]: r
        for r in Evaluation(settings, make_tiny_vit(), tmp_path / "out", progress=False).run()
    }
    assert "image labels" in rows["fgsm"]["note"]
    assert "image labels" not in rows["clean"]["note"]
    written = _read(tmp_path / "out" / "results.csv")
    assert {r["pixel_auroc"] for r in written} == {""}  # undefined without masks: left empty


def test_rotation_override(dataset, tmp_path):
    settings = _settings(dataset, categories=["brick"], rotate=False)
    run = Evaluation(settings, make_tiny_vit(), tmp_path, progress=False)
    run.run()
    assert run.backbone_images == 10 + 4  # test images and the 4 support images, unrotated


def test_platt_options_reach_results_and_figures(dataset, tmp_path):
    from trustad import calibration as cal
    from trustad.report import calibrated_scores, write_figures

    settings = _settings(
        dataset,
        categories=["brick"],
        seeds=1,
        shots=[1],
        attacks=["noise"],
        platt_smooth=True,
        calibration_fraction=0.4,  # two images of each class: enough for a Platt fit
    )
    rows = Evaluation(settings, make_tiny_vit(), tmp_path, progress=False).run()
    clean = next(r for r in rows if r["condition"] == "clean")
    assert "platt" not in clean["note"]  # fitted, no fallback
    scores = _read(tmp_path / "scores.csv")
    mine = [r for r in scores if r["condition"] == "clean"]
    part = {k: [r for r in mine if r["split"] == k] for k in ("calibration", "evaluation")}
    s_cal, y_cal = ([float(r[c]) for r in part["calibration"]] for c in ("score", "label"))
    platt = cal.PlattCalibrator(smooth_targets=True).fit(s_cal, y_cal)
    p = platt.predict_proba([float(r["score"]) for r in part["evaluation"]])
    y = [int(r["label"]) for r in part["evaluation"]]
    assert float(clean["nll_platt"]) == pytest.approx(cal.nll(p, y), rel=1e-4)
    pooled = calibrated_scores(scores, 1)
    np.testing.assert_allclose(pooled["clean"]["platt"], p)
    figures = write_figures(tmp_path)
    assert [f.name for f in figures] == [
        "flags.png",
        "reliability_folder_1shot.png",
        "entropy_folder_1shot.png",
    ]
    assert all(f.stat().st_size > 0 for f in figures)


def test_repeated_rows_are_dropped(dataset, tmp_path):
    settings = _settings(dataset, categories=["brick"], seeds=1, shots=[1])
    Evaluation(settings, make_tiny_vit(), tmp_path, progress=False).run()
    for name in ("results.csv", "scores.csv"):
        lines = (tmp_path / name).read_text().splitlines()
        (tmp_path / name).write_text("\n".join(lines + lines[1:]) + "\n")
    assert len(read_results(tmp_path)) == 1
    store = Evaluation(settings, make_tiny_vit(), tmp_path, progress=False).store
    assert len(_read(tmp_path / "results.csv")) == 1
    assert len(_read(tmp_path / "scores.csv")) == 10
    assert len(store.rows) == 1


def test_resume_refuses_other_weights(dataset, tmp_path):
    import json
    from pathlib import Path

    from trustad.backbone.weights import WeightsSource

    def backbone(sha: str):
        model = make_tiny_vit()
        model.weights_source = WeightsSource("tiny", Path("w.safetensors"), "test", "tiny", sha)
        return model

    settings = _settings(dataset, categories=["brick"], seeds=1, shots=[1])
    Evaluation(settings, backbone("a" * 64), tmp_path, progress=False).run()
    more = _settings(dataset, categories=["brick"], seeds=1, shots=[1, 2])
    Evaluation(more, backbone("a" * 64), tmp_path, progress=False)  # same weights: fine
    assert json.loads((tmp_path / "run.json").read_text())["weights"]["sha256"] == "a" * 64
    with pytest.raises(ValueError, match="other weights"):
        Evaluation(more, backbone("b" * 64), tmp_path, progress=False)


def test_impossible_shots_are_skipped_once_and_for_all(dataset, tmp_path):
    settings = _settings(dataset, categories=["brick"], seeds=1, shots=[1, 8])  # 4 train images
    run = Evaluation(settings, make_tiny_vit(), tmp_path, progress=False)
    assert {int(r["shots"]) for r in run.run()} == {1}
    again = Evaluation(settings, make_tiny_vit(), tmp_path, progress=False)
    again.run()
    assert again.backbone_images == 0  # nothing left to do: the category is not even loaded


@pytest.mark.parametrize(
    "bad",
    [
        {"conformal_alpha": 0.0},
        {"flag_rate": 1.5},
        {"knn": 0},
        {"platt_c": 0.0},
        {"mask_morphology": "disc"},
        {"preprocessing": "some"},
        {"probe_steps": 0},
        {"attacks": ["pgd"], "pgd_steps": 0},
    ],
)
def test_bad_values_are_rejected_before_any_work(dataset, bad):
    with pytest.raises(ValueError):
        _settings(dataset, **bad)


def test_probe_on_a_missing_calibration_split_says_why(dataset, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(dataset / "brick", root / "brick")
    for defect in sorted((root / "brick" / "test").glob("[!g]*/*.png"))[1:]:
        defect.unlink()  # one anomalous image left: no stratified calibration split
    settings = _settings(root, seeds=1, shots=[1], attacks=["fgsm"], probe_train_on="calibration")
    run = Evaluation(settings, make_tiny_vit(), tmp_path / "out", progress=False)
    rows = run.run()
    assert [r["condition"] for r in rows] == ["clean"]  # saved before the attack failed
    assert "calibration split" in run.failures["brick"]


def test_a_torn_results_row_is_computed_again(dataset, tmp_path):
    settings = _settings(dataset, categories=["brick"], seeds=1, shots=[1, 2])
    Evaluation(settings, make_tiny_vit(), tmp_path, progress=False).run()
    whole = _read(tmp_path / "results.csv")
    text = (tmp_path / "results.csv").read_text()
    (tmp_path / "results.csv").write_text(text[: len(text) - len(text.splitlines()[-1]) // 2 - 1])
    run = Evaluation(settings, make_tiny_vit(), tmp_path, progress=False)
    assert len(run.store.rows) == len(whole) - 1  # the torn row no longer counts as done
    run.run()
    again = _read(tmp_path / "results.csv")
    assert len(again) == len(whole)
    key = ("shots", "condition", "auroc")
    assert sorted(tuple(r[k] for k in key) for r in again) == sorted(
        tuple(r[k] for k in key) for r in whole
    )


def test_attack_flags_get_their_columns(dataset, tmp_path):
    settings = _settings(
        dataset,
        categories=["brick"],
        seeds=1,
        shots=[1],
        attacks=["noise"],
        calibration_fraction=0.4,
        flags=list(FLAGS),
    )
    rows = Evaluation(settings, make_tiny_vit(), tmp_path, progress=False).run()
    attacked = next(r for r in rows if r["condition"] == "noise")
    for name in FLAGS:
        assert 0.0 <= attacked[f"flag_auroc_{name}"] <= 1.0
        assert 0.0 <= attacked[f"flag_tpr_{name}"] <= 1.0
    clean = next(r for r in rows if r["condition"] == "clean")
    assert "flag_auroc_stability" not in clean
    # Random sign noise of 8/255 on every pixel: the noise-level gate catches all of it, and
    # every gated probability is the calibration images' anomaly rate.
    scores = _read(tmp_path / "scores.csv")
    noisy = [r for r in scores if r["condition"] == "noise"]
    assert attacked["gated_share"] == 1.0 and all(r["flag"] == "1" for r in noisy)
    y_cal = [int(r["label"]) for r in noisy if r["split"] == "calibration"]
    y_eval = np.array([int(r["label"]) for r in noisy if r["split"] == "evaluation"])
    base_rate = np.full(len(y_eval), np.mean(y_cal))
    assert attacked["gated_ece_platt"] == pytest.approx(cal.ece(base_rate, y_eval))
    assert attacked["gated_brier_platt"] == pytest.approx(cal.brier(base_rate, y_eval))
    assert clean["gated_share"] <= 0.5
    off = _settings(dataset, categories=["brick"], seeds=1, shots=[1], gate_flag="none")
    plain = Evaluation(off, make_tiny_vit(), tmp_path / "off", progress=False).run()
    assert all("gated_share" not in r for r in plain)
    # By default the zero-cost flags and their combination are measured, not stability.
    default = EvaluationSettings(dataset="folder", root=str(tmp_path))
    assert default.flags == [*ZERO_COST_FLAGS, "combined"]


def test_the_adaptive_attack_is_a_condition(dataset, tmp_path):
    settings = _settings(
        dataset,
        categories=["brick"],
        seeds=1,
        shots=[1],
        attacks=["adaptive", "score-pgd"],
        pgd_steps=2,
        calibration_fraction=0.4,
        flags=["noise_level"],
    )
    assert settings.attack("adaptive", 8 / 255).coarse == 8
    assert settings.attack("score-pgd", 8 / 255).coarse == 1
    rows = Evaluation(settings, make_tiny_vit(), tmp_path, progress=False).run()
    by_condition = {r["condition"]: r for r in rows}
    adaptive, plain = by_condition["adaptive"], by_condition["score-pgd"]
    assert adaptive["linf"] <= 8 / 255 + 1e-6
    # The smooth attack keeps the pixel noise level far lower than per-pixel score-PGD.
    assert adaptive["flag_tpr_noise_level"] < plain["flag_tpr_noise_level"]
    with pytest.raises(ValueError, match="adaptive attack"):
        _settings(dataset, attacks=["adaptive"], adaptive_coarse=0)


def test_the_report_shows_the_attack_flags(dataset, tmp_path):
    from trustad.report.html import write_study_report

    settings = _settings(
        dataset,
        categories=["brick"],
        seeds=1,
        shots=[1],
        attacks=["noise"],
        calibration_fraction=0.4,
        flags=["median", "stability"],
    )
    Evaluation(settings, make_tiny_vit(), tmp_path, progress=False).run()
    written = write_study_report(tmp_path)
    page = written["html"].read_text()
    assert "Table 3b: attack flags" in page and 'alt="flags"' in page
    table = (tmp_path / "tables" / "table3b_flags.csv").read_text().splitlines()
    assert table[0].split(",")[-3:] == ["median", "stability", "best flag"]
    assert table[1].split(",")[-1] in ("median", "stability")
    # Calibration before and after the gate, per condition and calibrator.
    assert "Table 3c: calibration per condition" in page
    gated = list(csv.DictReader((tmp_path / "tables" / "table3c_gated.csv").open()))
    assert {r["condition"] for r in gated} == {"clean", "noise eps=8/255"}
    noise_platt = next(
        r for r in gated if r["condition"] == "noise eps=8/255" and r["calibrator"] == "platt"
    )
    assert noise_platt["gated, %"].startswith("100.0")
