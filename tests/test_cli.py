import json
import os
import subprocess
import sys

import yaml

from erase.cli import COMMANDS, MAX_LINE, main


def test_help_lists_every_subcommand(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("demo", "train", "audit", "export", "push", "zoo", "bench", "report"):
        assert name in out and name in COMMANDS


def test_unknown_command_exits_2(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_user_error_is_one_line_and_debug_shows_traceback(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model: [unclosed\n")
    run = [sys.executable, "-m", "erase", "train", "--config", str(cfg)]
    r = subprocess.run(run, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()  # nothing else: no library warnings
    assert len(lines) == 1 and str(cfg) in lines[0] and "Traceback" not in r.stderr
    r = subprocess.run(run + ["--debug"], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode != 0 and "Traceback" in r.stderr


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
for _var in ("TQDM_DISABLE", "TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS", "ERASE_VERBOSE"):
    ENV.pop(_var, None)  # the CLI's own settings are under test


def test_bad_choice_is_one_line_naming_the_value_and_the_choices(capsys):
    assert main(["audit", "--model", "m", "--suite", "s", "--attack", "ringbell"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'ringbell'" in err[0] and "'unlearndiffatk', 'ringabell'" in err[0], err


def test_long_messages_are_capped(capsys, tmp_path):
    assert main(["bench", "x" * 50_000]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and len(err[0]) <= MAX_LINE and err[0].endswith("..."), len(err[0])


def test_training_output_is_quiet_and_resume_latest_without_checkpoint_says_so(tmp_path):
    """A real `erase train` from a script: stderr stays empty (no library warnings, no progress bars);
    `--resume latest` on a fresh folder says on one line that it starts at step 0, and trains."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"model": "builder:tiny", "method": "esd", "objective": {"ddim_steps": 2},
                                   "data": {"forget": {"prompts": ["three"]}}, "train": {"steps": 1, "batch_size": 1}}))
    r = subprocess.run([sys.executable, "-m", "erase", "train", "--config", str(cfg), "--out", str(tmp_path / "run"),
                        "--resume", "latest"], capture_output=True, text=True, timeout=600, env=ENV, check=False)
    assert r.returncode == 0 and r.stderr == "", r.stderr[-3000:]
    assert "no checkpoint to resume from; starting at step 0" in r.stdout.splitlines()
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "completed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "run.yaml"]  # the lock is gone


def test_verbose_keeps_the_error_line_last(tmp_path):
    """--verbose lets library warnings through; the error is still one line, and the last one."""
    run = [sys.executable, "-m", "erase", "export", str(tmp_path / "nope"), "--to", str(tmp_path / "e"), "--verbose"]
    r = subprocess.run(run, capture_output=True, text=True, timeout=300, env=ENV, check=False)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == f"erase export: {tmp_path / 'nope'}: no such directory " \
        "(expected a run directory or a diffusers folder)", r.stderr


def test_disk_errors_are_recognised_through_library_wrappers(tmp_path):
    """safetensors reports a full disk only in its message; the CLI's one-line text comes from it."""
    import errno

    from safetensors import SafetensorError

    from erase.io import disk_error_message

    assert disk_error_message(OSError(errno.EROFS, "Read-only file system", "/x/y")) == "/x/y: read-only file system"
    wrapped = RuntimeError("saving failed")
    wrapped.__cause__ = SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')
    assert disk_error_message(wrapped) == "no space left on device"
    assert disk_error_message(KeyError("unet")) is None  # a bug keeps its traceback
