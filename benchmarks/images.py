"""Peak memory of reading the largest image the limits allow, and of refusing a bomb.

Each case runs in a fresh subprocess, so that ru_maxrss (the process's peak resident size)
measures that read alone: the figure printed is the peak after the read minus the peak
before it (imports and the file name only). tracemalloc's peak counts numpy's buffers but
not Pillow's own image memory.

Run: python benchmarks/images.py [--side 10000]   (10000 x 10000 = the 100 MP default)
"""

from __future__ import annotations

import argparse
import json
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

CHILD = r"""
import json, resource, sys, time, tracemalloc
import numpy as np
from trustad import images
kind, path = sys.argv[1], sys.argv[2]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tracemalloc.start()
start = time.perf_counter()
outcome = ""
try:
    if kind == "size":
        outcome = "x".join(map(str, images.read_size(path)))
    elif kind == "float64-whole":  # a single float64 copy of the image, for comparison
        arr = np.asarray(images.read_image(path))
        np.round(arr.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
        outcome = "scaled at once"
    else:
        outcome = "x".join(map(str, images.read_rgb8(path).size)) + " RGB"
except images.ImageReadError as exc:
    outcome = "ImageReadError: " + exc.reason[:60]
seconds = time.perf_counter() - start
peak = tracemalloc.get_traced_memory()[1]
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"rss_mb": (after - before) / 1024, "traced_mb": peak / 2**20,
                  "s": seconds, "outcome": outcome}))
"""


def png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def make_files(folder: Path, side: int) -> None:
    """Smooth content, so the files stay small while the decoded images are full size."""
    ramp = (np.arange(side, dtype=np.uint32) * 255 // max(side - 1, 1)).astype(np.uint8)
    rgb = np.empty((side, side, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = ramp[None, :], ramp[:, None], 128
    img = Image.fromarray(rgb)
    for name, kwargs in (("rgb.png", {"compress_level": 1}), ("rgb.jpg", {"quality": 90})):
        img.save(folder / name, **kwargs)
    del img, rgb
    deep = (np.arange(side, dtype=np.uint32)[None, :] * 6 % 65536).astype(np.uint16)
    Image.fromarray(np.repeat(deep, side, axis=0)).save(folder / "gray16.png", compress_level=1)
    (folder / "bomb.png").write_bytes(png_header_only(60000, 60000))


def run_python(*argv: str) -> str:
    out = subprocess.run([sys.executable, *argv], capture_output=True, text=True, check=True)
    return out.stdout


def measure(kind: str, path: Path) -> dict:
    return json.loads(run_python("-c", CHILD, kind, str(path)).strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=10_000, help="square image side in pixels")
    parser.add_argument("--make", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make:
        make_files(Path(args.make), args.side)
        return
    mp = args.side * args.side / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        # Made in another process: Linux carries a parent's peak RSS into the ru_maxrss of
        # the children it starts, so this process must stay small.
        run_python(__file__, "--make", tmp, "--side", str(args.side))
        files = {p.name: p for p in Path(tmp).iterdir()}
        cases = [
            ("rgb.png", "rgb8"),
            ("rgb.jpg", "rgb8"),
            ("gray16.png", "rgb8"),
            ("gray16.png", "float64-whole"),
            ("rgb.png", "size"),
            ("bomb.png", "rgb8"),
        ]
        print(f"{args.side}x{args.side} = {mp:.0f} MP; decoded RGB is {3 * mp:.0f} MB")
        print(f"{'file':<12} {'read':<14} {'peak RSS +MB':>12} {'traced MB':>10} {'s':>6}  outcome")
        for name, kind in cases:
            size = files[name].stat().st_size
            r = measure(kind, files[name])
            print(
                f"{name:<12} {kind:<14} {r['rss_mb']:>12.0f} {r['traced_mb']:>10.1f} "
                f"{r['s']:>6.2f}  {r['outcome']} (file {size / 2**20:.1f} MB)"
            )


if __name__ == "__main__":
    main()
