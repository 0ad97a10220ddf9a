"""``trustad fit`` and ``trustad predict`` end to end on a tiny registered backbone."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from model_helpers import (
    RES,
    TINY_NAME,
    fit_cli,
    make_image,
    make_part_folders,
    register_tiny_backbone,
)
from PIL import Image

from trustad.cli import main
from trustad.model import FittedDetector
from trustad.model.overlay import overlay_size


@pytest.fixture
def setup(tmp_path, monkeypatch):
    weights = register_tiny_backbone(monkeypatch, tmp_path)
    return make_part_folders(tmp_path / "data"), weights, tmp_path


fit = fit_cli


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_fit_with_labelled_calibration(setup, capsys):
    images, weights, tmp = setup
    cal = images["cal_good"][0].parent.parent
    assert (
        fit(
            weights,
            tmp / "m.safetensors",
            images["good"][0].parent,
            "--calibration",
            cal,
            "--conformal-alpha",
            "0.5",
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "3 image(s) (shots: all): 00.png, 01.png, 02.png" in out
    assert "4 normal (good/), 3 anomalous (spot: 3)" in out
    assert "probability  bayes" in out and "conformal    alpha 0.5" in out
    assert "flag         noise_level" in out and "decision     conformal" in out
    model = FittedDetector.load(tmp / "m.safetensors", weights=weights)
    assert model.calibrator_ is not None and model.flag_ is not None


def test_fit_with_only_good_calibration_says_so(setup, capsys):
    images, weights, tmp = setup
    good = images["cal_good"][0].parent
    assert (
        fit(
            weights,
            tmp / "m.safetensors",
            images["good"][0].parent,
            "--calibration",
            good,
            "--shots",
            "1",
            "--seed",
            "1",
            "--conformal-alpha",
            "0.5",
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "(shots: 1, seed 1): 01.png" in out  # the second of the sorted images
    assert "only normal images: the conformal threshold" in out
    assert "probability  platt" not in out and "decision     conformal" in out
    assert "flag         noise_level" in out  # needs no probability


def test_fit_refuses_calibration_images_that_are_support_images(setup, capsys):
    images, weights, tmp = setup
    folder = images["good"][0].parent
    assert fit(weights, tmp / "m.safetensors", folder, "--calibration", folder) == 2
    assert "also support images" in capsys.readouterr().err


def test_predict_folder_with_bad_files_and_resume(setup, capsys):
    images, weights, tmp = setup
    model_path = tmp / "m.safetensors"
    cal = images["cal_good"][0].parent.parent
    fit(
        weights,
        model_path,
        images["good"][0].parent,
        "--calibration",
        cal,
        "--conformal-alpha",
        "0.5",
    )
    test = images["test"][0].parent
    (test / "sub").mkdir()
    make_image(test / "sub" / "deep.png", 999, True)
    (test / "broken.png").write_bytes(b"this is not a png")
    raw = (test / "00.png").read_bytes()
    (test / "truncated.png").write_bytes(raw[: len(raw) // 2])
    (test / "notes.txt").write_text("not an image name: skipped inside folders")
    out, maps = tmp / "results.jsonl", tmp / "maps"
    args = [
        "predict",
        str(model_path),
        str(test),
        "--out",
        str(out),
        "--maps",
        str(maps),
        "--weights",
        str(weights),
        "--batch-size",
        "2",
    ]
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "predicted 5 image(s)" in err and "2 failed" in err
    lines = read_lines(out)
    # sorted by path, the bad files reported in place
    assert [r["path"] for r in lines] == sorted(r["path"] for r in lines)
    by_name = {r["path"].rsplit("/", 1)[-1]: r for r in lines}
    assert set(by_name) == {
        "00.png",
        "01.png",
        "02.png",
        "03.png",
        "deep.png",
        "broken.png",
        "truncated.png",
    }
    for bad in ("broken.png", "truncated.png"):
        assert "cannot read image" in by_name[bad]["error"] and bad in by_name[bad]["error"]
        assert set(by_name[bad]) == {"path", "error"}
    # the good lines equal the library's predictions, and have their overlays
    model = FittedDetector.load(model_path, weights=weights)
    good = sorted(p for p in test.rglob("*.png") if p.name not in ("broken.png", "truncated.png"))
    for p, pred in zip(good, model.predict(good, maps=False)):
        rec = by_name[p.name]
        assert {k: rec[k] for k in pred.to_dict()} == pred.to_dict()
        overlay = Image.open(rec["map"])
        assert overlay.size == overlay_size(64, 60) and overlay.mode == "RGB"
    assert (maps / "sub" / "deep.png_map.png").is_file()
    # rerun: the successful images are skipped, the failed ones tried again
    (test / "broken.png").unlink()
    make_image(test / "broken.png", 5)
    assert main(args) == 1  # truncated.png still fails
    err = capsys.readouterr().err
    assert "predicted 1 image(s)" in err and "1 failed" in err and "5 skipped" in err
    lines = read_lines(out)
    assert len(lines) == 7 and sum("error" in r for r in lines) == 1
    assert len({r["path"] for r in lines}) == 7


def test_predict_reports_a_missing_file_on_its_own_line(setup, capsys):
    images, weights, tmp = setup
    model_path = tmp / "m.safetensors"
    fit(weights, model_path, images["good"][0].parent)
    args = ["predict", str(model_path), str(images["test"][0]), str(tmp / "missing.png")]
    capsys.readouterr()
    assert main([*args, "--weights", str(weights), "--quiet"]) == 1
    captured = capsys.readouterr()
    first, second = (json.loads(line) for line in captured.out.splitlines())
    assert first["decision"] is None and first["probability"] is None  # nothing calibrated
    assert "missing.png: no such file" in second["error"]
    assert "predicted 1 image(s)" in captured.err and "1 failed" in captured.err


def test_predict_gives_the_scores_of_evaluate(setup, capsys):
    """Same support images and settings: `predict` scores equal `evaluate`'s scores.csv."""
    _, weights, tmp = setup
    root = tmp / "mvtec" / "parts"
    for i in range(4):  # seed 1 of 2 shots: the 3rd and 4th sorted training images
        make_image(root / "train" / "good" / f"{i:02d}.png", i)
    for i in range(3):
        make_image(root / "test" / "good" / f"{i:02d}.png", 300 + i)
        make_image(root / "test" / "spot" / f"{i:02d}.png", 400 + i, True)
    common = ["--resolution", str(RES), "--backbone", TINY_NAME, "--weights", str(weights)]
    assert (
        main(
            [
                "evaluate",
                "--dataset",
                "folder",
                "--root",
                str(root),
                "--shots",
                "2",
                "--seeds",
                "2",
                "--out",
                str(tmp / "ev"),
                "--quiet",
                *common,
            ]
        )
        == 0
    )
    with open(tmp / "ev" / "scores.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["seed"] == "1"]
    assert len(rows) == 6
    model = tmp / "m.safetensors"
    assert fit(weights, model, root / "train" / "good", "--shots", "2", "--seed", "1") == 0
    out = tmp / "r.jsonl"
    assert (
        main(
            [
                "predict",
                str(model),
                str(root / "test"),
                "--out",
                str(out),
                "--weights",
                str(weights),
            ]
        )
        == 0
    )
    got = {str(p["path"]).split("test/", 1)[1]: p["score"] for p in read_lines(out)}
    want = {r["image"].split("test/", 1)[1]: float(r["score"]) for r in rows}
    assert got.keys() == want.keys()
    np.testing.assert_array_equal([got[k] for k in want], list(want.values()))
