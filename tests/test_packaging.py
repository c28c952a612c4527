"""erase works installed from a wheel, not only from its checkout: build the wheel, install it into a
folder, and run the commands from another directory with only that folder on the path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import erase

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel built from this working tree, installed with `pip install --no-deps --target`."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # a copy, so the build leaves no build/ or egg-info in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("erase", "configs", "prompts"):  # the recipes and suites live at the top level
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(src)],
                   check=True, capture_output=True, text=True, timeout=300)
    (wheel,) = (tmp / "dist").glob("erase-*.whl")
    assert wheel.name.startswith(f"erase-{erase.__version__}-")  # the version is erase.__version__
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    assert {"erase/data/configs/digits/esd_loreun.yaml", "erase/data/prompts/digits/digit3.csv",
            "erase/data/templates/report_audit.html", "erase/zoo/artifacts/digits/tokenizer/tokenizer.json"} <= names
    target = tmp / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, text=True, timeout=300)
    return target


def _erase(site: Path, cwd: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "erase", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_installed_wheel_runs_from_another_directory(installed, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(installed), "HF_HUB_OFFLINE": "1"}
    code = "import erase, erase.resources as r; print(erase.__file__); print(r.data_path('configs'))"
    where = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                           check=True, timeout=120).stdout.split()
    assert [Path(p).is_relative_to(installed) for p in where] == [True, True], where
    assert "--attack-limit" in _erase(installed, tmp_path, "demo", "--help")
    # `configs/...` from a folder that has none: the recipe shipped in the installed package, and its
    # retain prompts file found next to it.
    out = _erase(installed, tmp_path, "train", "--config", "configs/digits/esd_loreun.yaml", "--dry-run")
    retain = (installed / "erase" / "data" / "prompts" / "digits" / "retain_not3.txt").read_text().split("\n")
    assert f"{sum(bool(line.strip()) for line in retain)} retain samples" in out
    assert f"from folder {installed / 'erase' / 'zoo' / 'artifacts' / 'digits'} " in out  # zoo:digits, installed
    assert "digits" in _erase(installed, tmp_path, "zoo", "list")
    assert not (tmp_path / "runs").exists()


def test_recipes_and_suites_have_one_source_at_the_top_level():
    """configs/ and prompts/ are the repository's own top-level folders (git tracks them there), and the
    package holds no second copy in a checkout; erase.resources resolves `configs/...` to them."""
    from erase.resources import data_path, shown

    tracked = subprocess.run(["git", "ls-files", "configs/digits/esd_loreun.yaml", "prompts/digits/digit3.csv"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    if (ROOT / ".git").exists():
        assert tracked == ["configs/digits/esd_loreun.yaml", "prompts/digits/digit3.csv"]
    assert not (ROOT / "erase" / "data" / "configs").exists() and not (ROOT / "erase" / "data" / "prompts").exists()
    assert data_path("configs/digits/esd_loreun.yaml") == ROOT / "configs" / "digits" / "esd_loreun.yaml"
    assert shown(ROOT / "prompts" / "digits" / "digit3.csv") == "prompts/digits/digit3.csv"
