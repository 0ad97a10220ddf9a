"""The service on a factory network, against a real uvicorn server on 127.0.0.1: the
token, offline /docs, /metrics, the access log and dynamic batching."""

from __future__ import annotations

import base64
import logging
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import make_tiny_vit
from model_helpers import RES, ServerThread, make_part_folders, require

from trustad.cli.serve import TOKEN_ENV, service_token
from trustad.model import FittedDetector

httpx = require("httpx")
require("fastapi")
require("fastapi_offline")
require("multipart")
require("prometheus_client")
require("uvicorn")

TOKEN = "line-7-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Long enough that two requests sent together always meet in one batch.
WAIT_MS = 1000


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    images = make_part_folders(tmp_path_factory.mktemp("deploy"))
    model = FittedDetector(make_tiny_vit(), resolution=RES, conformal_alpha=0.5).fit(
        images["good"],
        images["cal_good"] + images["cal_bad"],
        [0] * len(images["cal_good"]) + [1] * len(images["cal_bad"]),
    )
    return model, images


def serve(model, **options) -> ServerThread:
    from trustad.serve import create_app

    return ServerThread(create_app(model, **options))


def post(url, path, headers=None, name=None, **params):
    files = {"file": (name or path.name, path.read_bytes(), "image/png")}
    return httpx.post(f"{url}/predict", files=files, params=params, headers=headers, timeout=60)


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def metric_samples(text: str) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_token_guards_everything_but_health(fitted):
    model, images = fitted
    with serve(model, token=TOKEN) as server:
        url = server.url
        assert httpx.get(f"{url}/health").status_code == 200
        for method, path in (("GET", "/model"), ("GET", "/metrics"), ("POST", "/predict")):
            for headers, why in ((None, "needs a token"), ({"Authorization": "Bearer x"}, "wrong")):
                r = httpx.request(method, f"{url}{path}", headers=headers)
                assert r.status_code == 401, (path, headers, r.text)
                assert why in r.json()["error"] and r.headers["www-authenticate"] == "Bearer"
        assert httpx.get(f"{url}/model", headers=AUTH).status_code == 200
        assert httpx.get(f"{url}/metrics", headers=AUTH).status_code == 200
        r = post(url, images["test"][0], headers=AUTH)
        assert r.status_code == 200 and r.json()["score"] > 0
        # the page, the docs and the schema load without it (the browser sends it later)
        for path in ("/", "/static/app.js", "/docs", "/openapi.json"):
            assert httpx.get(f"{url}{path}").status_code == 200, path
        schemes = httpx.get(f"{url}/openapi.json").json()["components"]["securitySchemes"]
        assert [s["scheme"] for s in schemes.values()] == ["bearer"]


def test_service_token_from_file_or_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert service_token(None) is None
    monkeypatch.setenv(TOKEN_ENV, " from-env ")
    assert service_token(None) == "from-env"
    (tmp_path / "token").write_text("from-file\n")
    assert service_token(str(tmp_path / "token")) == "from-file"  # the file wins
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        service_token(str(tmp_path / "empty"))


def test_docs_work_offline(fitted):
    model, _ = fitted
    with serve(model) as server:
        page = httpx.get(f"{server.url}/docs").text
        assert "swagger-ui" in page
        assert "http://" not in page and "https://" not in page and "//cdn" not in page
        assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page)
        assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets)
        for asset in assets:
            r = httpx.get(f"{server.url}{asset}")
            assert r.status_code == 200 and len(r.content) > 0, asset
        redoc = httpx.get(f"{server.url}/redoc").text
        assert "https://" not in redoc and "http://" not in redoc


def test_metrics_and_one_access_log_line_per_request(fitted):
    from trustad.serve.monitor import ACCESS_LOG

    model, images = fitted
    lines = Lines()
    ACCESS_LOG.addHandler(lines)
    ACCESS_LOG.setLevel(logging.INFO)
    try:
        with serve(model, token=TOKEN) as server:
            url = server.url
            answers = [post(url, p, headers=AUTH).json() for p in images["test"]]
            assert post(url, images["test"][0]).status_code == 401
            bad = httpx.post(
                f"{url}/predict", files={"file": ("x.png", b"not an image")}, headers=AUTH
            )
            assert bad.status_code == 415
            assert httpx.get(f"{url}/nowhere%0Afake", headers=AUTH).status_code == 404
            text = httpx.get(f"{url}/metrics", headers=AUTH).text
    finally:
        ACCESS_LOG.removeHandler(lines)
    m = metric_samples(text)
    requests = "trustad_requests_total"
    assert m[(requests, (("method", "POST"), ("path", "/predict"), ("status", "200")))] == 4
    assert m[(requests, (("method", "POST"), ("path", "/predict"), ("status", "401")))] == 1
    assert m[(requests, (("method", "POST"), ("path", "/predict"), ("status", "415")))] == 1
    assert m[(requests, (("method", "GET"), ("path", "other"), ("status", "404")))] == 1
    assert m[("trustad_request_seconds_count", (("path", "/predict"),))] == 6
    anomalous = sum(a["decision"] for a in answers)
    assert 0 < anomalous < 4  # the test set has good and defective parts
    assert m[("trustad_decisions_total", (("decision", "anomalous"),))] == anomalous
    assert m[("trustad_decisions_total", (("decision", "normal"),))] == 4 - anomalous
    assert m[("trustad_flags_raised_total", ())] == sum(a["flag"] for a in answers)
    assert m[("trustad_batch_size_count", ())] == 4  # sent one after another: batches of 1

    assert len(lines.lines) == 8  # the 7 requests above and the /metrics one
    line = re.compile(
        r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (GET|POST) (\S+) (\d{3}) [\d.]+ms "
        r"image=(\S+) decision=(\S+) flag=(\S+)$"
    )
    parsed = [line.match(text) for text in lines.lines]
    assert all(parsed), lines.lines
    first = parsed[0].groups()
    want = "anomalous" if answers[0]["decision"] else "normal"
    assert first[:3] == ("POST", "/predict", "200") and first[3] == "64x60"
    assert first[4] == want and first[5] == ("raised" if answers[0]["flag"] else "no")
    assert parsed[4].groups()[1:] == ("/predict", "401", "-", "-", "-")
    assert parsed[6].groups()[1:3] == ("/nowhere%0Afake", "404")  # one line, as sent
    assert parsed[7].groups()[:3] == ("GET", "/metrics", "200")


