"""The validation grids behind configs/digits/uce.yaml: UCE on the digits world, recipes fixed in advance,
each judged on the VALIDATION draw of `erase bench erasure` (held-out phrasings, prompt draw and image
seeds 0; the evaluation draw is seed 1, never looked at here). Guidance 5, DDIM 25, as the bench.

--grid 1 (benchmarks/edit/uce_digits_grid.json): scales, keys / values and guides, with the erase set of
every training phrasing of three and the preserve set prompts/digits/retain_not3.txt. Stage 1: 30 prompts
asking for three (`heldout_prompts(30, 0, (3,))`) for every recipe. Stage 2: 10 prompts for every other
digit (`heldout_prompts(10, 0, others)`) for the recipes whose three rate is <= 20% (at least the two
lowest), and the base model on the same prompts, for the drop of each digit.

--grid 2 (benchmarks/edit/uce_digits_grid2.json): richer erase and preserve sets of TRAINING phrasings
(never a held-out template), on a larger validation draw: 40 prompts asking for three
(`heldout_prompts(40, 0, (3,))`, its first 30 are grid 1's) and 20 per other digit
(`heldout_prompts(20, 0, others)`). Stage 1 (every recipe): the threes and the 20 twos (the digit the
stronger edits of grid 1 took with three). Stage 2: the other eight digits, for the recipes with three
<= 10% and two down <= 10 points, in order of stage-1 score (three + two's drop), while that score is
below the best full score found (a full score is never below the stage-1 one). The base model is
generated for a digit only when some recipe drew it on fewer than 100% of its prompts: a digit drawn on
every prompt cannot have dropped (drop recorded as 0). `empty_prompt`: the base model asked for "" (the
guide) on the three prompts' seeds: how often it draws a three by itself.

Rule (grids 1-3, fixed before any run): a recipe qualifies when three <= 10% and no other digit drops more
than 10 points against the base; the chosen one has the smallest three rate + worst drop, ties to the
earlier row (the rows run from the official defaults / the shipped recipe outwards).

--grid 3 (benchmarks/edit/uce_digits_grid3.json): grid 2's sets, its scales around the chosen one, on the
draw `erase bench erasure` itself makes at its default size: every digit, 50 prompts each
(`heldout_prompts(50, 0)`, 500 images per row), every row measured on every digit, the base once. Grid
2's choice, judged on the evaluation draw at 12 prompts per digit, left three on 3 of 12, all three on the
numeral phrasing "the numeral 3 written by hand"; the grids before drew 30-40 three prompts from their own
three-only draw, whose phrasing mix differs from the bench's. `three_by_prompt` records each distinct
three prompt's count (`two_by_prompt`: two's, for the rows added after the first five). The evaluation
that follows is fixed in advance too: `erase bench erasure --per-digit 50 --seed 4` (a draw no run of the
project had made), judged once.

--grid 4 (benchmarks/edit/uce_digits_grid4.json): grid 3's choice, judged on the evaluation draw, kept the
digits (three 10%, worst kept digit -6) but not the ink (54% of the prompts naming an ink got it; base 100%).
Same draw as grid 3; the rule takes the ink too: a recipe qualifies when three <= 10%, no other digit drops
more than 10 points and the ink accuracy (on the prompts that name one) drops no more than 10 points; the
chosen one has the smallest three rate + worst drop (digit or ink), ties to the earlier row. Its evaluation,
fixed in advance: `erase bench erasure --per-digit 50 --seed 5`, judged once.

--grid 5 (benchmarks/edit/uce_digits_grid5.json): grid 4's choice, judged on the evaluation draw, left three
on 14% (7/50), above the bound; on the validation draw every one of its residual threes came from one
phrasing. Its guide "" is drawn as a three by the base itself on 15% of the seeds (grid 2's
`empty_prompt`), a floor for an edit that makes three look like "". Grid 5 guides each erase prompt to
the same phrasing with another digit instead (GRID5's comment); same draw and rule as grid 4. Its
evaluation, fixed in advance: `erase bench erasure --per-digit 50 --seed 6`, judged once.

--grid 6 (benchmarks/edit/uce_digits_grid6.json): grid 5's digit guides erased every three and kept the
ink but took nine (drawn as eight where its prompt opens with the bare word); the same guides with every
other digit's bare names in the preserve set (GRID6's comment). Same draw, rule and, for its choice,
evaluation as grid 5 (seed 6), which was not run for grid 5: grid 5 chose the shipped recipe again, and
grid 6 was fixed before any evaluation.

--grid 7 (benchmarks/edit/uce_digits_grid7.json): grid 6's rows did not keep nine either; the guide eight
at the official preserve scale and beyond (GRID7's comment). Same draw, rule and evaluation (seed 6) as
grid 5, none of them run before grid 7 was fixed.

    PYTHONPATH=. OMP_NUM_THREADS=1 python scripts/uce_digits_grid.py --grid 7 [--out FILE]

Resumable: the rows measured so far are kept in --out and skipped by a later run.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import re
import time
from pathlib import Path

from erase.bench import digits_world as dw
from erase.config import load_config
from erase.edit.config import EditConfig
from erase.edit.registry import build_editor
from erase.edit.runner import edit_set
from erase.io import atomic_write_json
from erase.models.core import Models
from erase.resources import data_path
from erase.train.config import ConceptSpec, PromptSet, resolve_data_paths
from erase.train.model import load_model
from erase.zoo.digits import COLOUR_NAMES, DIGIT_WORDS
from erase.zoo.judges import load_judges

SEED = 0
# grid 1: (name, erase_scale, preserve_scale, guide, projections). guide "ink": each three prompt that names
# an ink is guided to the training phrasing "a {ink} digit" (the ink kept, the identity dropped), others to "".
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
# grid 2: (name, erase file, preserve file, erase_scale, preserve_scale, projections); guide "", every
# row takes "" into the preserve set (train_erase.py:422), tokens last_to_end and lamb 0.5 as grid 1.
# three_train: every training phrasing of three (erase.zoo.digits.TRAIN_TEMPLATES) in every ink, the
# shipped set; three_train_both_names: the same templates with the digit's other name too ("a handwritten
# 3", "red digit three"), less "the number three" (part of the held-out "a picture of the number three").
# retain_not3: the shipped preserve set (six phrasings of each other digit, the inks alone);
# retain_not3_near: plus every training phrasing of two, five and eight (the digits nearest to three:
# two went with it in grid 1, eight and five are three's neighbours by shape) in every ink;
# retain_not3_all: every training phrasing of every other digit in every ink, and the inks alone.
# 0.03 keeps the preserve term's total weight of the shipped recipe (0.1 x 67 prompts ~ 0.03 x 229).
# 0.01: grid 1's "v only, 0.01" strength (it erased every three and took two) with every phrasing kept.
GRID2 = (
    ("shipped (v, 0.1)", "three_train", "retain_not3", 1, 0.1, "v"),
    ("both names, v, 0.1", "three_train_both_names", "retain_not3", 1, 0.1, "v"),
    ("both names + near, v, 0.1", "three_train_both_names", "retain_not3_near", 1, 0.1, "v"),
    ("both names + near, v, 0.03", "three_train_both_names", "retain_not3_near", 1, 0.03, "v"),
    ("both names + all, v, 0.1", "three_train_both_names", "retain_not3_all", 1, 0.1, "v"),
    ("both names + all, v, 0.03", "three_train_both_names", "retain_not3_all", 1, 0.03, "v"),
    ("both names + all, v, 0.01", "three_train_both_names", "retain_not3_all", 1, 0.01, "v"),
    ("both names + near, kv, 0.1", "three_train_both_names", "retain_not3_near", 1, 0.1, "kv"),
)

# grid 3: (name, erase file, preserve file, erase_scale, preserve_scale, projections), as grid 2; fixed
# before its first run: grid 2's choice, the preserve scale below it (0.02, 0.01: more erasure), and
# keys and values at 0.03 and 0.01 (kv left more threes at 0.1 in grid 2).
GRID3 = (
    ("grid 2's choice (v, 0.03)", "three_train_both_names", "retain_not3_all", 1, 0.03, "v"),
    ("v, 0.02", "three_train_both_names", "retain_not3_all", 1, 0.02, "v"),
    ("v, 0.01", "three_train_both_names", "retain_not3_all", 1, 0.01, "v"),
    ("kv, 0.03", "three_train_both_names", "retain_not3_all", 1, 0.03, "kv"),
    ("kv, 0.01", "three_train_both_names", "retain_not3_all", 1, 0.01, "kv"),
    # added after the five rows above were measured (none qualified: three 0-2%, but two down 14 points at
    # 0.03 and 0.02), toward more preservation, fixed before these ran:
    ("v, 0.05", "three_train_both_names", "retain_not3_all", 1, 0.05, "v"),
    ("v, 0.1", "three_train_both_names", "retain_not3_all", 1, 0.1, "v"),
    ("v, 0.2", "three_train_both_names", "retain_not3_all", 1, 0.2, "v"),
    # added after those three (none qualified: two lost 12-14 points at every preserve scale, nearly all on
    # "two, written with a blue pen", 0-1 of 6: "two" opens the prompt as the erased bare word "three"
    # opens its own erase prompt, and no preserve prompt held a bare digit word): every other digit's bare
    # names kept too (UCE keeps the other concepts' names, uce_sd_erase.py's preserve concepts), alone and
    # with every training phrasing of the other digits in both names (as the erase set; "the number two" left
    # out as "the number three" is), fixed before these ran:
    ("all + names, v, 0.03", "three_train_both_names", "retain_not3_all_names", 1, 0.03, "v"),
    ("all + names, kv, 0.03", "three_train_both_names", "retain_not3_all_names", 1, 0.03, "kv"),
    ("all both names, v, 0.015", "three_train_both_names", "retain_not3_all_both_names", 1, 0.015, "v"),
    ("all both names, v, 0.03", "three_train_both_names", "retain_not3_all_both_names", 1, 0.03, "v"),
)

# grid 4: grid 3's choice judged with the ink in the rule too, and keys + values at more preservation (the
# ink fell to 54% with grid 3's choice on the evaluation draw), fixed before any of them ran.
GRID4 = (
    ("kv, 0.03 (grid 3's choice)", "three_train_both_names", "retain_not3_all", 1, 0.03, "kv"),
    ("kv, 0.05", "three_train_both_names", "retain_not3_all", 1, 0.05, "kv"),
    ("kv, 0.1", "three_train_both_names", "retain_not3_all", 1, 0.1, "kv"),
    ("kv, 0.2", "three_train_both_names", "retain_not3_all", 1, 0.2, "kv"),
    ("kv, 0.5", "three_train_both_names", "retain_not3_all", 1, 0.5, "kv"),
    ("v, 0.1", "three_train_both_names", "retain_not3_all", 1, 0.1, "v"),
)

# grid 5: (name, erase file, preserve file, erase_scale, preserve_scale, projections, guide), fixed before any
# ran. Every residual three of grid 4's choice on the validation draw came from one phrasing, and its
# guide "" is itself drawn as a three on 15% of these seeds by the base (grid 2's `empty_prompt`): an edit
# that maps three exactly onto "" keeps that floor. A guide that names another digit has none: each erase
# prompt is guided to the same phrasing with the other digit ("a red handwritten three" -> "a red
# handwritten eight"; the official script takes a guide per prompt, uce_sd_erase.py:136-143), so the ink
# and the tokens after the digit stay aligned. Eight: the project's concept-ablation anchor
# (configs/digits/ablation.yaml), three's neighbour by shape; one: a digit far from it.
GRID5 = (
    ("kv, 0.2, guide '' (shipped)", "three_train_both_names", "retain_not3_all", 1, 0.2, "kv", ""),
    ("kv, 0.2, guide eight", "three_train_both_names", "retain_not3_all", 1, 0.2, "kv", "eight"),
    ("kv, 0.1, guide eight", "three_train_both_names", "retain_not3_all", 1, 0.1, "kv", "eight"),
    ("kv, 0.5, guide eight", "three_train_both_names", "retain_not3_all", 1, 0.5, "kv", "eight"),
    ("kv, 0.2, guide one", "three_train_both_names", "retain_not3_all", 1, 0.2, "kv", "one"),
    ("v, 0.1, guide eight", "three_train_both_names", "retain_not3_all", 1, 0.1, "v", "eight"),
)

# grid 6: grid 5's digit guides erased every three and kept the ink (99.6%), but nine fell 28-36 points
# (and five 16 with the guide one); a diagnostic on the validation draw's nine prompts (kv, 0.2, guide
# eight) found the loss on the phrasing that opens with the bare word ("nine, written with a blue pen":
# 6 of 6 drawn eight), the place of the erase set's bare "three" / "3", which no preserve prompt held.
# The same rows with every other digit's bare names kept too (retain_not3_all_names, grid 3's set; and
# retain_not3_all_both_names, every training phrasing in both names), fixed before any of them ran.
GRID6 = (
    ("kv, 0.2, guide eight, + names", "three_train_both_names", "retain_not3_all_names", 1, 0.2, "kv", "eight"),
    ("kv, 0.5, guide eight, + names", "three_train_both_names", "retain_not3_all_names", 1, 0.5, "kv", "eight"),
    ("v, 0.1, guide eight, + names", "three_train_both_names", "retain_not3_all_names", 1, 0.1, "v", "eight"),
    ("kv, 0.2, guide one, + names", "three_train_both_names", "retain_not3_all_names", 1, 0.2, "kv", "one"),
    ("kv, 0.2, guide eight, both names", "three_train_both_names", "retain_not3_all_both_names", 1, 0.2, "kv", "eight"),
)

# grid 7: in grids 5-6 a digit guide erased every three at every preserve scale (0.1-0.5) and nine's loss
# shrank as the scale grew (guide eight, kv: 36, 32, 28 points at 0.1, 0.2, 0.5); bare names did not
# help. The same guide at the official preserve scale (1, uce_sd_erase.py:106) and beyond, fixed before
# any of them ran.
GRID7 = (
    ("kv, 1, guide eight", "three_train_both_names", "retain_not3_all", 1, 1.0, "kv", "eight"),
    ("kv, 2, guide eight", "three_train_both_names", "retain_not3_all", 1, 2.0, "kv", "eight"),
    ("kv, 5, guide eight", "three_train_both_names", "retain_not3_all", 1, 5.0, "kv", "eight"),
    ("kv, 20, guide eight", "three_train_both_names", "retain_not3_all", 1, 20.0, "kv", "eight"),
    ("v, 1, guide eight", "three_train_both_names", "retain_not3_all", 1, 1.0, "v", "eight"),
)


def guides(prompts: list[str], guide: str) -> list[str]:
    if guide != "ink":
        return [guide]
    return [next((f"a {c} digit" for c in COLOUR_NAMES if c in p.split() or f"{c}," in p), "") for p in prompts]


def digit_guides(prompts: list[str], digit: int) -> list[str]:
    """Each prompt with three (word or numeral) replaced by `digit`, "a" -> "an" before eight."""
    word = DIGIT_WORDS[digit]
    out = []
    for p in prompts:
        q = re.sub(r"\bthree\b", word, p)
        q = re.sub(r"\b3\b", str(digit), q)
        out.append(re.sub(r"\ba (?=eight\b|8\b)", "an ", q))
    return out


def recipe(cfg: EditConfig, row: tuple) -> EditConfig:
    """The edit config of a grid row (grids 1-5)."""
    c = copy.deepcopy(cfg)
    if len(row) == 5:  # grid 1: the recipe's sets then, three_train and retain_not3
        _, es, ps, guide, proj = row
        erase, keep = "three_train", "retain_not3"
        prompts = data_path(f"prompts/digits/{erase}.txt").read_text().splitlines()
        c.concepts = [ConceptSpec("three", prompts, anchor=guides(prompts, guide))]
    else:
        _, erase, keep, es, ps, proj, *guide = row
        path = data_path(f"prompts/digits/{erase}.txt")
        anchor = [""]
        if guide and guide[0]:
            anchor = digit_guides(path.read_text().splitlines(), DIGIT_WORDS.index(guide[0]))
        c.concepts = [ConceptSpec("three", file=str(path), anchor=anchor)]
    c.preserve = PromptSet([""], str(data_path(f"prompts/digits/{keep}.txt")))
    c.edit = {**cfg.edit, "erase_scale": es, "preserve_scale": ps, "projections": proj}
    return c


def edited(base, cfg: EditConfig, row: tuple):
    pipe, c = copy.deepcopy(base), recipe(cfg, row)
    build_editor("uce", c.edit).edit(Models.from_pipeline(pipe, device="cpu"), edit_set(c))
    return pipe


def accuracy(pipe, judges, prompts) -> dict[str, float]:
    return dw.judge(judges, dw.generate(pipe, prompts, 5.0, 25), prompts)["digit_accuracy_per_digit"]


def grid1(state: dict, save, base, cfg, judges) -> None:
    threes, others = dw.heldout_prompts(30, SEED, (3,)), dw.heldout_prompts(10, SEED, tuple(d for d in range(10) if d != 3))
    state.setdefault("prompts", f"validation: held-out phrasings, draw and image seeds {SEED}; 30 for three, "
                                "10 per other digit")
    rows = state.setdefault("rows", {})
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


def grid2(state: dict, save, base, cfg, judges) -> None:
    threes = dw.heldout_prompts(40, SEED, (3,))
    others = dw.heldout_prompts(20, SEED, tuple(d for d in range(10) if d != 3))
    by_digit = {DIGIT_WORDS[d]: [p for p in others if p.digit == d] for d in range(10) if d != 3}
    state.setdefault("prompts", f"validation: held-out phrasings, draw and image seeds {SEED}; 40 for three, "
                                "20 per other digit")
    rows, base_acc = state.setdefault("rows", {}), state.setdefault("base", {})

    def measure(row: tuple, words: list[str]) -> None:
        r, t = rows.setdefault(row[0], {}), time.time()
        prompts = [p for w in words for p in (threes if w == "three" else by_digit[w])]
        r.update(accuracy(edited(base, cfg, row), judges, prompts))
        for w in words:  # the base only where the drop is not known to be <= 0
            if w != "three" and r[w] < 1 and w not in base_acc:
                base_acc.update(accuracy(base, judges, by_digit[w]))
        drops = {w: max(0.0, base_acc[w] - r[w]) if r[w] < 1 else 0.0 for w in by_digit if w in r}
        r["max_other_drop"] = max(drops.values())
        r["score"] = r["three"] + r["max_other_drop"]
        r["complete"] = all(w in r for w in by_digit)
        r["qualifies"] = r["three"] <= 0.1 and r["max_other_drop"] <= 0.1 + 1e-9
        print(row, r, f"{time.time() - t:.0f}s", flush=True)
        save()

    if "empty_prompt" not in state:  # the guide "" itself: how often the base draws a three for "" on these seeds
        empty = [dataclasses.replace(p, text="") for p in threes]
        state["empty_prompt"] = {"three": accuracy(base, judges, empty)["three"]}
        save()
    for row in GRID2:
        if row[0] not in rows:
            measure(row, ["three", "two"])
    for row in sorted(GRID2, key=lambda r: (rows[r[0]]["score"], GRID2.index(r))):
        r = rows[row[0]]
        best = min((rows[q[0]]["score"] for q in GRID2 if rows[q[0]]["complete"] and rows[q[0]]["qualifies"]),
                   default=float("inf"))
        if r["complete"] or not r["qualifies"] or r["score"] >= best - 1e-9:  # 0 + (1 - 0.95) > 0.05 in floats
            continue
        measure(row, [w for w in by_digit if w != "two"])


def grid3(state: dict, save, base, cfg, judges, rows_: tuple = GRID3, ink: bool = False) -> None:
    """Grid 3 (and grids 4-7, `ink=True`: the ink in the rule too) on the bench's draw, every row on every digit."""
    prompts = dw.heldout_prompts(50, SEED)
    state.setdefault("prompts", f"validation: erase bench erasure's draw at seed {SEED}, 50 prompts per digit")
    rows = state.setdefault("rows", {})
    if "base" not in state or (ink and "base_ink" not in state):
        judged = dw.judge(judges, dw.generate(base, prompts, 5.0, 25), prompts)
        state["base"], state["base_ink"] = judged["digit_accuracy_per_digit"], judged["colour_accuracy"]
        save()
    for row in rows_:
        if row[0] in rows:
            continue
        t = time.time()
        pipe = edited(base, cfg, row)
        images = dw.generate(pipe, prompts, 5.0, 25)
        judged = dw.judge(judges, images, prompts)
        r = judged["digit_accuracy_per_digit"]
        drawn = judges.predict(images)["digit"].argmax(1)
        by_prompt: dict[str, dict[str, list[int]]] = {"three": {}, "two": {}}
        for p, d in zip(prompts, drawn.tolist()):
            if DIGIT_WORDS[p.digit] in by_prompt:
                hits = by_prompt[DIGIT_WORDS[p.digit]].setdefault(p.text, [0, 0])
                hits[0] += int(d == p.digit)
                hits[1] += 1
        missed: dict[str, dict[str, dict[str, int]]] = {}  # every kept digit's misses: prompt -> what was drawn
        for p, d in zip(prompts, drawn.tolist()):
            if p.digit != 3 and d != p.digit:
                seen = missed.setdefault(DIGIT_WORDS[p.digit], {}).setdefault(p.text, {})
                seen[DIGIT_WORDS[d]] = seen.get(DIGIT_WORDS[d], 0) + 1
        drops = {w: state["base"][w] - a for w, a in r.items() if w != "three"}
        out = rows[row[0]] = {**r, "max_other_drop": max(0.0, *drops.values()), "three_by_prompt": by_prompt["three"],
                              "two_by_prompt": by_prompt["two"], "missed_by_prompt": missed,
                              "ink": judged["colour_accuracy"], "complete": True}
        worst = out["max_other_drop"]
        if ink:
            out["ink_drop"] = max(0.0, state["base_ink"] - out["ink"])
            worst = max(worst, out["ink_drop"])
        out["score"] = r["three"] + worst
        out["qualifies"] = r["three"] <= 0.1 and worst <= 0.1 + 1e-9
        print(row, {k: v for k, v in out.items() if not k.endswith("_by_prompt")}, f"{time.time() - t:.0f}s",
              flush=True)
        save()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grid", type=int, choices=(1, 2, 3, 4, 5, 6, 7), default=7)
    p.add_argument("--out", type=Path, help="default benchmarks/edit/uce_digits_grid.json (grid 1), "
                                           "uce_digits_grid<N>.json (grid N > 1)")
    args = p.parse_args()
    out = args.out or Path("benchmarks/edit/uce_digits_grid" + ("" if args.grid == 1 else str(args.grid)) + ".json")
    path = data_path("configs/digits/uce.yaml")
    cfg = resolve_data_paths(load_config(EditConfig, path), path)
    rows = {1: GRID, 2: GRID2, 3: GRID3, 4: GRID4, 5: GRID5, 6: GRID6, 7: GRID7}[args.grid]
    base, judges = load_model(cfg.model), load_judges()
    state = json.loads(out.read_text()) if out.exists() else {}
    if state.get("grid") != [list(r) for r in rows][: len(state.get("grid", []))]:  # rows appended: kept
        state = {}
    state["grid"] = [list(r) for r in rows]

    def save() -> None:
        atomic_write_json(out, state)

    if args.grid <= 3:
        {1: grid1, 2: grid2, 3: grid3}[args.grid](state, save, base, cfg, judges)
    else:  # grids 4-7: grid 3's measurement with the ink in the rule
        grid3(state, save, base, cfg, judges, rows, ink=True)
    done = [r for r in rows if "max_other_drop" in state["rows"][r[0]] and state["rows"][r[0]].get("complete", True)]
    best = min(done, key=lambda r: (not state["rows"][r[0]]["qualifies"],
                                    state["rows"][r[0]].get("score", state["rows"][r[0]]["three"]
                                                            + state["rows"][r[0]]["max_other_drop"]), rows.index(r)))
    state["chosen"] = best[0] if state["rows"][best[0]]["qualifies"] else None  # None: no row qualified
    save()
    print("chosen", state["chosen"], state["rows"][best[0]] if state["chosen"] else "(no row qualified)")


if __name__ == "__main__":
    from erase.threads import configure_threads

    configure_threads()  # the cores this process gets (ERASE_THREADS / OMP_NUM_THREADS)
    main()
