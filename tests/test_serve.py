"""The HTTP service against a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import base64
import copy
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from conftest import make_tiny_vit
from corpus import THIN_STRIPS, write_strip
from model_helpers import RES, ServerThread, make_image, make_part_folders, require
from PIL import Image

from trustad.deadline import TimeLimitExceeded, check_time, time_limit
from trustad.model import DEFAULT_CALIBRATOR, FittedDetector
from trustad.model.overlay import overlay_size

httpx = require("httpx")
require("fastapi")
require("multipart")
require("uvicorn")

MAX_UPLOAD = 200_000
MAX_PIXELS = 100 * 100


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from trustad.serve import create_app

    tmp = tmp_path_factory.mktemp("serve")
    images = make_part_folders(tmp)
    model = FittedDetector(make_tiny_vit(), resolution=RES, conformal_alpha=0.5).fit(
        images["good"],
        images["cal_good"] + images["cal_bad"],
        [0] * len(images["cal_good"]) + [1] * len(images["cal_bad"]),
    )
    app = create_app(model, max_upload_bytes=MAX_UPLOAD, max_pixels=MAX_PIXELS)
    with ServerThread(app) as server:
        yield server.url, model, images


def post(url, data: bytes, name="part.png", field="file", **params):
    files = {field: (name, data, "application/octet-stream")}
    return httpx.post(f"{url}/predict", files=files, params=params, timeout=60)


def post_files(url, fields: list[tuple[str, bytes]]):
    files = [(name, (f"{i}.png", data, "image/png")) for i, (name, data) in enumerate(fields)]
    return httpx.post(f"{url}/predict", files=files, timeout=60)


def test_health_model_and_docs(served):
    url, model, _ = served
    assert httpx.get(f"{url}/health").json()["status"] == "ok"
    info = httpx.get(f"{url}/model").json()
    assert info["preprocessing"]["resolution"] == RES
    assert info["calibrator"]["name"] == DEFAULT_CALIBRATOR
    assert info["decision_rule"] == "conformal"
    assert info["limits"] == {
        "max_upload_bytes": MAX_UPLOAD,
        "max_pixels": MAX_PIXELS,
        "request_seconds": 60.0,
    }
    assert len(info["support"]) == 3 and "sha256" in info["support"][0]
    assert info["memory_bank"]["patches"] == model.detector.memory_bank_.shape[0]
    assert "memory_bank" not in str(info.get("calibration"))  # no tensors anywhere
    assert httpx.get(f"{url}/docs").status_code == 200
    assert "/predict" in httpx.get(f"{url}/openapi.json").json()["paths"]
    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and 'id="file"' in page.text
    assert httpx.get(f"{url}/static/app.js").status_code == 200


@pytest.mark.parametrize("fmt", ["none", "png", "base64"])
def test_predict_equals_the_model(served, fmt):
    url, model, images = served
    path = images["test"][1]
    r = post(url, path.read_bytes(), map=fmt)
    assert r.status_code == 200, r.text
    body = r.json()
    (want,) = model.predict([path])
    assert {k: body[k] for k in want.to_dict()} == want.to_dict()
    assert (body["width"], body["height"]) == (64, 60)
    if fmt == "none":
        assert "map" not in body
    elif fmt == "png":
        overlay = Image.open(io.BytesIO(base64.b64decode(body["map"]["data"])))
        assert overlay.format == "PNG" and overlay.size == overlay_size(64, 60)
    else:
        raw = np.frombuffer(base64.b64decode(body["map"]["data"]), dtype="<f4")
        np.testing.assert_array_equal(raw.reshape(body["map"]["shape"]), want.anomaly_map)


def png_bytes(w, h) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (120, 130, 140)).save(buf, format="PNG")
    return buf.getvalue()


def test_bad_inputs_get_4xx_json(served):
    url, _, images = served
    raw = images["test"][0].read_bytes()
    cases = {
        "not an image": (post(url, b"hello, not an image"), 415, "not an image"),
        "truncated": (post(url, raw[: len(raw) // 2]), 400, "truncated"),
        "empty": (post(url, b""), 400, "empty"),
        "too many pixels": (post(url, png_bytes(200, 100)), 413, "20000 pixels"),
        "too elongated": (post(url, png_bytes(150, 10)), 413, "aspect ratio 15.0:1"),
        # within the multipart overhead: refused after reading the file
        "too many bytes": (post(url, b"x" * (MAX_UPLOAD + 10)), 413, "upload limit"),
        # far beyond: refused from the Content-Length header
        "far too many bytes": (post(url, b"x" * (MAX_UPLOAD * 3)), 413, "exceeds the limit"),
        "missing field": (post(url, raw, field="image"), 422, "named 'file'"),
        "bad map value": (post(url, raw, map="jpeg"), 422, "map"),
        "two files": (post_files(url, [("file", raw), ("file", raw)]), 422, "one image per"),
        "long file name": (post(url, raw, name="x" * 5000 + ".png"), None, ""),
    }
    for what, (r, status, text) in cases.items():
        assert r.status_code == (status or r.status_code), (what, r.status_code, r.text)
        assert text in r.json()["error"], (what, r.json())
    assert httpx.post(f"{url}/predict", data={"x": "1"}).status_code == 422
    assert httpx.get(f"{url}/health").status_code == 200  # still serving


def test_load_200_requests_8_at_a_time(served, tmp_path):
    url, model, images = served
    paths = images["test"] + [make_image(tmp_path / "wide.png", 7, True, size=(90, 50))]
    want = [model.predict([p], maps=False)[0].to_dict() for p in paths]
    data = [p.read_bytes() for p in paths]

    def one(i: int):
        k = i % len(paths)
        r = post(url, data[k], name=f"{i}.png", map="none")
        return i, k, r.status_code, r.json()

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(200)))
    assert all(status == 200 for _, _, status, _ in results)
    for i, k, _, body in results:
        assert body["filename"] == f"{i}.png"
        assert {f: body[f] for f in want[k]} == want[k]


@pytest.mark.parametrize(("width", "height"), THIN_STRIPS)
def test_thin_strips_refused_before_work(served, tmp_path, width, height):
    url, _, _ = served
    r = post(url, write_strip(tmp_path, width, height).read_bytes())
    # over the aspect ratio limit, or this server's small pixel limit
    assert r.status_code == 413 and f"{width}x{height}" in r.json()["error"], r.text


def slow_server(model, predict, seconds):
    """A server whose model's predict is ``predict`` (with the real one as argument)."""
    from trustad.serve import create_app

    real = model.predict
    model = copy.copy(model)
    model.predict = lambda *a, **kw: predict(real, *a, **kw)
    return ServerThread(create_app(model, request_seconds=seconds))


