"""Faults a user's machine throws at a running command: a full disk (a small tmpfs), a read-only
destination, and two writers on one output folder. Each ends in one clear line (exit 2) and
leaves nothing corrupt: rerunning or resuming continues. Commands run as real processes.

The full-disk and read-only-mount tests need root (to mount a tmpfs) and are skipped without it; the
read-only-destination test runs for everyone (a read-only tmpfs, an immutable folder or, not as root,
a folder without write permission)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from erase.cli import main
from erase.io import output_lock

ROOT = Path(__file__).resolve().parents[1]
SUITE = str(ROOT / "prompts" / "digits" / "digit3.csv")  # the top-level suites (the one source)
TINY = {"model": "builder:tiny", "method": "esd", "objective": {"eta": 1.0, "ddim_steps": 2},
        "data": {"forget": {"prompts": ["three", "3"]}},
        "train": {"steps": 2, "batch_size": 2, "lr": 1.0e-3, "checkpoint_every": 1, "seed": 1}}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def erase(*argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "erase", *argv], env=ENV, capture_output=True, text=True,
                          timeout=600, check=False, **kw)


def one_line(r: subprocess.CompletedProcess, *needles: str) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size) mounts a fresh tmpfs at the returned folder; remount(opts) changes it (root only)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mounted = []

    def mount(size: str) -> Path:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True, check=False)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()[:100]})")
        mounted.append(mnt)
        return mnt

    def remount(opts: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{opts}", str(mnt)], check=True)

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    yield mount, remount
    for m in mounted:
        subprocess.run(["umount", "-l", str(m)], check=False)


@pytest.fixture(scope="module")
def tiny_run(tiny_pipeline_dir, tmp_path_factory) -> Path:
    """A finished run directory around the tiny model (16 MB of weights), made without training."""
    run = tmp_path_factory.mktemp("src") / "run"
    shutil.copytree(tiny_pipeline_dir, run / "model")
    (run / "run.json").write_text(json.dumps({"status": "completed", "method": "esd", "base_model": "builder:tiny"}))
    return run


@pytest.mark.slow
def test_full_disk_during_training_fails_in_one_line_then_resumes(tmp_path, tmpfs):
    """A disk full at the first checkpoint (torch.save), then, with a little more room, at the 16 MB
    model (safetensors): one line each, run.json says "failed", and `--resume latest` continues."""
    mount, remount = tmpfs
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    run = mount("256k") / "run"  # room for config, cache and logs, not for a 0.4 MB checkpoint
    train = ["train", "--config", str(cfg), "--out", str(run), "--resume", "latest"]
    # torch.save's own wrapper ("is the disk full?") or the plain ENOSPC, as accelerate's save_state meets it
    line = one_line(erase(*train), "--resume latest")
    assert "is the disk full?" in line or "no space left on device" in line, line
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "failed" and ("disk full" in meta["error"] or "no space left" in meta["error"]), meta["error"]
    assert list((run / "checkpoints").iterdir()) == []  # the half-written checkpoint is gone
    remount("size=8m")  # the checkpoints fit now, the model does not
    r = erase(*train)
    line = one_line(r, "no space left on device", str(run / "model"), "--resume latest")
    assert "no checkpoint to resume from; starting at step 0" in r.stdout, line
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "failed" and "no space left on device" in meta["error"]
    assert not (run / "model").exists() and not [p for p in run.rglob("*") if p.name.endswith(".tmp")]
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_1"]
    remount("size=64m")  # space freed: resuming continues from the intact checkpoint
    r = erase(*train)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resumed from {run / 'checkpoints' / 'step_1'} at step 1" in r.stdout
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
    load_file(str(run / "model" / "unet" / "diffusion_pytorch_model.safetensors"))  # whole and readable


def test_full_disk_during_export_leaves_no_destination(tiny_run, tmpfs):
    mount, _ = tmpfs
    dest = mount("8m") / "exported"
    before = files(tiny_run)
    one_line(erase("export", str(tiny_run), "--to", str(dest)), "no space left on device", str(dest))
    assert files(dest.parent) == [] and files(tiny_run) == before  # no destination, no temp folder, no lock


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder (holding one subfolder, `old`) whose writes fail, whoever runs the tests: a read-only
    tmpfs where root may mount, else (root in a container without mount rights) an immutable folder
    (chattr +i: EPERM even for root), else, not root, a folder without write permission. Never skipped."""
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "old").mkdir()
    undo: list[list[str]] = []
    if os.geteuid() != 0:
        folder.chmod(0o555)
        undo.append(["chmod", "755", str(folder)])
    else:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True,
                                 check=False).returncode == 0
        if mounted:
            undo.append(["umount", "-l", str(folder)])
            (folder / "old").mkdir()
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        else:
            r = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True, check=False)
            assert r.returncode == 0, f"root, but neither a tmpfs mount nor chattr +i works here: {r.stderr.strip()}"
            undo.append(["chattr", "-i", str(folder)])
    try:
        (folder / "probe").mkdir()
    except OSError:
        pass
    else:
        raise AssertionError(f"{folder} is still writable")
    yield folder
    for cmd in undo:
        subprocess.run(cmd, check=False)