def test_concurrent_requests_are_batched_and_never_mixed(fitted):
    model, images = fitted
    good, bad = images["test"][0], images["test"][1]
    alone = {p.name: model.predict([p])[0] for p in (good, bad)}
    assert abs(alone[good.name].score - alone[bad.name].score) > 0.05  # tell them apart
    with serve(model, max_batch=2, max_wait_ms=WAIT_MS) as server:
        start = threading.Barrier(2)

        def send(path):
            start.wait()
            return post(server.url, path, map="base64")

        for _ in range(3):
            with ThreadPoolExecutor(2) as pool:
                answers = list(pool.map(send, [good, bad]))
            for path, r in zip([good, bad], answers):
                assert r.status_code == 200, r.text
                body, want = r.json(), alone[path.name]
                assert body["filename"] == path.name
                assert body["score"] == pytest.approx(want.score, rel=1e-5)
                assert body["probability"] == pytest.approx(want.probability, rel=1e-4)
                assert (body["decision"], body["flag"]) == (want.decision, want.flag)
                raw = np.frombuffer(base64.b64decode(body["map"]["data"]), dtype="<f4")
                amap = raw.reshape(body["map"]["shape"])
                np.testing.assert_allclose(amap, want.anomaly_map, rtol=1e-4, atol=1e-6)
        m = metric_samples(httpx.get(f"{server.url}/metrics").text)
    # every pair went through the model together: three batches of two
    assert m[("trustad_batch_size_count", ())] == 3
    assert m[("trustad_batch_size_sum", ())] == 6


def test_batcher_reports_a_failed_batch_to_each_request_and_drains_on_close(fitted):
    from PIL import Image

    from trustad.serve.batching import Batcher

    model, images = fitted
    batcher = Batcher(model, max_batch=2, max_wait_ms=WAIT_MS)
    start = threading.Barrier(2)

    def score(rgb):
        start.wait()
        try:
            return batcher.score(rgb, maps=False)
        except Exception as exc:
            return exc

    good = Image.open(images["test"][0]).convert("RGB")
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(score, [good, "no-such-file.png"]))
    # one bad image fails its batch: both requests learn why, neither gets another's answer
    assert all(isinstance(a, FileNotFoundError) for a in answers), answers
    queued, put = threading.Event(), batcher.waiting.put

    def put_and_tell(item):
        put(item)
        queued.set()

    batcher.waiting.put = put_and_tell
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(batcher.score, good, False)
        queued.wait(timeout=30)
        batcher.close()  # the request already waiting is answered
        assert waiting.result().score == pytest.approx(model.predict([good])[0].score, rel=1e-5)
    with pytest.raises(RuntimeError, match="shutting down"):
        batcher.score(good, maps=False)


def worker_processes(pid: int) -> int:
    """Child processes of ``pid`` started by multiprocessing's spawn (uvicorn's workers)."""
    count = 0
    for proc in Path("/proc").iterdir():
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"spawn_main" in cmdline:
            count += 1
    return count


@pytest.mark.real_weights
@pytest.mark.parametrize("workers", [1, 2])
def test_serve_command_reads_the_token_file_and_logs_each_request(
    converted, real_backbone, tmp_path, workers
):
    """`trustad serve` as a user starts it: the token from --token-file, the access log on
    standard error, and with --workers the metrics summed over the processes."""
    if workers > 1 and not Path("/proc/self/stat").exists():
        pytest.skip("counting worker processes reads /proc")
    images = make_part_folders(tmp_path / "data")
    model = FittedDetector(real_backbone, resolution=RES, rotate=False, calibrator=None)
    path = model.fit(images["good"]).save(tmp_path / "part.safetensors")
    (tmp_path / "token").write_text(TOKEN + "\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-c", "import sys; from trustad.cli import main; sys.exit(main())"]
    command += ["serve", str(path), "--port", str(port), "--device", "cpu"]
    command += ["--token-file", str(tmp_path / "token"), "--weights", str(converted.path)]
    command += ["--workers", str(workers)]
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                httpx.get(f"{url}/health")
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, "no server"
                time.sleep(0.2)
        assert post(url, images["test"][0]).status_code == 401
        for p in images["test"]:
            assert post(url, p, headers=AUTH).status_code == 200
        m = metric_samples(httpx.get(f"{url}/metrics", headers=AUTH).text)
        served_by = worker_processes(server.pid)
    finally:
        server.send_signal(signal.SIGINT)
        _, err = server.communicate(timeout=60)
    assert "(a token" in err
    assert served_by == (workers if workers > 1 else 0)
    ok = m[
        ("trustad_requests_total", (("method", "POST"), ("path", "/predict"), ("status", "200")))
    ]
    assert ok == len(images["test"])  # every worker's requests counted
    assert re.search(r"Z POST /predict 401 [\d.]+ms image=- decision=- flag=-\n", err), err
    assert (
        len(re.findall(r"Z POST /predict 200 [\d.]+ms image=64x60 decision=\S+ flag=\S+\n", err))
        == 4
    )
