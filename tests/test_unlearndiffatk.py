"""UnlearnDiffAtk on tiny real models: simplex projection, budget, early stop, reproducibility."""

import json

import numpy as np
import pytest
import torch

from erase.audit.attacks.common import from_budget
from erase.audit.attacks.unlearndiffatk import (
    UnlearnDiffAtkSettings,
    attack_row,
    official_timesteps,
    project_simplex,
    render,
)
from erase.audit.detectors import build_detector
from erase.audit.generate import GenSettings, generate_rows, load_images
from erase.audit.suites import load_suite
from erase.cli import main


def test_budgets_official_by_default_and_named(capsys):
    official = UnlearnDiffAtkSettings()
    assert (official.budget, official.k, official.iterations, official.timesteps, official.lr) == ("official", 5, 40, 50, 0.01)
    assert official_timesteps(50) == list(range(10, 1000, 20))  # classifier_.py: 10, 30, ..., 990
    assert official_timesteps(5) == [100, 300, 500, 700, 900]
    quick = from_budget(UnlearnDiffAtkSettings, "quick")
    assert (quick.budget, quick.timesteps, quick.iterations) == ("quick", 5, 40)
    assert from_budget(UnlearnDiffAtkSettings, "quick", iterations=40).budget == "quick"  # unchanged: same name
    assert from_budget(UnlearnDiffAtkSettings, "official", k=3).budget == "official+custom"
    with pytest.raises(ValueError, match="budget"):
        from_budget(UnlearnDiffAtkSettings, "huge")
    args = ["audit", "--model", "unused", "--suite", "prompts/digits/digit3.csv", "--dry-run", "--attack",
            "unlearndiffatk", "--attack-budget", "huge"]
    assert main(args) == 2
    assert capsys.readouterr().err.strip() == "erase audit: --attack-budget: 'huge' is not one of official, quick"
    assert main(args[:-4] + ["--attack-budget", "quick"]) == 2
    assert capsys.readouterr().err.strip() == "erase audit: --attack-budget: needs --attack NAME"


def test_project_simplex_is_the_euclidean_projection():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(4, 7, generator=g)
    p = project_simplex(v)
    assert torch.allclose(p.sum(-1), torch.ones(4)) and (p >= 0).all()
    # optimality (KKT): p = max(v - theta, 0) with one theta per row
    for row, prow in zip(v, p):
        theta = (row - prow)[prow > 0]
        assert torch.allclose(theta, theta[0].expand_as(theta), atol=1e-6)
        assert ((row - theta[0])[prow == 0] <= 1e-6).all()
    onehot = torch.zeros(5)
    onehot[2] = 1
    assert torch.equal(project_simplex(onehot[None])[0], onehot)


@pytest.fixture(scope="module")
def setup(make_tiny_pipeline, tiny_clip_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("udatk")
    pipe = make_tiny_pipeline()
    ref = make_tiny_pipeline(seed=1)
    rows = load_suite("prompts/digits/digit3.csv")[:1]
    gen = GenSettings("ddim", 3, 1)
    log = generate_rows(ref, rows, d / "targets", gen)
    target = load_images(d / "targets", log.sorted())[0]
    det = build_detector(f"clip:{tiny_clip_dir}:three")
    return pipe, rows[0], target, det, gen, d


def test_budget_reproducibility_and_plain_prompt(setup):
    pipe, row, target, det, gen, _ = setup
    cfg = UnlearnDiffAtkSettings(budget="quick+custom", k=5, iterations=3, timesteps=2)
    a = attack_row(pipe, row, target, det, gen, cfg)
    b = attack_row(pipe, row, target, det, gen, cfg)
    assert a["tokens"] == b["tokens"] and a["steps"] == b["steps"] and a["loss"] == b["loss"]
    # early stop: the attack ends after the first timestep whose render is flagged, else uses the budget
    assert a["steps"] in (3, 6) and (a["success"] or a["steps"] == 6)
    assert a["detection"]["flag"] == a["success"]
    assert len(a["tokens"]) == 5 and not {49406, 49407} & set(a["tokens"])
    assert a["adv_prompt"].endswith(row.prompt)
    # the saved image is exactly what the printed adversarial prompt makes through the plain pipeline
    assert a["adv_prompt"] == pipe.tokenizer.decode(a["tokens"]).strip() + " " + row.prompt
    np.testing.assert_array_equal(render(pipe, row, a["adv_prompt"], gen), a["image"])
    assert a["t"] in official_timesteps(2)
    # the parameters come back as they were (attack freezes them only while it runs)
    assert all(p.requires_grad for p in pipe.unet.parameters())


def test_audit_with_unlearndiffatk_writes_attack_records(tiny_pipeline_dir, tiny_reference_dir, tiny_clip_dir, tmp_path):
    model, ref, clip = tiny_pipeline_dir, tiny_reference_dir, tiny_clip_dir
    args = ["audit", "--model", str(model), "--suite", "prompts/digits/digit3.csv", "--limit", "2", "--steps", "2",
            "--out", str(tmp_path / "out"), "--detector", f"clip:{clip}:three", "--attack", "unlearndiffatk",
            "--reference-model", str(ref), "--attack-budget", "quick", "--attack-steps", "2", "--attack-timesteps", "1"]
    assert main(args) == 0
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    m = res["metrics"]
    attacks = [json.loads(x) for x in (tmp_path / "out" / "attack.jsonl").read_text().splitlines()]
    assert [a["index"] for a in attacks] == [0, 1] and m["n_attacked"] == 2
    pre = sum(a["pre"] for a in attacks)
    assert m["pre_asr"] == pre / 2 and m["asr"] == sum(a["success"] for a in attacks) / 2
    for a in attacks:
        assert a["pre"] or ((tmp_path / "out" / a["file"]).is_file() and a["steps"] <= 2)
    assert (tmp_path / "out" / "targets" / "00000.png").is_file()  # x_0 from the reference model
    assert res["attack"]["iterations"] == 2 and res["attack"]["reference_model"] == str(ref)
    assert res["attack"]["budget"] == "quick+custom" and res["attack"]["timesteps"] == 1 and res["attack"]["k"] == 5
    assert "Attack: unlearndiffatk" in (tmp_path / "out" / "report.html").read_text()
    # without a reference model or target images the attack cannot run: one clear line
    assert main(args[:-8] + ["--out", str(tmp_path / "o2")]) == 2