def test_a_stalled_request_answers_504_and_frees_the_model(served):
    url, model, images = served
    calls = []

    def stall_once(real, *args, **kwargs):
        calls.append(1)
        while len(calls) == 1:  # work that never ends, but checks its deadline as the
            check_time()  # backbone does between blocks
            time.sleep(0.01)
        return real(*args, **kwargs)

    with slow_server(model, stall_once, 0.5) as server:
        stalled = post(server.url, images["test"][0].read_bytes())
        assert stalled.status_code == 504 and "time limit of 0.5 s" in stalled.json()["error"]
        later = post(server.url, images["test"][1].read_bytes())
        assert later.status_code == 200, later.text
        (want,) = model.predict([images["test"][1]], maps=False)
        assert later.json()["score"] == want.score


def test_a_request_that_waits_too_long_answers_503(served):
    url, model, images = served
    release = threading.Event()

    def blocked(real, *args, **kwargs):
        release.wait(30)  # work that does not check a deadline holds the model
        return real(*args, **kwargs)

    with slow_server(model, blocked, 0.3) as server, ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, server.url, images["test"][0].read_bytes())
        while not server.server.server_state.tasks:  # the first request is in
            time.sleep(0.01)
        time.sleep(0.1)
        waiting = post(server.url, images["test"][1].read_bytes())
        release.set()
        assert waiting.status_code == 503 and "busy" in waiting.json()["error"], waiting.text
        # past its own limit by then: the backbone stops it at its first block
        assert first.result().status_code == 504
        assert post(server.url, images["test"][1].read_bytes()).status_code == 200


def test_the_time_limit_stops_the_backbone_between_blocks():
    vit = make_tiny_vit()
    x = torch.rand(1, 3, RES, RES)
    with time_limit(0), pytest.raises(TimeLimitExceeded):
        vit.patch_features(x)
    with time_limit(60):
        assert vit.patch_features(x).shape[:3] == (1, RES // 14, RES // 14)
