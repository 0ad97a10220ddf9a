"""Helpers for the fitted-model, CLI and service tests: synthetic part images and a tiny
registered backbone that the command line can load by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, make_tiny_vit
from PIL import Image
from safetensors.torch import save_file

from trustad.backbone.dinov2 import CONFIGS

RES = 56
TINY_NAME = "tiny_test_vit"


def make_image(path: Path, seed: int, defect: bool = False, size=(64, 60)) -> Path:
    """A noisy striped texture; ``defect`` paints a red square on it."""
    rng = np.random.default_rng(seed)
    w, h = size
    x = np.linspace(0, 6 * np.pi, w)
    base = (0.5 + 0.3 * np.sin(x))[None, :, None] * np.ones((h, 1, 3))
    img = np.clip(base + rng.normal(0, 0.05, (h, w, 3)), 0, 1)
    if defect:
        img[h // 3 : h // 3 + 14, w // 3 : w // 3 + 14] = [1.0, 0.1, 0.1]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((img * 255).astype(np.uint8)).save(path)
    return path


def make_part_folders(root: Path) -> dict[str, list[Path]]:
    """train/ (3 good), cal/ in the test layout (good/ 4, spot/ 3), test/ (4, two defects)."""
    good = [make_image(root / "train" / f"{i:02d}.png", i) for i in range(3)]
    cal_good = [make_image(root / "cal" / "good" / f"{i:02d}.png", 100 + i) for i in range(4)]
    cal_bad = [make_image(root / "cal" / "spot" / f"{i:02d}.png", 200 + i, True) for i in range(3)]
    test = [make_image(root / "test" / f"{i:02d}.png", 300 + i, i % 2 == 1) for i in range(4)]
    return {"good": good, "cal_good": cal_good, "cal_bad": cal_bad, "test": test}


def register_tiny_backbone(monkeypatch: pytest.MonkeyPatch, folder: Path) -> Path:
    """Make the tiny ViT loadable by name (``TINY_NAME``); returns its weights file."""
    monkeypatch.setitem(CONFIGS, TINY_NAME, TINY)
    path = folder / "tiny_vit.safetensors"
    if not path.exists():
        save_file({k: v.contiguous() for k, v in make_tiny_vit().state_dict().items()}, str(path))
    return path


def require(module: str):
    """Import ``module``; skip when it is missing, except in CI (env CI set), where a
    missing test dependency must fail rather than hide the tests."""
    import importlib
    import os

    if os.environ.get("CI"):
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=f"{module} is not installed (trustad[serve,dev])")


class ServerThread:
    """A real uvicorn server for ``app`` on 127.0.0.1 and a free port, in a thread."""

    def __init__(self, app) -> None:
        import socket
        import threading

        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", limit_concurrency=64)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]})

    def __enter__(self) -> ServerThread:
        import time

        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


def fit_cli(weights: Path, out: Path, normal: Path, *extra) -> int:
    """`trustad fit` with the tiny backbone (registered by ``register_tiny_backbone``)."""
    from trustad.cli import main

    return main(
        ["fit", "--normal", str(normal), "--out", str(out), "--resolution", str(RES)]
        + ["--backbone", TINY_NAME, "--weights", str(weights), *map(str, extra)]
    )
