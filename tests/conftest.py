"""Test-wide settings: offline Hub (every test but the push test, which sets its own env)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
