"""``trustad predict --maps/--masks``: names that cannot collide, masks at the image's size,
the pixel threshold kept in the model file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from model_helpers import RES, TINY_NAME, make_image, make_part_folders, register_tiny_backbone
from PIL import Image

from trustad.cli import main
from trustad.cli.predict import output_paths
from trustad.maps import DEFAULT_FALSE_PIXEL_RATE, anomaly_mask, pixel_threshold
from trustad.model import FittedDetector
from trustad.model.overlay import overlay_size


@pytest.fixture
def model_file(tmp_path, monkeypatch):
    weights = register_tiny_backbone(monkeypatch, tmp_path)
    images = make_part_folders(tmp_path / "data")
    out = tmp_path / "m.safetensors"
    args = ["fit", "--normal", str(images["good"][0].parent), "--out", str(out)]
    args += ["--calibration", str(images["cal_good"][0].parent.parent)]
    args += ["--resolution", str(RES), "--backbone", TINY_NAME, "--weights", str(weights)]
    assert main(args) == 0
    return out, weights


def predict(model_file, *args) -> int:
    out, weights = model_file
    return main(["predict", str(out), *map(str, args), "--weights", str(weights), "--quiet"])


def test_same_stem_other_extensions_get_their_own_outputs(model_file, tmp_path, capsys):
    folder = tmp_path / "parts"
    names = ["ok_rgb.png", "ok_rgb.bmp", "ok_rgb.tif", "ok_rgb.webp", "sub/ok_rgb.png"]
    for i, name in enumerate(names):
        make_image(folder / name, 400 + i, defect=i == 1, size=(64, 60 + i))
    maps, masks, out = tmp_path / "maps", tmp_path / "masks", tmp_path / "p.jsonl"
    assert predict(model_file, folder, "--maps", maps, "--masks", masks, "--out", out) == 0
    lines = {json.loads(s)["path"]: json.loads(s) for s in out.read_text().splitlines()}
    assert len(lines) == len(names)
    model = FittedDetector.load(model_file[0], weights=model_file[1])
    for i, name in enumerate(names):
        rec = lines[str(folder / name)]
        assert rec["map"] == str(maps / f"{name}_map.png")
        assert rec["mask"] == str(masks / f"{name}_mask.png")
        assert Image.open(rec["map"]).size == overlay_size(64, 60 + i)
        mask = np.asarray(Image.open(rec["mask"]))
        assert mask.dtype == np.uint8 and mask.shape == (60 + i, 64)
        assert set(np.unique(mask)) <= {0, 255}
        (pred,) = model.predict([folder / name])
        np.testing.assert_array_equal(
            mask == 255, anomaly_mask(pred.anomaly_map, model.pixel_threshold_)
        )
    capsys.readouterr()


def test_colliding_names_are_refused_before_anything_is_written(model_file, tmp_path, capsys):
    folder = tmp_path / "parts"
    make_image(folder / "Part.png", 1)
    make_image(folder / "part.png", 2)
    maps = tmp_path / "maps"
    assert predict(model_file, folder, "--maps", maps) == 2
    err = capsys.readouterr().err
    assert "would both write" in err and "Part.png" in err and "part.png" in err
    assert not maps.exists()


def test_outputs_stay_apart_from_the_inputs(tmp_path):
    folder = tmp_path / "parts"
    images = [make_image(folder / "a.png", 1), make_image(folder / "a.png_map.png", 2)]
    # a.png's map would overwrite an input, and a.png_map.png would be read as an image
    with pytest.raises(ValueError, match="lies in the --maps folder"):
        output_paths(images, {"map": folder})
    with pytest.raises(ValueError, match="lies in the --masks folder"):
        output_paths(images, {"map": tmp_path / "maps", "mask": tmp_path})
    (tmp_path / "maps" / "a.png_map.png").mkdir(parents=True)
    with pytest.raises(ValueError, match="which is a folder"):
        output_paths(images[:1], {"map": tmp_path / "maps"})
    both = output_paths(images, {"map": tmp_path / "m", "mask": tmp_path / "m"})
    assert both["map"][images[0]].name == "a.png_map.png"
    assert both["mask"][images[0]].name == "a.png_mask.png"


def test_masks_need_a_pixel_threshold(tmp_path, monkeypatch, capsys):
    weights = register_tiny_backbone(monkeypatch, tmp_path)
    images = make_part_folders(tmp_path / "data")
    out = tmp_path / "m.safetensors"
    # one support image and no calibration: no normal image to set the threshold on
    args = ["fit", "--normal", str(images["good"][0]), "--out", str(out)]
    args += ["--resolution", str(RES), "--backbone", TINY_NAME, "--weights", str(weights)]
    assert main(args) == 0
    capsys.readouterr()
    code = predict((out, weights), images["test"][0], "--masks", tmp_path / "masks")
    assert code == 2 and "no pixel threshold" in capsys.readouterr().err
    assert not (tmp_path / "masks").exists()


def test_the_pixel_threshold_is_set_on_normal_images_and_saved(model_file):
    model = FittedDetector.load(model_file[0], weights=model_file[1])
    det = model.detector
    data = model_file[0].parent / "data"
    tensors, _ = det.runtime.preprocess(sorted((data / "cal" / "good").glob("*.png")))
    dists = det.distances_from_features(det.features(tensors))
    # and the support images, each against a bank without it
    support = [det.features(det.support_views(p)) for p in sorted((data / "train").glob("*.png"))]
    dists += det.leave_one_out_distances(support)
    assert model.pixel_threshold_ == pixel_threshold(dists, DEFAULT_FALSE_PIXEL_RATE)
    assert model.describe()["pixel_threshold"] == model.pixel_threshold_
