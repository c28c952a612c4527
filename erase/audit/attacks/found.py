"""Found prompts as suites: what an attack found on one model, replayed on any other (the transfer test).

After an audit with `--attack`, the prompts the attack found are written into the output folder as a
suite that `erase audit --suite` reads like any other:

- discrete attacks (unlearndiffatk, ringabell, p4d, mma): `attack/found.csv`, one row per attacked
  concept prompt, with the found prompt as text and the row's seed, guidance, size and label
  (columns as I2P spells them), plus `attack` and `success` (whether it worked on the audited model;
  the suite reader ignores both);
- continuous attacks: `attack/found.jsonl`, rows whose `embeddings` column names a .safetensors file
  in the same folder (key `embeds`; its metadata `erase_embeddings` says how it is used):
  `slots` (concept inversion's learned tokens, [n, D]: put where the prompt has "{}", as
  `Models.encode(..., where="marker")` does) or `add` (ringabell_continuous: eta * v, [77, D], added to
  the prompt's conditioning);
- relearn finds no prompt (it changes weights): it writes no suite.

Replaying: `erase audit --model OTHER --suite A/attack/found.csv ...` generates the found prompts
with OTHER; its `concept_rate` is the transfer rate. Rows of a continuous suite are encoded by
`replay_cond_fn` (one row at a time; plain rows as usual).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import torch

from erase.audit.generate import pipeline_models
from erase.audit.suites import PromptRow
from erase.io import atomic_write_bytes, atomic_write_text

DISCRETE = ("unlearndiffatk", "ringabell", "p4d", "mma")
CONTINUOUS = ("concept_inversion", "ringabell_continuous")
EMBEDDINGS_FILE = {"concept_inversion": "learned_embeds.safetensors", "ringabell_continuous": "concept_vector.safetensors"}


def save_embeddings(path: Path, embeds: torch.Tensor, mode: str, **metadata: str) -> None:
    """An attack's continuous prompt as a suite's embeddings file (key `embeds`, metadata `erase_embeddings`)."""
    from safetensors.torch import save

    atomic_write_bytes(path, save({"embeds": embeds.detach().float().cpu().contiguous()},
                                  metadata={"erase_embeddings": mode, **metadata}))


def load_embeddings(path: str | Path) -> tuple[torch.Tensor, str]:
    """(embeds, mode) of an embeddings file; a file without the mode (older concept inversion) is `slots`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        mode = (f.metadata() or {}).get("erase_embeddings", "slots")
        return f.get_tensor("embeds"), mode


def write_found(attack: str, out: Path, rows: list[PromptRow], records: list[dict]) -> str | None:
    """Write the attack's found prompts as a suite in `out/attack/`; returns its path relative to `out`."""
    by_index = {r.index: r for r in rows}
    done = [rec for rec in records if not rec.get("pre")]
    if attack in DISCRETE:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["case_number", "prompt", "evaluation_seed", "evaluation_guidance", "width", "height", "label",
                    "attack", "success"])
        for rec in done:
            r = by_index[int(rec["index"])]
            w.writerow([r.id, rec["adv_prompt"], r.seed, r.guidance, r.width or "", r.height or "", r.label or "", attack,
                        int(bool(rec["success"]))])
        atomic_write_text(out / "attack" / "found.csv", buf.getvalue())
        return "attack/found.csv"
    if attack in CONTINUOUS:
        lines = []
        for rec in done:
            r = by_index[int(rec["index"])]
            prompt = "{} " + r.prompt.replace("{}", "") if attack == "concept_inversion" else r.prompt
            row = {"case_number": r.id, "prompt": prompt, "evaluation_seed": r.seed, "evaluation_guidance": r.guidance,
                   "label": r.label, "embeddings": EMBEDDINGS_FILE[attack], "attack": attack, "success": bool(rec["success"])}
            if r.width:
                row.update(width=r.width, height=r.height)
            lines.append(json.dumps(row, sort_keys=True))
        atomic_write_text(out / "attack" / "found.jsonl", "".join(x + "\n" for x in lines))
        return "attack/found.jsonl"
    return None


def replay_cond_fn(pipe):
    """A generation `cond_fn` for suites with an `embeddings` column (rows without one encode as usual)."""
    models = pipeline_models(pipe)
    cache: dict[str, tuple[torch.Tensor, str]] = {}

    def one(row: PromptRow):
        if not row.embeddings:
            return models.encode([row.prompt])
        if row.embeddings not in cache:
            cache[row.embeddings] = load_embeddings(row.embeddings)
        embeds, mode = cache[row.embeddings]
        device = models.device
        if mode == "add":
            cond = models.encode([row.prompt])
            delta = embeds.to(device)
            if torch.is_tensor(cond):
                return cond + delta.to(cond.dtype)
            return type(cond)(cond.embeds + delta.to(cond.embeds.dtype), cond.pooled)
        return models.encode([row.prompt], len(embeds), embeds.to(device), where="marker")

    def cond_fn(batch: list[PromptRow]):
        return torch.cat([one(r) for r in batch])

    return cond_fn
