#!/usr/bin/env bash
# Creates .venv and installs erase with its dev tools. Idempotent: a second run only checks.
# torch is pinned in the SAME pip call as the rest: otherwise pip resolves diffusers/accelerate
# against the newest torch, a multi-GB CUDA build (shared/docs/environment.md).
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_SPEC="${ERASE_TORCH_SPEC:-torch==2.13.0}"
PY="${PYTHON:-python3}"
# Debian's chromium renders report.html in the audit tests (headless screenshot); root only, best effort.
if [ "$(id -u)" = 0 ]; then
  command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "erase: chromium not installed; report screenshot tests will skip"
fi
stamp=.venv/.erase-installed
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt scripts/setup.sh ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "$TORCH_SPEC" -e ".[dev]"
# open_clip_torch only for its CLIP BPE vocabulary file; --no-deps keeps torchvision/timm out.
.venv/bin/python -m pip install -q --no-deps "open_clip_torch>=2.24"
touch "$stamp"
echo "erase: environment ready in .venv"
