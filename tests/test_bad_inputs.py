"""The bad-input corpus (tests/bad_inputs/cases.yaml): every malformed input a user can give a
command ends with exit 2 and exactly one line on stderr that names the problem: no traceback,
no usage dump, and nothing written (the case's folder is byte-for-byte as it was before).

All cases run in one fresh interpreter (bad_inputs/run_cases.py) through `erase.cli.main`, the
code path of the `erase` script, with stderr not a terminal as in a script: the whole corpus
takes seconds, and what a user's script would read on stderr is what is checked."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).with_name("bad_inputs")
CASES = yaml.safe_load((CORPUS / "cases.yaml").read_text(encoding="utf-8"))
BASE_CONFIG = {
    "model": "builder:tiny", "method": "esd", "objective": {"eta": 1.0, "ddim_steps": 2},
    "data": {"forget": {"prompts": ["three"]}}, "train": {"steps": 1, "batch_size": 1},
}


@pytest.fixture(scope="module")
def shared(tiny_pipeline_dir, tmp_path_factory) -> dict[str, str]:
    """A tiny diffusers folder and a finished run directory around it (no training needed)."""
    root = tmp_path_factory.mktemp("shared")
    run = root / "run"
    shutil.copytree(tiny_pipeline_dir, run / "model")
    (run / "run.json").write_text(json.dumps({"status": "completed", "method": "esd", "base_model": "builder:tiny"}))
    return {"model": str(run / "model"), "run": str(run), "root": str(ROOT)}


def _expand(value, names: dict[str, str]):
    if isinstance(value, dict):
        if set(value) == {"repeat", "times"}:
            return value["repeat"] * value["times"]
        return {k: _expand(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, names) for v in value]
    return value.format(**names) if isinstance(value, str) else value


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _set_up(case: dict, tmp: Path, names: dict[str, str]) -> list[str]:
    for d in case.get("dirs", []):
        (tmp / d).mkdir(parents=True)
    for name, spec in case.get("files", {}).items():
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(spec, str):
            path.write_text(spec.format(**names) if "{tmp}" in spec else spec, encoding="utf-8")
        elif "copy" in spec:
            path.write_bytes((CORPUS / spec["copy"]).read_bytes())
        elif "deep" in spec:
            path.write_text("model: " + "[" * spec["deep"] + "]" * spec["deep"] + "\n")
        else:
            path.write_bytes(spec["text"].encode(spec["encoding"]))
    for name, target in case.get("symlinks", {}).items():
        os.symlink(target, tmp / name)
    argv = case.get("argv")
    if "config" in case:
        cfg = _merge(BASE_CONFIG, _expand(case["config"], names))
        (tmp / "run.yaml").write_text(yaml.safe_dump(cfg))
        argv = argv or ["train", "--config", "{tmp}/run.yaml", "--out", "{tmp}/out"]
    return [a.format(**names) for a in argv]


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every entry under `folder`: file bytes, link targets, folders (what "nothing written" compares)."""
    out: dict[str, bytes | str] = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        out[rel] = f"-> {os.readlink(p)}" if p.is_symlink() else "<dir>" if p.is_dir() else p.read_bytes()
    return out


def _params():
    for case in CASES:
        marks = [pytest.mark.xfail(reason=case["xfail"], strict=False)] if case.get("xfail") else []
        yield pytest.param(case, id=case["id"], marks=marks)


def test_corpus_is_large_and_unique():
    ids = [c["id"] for c in CASES]
    assert len(ids) >= 60 and len(set(ids)) == len(ids)


@pytest.fixture(scope="module")
def ran(shared, tmp_path_factory) -> dict[str, dict]:
    """Set every case up in its own folder, run them all in one interpreter, and snapshot again."""
    root = tmp_path_factory.mktemp("cases")
    todo, folders = [], {}
    for case in CASES:
        tmp = root / case["id"]
        tmp.mkdir()
        todo.append((case["id"], _set_up(case, tmp, {**shared, "tmp": str(tmp)})))
        folders[case["id"]] = (tmp, snapshot(tmp))
    (root / "cases.json").write_text(json.dumps(todo))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    for var in ("TQDM_DISABLE", "TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY", "ERASE_VERBOSE"):
        env.pop(var, None)  # what the CLI sets by itself is under test
    r = subprocess.run([sys.executable, str(CORPUS / "run_cases.py"), str(root / "cases.json"), str(root / "results.json")],
                       env=env, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads((root / "results.json").read_text())
    for case_id, (tmp, before) in folders.items():
        results[case_id].update(argv=dict(todo)[case_id], unchanged=snapshot(tmp) == before)
    return results


@pytest.mark.parametrize("case", list(_params()))
def test_bad_input_is_one_clean_line(case, ran):
    res = ran[case["id"]]
    err, argv = res["stderr"], res["argv"]
    lines = err.strip().splitlines()
    assert res["code"] == 2, (res["code"], err[-3000:])
    assert len(lines) == 1, err[-3000:]
    assert lines[0].startswith(f"erase {argv[0]}" if argv[0] != "frobnicate" else "erase:"), lines[0]
    assert case["expect"] in lines[0], lines[0][:500]
    assert len(lines[0]) <= 1000 and "Traceback" not in err + res["stdout"]
    assert res["unchanged"], "a failed command changed its folder"
