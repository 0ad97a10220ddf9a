"""The ``trustad`` command line with a tiny random ViT in place of DINOv2, for tests that
run the CLI in a subprocess; and a backbone factory for Ray workers.

    python tests/tiny_trustad.py evaluate --dataset folder --root D --out O ...

TRUSTAD_TEST_UNIT_PAUSE=S sleeps S seconds after each unit is written, so that a test can
kill the process between units.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from conftest import make_tiny_vit  # noqa: E402

from trustad.backbone.weights import WeightsSource  # noqa: E402

TINY_SHA = "0" * 64


def tiny_backbone(*args, device="cpu", **kwargs):
    """A tiny ViT that records a (made-up) weights provenance, like ``load_backbone``."""
    model = make_tiny_vit()
    model.weights_source = WeightsSource("tiny", Path("tiny.safetensors"), "test", "tiny", TINY_SHA)
    return model.to(device)


def crash_once_backbone(marker: str, device="cpu"):
    """``tiny_backbone``, but the first worker to load it dies (os._exit) after creating
    ``marker``: the task it ran is retried elsewhere."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return tiny_backbone(device=device)
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    os._exit(1)


def main() -> int:
    import trustad.backbone
    from trustad.cli import main as cli_main
    from trustad.evaluation.store import ResultStore

    trustad.backbone.load_backbone = tiny_backbone
    pause = float(os.environ.get("TRUSTAD_TEST_UNIT_PAUSE", "0"))
    if pause:
        add = ResultStore.add

        def slow_add(self, results, scores):
            add(self, results, scores)
            time.sleep(pause)

        ResultStore.add = slow_add
    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
