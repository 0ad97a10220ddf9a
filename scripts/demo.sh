#!/usr/bin/env bash
# The demo command: set-up, then `trustad demo` (synthetic data, real DINOv2 weights).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/trustad demo --out demo-output "$@"
