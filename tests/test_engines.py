"""Accelerate's engines (erase/train/engines.py): the shipped launch configs, FSDP2 with 2 processes on
CPU/gloo against one process, a split audit against a one-process audit, and the per-GPU dry run."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from erase.cli import main as cli_main
from erase.config import load_config
from erase.train.config import RunConfig
from erase.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = str(Path(sys.executable).parent / "accelerate")
TWO_CPU = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no"]


def launch(args: list[str], out: Path, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """A 2-process CPU launch (gloo), with one retry of the LAUNCH: a start-up abort of torch's
    elastic agent happens now and then on this machine (docs: environment); the assertions run once.
    The retry starts from an empty `out`: a retry into the first attempt's outputs fails on them
    ("already has checkpoints") and its error replaces the first attempt's real one."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1",
           "PYTHONPATH": str(ROOT)}
    proc, errors = None, []
    for _ in range(2):
        shutil.rmtree(out, ignore_errors=True)
        proc = subprocess.run(TWO_CPU + args, check=False, env=env, capture_output=True, text=True, timeout=900, cwd=cwd)
        if proc.returncode == 0:
            break
        errors.append(proc.stderr[-3000:])
    proc.stderr = "\n--- next attempt ---\n".join(errors) or proc.stderr  # every attempt's error for the assertion
    return proc


