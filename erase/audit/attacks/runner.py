"""Run the audit's attack on one prompt at a time: the glue between `erase audit` and the attacks.

`make_attacker` does each attack's one-time set-up (target images, the Ring-A-Bell concept vector,
the concept-inversion embedding) and returns a function row -> (attacked image, record fields);
`erase.audit.run.attack_stage` judges, saves and logs what it returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from erase.audit.attacks import concept_inversion as ci
from erase.audit.attacks import ringabell as rab
from erase.audit.attacks import unlearndiffatk as udatk
from erase.audit.generate import image_size, pipeline_models, row_generators, sample
from erase.audit.suites import PromptRow
from erase.errors import EraseError
from erase.io import atomic_write_bytes


def attack_record(s) -> dict:
    """The audit's attack budget name and every setting it ran with (for results.json)."""
    from erase.audit.attacks import PLUGIN_ATTACKS

    if s.attack in PLUGIN_ATTACKS:
        return {"budget": "n/a", "plugin": f"{PLUGIN_ATTACKS[s.attack].__module__}"}
    if s.attack == "ringabell_continuous":
        return {"budget": "n/a", "strength": s.ringabell.strength}
    return asdict({"unlearndiffatk": s.udatk, "ringabell": s.ringabell, "concept_inversion": s.ci}[s.attack])


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
    from safetensors.torch import load_file, save

    path = out / "attack" / "learned_embeds.safetensors"
    if path.is_file():
        return load_file(str(path))["embeds"].to(pipe.text_encoder.device, pipe.text_encoder.dtype)
    target_images = targets()
    images = np.stack([target_images[r.index] for r in rows])
    captions = [ci.caption(r.prompt) for r in rows]
    embeds, losses = ci.learn_embedding(pipe, images, captions, concept, s.ci, rows[0].seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save({"embeds": embeds.float().cpu().contiguous()},
                                  metadata={"first_loss": str(losses[0]), "last_loss": str(losses[-1])}))
    return embeds
