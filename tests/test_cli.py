import subprocess
import sys

from erase.cli import COMMANDS, main


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
    r = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = [line for line in r.stderr.strip().splitlines() if line.startswith("erase")]
    assert len(lines) == 1 and str(cfg) in lines[0] and "Traceback" not in r.stderr
    r = subprocess.run(run + ["--debug"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" in r.stderr
