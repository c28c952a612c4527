"""`erase bench edit`: how long a closed-form edit of N concepts takes on a real-size model.

The model is the real architecture with random weights (`erase.models.builder.build_pipeline`:
"sd15" = SD-1.5's 860M-parameter UNet and CLIP ViT-L; "sdxl" = SDXL-base's UNet and both text
encoders), built on the CPU; weights do not change the cost of an edit. Each of the N concepts is a
made-up artist name erased as the official UCE script erases art with its defaults (the name alone,
`--expand_prompts false`, guided to "art": trainscripts/uce_sd_erase.py:109, 139-140), with 10 preserve
prompts and the official keys (each prompt's last token).
`seconds` is the edit itself (text encoding, the closed form and every projection's update), not
the model's construction (reported apart).

`--ratios`: UCE at N = 1, 10 and 100, each against the time of one ESD-x step on the same model:
the frozen model's ESD target (conditional and unconditional predictions, no gradient), the trained
prediction with gradient, backward and an Adam update of every cross-attention weight, batch 1,
at the architecture's default resolution (erase/objectives/esd.py's `losses`, with x_t drawn at
random instead of read from a cached trajectory).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

PRESERVE = ("Claude Monet", "Rembrandt", "Andy Warhol", "a photo of a cat", "a city at night", "a bowl of fruit",
            "a portrait of a woman", "a mountain landscape", "a red car", "a cup of coffee")


def concept_names(n: int) -> list[str]:
    """N distinct made-up artist names (two syllable words each), deterministic."""
    syll = ["ka", "lo", "mi", "ren", "to", "va", "sel", "dor", "pa", "quin", "bri", "zu", "mo", "tes", "gar", "lin"]
    out = []
    for i in range(n):
        a, b, c, d = (i // 4096) % 16, (i // 256) % 16, (i // 16) % 16, i % 16
        out.append(f"{syll[a].title()}{syll[b]} {syll[c].title()}{syll[d]}")
    return out


def edit_set(n: int):
    from erase.edit.base import EditSet

    return EditSet(concept_names(n), ["art"] * n, list(range(n)), list(PRESERVE))


def time_uce(models, n: int, options: dict | None = None) -> tuple[float, dict]:
    """Seconds of one UCE edit of `n` concepts on `models` (its weights are changed), and its record."""
    from erase.edit.registry import build_editor

    editor = build_editor("uce", options or {})
    edits = edit_set(n)
    t0 = time.perf_counter()
    with torch.no_grad():
        done = editor.edit(models, edits)
    return time.perf_counter() - t0, done


def esd_x_step_fn(models) -> Callable[[], None]:
    """One ESD-x training step (module docstring) on `models`, batch 1."""
    from erase.objectives.base import per_sample_mse
    from erase.objectives.esd import Esd

    unet = models.unet
    params = []
    for name, p in unet.named_parameters():
        p.requires_grad_(".attn2." in f".{name}.")
        if p.requires_grad:
            params.append(p)
    opt = torch.optim.Adam(params, lr=1e-5)
    esd = Esd()
    g = torch.Generator("cpu").manual_seed(0)
    x_t = torch.randn((1, *models.latent_shape()), generator=g).to(models.device)
    t = torch.tensor([500], device=models.device)
    prompt = concept_names(1)

    def run() -> None:
        target, _ = esd.target_and_original(models, x_t, t, prompt)
        loss = per_sample_mse(models.pred(x_t, t, models.encode(prompt)), target).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return run


def run_edit_bench(arch: str, concepts: int, ratios: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    from erase.models.builder import build_pipeline
    from erase.models.core import Models

    t0 = time.perf_counter()
    torch.manual_seed(0)
    pipe = build_pipeline(arch)  # type: ignore[arg-type]
    build_s = time.perf_counter() - t0
    models = Models.from_pipeline(pipe, device="cpu")
    log(f"built {arch} (random weights) in {build_s:.1f} s")
    seconds, done = time_uce(models, concepts)
    log(f"uce: {concepts} concepts in {seconds:.2f} s ({done['layers']} projections, {done['erase_keys']} erase keys)")
    result: dict[str, Any] = {"benchmark": "edit", "method": "uce", "arch": arch, "concepts": concepts,
                              "seconds": round(seconds, 3), "edit": done, "build_seconds": round(build_s, 1),
                              "threads": torch.get_num_threads(), "device": "cpu"}
    if ratios:
        rows = []
        for n in (1, 10, 100):
            s = seconds if n == concepts else time_uce(models, n)[0]
            rows.append({"concepts": n, "seconds": round(s, 3)})
            log(f"uce: {n} concepts in {s:.2f} s")
        step = esd_x_step_fn(models)
        t1 = time.perf_counter()
        step()
        esd_s = time.perf_counter() - t1
        log(f"one ESD-x step: {esd_s:.2f} s")
        for r in rows:
            r["ratio_to_esd_x_step"] = round(r["seconds"] / esd_s, 4)
        result["ratios"] = {"esd_x_step_seconds": round(esd_s, 3), "uce": rows,
                            "note": "UCE seconds / one ESD-x step's seconds (batch 1, no warm-up on either side)"}
    result["total_seconds"] = round(time.perf_counter() - t0, 1)
    return result
