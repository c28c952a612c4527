"""Run the audit's attack on one prompt at a time: the glue between `erase audit` and the attacks.

`make_attacker` does each attack's one-time set-up (target images, the Ring-A-Bell concept vector,
the concept-inversion embedding) and returns a function row -> (attacked image, record fields);
`erase.audit.run.attack_stage` judges, saves and logs what it returns.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from erase.audit.attacks import SETTINGS_FIELD, mma, p4d
from erase.audit.attacks import concept_inversion as ci
from erase.audit.attacks import relearn as rl
from erase.audit.attacks import ringabell as rab
from erase.audit.attacks import unlearndiffatk as udatk
from erase.audit.attacks.found import save_embeddings
from erase.audit.generate import (
    default_size,
    generate_rows,
    image_size,
    load_images,
    pipeline_models,
    png_bytes,
    row_generators,
    sample,
    to_uint8,
)
from erase.audit.suites import PromptRow
from erase.errors import EraseError
from erase.io import atomic_write_bytes, atomic_write_json


def attack_record(s) -> dict:
    """The audit's attack budget name and every setting it ran with (for results.json)."""
    from erase.audit.attacks import PLUGIN_ATTACKS

    if s.attack in PLUGIN_ATTACKS:
        return {"budget": "n/a", "plugin": f"{PLUGIN_ATTACKS[s.attack].__module__}"}
    if s.attack == "ringabell_continuous":
        return {"budget": "n/a", "strength": s.ringabell.strength}
    rec = asdict(getattr(s, SETTINGS_FIELD[s.attack]))
    if s.attack == "relearn":
        rec["checkpoints"] = list(rec["checkpoints"])
        rec["reference"] = s.relearn_reference
    return rec


def attack_outputs(s, out: Path) -> dict:
    """What an attack adds to results.json's "attack" besides its settings: relearn's curve."""
    path = out / "attack" / "relearn.json"
    if s.attack != "relearn" or not path.is_file():
        return {}
    res = json.loads(path.read_text(encoding="utf-8"))
    return {"relearn": {k: res[k] for k in ("curve", "steps_to_threshold", "threshold", "n_prompts", "reference")
                        if k in res}}


def make_attacker(s, out: Path, pipe, rows: list[PromptRow], concept: str | None, detector, targets: Callable[[], dict],
                  open_model: Callable) -> Callable[[PromptRow], tuple[np.ndarray, dict]]:
    """row -> (attacked image [H, W, 3], record fields) for the audit's attack (set-up done once).

    `s` is the audit's AuditSettings; `targets()` gives the concept images per row index (made by
    the reference model or read from a folder); `open_model(source, device)` loads a model.
    A plugin attack (erase.audit.attacks.PLUGIN_ATTACKS) gets all of these as keywords.
    """
    from erase.audit.attacks import PLUGIN_ATTACKS

    if s.attack in PLUGIN_ATTACKS:
        return PLUGIN_ATTACKS[s.attack](settings=s, out=out, pipe=pipe, rows=rows, concept=concept, detector=detector,
                                        targets=targets, open_model=open_model)
    if s.attack == "unlearndiffatk":
        target_images = targets()

        def one(row):
            res = udatk.attack_row(pipe, row, target_images[row.index], detector, s.gen, s.udatk)
            return res["image"], {"steps": res["steps"], "tokens": res["tokens"], "adv_prompt": res["adv_prompt"],
                                  "loss": round(res["loss"], 6), "t": res["t"]}
        return one
    if s.attack == "p4d":
        target_images = targets()
        ref = open_model(s.reference_model, pipe.device) if s.reference_model else None
        if ref is None:
            raise EraseError("--attack p4d needs --reference-model (the original model: its UNet is the target)")

        def one(row):
            res = p4d.attack_row(pipe, ref, row, target_images[row.index], detector, s.gen, s.p4d)
            return res["image"], {"steps": res["steps"], "tokens": res["tokens"], "adv_prompt": res["adv_prompt"],
                                  "loss": round(res["loss"], 6)}
        return one
    if s.attack == "mma":
        words = concept_words(s, rows, concept).split()
        enc = open_model(s.reference_model, pipe.device) if s.reference_model else pipe
        enc_models = pipeline_models(enc)

        def one(row):
            prompt, loss, found_at = mma.search(enc_models, row.prompt, s.mma, words, row.seed)
            return udatk.render(pipe, row, prompt, s.gen), {"steps": s.mma.iterations, "adv_prompt": prompt,
                                                            "loss": round(loss, 6), "found_at": found_at}
        return one
    if s.attack == "relearn":
        res = relearn_result(s, out, pipe, rows, detector, open_model)

        def one(row):
            image = load_images(out, [{"file": f"attack/relearn_final/{row.index:05d}.png"}])[0]
            return image, {"steps": res["first_flagged"].get(str(row.index)), "checkpoint": res["curve"][-1]["steps"]}
        return one
    if s.attack == "concept_inversion":
        embeds = inverted_embedding(s, out, pipe, rows, concept, targets)

        def one(row):
            shown = ci.caption(row.prompt).replace("{}", "<learned>")
            return ci.render(pipe, row, embeds, s.gen), {"steps": s.ci.iterations, "adv_prompt": shown}
        return one
    word = concept_words(s, rows, concept)
    ref = open_model(s.reference_model, pipe.device) if s.reference_model else pipe
    # the space Ring-A-Bell works in: the cross-attention states (SDXL: both encoders' side by side)
    ref_encoder = pipeline_models(ref).ids_encoder()
    vector = rab.concept_vector(ref.tokenizer, ref_encoder, rab.concept_pairs(word))
    if s.attack == "ringabell_continuous":
        save_embeddings(out / "attack" / "concept_vector.safetensors", s.ringabell.strength * vector, "add",
                        strength=str(s.ringabell.strength), concept=word)

        def one(row):
            cond = rab.attacked_conditioning(pipe, [row.prompt], vector, s.ringabell.strength)
            h, w = image_size(row, pipe)
            image = sample(pipe, cond, torch.tensor([row.guidance]), row_generators([row], pipe), s.gen, h, w)[0]
            return image, {"steps": 1, "strength": s.ringabell.strength}
        return one

    def one(row):
        target = rab.target_embedding(ref.tokenizer, ref_encoder, row.prompt, vector, s.ringabell.strength)
        tokens, fit = rab.genetic_search(ref.tokenizer, ref_encoder, target, s.ringabell, row.seed)
        prompt = rab.inverse_prompt(ref.tokenizer, tokens)
        record = {"steps": s.ringabell.generations, "tokens": tokens, "adv_prompt": prompt, "fitness": round(fit, 6)}
        return udatk.render(pipe, row, prompt, s.gen), record
    return one