def unet(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model" / "unet" / "diffusion_pytorch_model.safetensors"))


def text_encoder(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model" / "text_encoder" / "model.safetensors"))


def relative_gap(a: dict, b: dict, base: dict) -> tuple[float, float]:
    """(how far run a moved the weights, how far run b is from run a), max abs in float64."""
    moved = max((a[k].double() - base[k].double()).abs().max().item() for k in a)
    diff = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    return moved, diff


@pytest.mark.parametrize("name", ["ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"])
def test_launch_configs_resolve_through_accelerate(name, monkeypatch):
    """Each configs/accelerate file as `accelerate launch --config_file` reads it, down to the plugin
    the Accelerator builds from the launcher's environment. DeepSpeed itself needs a GPU (not run here)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    path = ROOT / "configs" / "accelerate" / f"{name}.yaml"
    args = launch_command_parser().parse_args(["--config_file", str(path), "-m", "erase", "train"])
    args, defaults, _ = _validate_launch_command(args)
    assert args.num_processes == 8 and args.mixed_precision == "bf16"
    if name.startswith("deepspeed"):
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)  # as launch_command sets it
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    for key, value in env.items():
        if key.startswith(("ACCELERATE_", "FSDP_")):
            monkeypatch.setenv(key, value)
    if name == "fsdp":
        plugin = FullyShardedDataParallelPlugin()
        assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
        assert plugin.state_dict_type.name == "SHARDED_STATE_DICT" and plugin.auto_wrap_policy is not None
    elif name.startswith("deepspeed"):
        plugin = DeepSpeedPlugin()
        stage = int(name[-1])
        assert plugin.zero_stage == stage and plugin.deepspeed_config["zero_optimization"]["stage"] == stage
        if stage == 3:  # the export's full state dict needs the gathered 16-bit weights
            assert plugin.deepspeed_config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    else:
        assert env.get("ACCELERATE_USE_FSDP", "false") == "false" and "ACCELERATE_USE_DEEPSPEED" not in env


ESD_U = {
    # trajectory: online (the default): each step samples x_t with the sharded UNet (3 guided passes)
    "model": "builder:tiny", "method": "esd", "objective": {"variant": "u", "eta": 1.0, "ddim_steps": 3},
    "data": {"forget": {"prompts": ["three", "3"], "templates": ["a handwritten {}", "the number {}"]}},
    "weighting": {"kind": "uniform"},
    # SGD: a float32 rounding difference moves a weight by lr x that difference (see test_trainer.py)
    "train": {"steps": 4, "batch_size": 4, "lr": 0.5, "optimizer": "sgd", "lr_scheduler": "constant",
              "checkpoint_every": 2, "seed": 3, "report_to": "none"},
}
ERASEDIFF = {
    "model": "builder:tiny", "method": "erasediff",
    "objective": {"mapping_prompts": ["a house"], "inner_steps": 2, "inner_lr": 1.0e-3, "lam": 1.0},
    "data": {"forget": {"prompts": ["three", "3"], "templates": ["a handwritten {}", "the number {}"]},
             "retain": {"prompts": ["a house", "a dog"]}, "generate_steps": 2},
    "weighting": {"kind": "uniform"},
    "train": {"steps": 2, "batch_size": 4, "lr": 0.5, "optimizer": "sgd", "lr_scheduler": "constant", "seed": 3,
              "report_to": "none"},
}

ADVUNLEARN = {
    # the text encoder's layers under FSDP2; the attack (2 steps on delta) averaged over the processes
    "model": "builder:tiny", "method": "advunlearn",
    "objective": {"ddim_steps": 3, "warmup_steps": 0, "attack_steps": 2, "trajectory": "online"},
    "data": {"forget": {"prompts": ["three", "3"], "templates": ["a handwritten {}", "the number {}"]},
             "retain": {"prompts": ["a house", "a dog"]}},
    "weighting": {"kind": "uniform"},
    "train": {"steps": 2, "batch_size": 4, "lr": 0.5, "optimizer": "sgd", "lr_scheduler": "constant", "seed": 3,
              "report_to": "none"},
}


@pytest.mark.slow
def test_fsdp2_two_processes_match_one_and_resume_exactly(tmp_path, tiny_pipeline):
    """accelerate's FSDP2 path on CPU (tests/fsdp2_cpu_run.py): the UNet fully_shard-ed over 2 gloo
    processes, ESD-u (the ORIGINAL model's values swapped into the shards for the target, a trained
    forward, one backward) and EraseDiff (an inner loop on the shards); sharded checkpoint, resume,
    export gathered on the main process; AdvUnlearn (the CLIP text encoder sharded, its attack fitted
    once over both processes' halves of the batch)."""
    base = {k: v.detach() for k, v in tiny_pipeline.unet.state_dict().items()}
    esd, ed, adv = tmp_path / "esd.yaml", tmp_path / "erasediff.yaml", tmp_path / "advunlearn.yaml"
    esd.write_text(yaml.safe_dump(ESD_U))
    ed.write_text(yaml.safe_dump(ERASEDIFF))
    adv.write_text(yaml.safe_dump(ADVUNLEARN))
    proc = launch([str(ROOT / "tests" / "fsdp2_cpu_run.py"), str(esd), str(tmp_path / "fsdp"), str(ed), str(adv)],
                  tmp_path / "fsdp")
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((tmp_path / "fsdp" / "straight" / "run.json").read_text())
    assert info["distributed"] == {"type": "FSDP", "engine": "fsdp", "num_processes": 2,
                                   "wrappers": {"unet": "FSDPUNet2DConditionModel"}}
    step2 = tmp_path / "fsdp" / "straight" / "checkpoints" / "step_2"
    assert (step2 / "pytorch_model_fsdp_0").is_dir() and not (step2 / "trainable.safetensors").exists()  # sharded
    straight, resumed = unet(tmp_path / "fsdp" / "straight"), unet(tmp_path / "fsdp" / "resumed")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)  # a resumed sharded run = uninterrupted
    for cfg, two in ((esd, tmp_path / "fsdp" / "straight"), (ed, tmp_path / "fsdp" / "more_0")):
        Trainer(load_config(RunConfig, cfg, []), tmp_path / f"one_{cfg.stem}", str(cfg)).run()
        moved, diff = relative_gap(unet(tmp_path / f"one_{cfg.stem}"), unet(two), base)
        assert moved > 1e-3  # the comparison is not trivially true
        # same global batch and draws: only float32 reduction order differs (see test_trainer.py)
        assert diff <= 1e-3 * moved, (cfg.stem, diff, moved)
    # ESD-u trains everything but cross-attention: the gathered export kept those untouched
    assert all(torch.equal(straight[k], base[k]) for k in straight if ".attn2." in k)
    # AdvUnlearn: each process fits the attack on its half of the batch, with the gradients averaged
    # every attack step, so both fit the one attack that one process fits on the whole batch. Without
    # that average the two runs train on different attacks and differ by O(0.1) of the update.
    info = json.loads((tmp_path / "fsdp" / "more_1" / "run.json").read_text())
    assert info["distributed"]["wrappers"] == {"text_encoder": "FSDPCLIPTextModel"}
    assert info["metrics"]["attacked"] == 1.0
    Trainer(load_config(RunConfig, adv, []), tmp_path / "one_adv", str(adv)).run()
    te_base = {k: v.detach() for k, v in tiny_pipeline.text_encoder.state_dict().items()}
    moved, diff = relative_gap(text_encoder(tmp_path / "one_adv"), text_encoder(tmp_path / "fsdp" / "more_1"), te_base)
    assert moved > 1e-4
    assert diff <= 1e-3 * moved, ("advunlearn", diff, moved)


@pytest.mark.slow
def test_audit_split_over_two_processes_equals_one(tmp_path):
    """Batches dealt round-robin (batch size 1: rows 0, 2 on one process, 1, 3 on the other): the same
    bytes as one process, one results.json and report from the main process, no part logs left."""
    args = ["--model", "zoo:digits", "--suite", "prompts/digits/digit3.csv", "--limit", "4", "--steps", "8",
            "--batch-size", "1", "--detector", "digits"]
    assert cli_main(["audit", *args, "--out", str(tmp_path / "one")]) == 0
    proc = launch(["-m", "erase", "audit", *args, "--out", str(tmp_path / "two")], tmp_path / "two")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("results.json") == 1  # the main process alone reports
    one, two = tmp_path / "one", tmp_path / "two"
    assert (one / "results.json").read_bytes() == (two / "results.json").read_bytes()
    images = sorted(p.name for p in (one / "images").iterdir())
    assert len(images) == 4 and images == sorted(p.name for p in (two / "images").iterdir())
    assert all((one / "images" / n).read_bytes() == (two / "images" / n).read_bytes() for n in images)
    assert not list(two.glob("*.part*"))
    assert (two / "images.jsonl").read_text() == (one / "images.jsonl").read_text()


def test_dry_run_per_gpu_estimates(capsys):
    """SD-1.5 ESD-u: DDP on N GPUs is one GPU's peak; FSDP2 and ZeRO-3 shard the trained UNet's weights,
    gradients and Adam states (1/N), ZeRO-2 gradients and states only."""
    from erase.train.dryrun import dry_run

    cfg = load_config(RunConfig, ROOT / "configs" / "sd15" / "esd_u_nudity.yaml", [])
    single = dry_run(cfg, "esd_u")
    per = {e: dry_run(cfg, "esd_u", num_gpus=8, engine=e)["per_gpu"] for e in ("ddp", "fsdp", "deepspeed_zero2")}
    assert per["ddp"]["peak"] == single["peak_bf16_batch1"]["peak"]
    assert per["fsdp"]["gradients_optimizer"] * 8 == pytest.approx(per["ddp"]["gradients_optimizer"], rel=1e-6)
    assert per["deepspeed_zero2"]["gradients_optimizer"] == per["fsdp"]["gradients_optimizer"]
    assert per["fsdp"]["peak"] < per["deepspeed_zero2"]["peak"] < per["ddp"]["peak"]
    assert per["fsdp"]["refused"] is None  # ESD-u (a partial set) runs under FSDP2, not under ZeRO-3
    assert "ZeRO-3" in dry_run(cfg, "esd_u", num_gpus=8, engine="deepspeed_zero3")["per_gpu"]["refused"]
    assert cli_main(["train", "--config", "configs/sdxl/esd_u_nudity.yaml", "--dry-run", "--num-gpus", "8",
                     "--engine", "fsdp"]) == 0
    assert "PER GPU on 8 GPUs under fsdp" in capsys.readouterr().out
    assert cli_main(["train", "--config", "configs/sd15/esd_u_nudity.yaml", "--num-gpus", "8"]) == 2
    assert "only with --dry-run" in capsys.readouterr().err


def test_online_esd_calls_the_unet_the_same_number_of_times_whatever_it_draws(setup_stub, make_batch, tiny_models):
    """Under FSDP2 every UNet forward is a collective, so a rank's call count must not depend on its
    draws (erase/train/engines.py): ESD's online trajectory runs all ddim_steps guided passes (one
    batch each) whatever position k the samples draw, then one target pass and one trained pass."""
    from erase.objectives.esd import Esd, EsdConfig

    models, pipe, _ = tiny_models("noxattn")
    esd = Esd(EsdConfig(variant="u", ddim_steps=4))
    esd.setup(models, setup_stub(["three", "3"]))
    calls = []
    hook = pipe.unet.register_forward_pre_hook(lambda module, args: calls.append(1))
    counts, draws = [], []
    try:
        for step in range(6):
            batch = make_batch(["three", "3"], step=step)
            calls.clear()
            esd.losses(models, batch)
            counts.append(len(calls))
            draws.append(tuple(batch.rng.randint(batch.forget_ids, 0, 4, stream="k").tolist()))
    finally:
        hook.remove()
    assert len({max(d) for d in draws}) > 1  # the draws reach different depths: the check can fail
    assert counts == [4 + 2] * 6, (counts, draws)


def test_fsdp2_wrap_classes_leave_out_absent_classes_and_the_input_embeddings_holder(tiny_pipeline):
    """accelerate's FSDP2 wrap (erase/train/engines.py, `wrap_classes`): CLIP lists CLIPVisionEmbeddings,
    which a text model lacks (accelerate refuses the run), and CLIPTextEmbeddings, which holds the token
    embedding accelerate shards on its own afterwards (fully_shard then fails on the DTensor weight)."""
    from erase.train.engines import wrap_classes

    te, unet = tiny_pipeline.text_encoder, tiny_pipeline.unet
    assert {"CLIPTextEmbeddings", "CLIPEncoderLayer", "CLIPVisionEmbeddings"} <= set(te._no_split_modules)
    assert wrap_classes(te, None) == ["CLIPEncoderLayer"]
    assert wrap_classes(te, ["CLIPTextEmbeddings", "CLIPEncoderLayer"]) == ["CLIPEncoderLayer"]  # the user's list too
    assert wrap_classes(te, ["CLIPEncoderLayer"]) is None  # nothing to change
    assert wrap_classes(unet, ["BasicTransformerBlock"]) is None  # a UNet has no input embedding
    present = {type(m).__name__ for m in unet.modules()}
    own = wrap_classes(unet, None)
    assert (own or unet._no_split_modules) == [n for n in unet._no_split_modules if n in present]
