# Two entry points for a fresh machine: `make demo` and `make test`.
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: setup demo test lint
setup:
	bash scripts/setup.sh

demo: setup
	HF_HUB_OFFLINE=1 .venv/bin/erase demo

test: setup
	HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q tests

lint: setup
	.venv/bin/ruff check erase tests
