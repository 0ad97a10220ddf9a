"""The fitted detector: save -> load -> predict equality, and every refusal on load."""

from __future__ import annotations

import hashlib
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_vit
from model_helpers import RES, make_part_folders
from PIL import Image

from trustad.backbone import WeightsSource
from trustad.detector import AnomalyDINO
from trustad.flags import FlagInputs
from trustad.model import FittedDetector, ModelFileError, read_model_file
from trustad.model.file import FORMAT_VERSION


@pytest.fixture
def images(tmp_path):
    return make_part_folders(tmp_path)


def with_source(backbone, path: Path, content: bytes = b"weights") -> torch.nn.Module:
    path.write_bytes(content)
    backbone.weights_source = WeightsSource(
        name="dinov2_vits14",
        path=path,
        origin="explicit",
        label="test weights",
        sha256=hashlib.sha256(content).hexdigest(),
    )
    return backbone


def fitted(tiny_vit, images, **kw) -> FittedDetector:
    cal = images["cal_good"] + images["cal_bad"]
    labels = [0] * len(images["cal_good"]) + [1] * len(images["cal_bad"])
    kw.setdefault("conformal_alpha", 0.5)
    return FittedDetector(tiny_vit, resolution=RES, **kw).fit(images["good"], cal, labels)


def flag_values(model: FittedDetector, paths) -> np.ndarray:
    """The fitted flag's statistic on images, computed outside ``predict``."""
    det = model.detector
    tensors, _ = det.runtime.preprocess(paths)
    feats = det.features(tensors)
    dists = det.distances_from_features(feats)
    return model.flag_.statistic(FlagInputs(dists, feats, tensors))


def test_save_load_predict_equal(tiny_vit, images, tmp_path):
    model = fitted(tiny_vit, images)
    assert model.calibrator_ is not None and model.conformal_ is not None
    assert model.flag_ is not None and model.decision_rule_ == "conformal"
    before = model.predict(images["test"])
    path = model.save(tmp_path / "m.safetensors")
    loaded = FittedDetector.load(path, tiny_vit)
    after = loaded.predict(images["test"])
    for a, b in zip(before, after):
        assert a.to_dict() == b.to_dict()
        assert a.anomaly_map.shape == (60, 64)
        np.testing.assert_array_equal(a.anomaly_map, b.anomaly_map)
    assert loaded.describe() == model.describe()
    # the bare detector gives the same scores and maps
    det = AnomalyDINO(tiny_vit, resolution=RES).fit(images["good"])
    np.testing.assert_array_equal(det.score(images["test"]), [p.score for p in before])
    for m, p in zip(det.anomaly_maps(images["test"]), before):
        np.testing.assert_array_equal(m, p.anomaly_map)


def test_fields_follow_the_documented_rules(tiny_vit, images):
    model = fitted(tiny_vit, images)
    assert model.flag == "noise_level"  # the default flag
    preds = model.predict(images["test"], maps=False)
    scores = np.array([p.score for p in preds])
    probs = model.calibrator_.predict_proba(scores)
    values = flag_values(model, images["test"])
    for p, prob, value in zip(preds, probs, values):
        assert p.anomaly_map is None
        assert p.probability == prob
        assert p.decision == (p.score > model.conformal_.threshold_)
        assert p.decision == (p.p_value <= 0.5)
        assert p.flag == (value > model.flag_.threshold_)
        assert p.gated_probability == (model.anomaly_rate if p.flag else p.probability)


def test_the_noise_level_flag_reads_the_pixels(tiny_vit, images, tmp_path):
    model = fitted(tiny_vit, images)  # the default flag
    values = flag_values(model, images["test"])
    preds = model.predict(images["test"], maps=False)
    assert [p.flag for p in preds] == list(values > model.flag_.threshold_)
    # Dense sign noise of 8/255 lifts the noise level of every image above the threshold.
    rng = np.random.default_rng(0)
    noisy = []
    for path in images["test"]:
        rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
        signs = rng.choice([-8.0, 8.0], size=rgb.shape)
        noisy.append(np.clip(rgb + signs, 0, 255).astype(np.uint8))
    flagged = model.predict(noisy, maps=False)
    assert all(p.flag for p in flagged)
    n_cal = {k: len(images[k]) for k in ("cal_good", "cal_bad")}
    assert model.anomaly_rate == n_cal["cal_bad"] / (n_cal["cal_good"] + n_cal["cal_bad"])
    assert all(p.gated_probability == model.anomaly_rate for p in flagged)
    assert all(
        p.flag_reason.startswith("noise_level ") and "camera" in p.flag_reason for p in flagged
    )
    assert all(
        p.flag_reason is None for p in model.predict(images["test"], maps=False) if not p.flag
    )
    again = FittedDetector.load(model.save(tmp_path / "m.safetensors"), tiny_vit)
    assert again.flag == "noise_level" and again.flag_.threshold_ == model.flag_.threshold_


