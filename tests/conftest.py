"""Test-wide settings: offline Hub (every test but the push test, which sets its own env), and one
torch thread: the models here are tiny, and two intra-op threads that contend with anything else
on a 2-core machine are 10-50x slower (measured), so one thread is both faster and steadier."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch

torch.set_num_threads(int(os.environ.get("ERASE_TEST_THREADS", "1")))
