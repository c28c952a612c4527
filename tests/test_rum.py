"""RUM: scores, partition and the sequence of per-group phases (erase/rum/)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from erase.config import from_dict
from erase.errors import EraseError
from erase.objectives.base import Models
from erase.rum import (
    denoising_scores,
    difficulty_from_scores,
    entanglement_score,
    partition,
    per_sample_entanglement,
    shared_timesteps,
)
from erase.rum.runner import run_rum
from erase.train.config import RumConfig, RunConfig


def test_partition_sizes_order_and_cover():
    scores = torch.tensor([5.0, 1.0, 3.0, 9.0, 7.0, 2.0, 8.0])
    groups = partition(scores, k=3)
    assert [len(g) for g in groups] == [3, 2, 2]
    flat = torch.cat(groups)
    assert sorted(flat.tolist()) == list(range(7))
    # easiest first: every score of group i is <= every score of group i+1
    for a, b in itertools.pairwise(groups):
        assert scores[a].max() <= scores[b].min()
    assert groups[0].tolist() == [1, 5, 2]


def test_partition_fractions():
    groups = partition(torch.arange(10.0), k=3, fractions=[0.2, 0.3, 0.5])
    assert [g.tolist() for g in groups] == [[0, 1], [2, 3, 4], [5, 6, 7, 8, 9]]


def test_loss_score_order_follows_the_paper_by_default():
    loss = torch.tensor([0.1, 0.5, 0.9])
    # paper's proxy: high confidence (low loss) = low memorisation, handled first
    assert [g.item() for g in partition(difficulty_from_scores(loss, "loss"), k=3)] == [0, 1, 2]
    # the named other order: the sample the original model reproduces best (loss 0.1) last
    assert [g.item() for g in partition(difficulty_from_scores(loss, "loss", "high_loss_first"), k=3)] == [2, 1, 0]


def test_per_sample_entanglement_mean_is_set_es():
    g = torch.Generator().manual_seed(0)
    zr = torch.randn(50, 8, generator=g)
    zf = torch.randn(20, 8, generator=g) + 3.0
    es_i = per_sample_entanglement(zf, zr)
    mu_r, mu_f = zr.mean(0), zf.mean(0)
    mu = (mu_r + mu_f) / 2
    num = (zr - mu_r).pow(2).sum(1).mean() + (zf - mu_f).pow(2).sum(1).mean()
    den = ((mu_r - mu).pow(2).sum() + (mu_f - mu).pow(2).sum()) / 2
    assert torch.allclose(es_i.mean(), num / den, rtol=1e-5)
    assert entanglement_score(zf, zr) == pytest.approx(float(num / den), rel=1e-5)
    # a forget sample sitting far out of its cluster is scored more entangled
    zf2 = zf.clone()
    zf2[0] = zf.mean(0) + 10
    assert per_sample_entanglement(zf2, zr).argmax().item() == 0
    # separated sets are less entangled than overlapping ones
    assert entanglement_score(zf, zr) < entanglement_score(torch.randn(20, 8, generator=g), zr)


def test_shared_timesteps_spread():
    assert shared_timesteps(5).tolist() == [100, 300, 500, 700, 900]
    assert shared_timesteps(1).tolist() == [500]


def test_config_validation():
    cfg = from_dict(RumConfig, {"groups": [{"objective": "esd", "steps": 5, "lr": "1e-5"}, {}, {"objective": "salun"}]}, "x.yaml")
    assert cfg.enabled and cfg.groups[0].lr == 1e-5 and cfg.groups[1].objective is None
    with pytest.raises(EraseError, match=r"x.yaml: groups\[0\].steps: must be >= 0"):
        from_dict(RumConfig, {"groups": [{"steps": -1}]}, "x.yaml")
    with pytest.raises(EraseError, match="fractions"):
        from_dict(RumConfig, {"groups": [{}, {}], "fractions": [0.5, 0.2]}, "x.yaml")


# --- on a tiny model -------------------------------------------------------------------------


def test_denoising_scores_are_fair_and_deterministic(tiny_pipeline):
    pipe = tiny_pipeline
    models = Models.from_pipeline(pipe, device="cpu")
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(3, 4, 16, 16, generator=g)
    lat = torch.cat([lat, lat[:1]])  # sample 3 duplicates sample 0
    prompts = ["a three", "a cat", "a dog", "a three"]
    s = denoising_scores(models, lat, prompts, n_timesteps=3, seed=0, batch_size=3)  # 3 and 0 in different batches
    assert s.shape == (4,)
    assert s[3].item() == pytest.approx(s[0].item(), rel=1e-6)  # same t and noise for every sample
    torch.testing.assert_close(s, denoising_scores(models, lat, prompts, n_timesteps=3, seed=0))
    assert not torch.allclose(s[0], s[1])
    # the score is the mean over t of the plain formula
    t = shared_timesteps(3)
    noise = torch.randn((3, 4, 16, 16), generator=torch.Generator().manual_seed(0))
    enc = models.encode(["a cat"])
    ref = sum(((pipe.unet(models.add_noise(lat[1:2], n[None], tk[None]), tk[None], encoder_hidden_states=enc).sample
                - n[None]) ** 2).mean() for tk, n in zip(t, noise)) / 3
    assert s[1].item() == pytest.approx(ref.item(), rel=1e-4)


def test_sequence_runs_each_group_with_its_own_settings(tiny_pipeline, tmp_path):
    forget = [f"digit {i}" for i in range(6)]
    (tmp_path / "more.txt").write_text("\n".join(forget[3:]) + "\n")  # half of the forget set from a prompt file
    cfg = from_dict(RunConfig, {
        "model": "builder:tiny", "method": "ga",
        "data": {"forget": {"prompts": forget[:3], "file": str(tmp_path / "more.txt")},
                 "retain": {"prompts": ["a house", "a dog"]}, "generate_steps": 2},
        "train": {"steps": 1, "batch_size": 2, "lr": 1e-5, "log_every": 100},
        "rum": {"n_timesteps": 2, "pending_in_retain": True, "groups": [
            {"objective": "none"},
            {"objective": "ga", "steps": 2, "lr": 1e-4},
            {"objective": "erasediff", "steps": 1, "weighting": "dynamic",
             "overrides": {"objective.inner_steps": 1, "objective.mapping_prompts": ["a house"]}},
        ]},
    }, "t.yaml")
    info = run_rum(cfg, tmp_path, "t.yaml")
    assert info["forget_prompts"] == forget and info["concept"] == "digit 0"  # in config order, file included
    root = tmp_path / "rum"
    part = json.loads((root / "partition.json").read_text())
    groups = [g["ids"] for g in part["groups"]]
    assert sorted(i for g in groups for i in g) == list(range(6)) and [len(g) for g in groups] == [2, 2, 2]
    scores = torch.tensor(part["scores"])
    # loss score, default order (the paper's proxy): lowest original loss first, highest last
    assert scores[groups[0]].max() <= scores[groups[1]].min() and scores[groups[1]].max() <= scores[groups[2]].min()
    assert part["order"] == "loss: low loss first"

    assert not (root / "phase_0").exists()  # objective none: skipped
    r1 = json.loads((root / "phase_1" / "run.json").read_text())
    r2 = json.loads((root / "phase_2" / "run.json").read_text())
    assert (r1["method"], r1["steps"], r1["status"]) == ("ga", 2, "completed")
    assert (r2["method"], r2["steps"], r2["weighting"]["kind"]) == ("erasediff", 1, "dynamic")
    assert r2["objective"]["inner_steps"] == 1 and r2["objective"]["mapping_prompts"] == ["a house"]
    c1 = yaml.safe_load((root / "phase_1" / "config.yaml").read_text())
    c2 = yaml.safe_load((root / "phase_2" / "config.yaml").read_text())
    assert c1["train"]["lr"] == 1e-4 and c2["train"]["lr"] == 1e-5
    # each phase unlearns exactly its group; the next starts from the previous phase's model
    assert c1["data"]["forget"]["prompts"] == [forget[i] for i in groups[1]]
    assert c2["data"]["forget"]["prompts"] == [forget[i] for i in groups[2]]
    assert c1["model"] == "builder:tiny" and c2["model"] == str(root / "phase_1" / "model")
    # retain: never a handled group; with pending_in_retain the groups still to come
    handled_1 = {forget[i] for i in groups[0] + groups[1]}
    assert not handled_1 & set(c1["data"]["retain"]["prompts"])
    assert {forget[i] for i in groups[2]} <= set(c1["data"]["retain"]["prompts"])
    assert not set(forget) & set(c2["data"]["retain"]["prompts"])
    assert len(list(Path(c1["data"]["retain"]["images"]).glob("*.png"))) == 4  # 2 retain + 2 pending
    # RUN/model is the last phase's model, which differs from the original
    final = load_file(str(tmp_path / "model" / "unet" / "diffusion_pytorch_model.safetensors"))
    last = load_file(str(root / "phase_2" / "model" / "unet" / "diffusion_pytorch_model.safetensors"))
    orig = tiny_pipeline.unet.state_dict()
    assert all(torch.equal(final[k], last[k]) for k in final)
    assert any(not torch.equal(final[k], orig[k]) for k in final)
    assert info["rum"]["phases"][0]["group"] == 1 and len(info["rum"]["phases"]) == 2
    assert info["objective"]["name"] == "rum: ga -> erasediff" and info["weighting"]["kind"] == "dynamic/uniform"

    # a finished run is not silently overwritten; --resume skips the completed phases
    with pytest.raises(EraseError, match="already has RUM phases"):
        run_rum(cfg, tmp_path, "t.yaml")
    mtime = (root / "phase_2" / "model" / "model_index.json").stat().st_mtime
    again = run_rum(cfg, tmp_path, "t.yaml", resume="latest")
    assert again["status"] == "completed" and [p["status"] for p in again["rum"]["phases"]] == ["completed"] * 2
    assert (root / "phase_2" / "model" / "model_index.json").stat().st_mtime == mtime


@pytest.mark.slow
def test_phases_share_one_process_group_under_two_processes(tmp_path):
    """Each phase is a Trainer built with keep_process_group=True: ending phase 1 the usual way
    (Accelerator.end_training) destroys the process group, and phase 2's first barrier fails."""
    root = Path(__file__).resolve().parents[1]
    cfg = {"model": "builder:tiny", "method": "ga",
           "data": {"forget": {"prompts": [f"digit {i}" for i in range(4)]}, "retain": {"prompts": ["a house", "a dog"]},
                    "generate_steps": 2},
           "train": {"steps": 1, "batch_size": 2, "lr": 1e-5, "log_every": 100, "report_to": "none"},
           "rum": {"n_timesteps": 2, "groups": [{"objective": "ga"}, {"objective": "ga", "steps": 2}]}}
    (tmp_path / "rum.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "erase", "train", "--config", str(tmp_path / "rum.yaml"), "--out", str(tmp_path / "out")]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=300, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((tmp_path / "out" / "run.json").read_text())
    assert info["status"] == "completed" and [p["status"] for p in info["rum"]["phases"]] == ["completed"] * 2
    for gi in (0, 1):
        phase = json.loads((tmp_path / "out" / "rum" / f"phase_{gi}" / "run.json").read_text())
        assert phase["num_processes"] == 2 and phase["outputs"]["ranks_identical"] is True
