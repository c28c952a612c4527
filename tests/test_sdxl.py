"""SDXL end to end on the tiny random SDXL pipeline (two text encoders, pooled embeddings, size ids):
conditioning, generation equal to vanilla StableDiffusionXLPipeline, every objective + LoReUn + RUM
training (2 steps each), and `erase audit` with UnlearnDiffAtk and concept inversion on the result.

`train_every_method` and `audit_with_attacks` are shared with tests/test_sd2.py.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from diffusers import DDIMScheduler

from erase.audit.generate import GenSettings, sample
from erase.cli import main
from erase.models.builder import build_pipeline
from erase.models.core import Cond, Models
from erase.models.loading import describe_pipeline, load_pipeline

# Plain gradient steps, small enough to lower every method's forget loss on its first batch on the tiny
# models. (Adam's first steps move every weight by about lr whatever its gradient: on ESD-u's small loss,
# over every UNet weight but cross-attention, that raised it at lr 1e-3 and 1e-4.)
OPTIMIZER = {"optimizer": "sgd", "lr": 0.1}
FORGET, RETAIN, ANCHOR = ["a handwritten three"], ["a handwritten seven"], ["a handwritten eight"]

# method name -> (objective options, extra run-config keys): the smallest run of each
METHODS: dict[str, tuple[dict, dict]] = {
    "esd-x": ({"variant": "x", "ddim_steps": 2}, {}),
    "esd-u": ({"variant": "u", "ddim_steps": 2}, {}),
    "salun": ({"alpha": 0.5, "saliency_batch_size": 1}, {}),
    "erasediff": ({"inner_steps": 1}, {}),
    "ablation": ({"prior_weight": 1.0}, {}),
    "advunlearn": ({"ddim_steps": 2, "attack_steps": 1, "warmup_steps": 0, "gamma": 0.3}, {}),
    "ga": ({}, {}),
    "neggrad+": ({}, {}),
    "loreun-dynamic": ({"ddim_steps": 2}, {"weighting": {"kind": "dynamic", "tau": 0.05}}),
    "loreun-static": ({"ddim_steps": 2}, {"weighting": {"kind": "static"}}),
    "rum": ({"ddim_steps": 2}, {"rum": {"score": "loss", "n_timesteps": 1, "groups": [{"steps": 1}, {"steps": 1}]}}),
}


def run_config(model: str, name: str) -> dict:
    options, extra = METHODS[name]
    method = "esd" if name.startswith(("esd", "loreun", "rum")) else name
    data = {"forget": {"prompts": FORGET, "samples_per_prompt": 2}, "retain": {"prompts": RETAIN},
            "generate_steps": 2, "guidance": 3.0}
    if method == "ablation":
        data["anchor"] = {"prompts": ANCHOR}
    return {"model": model, "method": method, "objective": options, "data": data,
            "train": {"steps": 2, "batch_size": 2, **OPTIMIZER, "seed": 0}, **extra}


def forget_loss_moved(cfg_path: Path, run: Path) -> dict:
    """The method's forget loss (`Losses.forget`, what the trainer minimises; mean over the first step's
    batch, the same draws, no gradient) under the base weights and under the run's trained weights, and
    which weights the run changed: of the trained set, and of the rest (must be none)."""
    from erase.config import load_config
    from erase.train.config import RunConfig, resolve_data_paths
    from erase.train.params import trainable_modules
    from erase.train.trainer import Trainer

    tr = Trainer(resolve_data_paths(load_config(RunConfig, cfg_path, []), cfg_path), run, str(cfg_path))
    with contextlib.redirect_stdout(io.StringIO()):
        tr.build()  # the run's own caches (RUN/cache), the base weights
    batch = tr.micro_batch(0, 0)

    def forget() -> float:
        with torch.no_grad():
            return float(tr.objective.losses(tr.models, batch).forget.mean())

    out: dict = {"before": forget(), "changed": [], "outside": []}
    trained = load_pipeline(run / "model")
    for name, module in trainable_modules(tr.pipe).items():
        theirs = getattr(trained, name).state_dict()
        for n, p in module.named_parameters():
            if not torch.equal(p.detach(), theirs[n]):
                out["changed" if p.requires_grad else "outside"].append(f"{name}.{n}")
        module.load_state_dict(theirs)
    out["after"] = forget()
    return out


def train_every_method(model: str, tmp_path: Path) -> dict[str, Path]:
    """Train each objective, LoReUn (dynamic, static) and RUM for 2 steps; each must complete, change
    weights of its trained set only, and lower its forget loss on its first batch; return the run folders."""
    runs = {}
    for name in METHODS:
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(yaml.safe_dump(run_config(model, name)))
        out = tmp_path / "runs" / name
        assert main(["train", "--config", str(cfg), "--out", str(out)]) == 0, name
        info = json.loads((out / "run.json").read_text())
        assert info["status"] == "completed", (name, info.get("status"))
        moved = forget_loss_moved(cfg, out)
        assert moved["changed"] and not moved["outside"], (name, moved["changed"][:3], moved["outside"][:3])
        assert moved["after"] < moved["before"], (name, moved["before"], moved["after"])
        runs[name] = out
    return runs


def audit_with_attacks(model: Path, reference: str, tmp_path: Path) -> dict[str, dict]:
    """`erase audit` (generation, the digits judge) with UnlearnDiffAtk, concept inversion and Ring-A-Bell,
    quick budgets cut to a step or two."""
    results = {}
    for attack, flags in (("unlearndiffatk", ["--attack-steps", "1", "--attack-timesteps", "1"]),
                          ("concept_inversion", ["--attack-steps", "2"]),
                          ("ringabell", ["--ringabell-generations", "2", "--ringabell-population", "4"])):
        out = tmp_path / f"audit-{attack}"
        args = ["audit", "--model", str(model), "--suite", "prompts/digits/digit3.csv", "--limit", "1", "--steps", "2",
                "--out", str(out), "--detector", "digits:three", "--concept", "three", "--attack", attack,
                "--reference-model", reference, "--attack-budget", "quick", *flags]
        assert main(args) == 0, attack
        results[attack] = check_attack_content(out, attack, {"unlearndiffatk": 1, "concept_inversion": 2, "ringabell": 2}[attack])
    return results


def check_attack_content(out: Path, attack: str, steps: int) -> dict:
    """An audit with one attacked prompt did attack it: the record says the attack ran for its budget
    (not a prompt flagged before any attack), the adversarial image is a real, new image of the
    generation's size, judged, and the metrics count exactly what the record says; plus each attack's
    own output (adversarial tokens, the learned embedding, the evolved prompt). Returns results.json."""
    from PIL import Image
    from safetensors import safe_open

    res = json.loads((out / "results.json").read_text())
    (rec,) = [json.loads(line) for line in (out / "attack.jsonl").read_text().splitlines()]
    (gen,) = [json.loads(line) for line in (out / "images.jsonl").read_text().splitlines()]
    assert rec["pre"] is False and rec["steps"] == steps, (attack, rec)
    adv = np.asarray(Image.open(out / rec["file"]))
    plain = np.asarray(Image.open(out / gen["file"]))
    assert adv.shape == plain.shape and adv.ndim == 3 and adv.std() > 0, (attack, adv.shape)
    assert np.abs(adv.astype(int) - plain.astype(int)).max() > 0, f"{attack}: the attacked image is the plain one"
    assert {"flag", "pred", "labels"} <= set(rec["detection"]), rec["detection"]
    m = res["metrics"]
    assert m["n_attacked"] == 1 and m["pre_asr"] == 0.0 and m["asr"] == float(rec["success"]), (attack, m)
    assert m["attack_successes"] == int(rec["success"]), m
    if attack == "unlearndiffatk":
        assert rec["tokens"] and np.isfinite(rec["loss"]) and rec["adv_prompt"] != gen["prompt"], rec
    elif attack == "concept_inversion":
        assert "<learned>" in rec["adv_prompt"], rec
        with safe_open(str(out / "attack" / "learned_embeds.safetensors"), "pt") as f:
            embeds, meta = f.get_tensor("embeds"), f.metadata()
        assert embeds.ndim == 2 and torch.isfinite(embeds).all() and embeds.abs().sum() > 0, embeds.shape
        assert float(meta["last_loss"]) != float(meta["first_loss"]), meta  # the embedding was optimised
    else:
        assert rec["tokens"] and rec["adv_prompt"] and np.isfinite(rec["fitness"]), rec
    return res


def vanilla_matches(pipe, prompts: list[str], seeds: list[int], steps: int = 3, guidance: float = 4.0) -> float:
    """Max |erase's generation - the vanilla pipeline's| for the same seeds, DDIM (images in [0, 1])."""
    vanilla = type(pipe)(**{**pipe.components, "scheduler": DDIMScheduler.from_config(pipe.scheduler.config)})
    vanilla.set_progress_bar_config(disable=True)
    want = vanilla(prompts, num_inference_steps=steps, guidance_scale=guidance, output_type="np",
                   generator=[torch.Generator().manual_seed(s) for s in seeds]).images
    models = Models.from_pipeline(pipe)
    size = int(pipe.unet.config.sample_size) * pipe.vae_scale_factor
    got = sample(pipe, models.encode(prompts), torch.full((len(prompts),), guidance),
                 [torch.Generator().manual_seed(s) for s in seeds], GenSettings(steps=steps), size, size)
    return float(np.abs(got - want).max())


@pytest.fixture(scope="module")
def xl():
    return build_pipeline("tiny-sdxl")


def test_sdxl_conditioning_is_the_pipelines(xl):
    models = Models.from_pipeline(xl)
    cond = models.encode(["a red three", "a cat"])
    assert isinstance(cond, Cond) and cond.embeds.shape == (2, 77, 96) and cond.pooled.shape == (2, 64)
    want, _, pooled, _ = xl.encode_prompt(["a red three", "a cat"], device="cpu", do_classifier_free_guidance=False)
    torch.testing.assert_close(cond.embeds, want, rtol=0, atol=0)
    torch.testing.assert_close(cond.pooled, pooled, rtol=0, atol=0)
    # no negative prompt: the pipeline's unconditional input is zeros (force_zeros_for_empty_prompt)
    unc = models.uncond(2)
    assert not unc.embeds.any() and not unc.pooled.any()
    both = torch.cat([unc, cond])
    assert len(both) == 4 and both.embeds.shape[0] == both.pooled.shape[0] == 4
    # soft-prompt slots go into both encoders: a tensor of both widths side by side
    slots = models.token_embeddings(torch.tensor([1000, 2000]))
    assert slots.shape == (2, 96)
    with_slots = models.encode(["a cat"], 2, slots)
    plain = models.encode(["a cat"])
    assert not torch.equal(with_slots.embeds[:, :, :32], plain.embeds[:, :, :32])
    assert not torch.equal(with_slots.embeds[:, :, 32:], plain.embeds[:, :, 32:])
    # the slots holding the tokens' own rows reproduce the prompt with those tokens in front
    words = xl.tokenizer.decode([1000, 2000])
    torch.testing.assert_close(with_slots.embeds, models.encode([f"{words} a cat"]).embeds)
    assert "SDXL" in describe_pipeline(xl) and "text_time" in describe_pipeline(xl)
    # Ring-A-Bell's space: CLIP token ids through both encoders = the cross-attention states
    ids = models.tokenize(["a red three", "a cat"])
    torch.testing.assert_close(models.ids_encoder()(ids)[0], cond.embeds, rtol=0, atol=0)


def test_sdxl_generation_matches_vanilla_pipeline(xl):
    assert vanilla_matches(xl, ["a red three", "a handwritten seven"], [3, 11]) == 0.0


def test_sdxl_folder_loads(xl, tmp_path):
    xl.save_pretrained(tmp_path / "xl")
    pipe = load_pipeline(tmp_path / "xl")
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    for name in ("unet", "text_encoder", "text_encoder_2", "vae"):
        a, b = getattr(xl, name).state_dict(), getattr(pipe, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_sdxl_trains_with_every_method_and_audits(tmp_path):
    runs = train_every_method("builder:tiny-sdxl", tmp_path)
    base = build_pipeline("tiny-sdxl")
    erased = load_pipeline(runs["esd-x"] / "model")
    assert type(erased).__name__ == "StableDiffusionXLPipeline"
    changed = [n for n, p in erased.unet.named_parameters() if not torch.equal(p, base.unet.state_dict()[n])]
    assert changed and all("attn2" in n for n in changed)  # ESD-x: cross-attention only
    assert all(torch.equal(p, base.text_encoder_2.state_dict()[n]) for n, p in erased.text_encoder_2.named_parameters())
    adv = load_pipeline(runs["advunlearn"] / "model")
    assert any(not torch.equal(p, base.text_encoder.state_dict()[n]) for n, p in adv.text_encoder.named_parameters())
    base.save_pretrained(tmp_path / "original")
    audit_with_attacks(runs["esd-x"] / "model", str(tmp_path / "original"), tmp_path)


def test_sdxl_single_file_is_told_by_its_keys(xl, tmp_path):
    """An original-layout file with `conditioner.embedders.1` keys is SDXL: an SD-1 --config DIR is refused
    by name, and an SD-1 file with an SDXL --config DIR likewise (the loader never guesses)."""
    from safetensors.torch import save_file

    from erase.errors import EraseError

    xl_file, sd1_file = tmp_path / "xl.safetensors", tmp_path / "sd1.safetensors"
    save_file({"conditioner.embedders.1.model.positional_embedding": torch.zeros(77, 8)}, str(xl_file))
    save_file({"cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": torch.zeros(77, 8)},
              str(sd1_file))
    build_pipeline("tiny").save_pretrained(tmp_path / "sd1")
    xl.save_pretrained(tmp_path / "xl")
    with pytest.raises(EraseError, match="an SDXL checkpoint .* but --config .* describes a StableDiffusionPipeline"):
        load_pipeline(xl_file, config=tmp_path / "sd1")
    with pytest.raises(EraseError, match="an SD-1/2 checkpoint .* but --config .* describes a StableDiffusionXLPipeline"):
        load_pipeline(sd1_file, config=tmp_path / "xl")


def test_sdxl_hub_id_loads_from_the_local_cache(xl, tmp_path, monkeypatch):
    """An SDXL Hub id in the Hugging Face cache layout (refs/main -> snapshots/REV) loads offline as
    StableDiffusionXLPipeline, its class read from the repo's model_index.json."""
    import huggingface_hub.constants as hub_constants

    repo = tmp_path / "hub" / "models--someone--tiny-xl-base"
    rev = "0" * 40
    xl.save_pretrained(repo / "snapshots" / rev)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    pipe = load_pipeline("someone/tiny-xl-base")
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    assert all(torch.equal(p, xl.unet.state_dict()[n]) for n, p in pipe.unet.named_parameters())
