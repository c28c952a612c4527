"""The validation grid behind configs/digits/uce.yaml: UCE on the digits world with twelve recipes fixed in
advance, each judged on the VALIDATION draw of `erase bench erasure` (held-out phrasings, prompt draw and
image seeds 0; the evaluation draw is seed 1, never looked at here). Guidance 5, DDIM 25, as the bench.

Stage 1: 30 prompts asking for three (`heldout_prompts(30, 0, (3,))`) for every recipe. Stage 2: 10 prompts
for every other digit (`heldout_prompts(10, 0, others)`) for the recipes whose three rate is <= 20% (at
least the two lowest), and the base model on the same prompts, for the drop of each digit.
Rule (fixed before any run): a recipe qualifies when three <= 10% and no other digit drops more than
10 points against the base; the chosen one has the smallest three rate + worst drop, ties to the
earlier row (the rows run from the official defaults outwards).

    PYTHONPATH=. OMP_NUM_THREADS=1 python scripts/uce_digits_grid.py [--out benchmarks/edit/uce_digits_grid.json]

Resumable: the rows measured so far are kept in --out and skipped by a later run.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from erase.bench import digits_world as dw
from erase.config import load_config
from erase.edit.config import EditConfig
from erase.edit.registry import build_editor
from erase.edit.runner import edit_set
from erase.io import atomic_write_json
from erase.models.core import Models
from erase.resources import data_path
from erase.train.config import resolve_data_paths
from erase.train.model import load_model
from erase.zoo.digits import COLOUR_NAMES
from erase.zoo.judges import load_judges

THREES, OTHERS, SEED = 30, 10, 0
# (name, erase_scale, preserve_scale, guide, projections). guide "ink": each three prompt that names an
# ink is guided to the training phrasing "a {ink} digit" (the ink kept, the identity dropped), others to "".
GRID = (
    ("official", 1, 1, "", "kv"),
    ("legacy preserve 0.1", 1, 0.1, "", "kv"),
    ("previous (4, 0.3)", 4, 0.3, "", "kv"),
    ("preserve 0.03", 1, 0.03, "", "kv"),
    ("preserve 0.01", 1, 0.01, "", "kv"),
    ("preserve 0.003", 1, 0.003, "", "kv"),
    ("v only, 0.1", 1, 0.1, "", "v"),
    ("v only, 0.01", 1, 0.01, "", "v"),
    ("guide digit, 0.1", 1, 0.1, "a handwritten digit", "kv"),
    ("guide digit, 0.01", 1, 0.01, "a handwritten digit", "kv"),
    ("guide ink, 0.1", 1, 0.1, "ink", "kv"),
    ("guide ink, 0.01", 1, 0.01, "ink", "kv"),
)


def guides(prompts: list[str], guide: str) -> list[str]:
    if guide != "ink":
        return [guide]
    return [next((f"a {c} digit" for c in COLOUR_NAMES if c in p.split() or f"{c}," in p), "") for p in prompts]


def edited(base, cfg: EditConfig, row: tuple):
    _, es, ps, guide, proj = row
    pipe, c = copy.deepcopy(base), copy.deepcopy(cfg)
    c.concepts[0].anchor = guides(list(c.concepts[0].prompts), guide)
    options = {**cfg.edit, "erase_scale": es, "preserve_scale": ps, "projections": proj}
    build_editor("uce", options).edit(Models.from_pipeline(pipe, device="cpu"), edit_set(c))
    return pipe


def accuracy(pipe, judges, prompts) -> dict[str, float]:
    return dw.judge(judges, dw.generate(pipe, prompts, 5.0, 25), prompts)["digit_accuracy_per_digit"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/edit/uce_digits_grid.json"))
    args = p.parse_args()
    path = data_path("configs/digits/uce.yaml")
    cfg = resolve_data_paths(load_config(EditConfig, path), path)
    base, judges = load_model(cfg.model), load_judges()
    threes = dw.heldout_prompts(THREES, SEED, (3,))
    others = dw.heldout_prompts(OTHERS, SEED, tuple(d for d in range(10) if d != 3))
    state = json.loads(args.out.read_text()) if args.out.exists() else {}
    if state.get("grid") != [list(r) for r in GRID]:
        state = {}
    state.update(prompts=f"validation: held-out phrasings, draw and image seeds {SEED}; {THREES} for three, "
                         f"{OTHERS} per other digit", grid=[list(r) for r in GRID])
    rows = state.setdefault("rows", {})

    def save() -> None:
        atomic_write_json(args.out, state)

    if "base" not in state:
        t = time.time()
        state["base"] = {**accuracy(base, judges, threes), **accuracy(base, judges, others)}
        print("base", state["base"], f"{time.time() - t:.0f}s", flush=True)
        save()
    for row in GRID:
        if row[0] in rows:
            continue
        t = time.time()
        rows[row[0]] = {"three": accuracy(edited(base, cfg, row), judges, threes)["three"]}
        print(row, rows[row[0]], f"{time.time() - t:.0f}s", flush=True)
        save()
    ranked = sorted(GRID, key=lambda r: rows[r[0]]["three"])
    for i, row in enumerate(ranked):
        r = rows[row[0]]
        if "others" in r or (r["three"] > 0.2 and i >= 2):
            continue
        t = time.time()
        r["others"] = accuracy(edited(base, cfg, row), judges, others)
        r["max_other_drop"] = max(state["base"][w] - a for w, a in r["others"].items())
        r["qualifies"] = r["three"] <= 0.1 and r["max_other_drop"] <= 0.1 + 1e-9
        print(row, r, f"{time.time() - t:.0f}s", flush=True)
        save()
    done = [r for r in GRID if "others" in rows[r[0]]]
    best = min(done, key=lambda r: (not rows[r[0]]["qualifies"], rows[r[0]]["three"] + rows[r[0]]["max_other_drop"],
                                    GRID.index(r)))
    state["chosen"] = best[0]
    save()
    print("chosen", best, rows[best[0]])


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
