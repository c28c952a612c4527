"""The trainer end to end on the tiny model: outputs, resume equivalence, 2 processes, NaN stop, errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from erase.cli import main as cli_main
from erase.config import load_config
from erase.errors import EraseError
from erase.resources import data_path
from erase.train.config import RunConfig
from erase.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]

ESD = {
    "model": "builder:tiny",
    "method": "esd",
    "objective": {"eta": 1.0, "ddim_steps": 3},
    "data": {"forget": {"prompts": ["three", "3"], "templates": ["a handwritten {}", "the number {}"]}},
    "weighting": {"kind": "dynamic", "tau": 0.01},
    "train": {"steps": 4, "batch_size": 4, "lr": 1.0e-3, "lr_scheduler": "cosine", "lr_warmup_steps": 1,
              "checkpoint_every": 2, "checkpoints_total_limit": 1, "seed": 3},
}


def write(tmp_path: Path, cfg: dict, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def run(path: Path, out: Path, *overrides: str, resume=None) -> dict:
    cfg = load_config(RunConfig, path, list(overrides))
    return Trainer(cfg, out, str(path)).run(resume=resume)


def unet_weights(run_dir: Path) -> dict:
    return load_file(str(run_dir / "model" / "unet" / "diffusion_pytorch_model.safetensors"))


class Interrupt(Exception):
    pass


def interrupted_run(monkeypatch, path: Path, out: Path, at_step: int) -> None:
    """Run until `at_step` starts, then die there with an exception (checkpoints before it stay)."""
    real_step = Trainer.train_step

    def dying(self, step):
        if step == at_step:
            raise Interrupt()
        return real_step(self, step)

    monkeypatch.setattr(Trainer, "train_step", dying)
    with pytest.raises(Interrupt):
        run(path, out)
    monkeypatch.setattr(Trainer, "train_step", real_step)


def test_resume_after_interruption_ends_bit_identical(builder_unet, tmp_path, monkeypatch):
    path = write(tmp_path, ESD)
    info = run(path, tmp_path / "straight")
    assert info["status"] == "completed" and info["steps_done"] == 4
    straight = unet_weights(tmp_path / "straight")

    # Kill the run during step 4 (after the step-2 checkpoint was written).
    interrupted_run(monkeypatch, path, tmp_path / "killed", at_step=3)
    cache_dir = tmp_path / "killed" / "cache"
    cache = sorted(cache_dir.iterdir()) if cache_dir.is_dir() else []
    # ESD's default `trajectory: online` samples x_t from the current weights every step: no trajectory
    # cache, and the resumed run still ends bit-identical (the draws depend on (seed, step, id) only)
    assert not any("esd_trajectories" in p.name for p in cache)
    mtimes = [p.stat().st_mtime_ns for p in cache]
    assert [p.name for p in (tmp_path / "killed" / "checkpoints").iterdir()] == ["step_2"]
    with pytest.raises(EraseError, match="already has checkpoints"):
        run(path, tmp_path / "killed")
    info = run(path, tmp_path / "killed", resume="latest")
    resumed = unet_weights(tmp_path / "killed")
    assert set(resumed) == set(straight)
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
    # whatever was cached was reused, not regenerated
    assert [p.stat().st_mtime_ns for p in (sorted(cache_dir.iterdir()) if cache_dir.is_dir() else [])] == mtimes
    # and training really changed the model (the test could fail)
    base = builder_unet
    assert any(not torch.equal(straight[k], base[k]) for k in straight if "attn2" in k)
    assert all(torch.equal(straight[k], base[k]) for k in straight if "attn2" not in k)
    # outputs of a run
    run_dir = tmp_path / "straight"
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["train"]["steps"] == 4 and saved["params"]["train"] == "auto"
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["method"] == "esd" and meta["params"]["set"] == "xattn" and meta["peak_memory"]["bytes"] > 0
    # the prompts actually trained on (templates applied, each once), for the model card
    assert meta["forget_prompts"] == ["a handwritten three", "the number three", "a handwritten 3", "the number 3"]
    assert len(meta["sample_weights"]) == 4 and any(abs(s["mean_weight"] - 1) > 1e-3 for s in meta["sample_weights"])
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(run_dir / "model", safety_checker=None)
    k = next(k for k in straight if "attn2.to_k" in k)
    assert torch.equal(dict(pipe.unet.named_parameters())[k.removesuffix("")], straight[k])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ev = EventAccumulator(str(next((run_dir / "logs").rglob("events.out.tfevents.*")).parent))
    ev.Reload()
    assert {"train/loss", "train/lr", "loreun/max_weight"} <= set(ev.Tags()["scalars"])
    assert "loreun/weights" in ev.Tags()["histograms"]
    assert "loreun/sample_weights/text_summary" in ev.Tags()["tensors"]


@pytest.fixture
def builder_unet(tiny_pipeline) -> dict:
    """The UNet weights a `model: builder:tiny` run starts from."""
    return {k: v.detach() for k, v in tiny_pipeline.unet.state_dict().items()}


def test_two_processes_match_one_process(builder_unet, tmp_path):
    # ESD's default trajectory: online (each rank samples its half of the batch with the current weights).
    # SGD, so a float32 rounding difference in a gradient moves a weight by lr x that difference;
    # Adam divides by sqrt(v) and can turn the rounding of a near-zero gradient into an lr-sized step.
    cfg = dict(ESD, train={**ESD["train"], "steps": 3, "checkpoint_every": 0, "optimizer": "sgd", "lr": 0.5})
    path = write(tmp_path, cfg)
    run(path, tmp_path / "one")
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "erase", "train", "--config", str(path), "--out", str(tmp_path / "two")]
    for _ in range(2):  # one retry of the LAUNCH (a start-up abort of torch's agent), never of the assertions
        proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
        if proc.returncode == 0:
            break
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((tmp_path / "two" / "run.json").read_text())
    assert meta["num_processes"] == 2 and meta["outputs"]["ranks_identical"] is True
    # the UNet went through accelerator.prepare: DDP's all-reduce, not a hand-written one
    assert meta["distributed"] == {"type": "MULTI_CPU", "engine": "ddp", "num_processes": 2,
                                   "wrappers": {"unet": "DistributedDataParallel"}}
    one, two = unet_weights(tmp_path / "one"), unet_weights(tmp_path / "two")
    base = builder_unet
    # Compare the UPDATES in float64. Same global batch, same draws: only the order of float32
    # reductions differs, which changes a gradient by a relative O(n * 2^-24) for n summands (n <
    # 10^4 here); over 3 SGD steps that stays below 1e-3 of the update. A real divergence (another
    # sample, draw or weight on one rank) changes the update by O(1) of itself.
    moved = max((one[k].double() - base[k].double()).abs().max().item() for k in one)
    diff = max((one[k].double() - two[k].double()).abs().max().item() for k in one)
    assert moved > 1e-4  # the comparison is not trivially true
    assert diff <= 1e-3 * moved, (diff, moved)


def test_nan_loss_stops_naming_the_step(tmp_path):
    cfg = dict(ESD, train={"steps": 5, "batch_size": 2, "lr": 1.0e30, "optimizer": "sgd", "max_grad_norm": None})
    path = write(tmp_path, cfg)
    with pytest.raises(EraseError, match=r"step [2-5]: loss is (nan|inf)"):
        run(path, tmp_path / "nan")
    meta = json.loads((tmp_path / "nan" / "run.json").read_text())
    assert meta["status"] == "failed" and "NaN/inf" in meta["metrics"]["error"]
    assert not (tmp_path / "nan" / "model").exists()


@pytest.mark.parametrize("override, message", [
    ("train.lrr=1", "run.yaml: train.lrr: unknown key (known: "),
    ("train.batch_size=3", "train.batch_size: 3 is not divisible by gradient_accumulation_steps=2"),
    ("method=esdx", "unknown method 'esdx'"),
    ("params.train=attn", "params.train: unknown parameter set 'attn'"),
    ("weighting.kind=loreun", "weighting.kind: expected one of uniform, dynamic, static"),
    ("model=/nonexistent/folder", "/nonexistent/folder: no such folder or file"),
])
def test_bad_config_is_a_one_line_error(tmp_path, capsys, override, message):
    cfg = dict(ESD, train={**ESD["train"], "gradient_accumulation_steps": 2})
    path = write(tmp_path, cfg)
    code = cli_main(["train", "--config", str(path), "--out", str(tmp_path / "r"), override])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err


def test_dry_run_at_sd15_size_selects_parameters(tmp_path, capsys):
    path = write(tmp_path, dict(ESD, model="builder:sd15", objective={"variant": "u"}, params={"exclude": ["time_embedding", "conv_out"]}))
    assert cli_main(["train", "--config", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "trained parameter set: noxattn" in out and "GiB" in out
    unet_line = next(line for line in out.splitlines() if line.strip().startswith("unet"))
    trainable, total = (int(x.replace(",", "")) for x in unet_line.split("trainable")[1].split("/"))
    assert total == 859_520_964 and 700_000_000 < trainable < total  # ESD-u: everything but attn2
    assert not (tmp_path / "runs").exists()


def test_dry_run_prints_the_official_ablation_and_advunlearn_sets(tmp_path, capsys):
    """Concept ablation's `cross-attn` (attn2.to_k/to_v) on SD-1.5: 16 blocks x 2 x 768 x width."""
    anchor = {"prompts": ["a cat"]}
    path = write(tmp_path, dict(ESD, model="builder:sd15", method="ablation", objective={},
                                data={**ESD["data"], "anchor": anchor}))
    assert cli_main(["train", "--config", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "trained parameter set: xattn_kv" in out and "32 tensors: attn2.to_k.weight, attn2.to_v.weight" in out
    unet_line = next(line for line in out.splitlines() if line.strip().startswith("unet"))
    assert int(unet_line.split("trainable")[1].split("/")[0].replace(",", "")) == 2 * 768 * (5 * 320 + 5 * 640 + 6 * 1280)
    # AdvUnlearn's text_encoder_full: every text-encoder weight but the token and position embeddings
    path = write(tmp_path, dict(ESD, model="builder:sd15", method="advunlearn", objective={}), "adv.yaml")
    assert cli_main(["train", "--config", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    te = next(line for line in out.splitlines() if line.strip().startswith("text_encoder"))
    trainable, total = (int(x.replace(",", "")) for x in te.split("trainable")[1].split("/"))
    assert "trained parameter set: text_encoder_layers" in out and total - trainable == 49408 * 768 + 77 * 768


def test_mixed_precision_unset_is_the_launchers_and_report_to(tmp_path, monkeypatch):
    """train.mixed_precision unset = the launcher's choice; an explicit value wins; report_to picks the tracker."""
    cfg = dict(ESD, weighting={"kind": "uniform"}, train={"steps": 1, "batch_size": 1, "lr": 1.0e-3})
    path = write(tmp_path, cfg)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what `accelerate launch --mixed_precision bf16` sets
    info = run(path, tmp_path / "launcher", "train.report_to=none")
    assert (info["mixed_precision"], info["mixed_precision_source"]) == ("bf16", "launcher")
    assert not list((tmp_path / "launcher").rglob("events.out.tfevents.*"))
    info = run(path, tmp_path / "config", 'train.mixed_precision="no"')  # quoted: YAML reads a bare no as false
    assert (info["mixed_precision"], info["mixed_precision_source"]) == ("no", "config")
    assert list((tmp_path / "config" / "logs").rglob("events.out.tfevents.*"))


@pytest.mark.parametrize("path", sorted(p.relative_to(data_path("configs").parent).as_posix() for p in data_path("configs").rglob("*.yaml")
                                        if p.parent.name != "accelerate"))  # accelerate launch configs, not recipes
def test_shipped_configs_dry_run(path, capsys):  # `configs/...` means the shipped recipes from any directory
    from erase.edit.registry import is_edit_config

    if is_edit_config(data_path(path)):  # `erase edit` recipes: train refuses them, naming the right command
        assert cli_main(["train", "--config", path, "--dry-run"]) == 2
        assert "run `erase edit --config" in capsys.readouterr().err
        return
    assert cli_main(["train", "--config", path, "--dry-run"]) == 0, capsys.readouterr().err
    assert "trainable" in capsys.readouterr().out


def test_kill_9_then_resume_matches_uninterrupted(builder_unet, tmp_path):
    """A real SIGKILL mid-run (no clean-up of any kind), then `--resume latest`: same final weights."""
    import signal
    import time

    cfg = {**ESD, "train": {**ESD["train"], "steps": 30, "checkpoint_every": 3, "checkpoints_total_limit": 2}}
    path = write(tmp_path, cfg)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "erase", "train", "--config", str(path)]
    subprocess.run([*cmd, "--out", str(tmp_path / "straight")], env=env, check=True, capture_output=True, timeout=600)
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, "--out", str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step_9").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "model").exists()
    r = subprocess.run([*cmd, "--out", str(killed), "--resume", "latest"], check=False, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    straight, resumed = unet_weights(tmp_path / "straight"), unet_weights(killed)
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
    assert any(not torch.equal(straight[k], v) for k, v in builder_unet.items() if "attn2" in k)


def test_objective_state_survives_resume(tmp_path, monkeypatch):
    """AdvUnlearn warm-starts each attack from its latest adversarial token: that state is saved
    in checkpoints, so a resumed run ends exactly like an uninterrupted one."""
    cfg = {**ESD, "method": "advunlearn", "params": {"train": "text_encoder"},
           "objective": {"eta": 1.0, "ddim_steps": 3, "attack_steps": 2, "attack_every": 1, "warmup_steps": 0,
                         "attack_init": "latest", "gamma": 0.0}}
    path = write(tmp_path, cfg)
    run(path, tmp_path / "straight")
    interrupted_run(monkeypatch, path, tmp_path / "killed", at_step=3)
    assert (tmp_path / "killed" / "checkpoints" / "step_2" / "objective_rank0.safetensors").is_file()
    run(path, tmp_path / "killed", resume="latest")

    def text_weights(d):
        return load_file(str(d / "model" / "text_encoder" / "model.safetensors"))

    a, b = text_weights(tmp_path / "straight"), text_weights(tmp_path / "killed")
    assert all(torch.equal(a[k], b[k]) for k in a)