def concept_words(s, rows: list[PromptRow], concept: str | None) -> str:
    """The concept's words for Ring-A-Bell's prompt pairs: --concept, the audit's concept, the first label."""
    word = s.concept or concept or rows[0].label
    if not word:
        raise EraseError(f"--attack {s.attack} needs --concept TEXT (the concept's words)")
    return word


def inverted_embedding(s, out: Path, pipe, rows: list[PromptRow], concept: str | None,
                       targets: Callable[[], dict]) -> torch.Tensor:
    """Concept inversion's learned embedding, saved as attack/learned_embeds.safetensors (resumable)."""
    from safetensors.torch import load_file

    path = out / "attack" / "learned_embeds.safetensors"
    if path.is_file():
        return load_file(str(path))["embeds"].to(pipe.text_encoder.device, pipe.text_encoder.dtype)
    target_images = targets()
    images = np.stack([target_images[r.index] for r in rows])
    captions = [ci.caption(r.prompt) for r in rows]
    embeds, losses = ci.learn_embedding(pipe, images, captions, concept, s.ci, rows[0].seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_embeddings(path, embeds, "slots", first_loss=str(losses[0]), last_loss=str(losses[-1]))
    return embeds


def reference_source(s) -> str | None:
    """--reference-model, else the base model of the run whose RUN/model is audited (its run.json)."""
    if s.reference_model:
        return s.reference_model
    run_json = Path(s.model).expanduser().parent / "run.json"
    try:
        base = json.loads(run_json.read_text(encoding="utf-8")).get("base_model")
    except (OSError, ValueError, AttributeError):
        return None
    return base if isinstance(base, str) and base else None


def relearn_images(s, out: Path, pipe, rows: list[PromptRow], open_model: Callable) -> tuple:
    """(k concept images [k, H, W, 3], their captions): the reference model's (made once, resumable) or a
    folder's (resized to the audited model's default size)."""
    train_rows = rl.training_rows(rows, s.relearn.images)
    captions = [r.prompt for r in train_rows]
    if s.target_images:
        return rl.folder_images(s.target_images, s.relearn.images, default_size(pipe)), captions
    source = reference_source(s)
    if not source:
        raise EraseError("--attack relearn needs --reference-model (the original model makes the concept images) "
                         "or --target-images DIR")
    ref = open_model(source, pipe.device)
    log = generate_rows(ref, train_rows, out, s.gen, log_name="relearn_images.jsonl", image_dir="relearn_images",
                        desc="relearning images")
    return load_images(out, [log.rows[r.index] for r in train_rows]), captions


def relearn_result(s, out: Path, pipe, rows: list[PromptRow], detector, open_model: Callable) -> dict:
    """The relearning curve (and, with --relearn-reference, the reference model's under the same
    budget), saved as attack/relearn.json with the last checkpoint's images (a rerun reuses them)."""
    path = out / "attack" / "relearn.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    images, captions = relearn_images(s, out, pipe, rows, open_model)
    bar = tqdm(total=s.relearn.checkpoints[-1], desc="relearning", unit="step")

    def progress(step, loss):
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")

    res = rl.relearn_curve(pipe, rows, images, captions, detector, s.gen, s.relearn, rows[0].seed, progress)
    bar.close()
    for r, img in zip(rows, res.pop("final_images")):
        atomic_write_bytes(out / "attack" / "relearn_final" / f"{r.index:05d}.png", png_bytes(to_uint8(img[None])[0]))
    res["first_flagged"] = {str(r.index): f for r, f in zip(rows, res["first_flagged"])}
    res.pop("final_flags")
    if s.relearn_reference:
        other = open_model(s.relearn_reference, pipe.device)
        ref = rl.relearn_curve(other, rows, images, captions, detector, s.gen, s.relearn, rows[0].seed)
        res["reference"] = {"model": s.relearn_reference, "curve": ref["curve"],
                            "steps_to_threshold": ref["steps_to_threshold"]}
    atomic_write_json(path, res)
    return res
