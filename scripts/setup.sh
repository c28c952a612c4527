#!/usr/bin/env bash
# Creates .venv and installs erase with its dev tools, at the versions the tests pass with
# (constraints.txt). Idempotent: a second run only checks.
# torch is pinned in the SAME pip call as the rest: otherwise pip resolves diffusers/accelerate
# against the newest torch, a multi-GB CUDA build.
#   ERASE_TORCH_SPEC="torch==X"  another torch build (its constraints line is then dropped)
#   ERASE_CONSTRAINTS=""         no constraints: the newest releases within pyproject's bounds
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_SPEC="${ERASE_TORCH_SPEC:-torch==2.13.0}"
CONSTRAINTS="${ERASE_CONSTRAINTS-constraints.txt}"
PY="${PYTHON:-python3}"
# Debian's chromium renders report.html in the audit tests (headless screenshot); root only, best effort.
if [ "$(id -u)" = 0 ]; then
  command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "erase: chromium not installed; report screenshot tests will skip"
fi
stamp=.venv/.erase-installed
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt scripts/setup.sh ] \
   && { [ -z "$CONSTRAINTS" ] || [ "$stamp" -nt "$CONSTRAINTS" ]; }; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
pin=()
if [ -n "$CONSTRAINTS" ]; then
  # An explicit ERASE_TORCH_SPEC wins over the constraints' torch line.
  grep -v -E '^torch==' "$CONSTRAINTS" > .venv/constraints.txt
  [ -n "${ERASE_TORCH_SPEC:-}" ] || grep -E '^torch==' "$CONSTRAINTS" >> .venv/constraints.txt || true
  pin=(-c .venv/constraints.txt)
fi
.venv/bin/python -m pip install -q "${pin[@]}" "$TORCH_SPEC" -e ".[dev]"
touch "$stamp"
echo "erase: environment ready in .venv"
