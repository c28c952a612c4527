"""Third-party methods, detectors and attacks through entry points (erase/plugins.py): a tiny plugin package
installed into a temp folder (a real dist-info with entry_points.txt, found by importlib.metadata on sys.path)
is loaded and run; a plugin that takes a built-in's name is refused in one line."""

import json
import sys
import textwrap

import pytest
import torch

from erase.cli import main
from erase.resources import data_path

PLUGIN = '''
import numpy as np
import torch

from erase.objectives.base import ObjectiveConfig
from erase.objectives.gradient_ascent import GradientAscent


class TinyConfig(ObjectiveConfig):
    pass


class TinyObjective(GradientAscent):
    """The plugin's method: gradient ascent at half strength."""
    config_class = TinyConfig

    def forget_scale(self):
        return 0.5


def build_detector(spec, concept):
    class Bright:
        id = "bright:" + (spec or "0.5")

        def __call__(self, images):
            cut = float(spec or 0.5)
            return [{"flag": bool(np.asarray(im).mean() > cut), "score": float(np.asarray(im).mean()), "pred": None,
                     "labels": {}} for im in images]

        def info(self):
            return {"detector": "bright", "cut": float(spec or 0.5)}
    return Bright()


def make_attacker(settings, out, pipe, rows, concept, detector, targets, open_model):
    def one(row):
        return np.ones((16, 16, 3), dtype=np.float32), {"steps": 1, "adv_prompt": "white"}
    return one
'''


def install(tmp_path, name: str, entry_points: str, module: str = PLUGIN):
    """What `pip install --no-deps --target DIR` leaves: the package and its dist-info with entry_points.txt."""
    root = tmp_path / name
    (root / name).mkdir(parents=True)
    (root / name / "__init__.py").write_text(module)
    info = root / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    return root


@pytest.fixture
def on_path(monkeypatch):
    """Put an installed plugin on sys.path; afterwards the registries are as before (other tests see no plugin)."""
    from erase import plugins
    from erase.audit import attacks, detectors
    from erase.objectives import registry

    registry.objective_names()
    saved = [(t, dict(t)) for t in (detectors.DETECTORS, attacks.PLUGIN_ATTACKS, registry._REGISTRY)]
    seen = set(plugins._seen)

    def add(root):
        monkeypatch.syspath_prepend(str(root))
    yield add
    for table, before in saved:
        table.clear()
        table.update(before)
    plugins._seen.clear()
    plugins._seen.update(seen)


def test_plugin_method_detector_and_attack_run(tmp_path, on_path, tiny_pipeline_dir, tiny_models, make_batch, latents):
    on_path(install(tmp_path, "erase_tiny_plugin", """
        [erase.objectives]
        tiny_method = erase_tiny_plugin:TinyObjective
        [erase.detectors]
        bright = erase_tiny_plugin:build_detector
        [erase.attacks]
        white = erase_tiny_plugin:make_attacker
    """))
    from erase.objectives import build_objective
    from erase.objectives.registry import objective_names

    assert "tiny_method" in objective_names()
    models, _, _ = tiny_models("unet")
    batch = make_batch(["a handwritten three", "digit three"], step=1, forget_latents=latents(2, seed=3))
    mine, ga = build_objective("tiny_method", {}).losses(models, batch), build_objective("ga", {}).losses(models, batch)
    assert torch.allclose(mine.forget, 0.5 * ga.forget)  # the plugin's loss, through the registry
    out = tmp_path / "audit"
    assert main(["audit", "--model", str(tiny_pipeline_dir), "--suite", str(data_path("prompts/digits/digit3.csv")),
                 "--limit", "2", "--steps", "2", "--detector", "bright:0.99", "--attack", "white", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["protocol"]["id"] == "bright:0.99" and res["attack"]["name"] == "white"
    m = res["metrics"]
    assert m["n_attacked"] == 2 and m["asr"] == 1.0 and m["asr_count"] == 2  # the all-white attack image is "bright"
    assert sys.modules["erase_tiny_plugin"].__file__.startswith(str(tmp_path))


def test_a_plugin_taking_a_builtin_name_is_refused(tmp_path, on_path, capsys):
    on_path(install(tmp_path, "erase_clash_plugin", """
        [erase.detectors]
        nudenet = erase_clash_plugin:build_detector
    """))
    assert main(["audit", "--model", "zoo:digits", "--suite", str(data_path("prompts/digits/digit3.csv")),
                 "--detector", "digits:three", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("erase audit: plugin erase_clash_plugin: entry point erase.detectors nudenet = "
                          "erase_clash_plugin:build_detector: detector 'nudenet' is already registered")
    assert "\n" not in err