def test_the_stability_flag_stays_available(tiny_vit, images):
    model = fitted(tiny_vit, images, flag="stability")
    values = flag_values(model, images["test"])
    preds = model.predict(images["test"], maps=False)
    assert [p.flag for p in preds] == list(values > model.flag_.threshold_)


def test_the_entropy_flag_stays_available(tiny_vit, images):
    model = fitted(tiny_vit, images, flag="entropy")
    for p in model.predict(images["test"], maps=False):
        assert p.flag == (p.entropy > model.flag_.threshold_)


def test_only_normal_calibration_gives_only_the_conformal_threshold(tiny_vit, images):
    model = FittedDetector(tiny_vit, resolution=RES, conformal_alpha=0.5).fit(
        images["good"], images["cal_good"]
    )
    assert model.calibrator_ is None
    assert model.flag_ is not None  # the noise-level flag needs no probability
    assert model.decision_rule_ == "conformal"
    assert any("no probability" in n for n in model.notes_)
    (p,) = model.predict(images["test"][:1], maps=False)
    assert p.probability is None and p.entropy is None and isinstance(p.flag, bool)
    assert p.p_value is not None and isinstance(p.decision, bool)


def test_good_images_alone_give_p_values_and_a_flag(tiny_vit, images):
    model = FittedDetector(tiny_vit, resolution=RES).fit(images["good"])
    # 3 support images scored leave-one-out: p-values in steps of 1/4; alpha 0.1 needs 9
    # normal scores, so no decision yet (and no probability without anomalous images).
    assert model.calibration_["n_leave_one_out"] == 3 and model.conformal_.threshold_ == np.inf
    (p,) = model.predict(images["test"][:1])
    assert p.probability is None and p.entropy is None and p.decision is None
    assert p.p_value in (0.25, 0.5, 0.75, 1.0) and isinstance(p.flag, bool)
    assert model.settings()["support"][0]["name"] == "00.png"
    loose = FittedDetector(tiny_vit, resolution=RES, conformal_alpha=0.5).fit(images["good"])
    assert loose.decision_rule_ == "conformal"


def test_a_leave_one_out_score_equals_a_refit_without_that_image(tiny_vit, images):
    model = FittedDetector(tiny_vit, resolution=RES, rotate=True).fit(images["good"])
    loo = np.sort(model.conformal_.calibration_scores_)
    refits = []
    for i, path in enumerate(images["good"]):
        others = [p for j, p in enumerate(images["good"]) if j != i]
        refits.append(
            AnomalyDINO(tiny_vit, resolution=RES, rotate=True).fit(others).score([path])[0]
        )
    np.testing.assert_allclose(loo, np.sort(refits), rtol=1e-6)
    # Scored against the whole bank, a support image is its own nearest neighbour.
    assert np.allclose(model.detector.score(images["good"]), 0.0, atol=1e-5)


def test_settings_record_provenance(tiny_vit, images, tmp_path):
    model = fitted(with_source(tiny_vit, tmp_path / "w.bin"), images)
    _, s = read_model_file(model.save(tmp_path / "m.safetensors"))
    assert s["format_version"] == FORMAT_VERSION
    assert s["backbone"]["weights"]["sha256"] == hashlib.sha256(b"weights").hexdigest()
    assert s["backbone"]["weights"]["label"] == "test weights"
    assert s["preprocessing"]["resolution"] == RES
    good = images["good"][0]
    assert s["support"][0] == {
        "name": good.name,
        "sha256": hashlib.sha256(good.read_bytes()).hexdigest(),
    }
    assert s["calibrator"]["name"] == "bayes" and "a_" in s["calibrator"]["params"]
    assert s["conformal"]["alpha"] == 0.5 and s["flag"]["name"] == "noise_level"
    assert s["calibration"]["n_normal"] == 4 and s["calibration"]["n_anomalous"] == 3


# -- refusals -------------------------------------------------------------------------


