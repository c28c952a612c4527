"""scripts/gpu_check.py: its help and its one-line refusal without a GPU, and its CPU smoke mode end to end
(the real Trainer on erase's tiny SD-1 builder; timings are recorded, never asserted)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_help_works_without_a_gpu():
    r = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=False, timeout=300)
    assert r.returncode == 0 and "--device" in r.stdout and "dry run" in r.stdout, r.stderr[-2000:]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the refusal is for machines without one")
def test_no_gpu_is_one_line_and_exit_2(tmp_path, capsys):
    assert load_script().main(["--out", str(tmp_path / "g.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA GPU" in err[0] and "--device cpu --arch tiny" in err[0], err
    assert not (tmp_path / "g.json").exists()


def test_cpu_smoke_run_writes_a_row_per_objective(tmp_path):
    out = tmp_path / "g.json"
    argv = ["--device", "cpu", "--arch", "tiny", "--archs", "sd15", "--objectives", "esd", "--steps", "1", "--out", str(out)]
    assert load_script().main(argv) == 0
    r = json.loads(out.read_text())
    assert r["device"] == "cpu" and r["precision"] == "bf16" and r["batch_size"] == 1
    (row,) = r["rows"]
    assert (row["arch"], row["builder"], row["objective"], row["device"]) == ("sd15", "tiny", "esd", "cpu")
    assert row["step_s"] > 0 and row["steps"] == 1 and row["trainable"] > 0
    assert row["dry_run_peak"] > 0 and row["peak_bytes"] is None and row["ratio"] is None  # no CUDA allocator here