def test_read_only_destinations_are_one_line(tmp_path, tiny_run, read_only_folder, capsys):
    ro = read_only_folder
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    cases = [(["export", str(tiny_run), "--to", str(ro / "e")], "--to"),
             (["export", str(tiny_run), "--to", str(ro / "old"), "--overwrite"], "--to"),
             (["audit", "--model", str(tiny_run), "--suite", SUITE, "--detector", "digits", "--out", str(ro / "a")], "refused"),
             (["audit", "--model", str(tiny_run), "--suite", SUITE, "--detector", "digits", "--out", str(ro / "old")], "refused"),
             (["train", "--config", str(cfg), "--out", str(ro / "run")], "not writable")]
    # an immutable folder (root, chattr +i) passes the access check and fails at the first write, with EPERM
    refused = ("not writable", "Operation not permitted")
    for argv, needle in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(ro) in err[0], err
        assert any(n in err[0] for n in (refused if needle == "refused" else (needle,))), err
    assert files(ro) == ["old"]


HOLD = """
import sys
from erase.io import output_lock
with output_lock(sys.argv[1], "erase audit --steps 10"):
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_second_writer_is_refused_naming_the_holder_and_a_dead_holders_lock_is_taken_over(tmp_path, tiny_run, capsys):
    """The holder is another process; the second writer is this one (erase.cli.main, as the script)."""
    out = tmp_path / "audit"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for argv in (["audit", "--model", str(tiny_run), "--suite", SUITE, "--detector", "digits", "--out", str(out)],
                     ["export", str(tiny_run), "--to", str(out)]):
            assert main(argv) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and str(out) in err[0], err
            assert "in use by erase audit --steps 10" in err[0] and f"pid {holder.pid}" in err[0], err
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    (tmp_path / ".audit.x1y2z3w4.tmp").mkdir()  # a temp folder of a writer killed mid-way
    with output_lock(out, "test"):  # the dead holder's lock is taken over at once
        assert not (tmp_path / ".audit.x1y2z3w4.tmp").exists()
    assert files(tmp_path) == []


@pytest.mark.slow
def test_two_concurrent_audits_one_wins_and_the_folder_is_consistent(tmp_path, tiny_run):
    out = tmp_path / "audit"
    common = ["-m", "erase", "audit", "--model", str(tiny_run), "--suite", SUITE, "--detector", "digits",
              "--concept", "three", "--limit", "2", "--out", str(out)]
    procs = {steps: subprocess.Popen([sys.executable, *common, "--steps", steps], env=ENV, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True) for steps in ("2", "3")}
    done = {steps: (p.wait(timeout=600), p.stderr.read()) for steps, p in procs.items()}
    codes = sorted(code for code, _ in done.values())
    assert codes == [0, 2], done
    winner = next(s for s, (code, _) in done.items() if code == 0)
    loser_err = next(err for code, err in done.values() if code == 2).strip().splitlines()
    assert len(loser_err) == 1 and ("in use by" in loser_err[0] or "other settings" in loser_err[0]), loser_err
    results = json.loads((out / "results.json").read_text())
    recorded = json.loads((out / "audit.json").read_text())["settings"]["gen"]["steps"]
    assert results["generation"]["steps"] == recorded == int(winner)
    assert len((out / "images.jsonl").read_text().splitlines()) == 2


@pytest.mark.slow
def test_audit_folder_turning_read_only_mid_run_is_one_line_then_resumes(tmp_path, tiny_run, tmpfs):
    """The audit folder is a tmpfs mount point (its lock lives beside it, on another file system),
    made read-only once the first image is logged; after it is writable again, a rerun resumes."""
    import time

    mount, remount = tmpfs
    out = mount("64m")
    argv = [sys.executable, "-m", "erase", "audit", "--model", str(tiny_run), "--suite", SUITE, "--detector", "digits",
            "--concept", "three", "--limit", "12", "--steps", "6", "--batch-size", "1", "--out", str(out)]
    proc = subprocess.Popen(argv, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out / "images.jsonl").is_file() or not (out / "images.jsonl").read_text():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.02)
    made_read_only = False
    while proc.poll() is None and not made_read_only:  # busy while a file is open for writing: retry
        made_read_only = subprocess.run(["mount", "-o", "remount,ro", str(out)], capture_output=True, check=False).returncode == 0
    _, err = proc.communicate(timeout=600)
    if not made_read_only:
        pytest.skip("the audit finished before its folder could be made read-only")
    r = subprocess.CompletedProcess(argv, proc.returncode, "", err)
    one_line(r, "Read-only file system", "nothing was overwritten", "rerun the same command to resume")
    logged = len((out / "images.jsonl").read_text().splitlines())
    assert 1 <= logged < 12 and not (out / "results.json").exists()
    remount("rw")
    r = erase(*argv[3:])
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((out / "results.json").read_text())["metrics"]["n_images"] == 12
