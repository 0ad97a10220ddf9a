"""Model files edited by someone who recomputes the hashes: refused by the signature when a
key is given, and by the schema check (naming the field) when the edit breaks the settings."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_vit
from model_helpers import RES, make_part_folders
from safetensors import safe_open
from safetensors.torch import save_file

from trustad.model import FittedDetector, ModelFileError, read_model_file
from trustad.model.file import SIGNATURE, read_key, tensors_digest

KEY = b"0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, Path]:
    """(unsigned, signed) files of one fitted tiny model."""
    tmp = tmp_path_factory.mktemp("model_file")
    images = make_part_folders(tmp)
    cal = images["cal_good"] + images["cal_bad"]
    labels = [0] * len(images["cal_good"]) + [1] * len(images["cal_bad"])
    model = FittedDetector(make_tiny_vit(), resolution=RES, conformal_alpha=0.5)
    model.fit(images["good"], cal, labels)
    return model.save(tmp / "plain.safetensors"), model.save(tmp / "signed.safetensors", KEY)


def reforge(
    src: Path,
    dest: Path,
    edit: Callable[[dict], None] = lambda s: None,
    tensors_edit: Callable[[dict], None] = lambda t: None,
    meta_edit: Callable[[dict], None] = lambda m: None,
) -> Path:
    """``src`` edited as an attacker would: settings and tensors changed, both hashes
    recomputed, the signature (if any) copied over unchanged."""
    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    settings = json.loads(meta["settings"])
    edit(settings)
    tensors_edit(tensors)
    text = json.dumps(settings, sort_keys=True)
    meta["settings"] = text
    meta["settings_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    meta["tensors_sha256"] = tensors_digest(tensors)
    meta_edit(meta)
    save_file(tensors, str(dest), metadata=meta)
    return dest


def test_signed_file_loads_with_its_key_and_predicts_the_same(saved, tmp_path):
    plain, signed = saved
    a = FittedDetector.load(plain, make_tiny_vit())
    b = FittedDetector.load(signed, make_tiny_vit(), verify_key=KEY)
    assert a.settings() == b.settings()
    assert torch.equal(a.detector.memory_bank_, b.detector.memory_bank_)


def test_edit_with_recomputed_hashes_is_refused_by_the_signature(saved, tmp_path):
    _, signed = saved

    def platt_b(s):
        s["calibrator"]["params"]["b_"] = 50.0  # every image "anomalous" with probability 1

    edited = reforge(signed, tmp_path / "edited.safetensors", platt_b)
    read_model_file(edited)  # the hashes alone cannot tell
    with pytest.raises(ModelFileError, match="signature does not match"):
        read_model_file(edited, KEY)
    with pytest.raises(ModelFileError, match="signature does not match"):
        read_model_file(signed, b"another key of sixteen bytes or more")


def test_verify_key_refuses_an_unsigned_file(saved):
    plain, _ = saved
    with pytest.raises(ModelFileError, match="is not signed"):
        read_model_file(plain, KEY)


def test_key_files(tmp_path):
    (tmp_path / "k").write_text(KEY.decode() + "\n")
    assert read_key(tmp_path / "k") == KEY  # a final newline is not part of the key
    (tmp_path / "short").write_bytes(b"abc")
    with pytest.raises(ValueError, match="3 bytes.*at least 16"):
        read_key(tmp_path / "short")
    with pytest.raises(OSError, match="cannot read key file"):
        read_key(tmp_path / "missing")


def _drop(key: str) -> Callable[[dict], None]:
    return lambda s: s.pop(key)


def _set(path: str, value) -> Callable[[dict], None]:
    def edit(s):
        *parents, last = path.split(".")
        for p in parents:
            s = s[p]
        s[last] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (_drop("calibrator"), "settings.calibrator: required, missing"),
        (_drop("memory_bank"), "settings.memory_bank: required, missing"),
        (_set("preprocessing.resolution", "448"), "settings.preprocessing.resolution"),
        (_set("preprocessing.knn", 0), "settings.preprocessing.knn"),
        (_set("preprocessing.mask_morphology", "round"), "settings.preprocessing.mask_morph"),
        (_set("conformal.alpha", 1.5), "settings.conformal.alpha"),
        (_set("flag.false_flag_rate", -0.1), "settings.flag.false_flag_rate"),
        (_set("calibrator.params.predict_proba", 1), "settings.calibrator.params.predict_proba"),
        (_set("decision_rule", "majority"), "settings.decision_rule"),
        (_set("requested.shots", 3), "settings.requested: unknown key(s) shots"),
        (_set("map_range", [0.0, "nan"]), "settings.map_range"),
        (_set("pixel_threshold", "high"), "settings.pixel_threshold"),
        (_set("memory_bank.patches", 1), "tensor 'memory_bank': shape"),
    ],
)
def test_schema_names_the_field(saved, tmp_path, edit, field):
    plain, _ = saved
    edited = reforge(plain, tmp_path / "edited.safetensors", edit)
    with pytest.raises(ModelFileError, match="not a valid trustad model") as err:
        read_model_file(edited)
    assert field in str(err.value)


def test_a_file_without_a_pixel_threshold_loads_without_one(saved, tmp_path):
    plain, _ = saved
    assert FittedDetector.load(plain, make_tiny_vit()).pixel_threshold_ is not None
    older = reforge(plain, tmp_path / "older.safetensors", _drop("pixel_threshold"))
    assert FittedDetector.load(older, make_tiny_vit()).pixel_threshold_ is None


def test_empty_memory_bank_is_refused(saved, tmp_path):
    plain, _ = saved

    def empty(t):
        t["memory_bank"] = t["memory_bank"][:0]

    edited = reforge(plain, tmp_path / "e.safetensors", _set("memory_bank.patches", 0), empty)
    with pytest.raises(ModelFileError, match="settings.memory_bank.patches: expected an integer"):
        read_model_file(edited)


@pytest.mark.parametrize("version", ["0", "-1"])
def test_unknown_format_versions_are_refused(saved, tmp_path, version):
    plain, _ = saved
    edited = reforge(
        plain, tmp_path / "v.safetensors", meta_edit=lambda m: m.update(format_version=version)
    )
    with pytest.raises(ModelFileError, match=f"format_version {version} is not a model format"):
        read_model_file(edited)


def test_a_failed_write_leaves_no_partial_file(saved, tmp_path):
    plain, _ = saved
    model = FittedDetector.load(plain, make_tiny_vit())
    target = tmp_path / "m.safetensors"
    target.mkdir()  # os.replace cannot put a file over a folder
    with pytest.raises(OSError):
        model.save(target)
    assert not (tmp_path / "m.safetensors.partial").exists()
    assert SIGNATURE not in safe_open(str(plain), framework="pt").metadata()


def test_a_header_length_that_starts_like_a_pickle_is_still_safetensors(saved, tmp_path):
    """The file starts with its header length, little-endian: a length whose low byte is
    0x80 (a pickle's first byte) must not be taken for a pickle."""
    plain, _ = saved
    dest = tmp_path / "m.safetensors"
    for pad in range(256):
        reforge(plain, dest, _set("created", "x" * pad))
        if dest.read_bytes()[:1] == b"\x80":
            break
    assert dest.read_bytes()[:1] == b"\x80"
    tensors, settings = read_model_file(dest)
    assert settings["created"].startswith("x")
