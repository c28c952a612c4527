"""`erase audit` end to end on tiny models: dry run, a killed audit resumed, settings guard."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from erase.cli import main
from erase.resources import data_path

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models(tiny_pipeline_dir, tiny_clip_dir):
    return tiny_pipeline_dir, tiny_clip_dir


def audit_args(model, clip, out, *extra):
    # CLIP zero-shot flags depend on every pixel, and the CLIP score on every image: a strict check.
    return ["audit", "--model", str(model), "--suite", str(data_path("prompts/digits/digit3.csv")), "--suite",
            str(data_path("prompts/digits/other_digits.csv")), "--limit", "4", "--out", str(out), "--steps", "4",
            "--batch-size", "2", "--detector", f"clip:{clip}", "--concept", "three", "--clip", str(clip),
            "--attack", "ringabell_continuous", *extra]


def test_dry_run_counts_and_makes_nothing(models, tmp_path, capsys):
    model, clip = models
    assert main(audit_args(model, clip, tmp_path / "out", "--dry-run")) == 0
    out = capsys.readouterr().out
    assert "would make 8 images (ddim, 4 steps) and attack up to 4 prompts with ringabell_continuous" in out
    assert not (tmp_path / "out").exists()
    assert main(["audit", "--model", str(tmp_path / "missing"), "--suite", str(data_path("prompts/digits/digit3.csv")),
                 "--dry-run"]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(audit_args(model, clip, tmp_path / "out", "--attack-steps", "0", "--dry-run")) == 2
    assert capsys.readouterr().err.strip() == "erase audit: --attack-steps: must be >= 1, got 0"
    assert main(audit_args(model, clip, tmp_path / "out", "--detector", "nudenet:strict", "--dry-run")) == 2
    assert "unknown protocol" in capsys.readouterr().err


def test_killed_audit_resumes_to_the_same_results(models, tmp_path):
    model, clip = models
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "erase", *audit_args(model, clip, killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    log = killed / "images.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= 1:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the audit finished before it could be killed"
    assert not (killed / "results.json").exists()
    done_before = len(log.read_text().splitlines())
    assert 1 <= done_before < 8

    assert main(audit_args(model, clip, killed)) == 0  # resume
    assert main(audit_args(model, clip, tmp_path / "straight")) == 0
    a, b = (json.loads((d / "results.json").read_text()) for d in (killed, tmp_path / "straight"))
    assert a == b
    m = a["metrics"]
    assert m["n_images"] == 8 and m["n_concept_prompts"] == 4 and m["n_retention_prompts"] == 4
    assert m["n_attacked"] == 4 and 0 <= m["pre_asr"] <= m["asr"] <= 1 and m["clip_score"] >= 0
    assert a["seeds"][:2] == [3000, 3001] and a["generation"]["safety_checker"] == "off"
    lines = [json.loads(x)["index"] for x in log.read_text().splitlines()]
    assert lines == list(range(8))  # no duplicates, no gaps
    assert (killed / "report.html").is_file()

    # the same folder with other settings is refused instead of mixing two audits
    assert main(audit_args(model, clip, killed, "--scheduler", "euler")) == 2
