"""Refusals before any work, each naming what is wrong, and nothing left behind that blocks
the corrected command: fit, predict, evaluate and serve on a tiny registered backbone."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from corpus import write_strip
from model_helpers import (
    RES,
    TINY_NAME,
    fit_cli,
    make_image,
    make_part_folders,
    register_tiny_backbone,
)

from trustad.cli import build_parser, main

KEY = "0123456789abcdef0123456789abcdef\n"


@pytest.fixture
def setup(tmp_path, monkeypatch):
    weights = register_tiny_backbone(monkeypatch, tmp_path)
    return make_part_folders(tmp_path / "data"), weights, tmp_path


fit = fit_cli


def test_fit_refuses_an_unwritable_out_before_fitting(setup, capsys):
    images, weights, tmp = setup
    normal = images["good"][0].parent
    (tmp / "taken").mkdir()
    assert fit(weights, tmp / "taken", normal) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "is a folder" in err and "fitting on" not in err
    (tmp / "plain_file").write_text("x")
    assert fit(weights, tmp / "plain_file" / "m.safetensors", normal) == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and "fitting on" not in err
    (tmp / "m.safetensors.partial").mkdir()
    assert fit(weights, tmp / "m.safetensors", normal) == 2
    assert "where the file is written first, is a folder" in capsys.readouterr().err


def test_fit_names_every_bad_normal_file_at_once(setup, capsys):
    images, weights, tmp = setup
    normal = images["good"][0].parent
    (normal / "notes.png").write_text("not an image")
    strip = write_strip(normal, 3000, 1)
    assert fit(weights, tmp / "m.safetensors", normal) == 2
    err = capsys.readouterr().err
    assert "2 of 5 --normal image(s) cannot be used" in err
    assert "notes.png" in err and str(strip) in err and "aspect ratio" in err
    assert "fitting on" not in err and not (tmp / "m.safetensors").exists()


def test_sign_then_verify_through_the_command_line(setup, capsys):
    images, weights, tmp = setup
    key, other = tmp / "key", tmp / "other"
    key.write_text(KEY)
    other.write_text(KEY.upper())
    model = tmp / "m.safetensors"
    assert fit(weights, model, images["good"][0].parent, "--sign-key", key) == 0
    test = [str(p) for p in images["test"]] + ["--weights", str(weights)]
    assert main(["predict", str(model), *test, "--quiet", "--verify-key", str(key)]) == 0
    capsys.readouterr()
    assert main(["predict", str(model), *test, "--quiet", "--verify-key", str(other)]) == 2
    assert "signature does not match" in capsys.readouterr().err
    (tmp / "short").write_text("abc")
    with pytest.raises(SystemExit) as exit_:
        main(["predict", str(model), *test, "--verify-key", str(tmp / "short")])
    assert exit_.value.code == 2 and "at least 16" in capsys.readouterr().err


def test_predict_refuses_a_thin_strip_and_an_empty_folder(setup, capsys):
    images, weights, tmp = setup
    model = tmp / "m.safetensors"
    assert fit(weights, model, images["good"][0].parent) == 0
    strip = write_strip(tmp, 19000, 1)
    out = tmp / "out.jsonl"
    predict = ["predict", str(model), "--weights", str(weights)]
    assert main([*predict, str(strip), "--out", str(out), "--quiet"]) == 1
    (line,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert line["path"] == str(strip) and "aspect ratio" in line["error"]
    (tmp / "empty").mkdir()
    capsys.readouterr()
    assert main([*predict, str(tmp / "empty")]) == 2
    assert "no images found in" in capsys.readouterr().err
    assert main([*predict, str(strip), "--out", str(tmp / "empty")]) == 2
    assert "--out" in capsys.readouterr().err


def test_a_mistyped_evaluate_root_does_not_block_the_corrected_command(setup, capsys):
    _, weights, tmp = setup
    root = tmp / "folder" / "parts"
    for i in range(2):
        make_image(root / "train" / "good" / f"{i:02d}.png", i)
        make_image(root / "test" / "good" / f"{i:02d}.png", 300 + i)
    common = ["evaluate", "--dataset", "folder", "--shots", "1", "--seeds", "1", "--quiet"]
    common += ["--out", str(tmp / "ev"), "--resolution", str(RES), "--backbone", TINY_NAME]
    common += ["--weights", str(weights), "--attack", "none", "--flags", "none"]
    assert main([*common, "--root", str(tmp / "folder_typo")]) == 2
    capsys.readouterr()
    assert main([*common, "--root", str(tmp / "folder")]) == 0, capsys.readouterr().err


def test_no_random_start_help_says_what_it_does():
    verbs = build_parser()._subparsers._group_actions[0].choices
    help_text = " ".join(verbs["evaluate"].format_help().split())
    assert "--no-random-start turn off (on by default): PGD starts" in help_text
    assert "+-10 %" in help_text  # a per cent sign in a setting's help is text
    assert "--no-random-start" in verbs["demo"].format_help()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The command line in a subprocess, with the tiny ViT registered under TINY_NAME.
TINY_MAIN = (
    "import sys; from model_helpers import CONFIGS, TINY, TINY_NAME; CONFIGS[TINY_NAME] = TINY; "
    "from trustad.cli import main; sys.exit(main())"
)


def _tiny_cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    return subprocess.Popen(
        [sys.executable, "-c", TINY_MAIN, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_serve_refuses_a_taken_port_and_stops_on_sigterm(setup):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    images, weights, tmp = setup
    model = tmp / "m.safetensors"
    assert fit(weights, model, images["good"][0].parent) == 0
    serve = ["serve", str(model), "--weights", str(weights), "--port"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        refused = _tiny_cli(*serve, str(taken.getsockname()[1]))
        _, err = refused.communicate(timeout=120)
    assert refused.returncode == 2 and "cannot serve on" in err and "serving" not in err
    port = _free_port()
    server = _tiny_cli(*serve, str(port))
    try:
        for _ in range(600):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)  # a failure here is a server that ignores SIGTERM
    finally:
        if server.poll() is None:
            server.kill()
    # uvicorn shuts down gracefully, then ends by the signal it caught
    assert server.returncode in (0, -signal.SIGTERM), server.stderr.read()
