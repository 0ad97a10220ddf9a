"""Exported graphs (ONNX, OpenVINO) score as the torch model does, alone."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_tiny_vit
from model_helpers import RES, TINY_NAME, make_image, make_part_folders, register_tiny_backbone

from trustad.cli import main
from trustad.engines.export import export_model
from trustad.engines.parity import keeps_parity, parity, photo_images, synthetic_images
from trustad.engines.runners import load_exported, load_model
from trustad.model import FittedDetector, ModelFileError

README = Path(__file__).resolve().parents[1] / "README.md"
ENGINE_FILES = [("onnx", "m.onnx"), ("openvino", "m.onnx"), ("openvino", "m.xml")]


def fitted(folders: dict, **options) -> FittedDetector:
    cal = folders["cal_good"] + folders["cal_bad"]
    labels = [0] * len(folders["cal_good"]) + [1] * len(folders["cal_bad"])
    model = FittedDetector(make_tiny_vit(), resolution=RES, conformal_alpha=0.5, **options)
    return model.fit(folders["good"], cal, labels)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    tmp = tmp_path_factory.mktemp("export")
    folders = make_part_folders(tmp / "data")
    model = fitted(folders)
    export_model(model, tmp / "m.onnx", "onnx")
    export_model(model, tmp / "m.xml", "openvino")
    return model, folders, tmp


@pytest.mark.parametrize(("engine", "name"), ENGINE_FILES)
def test_exported_scores_as_torch_fp32(exported, engine, name):
    model, folders, tmp = exported
    other = load_exported(tmp / name, engine)
    assert other.engine.name == engine
    for images in (synthetic_images(RES), photo_images((RES, RES)), folders["test"]):
        change = parity(model, other, images)
        assert keeps_parity(change), change
        want = [p.to_dict() for p in model.predict(images, maps=False)]
        got = [p.to_dict() for p in other.predict(images, maps=False)]
        for w, g in zip(want, got):
            assert (w["decision"], w["flag"], w["p_value"]) == (
                g["decision"],
                g["flag"],
                g["p_value"],
            )
            assert g["probability"] == pytest.approx(w["probability"], abs=1e-5)


def test_exported_file_carries_the_model_settings(exported):
    model, _, tmp = exported
    for name in ("m.onnx", "m.xml"):
        other = load_exported(tmp / name)
        want, got = model.describe(), other.describe()
        assert got["backbone"] == want["backbone"]
        assert {k: got[k] for k in want if k != "backbone"} == {
            k: want[k] for k in want if k != "backbone"
        }
        assert other.conformal_.calibration_scores_.tolist() == pytest.approx(
            model.conformal_.calibration_scores_.tolist()
        )


def test_knn_model_averages_the_k_nearest_in_the_graph(tmp_path):
    pytest.importorskip("onnxruntime")
    model = fitted(make_part_folders(tmp_path / "data"), knn=3)
    export_model(model, tmp_path / "m.onnx")
    other = load_exported(tmp_path / "m.onnx", "onnx")
    assert keeps_parity(parity(model, other, synthetic_images(RES)))


def test_mask_test_model_is_masked_outside_the_graph(tmp_path):
    pytest.importorskip("onnxruntime")
    folders = make_part_folders(tmp_path / "data")
    model = fitted(folders, mask_test=True)
    export_model(model, tmp_path / "m.onnx")
    other = load_exported(tmp_path / "m.onnx", "onnx")
    images = synthetic_images(RES)
    masks = model.detector.foreground(
        model.detector.features(model.detector.runtime.preprocess(images)[0])
    )
    assert any(not bool(m.all()) for m in masks)  # the masks do remove patches here
    assert keeps_parity(parity(model, other, images))


def test_the_input_size_is_fixed_and_checked(exported):
    _, _, tmp = exported
    other = load_exported(tmp / "m.onnx", "onnx")
    wide = np.zeros((RES, 2 * RES, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"shape \(3, 56, 56\).*got \(3, 56, 112\).*--image-size"):
        other.predict([wide])


def test_wide_images_export_with_their_size(exported, tmp_path):
    model, _, _ = exported
    export_model(model, tmp_path / "wide.onnx", image_size=(128, 64))
    other = load_exported(tmp_path / "wide.onnx", "onnx")
    assert other.engine.shape == (3, 56, 112)
    images = [np.asarray(img)[:, :, :] for img in photo_images((64, 128))]
    assert keeps_parity(parity(model, other, images))


def test_engines_refuse_files_they_cannot_run(exported, tmp_path):
    model, _, tmp = exported
    with pytest.raises(ValueError, match="torch engine needs the .safetensors model file"):
        load_model(tmp / "m.onnx", "torch")
    with pytest.raises(ValueError, match="exported graphs run on the CPU, not on 'cuda'"):
        load_model(tmp / "m.onnx", device="cuda")
    with pytest.raises(ValueError, match="an exported graph carries no signature to verify"):
        load_model(tmp / "m.onnx", verify_key=b"k" * 32)
    with pytest.raises(ValueError, match="onnxruntime runs .onnx files"):
        load_model(tmp / "m.xml", "onnx")
    model.save(tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match="export it first: trustad export"):
        load_model(tmp_path / "m.safetensors", "onnx")
    (tmp_path / "other.onnx").write_bytes((tmp / "m.onnx").read_bytes()[:100])
    with pytest.raises(ModelFileError, match="other.onnx is not a readable ONNX file"):
        load_model(tmp_path / "other.onnx")
    plain = tmp_path / "plain.onnx"
    import onnx

    proto = onnx.load(str(tmp / "m.onnx"))
    del proto.metadata_props[:]
    onnx.save(proto, str(plain))
    with pytest.raises(ModelFileError, match="not a model exported by `trustad export`"):
        load_model(plain)
    with pytest.raises(ValueError, match="a onnx export is written to a .onnx file"):
        export_model(model, tmp_path / "m.xml", "onnx")


def test_cli_export_then_predict_and_bf16(tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    weights = register_tiny_backbone(monkeypatch, tmp_path)
    folders = make_part_folders(tmp_path / "data")
    model_file = tmp_path / "m.safetensors"
    common = ["--resolution", str(RES), "--backbone", TINY_NAME, "--weights", str(weights)]
    cal = str(folders["cal_good"][0].parent.parent)
    assert main(["fit", "--normal", str(folders["good"][0].parent), "--calibration", cal,
                 "--out", str(model_file), *common]) == 0  # fmt: skip
    assert main(["export", str(model_file), "--format", "onnx", "--out", str(tmp_path / "m.onnx"),
                 "--weights", str(weights)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    change = re.search(r"over (\d+) image\(s\): score (\S+), map (\S+)", out)
    assert change and int(change[1]) == 12 and float(change[2]) <= 1e-5, out
    test = str(folders["test"][0].parent)
    outputs = {}
    for engine, path in (("torch", model_file), ("onnx", tmp_path / "m.onnx")):
        dest = tmp_path / f"{engine}.jsonl"
        args = ["predict", str(path), test, "--out", str(dest), "--engine", engine, "--quiet"]
        assert main(args + (["--weights", str(weights)] if engine == "torch" else [])) == 0
        outputs[engine] = [json.loads(line) for line in dest.read_text().splitlines()]
    for a, b in zip(outputs["torch"], outputs["onnx"]):
        assert b["score"] == pytest.approx(a["score"], abs=1e-5)
        assert (a["decision"], a["flag"]) == (b["decision"], b["flag"])
    assert main(["export", str(model_file), "--format", "openvino", "--precision", "bf16",
                 "--out", str(tmp_path / "b.xml"), "--weights", str(weights)]) == 0  # fmt: skip
    assert (
        "openvino, bf16)\nchange from torch fp32 over 12 image(s): score" in capsys.readouterr().out
    )
    assert load_exported(tmp_path / "b.xml").engine.name == "openvino"
    assert main(["export", str(model_file), "--format", "onnx", "--image-size", "128x64",
                 "--out", str(tmp_path / "w.onnx"), "--weights", str(weights)]) == 0  # fmt: skip
    assert "input (3, 56, 112)" in capsys.readouterr().out


def readme_example() -> str:
    deploy = README.read_text().split("## Deploy", 1)[1].split("\n## ", 1)[0]
    return deploy.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_example_scores_with_onnxruntime_alone(exported, tmp_path):
    model, _, tmp = exported
    (tmp_path / "part.onnx").write_bytes((tmp / "m.onnx").read_bytes())
    image = make_image(tmp_path / "part_17.png", 7, defect=True, size=(60, 64))
    # torch cannot be imported: the example runs without it.
    code = "import sys\nsys.modules['torch'] = None\n" + readme_example()
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    (want,) = model.predict([image], maps=False)
    score, verdict = re.fullmatch(r"score (\S+) (\w+)\n", run.stdout).groups()
    assert float(score) == pytest.approx(want.score, abs=1e-5)
    assert verdict == ("anomalous" if want.decision else "normal")


def test_serve_runs_an_exported_file(exported):
    from model_helpers import ServerThread, require

    httpx = require("httpx")
    require("fastapi")
    from trustad.serve import create_app

    model, folders, tmp = exported
    app = create_app(load_exported(tmp / "m.xml"))
    path = folders["test"][1]
    with ServerThread(app) as server:
        files = {"file": (path.name, path.read_bytes(), "image/png")}
        body = httpx.post(f"{server.url}/predict", files=files, timeout=60).json()
        info = httpx.get(f"{server.url}/model").json()
    (want,) = model.predict([path], maps=False)
    assert body["score"] == pytest.approx(want.score, abs=1e-5)
    assert (body["decision"], body["flag"]) == (want.decision, want.flag)
    assert info["conformal"] == model.describe()["conformal"]


def test_stability_flag_runs_through_the_graph(tmp_path):
    pytest.importorskip("onnxruntime")
    folders = make_part_folders(tmp_path / "data")
    model = fitted(folders, flag="stability")
    export_model(model, tmp_path / "m.onnx")
    other = load_exported(tmp_path / "m.onnx", "onnx")
    want = model.predict(folders["test"], maps=False)
    got = other.predict(folders["test"], maps=False)
    assert [p.flag for p in got] == [p.flag for p in want]
    assert all(p.flag is not None for p in got)