def _rewrite_header(path: Path, edit) -> None:
    """Rewrite a safetensors file's JSON header with ``edit(header)``, keeping the data."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :])


def test_refuses_tampered_tensors(tiny_vit, images, tmp_path):
    path = fitted(tiny_vit, images).save(tmp_path / "m.safetensors")
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF  # a byte of the last tensor
    path.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="tensor contents do not match"):
        FittedDetector.load(path, tiny_vit)


def test_refuses_tampered_settings(tiny_vit, images, tmp_path):
    path = fitted(tiny_vit, images).save(tmp_path / "m.safetensors")

    def edit(h):
        s = json.loads(h["__metadata__"]["settings"])
        s["conformal"]["threshold"] = 1e9
        h["__metadata__"]["settings"] = json.dumps(s, sort_keys=True)

    _rewrite_header(path, edit)
    with pytest.raises(ModelFileError, match="settings do not match"):
        FittedDetector.load(path, tiny_vit)


@pytest.mark.parametrize("kind", ["pickle", "torch"])
def test_refuses_a_renamed_pickle(tiny_vit, tmp_path, kind):
    path = tmp_path / "m.safetensors"
    if kind == "pickle":
        path.write_bytes(pickle.dumps({"memory_bank": [1, 2, 3]}))
        expect = "pickle"
    else:
        torch.save({"memory_bank": torch.zeros(2, 2)}, path)
        expect = "zip archive"
    with pytest.raises(ModelFileError, match=f"not a safetensors file.*{expect}.*never unpickled"):
        FittedDetector.load(path, tiny_vit)


def test_refuses_safetensors_that_is_not_a_model(tiny_vit, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "weights.safetensors"
    save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(ModelFileError, match="not a trustad model"):
        FittedDetector.load(path, tiny_vit)


def test_refuses_a_newer_format(tiny_vit, images, tmp_path):
    path = fitted(tiny_vit, images).save(tmp_path / "m.safetensors")
    _rewrite_header(
        path, lambda h: h["__metadata__"].update(format_version=str(FORMAT_VERSION + 1))
    )
    with pytest.raises(ModelFileError, match=f"format {FORMAT_VERSION + 1}, newer"):
        FittedDetector.load(path, tiny_vit)


def test_refuses_other_backbone_weights(tiny_vit, images, tmp_path):
    model = fitted(with_source(tiny_vit, tmp_path / "a.bin", b"weights A"), images)
    path = model.save(tmp_path / "m.safetensors")
    other = with_source(make_tiny_vit(), tmp_path / "b.bin", b"weights B")
    with pytest.raises(ModelFileError, match="weights resolve to sha256"):
        FittedDetector.load(path, other)
    bare = make_tiny_vit()
    with pytest.raises(ModelFileError, match="records no weights source"):
        FittedDetector.load(path, bare)
    # without a backbone, the recorded name is resolved: an explicit file with other bytes
    with pytest.raises(ModelFileError, match="weights resolve to sha256"):
        FittedDetector.load(path, weights=tmp_path / "b.bin")
    same = with_source(make_tiny_vit(), tmp_path / "c.bin", b"weights A")
    assert FittedDetector.load(path, same).settings()["backbone"] == model.settings()["backbone"]


def test_flag_and_calibrator_names_are_checked(tiny_vit, images, tmp_path):
    path = fitted(tiny_vit, images).save(tmp_path / "m.safetensors")
    _, s = read_model_file(path)
    assert s["flag"]["name"] == "noise_level"
    with pytest.raises(ValueError, match="unknown flag"):
        FittedDetector(tiny_vit, flag="nonsense")
    with pytest.raises(ValueError, match="cannot be saved"):
        FittedDetector(tiny_vit, calibrator="isotonic")


def test_camera_noise_inside_the_envelope_is_not_flagged_but_8_255_sign_noise_is(
    tiny_vit, tmp_path
):
    # Smooth good parts (a clean camera): their own noise level is near 0.
    yy, xx = np.mgrid[0:64, 0:64] / 64.0
    good = []
    for i in range(4):
        rgb = np.stack([80 + 100 * xx, 90 + 60 * yy + 5 * i, 120 + 40 * np.sin(3 * xx + i)], -1)
        good.append(rgb.round().astype(np.uint8))
    model = FittedDetector(tiny_vit, resolution=RES).fit(good)  # good images alone
    off = FittedDetector(tiny_vit, resolution=RES, benign_envelope=False).fit(good)
    assert off.flag_.threshold_ < model.flag_.threshold_  # the envelope raised it
    rng = np.random.default_rng(1)
    noisy, attacked = [], []
    for rgb in good:
        noise = rng.normal(0, 2.0, rgb.shape)  # 2 grey levels of sensor noise
        noisy.append(np.clip(np.round(rgb + noise), 0, 255).astype(np.uint8))
        signs = rng.choice([-8.0, 8.0], size=rgb.shape)
        attacked.append(np.clip(rgb + signs, 0, 255).astype(np.uint8))
    assert not any(p.flag for p in model.predict(noisy, maps=False))
    assert all(p.flag for p in off.predict(noisy, maps=False))  # without it: crying wolf
    assert all(p.flag for p in model.predict(attacked, maps=False))
