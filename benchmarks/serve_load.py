"""Latency of the HTTP service under load: N requests, C at a time, against a real
uvicorn server on 127.0.0.1 (p50/p95/max latency, throughput, failures).

The model is fitted on synthetic parts with a tiny random ViT by default (the service's
own overhead: upload, decoding, batching, JSON); ``--real`` uses the real DINOv2 ViT-S/14.
Requests carry a bearer token (the service checks it on every request), and the service's
own count of the batches it scored is read back from ``/metrics``.

    python benchmarks/serve_load.py --requests 200 --concurrency 8
    python benchmarks/serve_load.py --real --requests 200 --concurrency 8 --resolution 224
    python benchmarks/serve_load.py --real --resolution 224 --max-batch 1   # no batching
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import torch
import uvicorn
from PIL import Image

from trustad import load_backbone
from trustad.backbone.dinov2 import DinoVisionTransformer, ViTConfig
from trustad.backbone.runtime import DEFAULT_BATCH_SIZE
from trustad.model import FittedDetector
from trustad.serve import create_app
from trustad.serve.defaults import DEFAULT_MAX_WAIT_MS

TOKEN = "load-test"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def part_image(path: Path, seed: int, size: int, defect: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    coarse = rng.random((8, 8, 3))
    img = Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
    arr = np.asarray(img, dtype=np.float64) / 255 * 0.85 + rng.random((size, size, 3)) * 0.15
    if defect:
        arr[size // 3 : size // 3 + size // 8, size // 2 : size // 2 + size // 8] = [1, 0, 0]
    Image.fromarray((arr * 255).astype(np.uint8)).save(path)
    return path


def tiny_backbone() -> torch.nn.Module:
    gen = torch.Generator().manual_seed(0)
    model = DinoVisionTransformer(ViTConfig(embed_dim=32, depth=2, num_heads=2, img_size=56))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model.eval().requires_grad_(False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--real", action="store_true", help="real DINOv2 ViT-S/14 weights")
    parser.add_argument("--resolution", type=int, default=None, help="default 448 real, 56 tiny")
    parser.add_argument("--size", type=int, default=256, help="uploaded image edge in pixels")
    parser.add_argument("--map", default="png", choices=("none", "png", "base64"))
    parser.add_argument("--max-batch", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--max-wait-ms", type=float, default=DEFAULT_MAX_WAIT_MS)
    args = parser.parse_args(argv)
    if args.real:
        backbone, res = load_backbone(), args.resolution or 448
        what = f"real {backbone.weights_source.name} ({backbone.weights_source.label})"
    else:
        backbone, res = tiny_backbone(), args.resolution or 56
        what = "tiny random ViT (embed 32, depth 2): measures the service, not DINOv2"
    tmp = Path(tempfile.mkdtemp(prefix="trustad_serve_"))
    good = [part_image(tmp / f"good{i}.png", i, args.size) for i in range(2)]
    cal = [part_image(tmp / f"cal{i}.png", 50 + i, args.size, i >= 3) for i in range(6)]
    model = FittedDetector(
        backbone, resolution=res, rotate=False, conformal_alpha=0.3, batch_size=args.max_batch
    ).fit(good, cal, [0, 0, 0, 1, 1, 1])
    uploads = [
        part_image(tmp / f"t{i}.png", 90 + i, args.size, i % 2 == 1).read_bytes() for i in range(4)
    ]

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    app = create_app(model, token=TOKEN, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    thread.start()
    while not server.started:
        time.sleep(0.02)

    def one(i: int) -> tuple[float, int]:
        start = time.perf_counter()
        r = httpx.post(
            f"{url}/predict",
            params={"map": args.map},
            timeout=600,
            files={"file": (f"{i}.png", uploads[i % len(uploads)], "image/png")},
            headers=AUTH,
        )
        return time.perf_counter() - start, r.status_code

    try:
        one(0)  # warm-up
        start = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            results = list(pool.map(one, range(args.requests)))
        wall = time.perf_counter() - start
        metrics = httpx.get(f"{url}/metrics", headers=AUTH).text
    finally:
        server.should_exit = True
        thread.join()
    lat = sorted(t for t, _ in results)
    failed = sum(1 for _, s in results if s != 200)
    print(
        f"backbone: {what}; resolution {res}; uploads {args.size}x{args.size} PNG; "
        f"map={args.map}; CPU threads {torch.get_num_threads()}"
    )
    print(
        f"{args.requests} requests, {args.concurrency} at a time: failed {failed}; "
        f"p50 {1000 * statistics.median(lat):.0f} ms, "
        f"p95 {1000 * lat[int(0.95 * (len(lat) - 1))]:.0f} ms, max {1000 * lat[-1]:.0f} ms; "
        f"{args.requests / wall:.1f} requests/s"
    )
    count = total = 0.0
    for line in metrics.splitlines():
        if line.startswith("trustad_batch_size_count"):
            count = float(line.split()[-1])
        elif line.startswith("trustad_batch_size_sum"):
            total = float(line.split()[-1])
    print(
        f"dynamic batching: --max-batch {args.max_batch}, --max-wait-ms {args.max_wait_ms:g}: "
        f"{count:.0f} model calls, {total / max(count, 1):.2f} images per call on average"
    )


if __name__ == "__main__":
    main()
