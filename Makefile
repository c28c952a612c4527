# Entry points for a fresh machine: `make demo`, `make test`, `make lint`, `make notebook`.
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: setup demo test lint notebook
setup:
	bash scripts/setup.sh

demo: setup
	HF_HUB_OFFLINE=1 .venv/bin/erase demo

test: setup
	HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q tests

lint: setup
	.venv/bin/ruff check erase tests scripts

# Runs the quickstart notebook end to end in a scratch copy (outputs are never written back).
notebook: setup
	HF_HUB_OFFLINE=1 .venv/bin/python scripts/run_notebook.py notebooks/digits_quickstart.ipynb
