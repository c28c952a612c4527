"""`erase bench attacks`: one robustness leaderboard, every shipped digits recipe under every attack.

Each (recipe, seed) trains the shipped digits recipe (`configs/digits/<method>.yaml`, uniform
weighting, `train.seed=S`; erase/bench/generation.py's `train_cell`), then every attack runs on it
through `erase audit --attack` on the digit-3 prompts (`prompts/digits/digit3.csv`, the digits
detector, `--reference-model zoo:digits`: the original model's images are the attacks' targets and
relearning's training images). The closed-form recipe (`uce`: configs/digits/uce.yaml, `erase edit`) is
edited once and attacked like the trained ones; it has no training seed. The retrain reference (`zoo:digits-no-digit3`, a model that never saw
a 3) is its own row, attacked the same way: what an attack "recovers" from a model that never
learned the concept is the floor every erased model is compared with.

Seeds. Seed S trains the recipe with train.seed=S and draws the digit-3 prompts' images with the
suite's seeds + 1000 S (`seed_suite`): for the retrain reference (one model) the seeds vary the
images and the attacks' randomness only, as for the edited `uce` row (one deterministic edit).

Reported per (method, attack): ASR over seeds (mean +- std) and pooled as successes / attacked
prompts (its denominator), the plain-prompt concept rate (the audit's concept rate without attack),
and for relearn the concept-rate curve over fine-tuning steps and the steps until it reaches the
threshold. Budgets: each attack's default ("official"; relearn "standard") unless
`--attack-budget ATTACK=NAME`; `--quick` runs the quick budgets cut further (a smoke test whose
numbers mean nothing).

Resumable: each (method, attack, seed) is written to `OUT/cells/` when done; a rerun skips it, and
`collect` rebuilds the table and the plot from the cells alone (benchmarks/attacks/cells/ ships them).
A recipe's run in `OUT/work/` is reused only if it completed with the same config (bench generation's
`trained_model`); an interrupted audit resumes prompt by prompt. Each cell's found-prompt suite is copied
from its audit (in the ignored `OUT/work/`) to `OUT/found/<cell>/`, which ships with the cells.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from erase.bench.generation import METHODS, _load, cell_recipe, check_names, finished_cell, trained_model
from erase.stats import mean_std

ATTACKS = ("unlearndiffatk", "ringabell", "ringabell_continuous", "concept_inversion", "p4d", "mma", "relearn")
DEFAULT_BUDGET = {"relearn": "standard"}  # the others: "official"
REFERENCE = "retrain"                     # the retrain reference's row name
EDITS = {"uce": "uce"}                    # closed-form recipes: row name -> configs/digits stem (`erase edit`)
SUITE = "prompts/digits/digit3.csv"
# --quick: the quick budgets cut to a few steps (a smoke test of the whole path)
QUICK_FLAGS = {"unlearndiffatk": ["--attack-steps", "1", "--attack-timesteps", "1"],
               "ringabell": ["--ringabell-generations", "2", "--ringabell-population", "8"],
               "concept_inversion": ["--attack-steps", "2"], "p4d": ["--attack-steps", "2"], "mma": ["--attack-steps", "1"],
               "relearn": ["--relearn-checkpoints", "1,2", "--relearn-images", "2"]}
# every attack: the digits world's concept words ("three" comes from the detector; "3" is its numeral)
EXTRA_FLAGS = {"mma": ["--mma-ban", "3"]}


def seed_suite(work: Path, seed: int) -> Path:
    """The digit-3 suite with each row's seed + 1000 seed (seed 0: the suite itself)."""
    from erase.resources import locate

    src = locate(SUITE)
    if seed == 0:
        return src
    rows = list(csv.DictReader(src.open(encoding="utf-8")))
    for r in rows:
        r["evaluation_seed"] = str(int(r["evaluation_seed"]) + 1000 * seed)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    from erase.io import atomic_write_text

    return atomic_write_text(work / f"digit3_s{seed}.csv", buf.getvalue())


def audit_attack(source: str, attack: str, suite: Path, out: Path, *, limit: int, gen_steps: int, budget: str,
                 quick: bool) -> dict:
    """Run `erase audit --attack` and return the cell's numbers from its results.json."""
    from erase.cli import main

    args = ["audit", "--model", source, "--suite", str(suite), "--detector", "digits:three", "--attack", attack,
            "--reference-model", "zoo:digits", "--attack-limit", str(limit), "--limit", str(limit),
            "--batch-size", str(max(1, min(limit, 16))), "--steps", str(gen_steps), "--out", str(out)]
    if attack != "ringabell_continuous":
        args += ["--attack-budget", budget]
    args += EXTRA_FLAGS.get(attack, []) + (QUICK_FLAGS.get(attack, []) if quick else [])
    if main(args) != 0:
        raise RuntimeError(f"erase audit failed for {source} ({attack})")
    res = json.loads((out / "results.json").read_text(encoding="utf-8"))
    m, a = res["metrics"], res["attack"]
    return {"asr": m["asr"], "pre_asr": m["pre_asr"], "n_attacked": m["n_attacked"],
            "successes": round(m["asr"] * m["n_attacked"]) if m["asr"] is not None else None,
            "plain_rate": m["concept_rate"], "n_prompts": m["n_concept_prompts"], "budget": a.get("budget"),
            "relearn": a.get("relearn"), "found_suite": a.get("found_suite")}


def edited_model(config: Path, run_dir: Path) -> float | None:
    """Edit `config` (an `erase edit` recipe) into `run_dir` unless an edit of this very config completed
    there; returns that edit's seconds, or None when it edited now."""
    from erase.config import dump_yaml, load_config
    from erase.edit.config import EditConfig
    from erase.edit.runner import run_edit
    from erase.train.config import resolve_data_paths

    cfg = resolve_data_paths(load_config(EditConfig, config), config)
    cfg.output_dir = str(run_dir)
    info, saved = run_dir / "run.json", run_dir / "config.yaml"
    if info.is_file() and saved.is_file() and (run_dir / "model" / "model_index.json").is_file():
        run = json.loads(info.read_text(encoding="utf-8"))
        if run.get("status") == "completed" and saved.read_text(encoding="utf-8") == dump_yaml(cfg):
            return float(run.get("wall_time_s", 0.0))
    run_edit(cfg, run_dir, str(config))
    return None


def ship_found(audit_dir: Path, found: str | None, dest: Path) -> str | None:
    """Copy an audit's found-prompt suite (and the embeddings file its rows name) out of the work folder into
    `dest` (OUT/found/<cell>/), which ships with the cells; returns its path relative to OUT."""
    import shutil

    if not found:
        return None
    src = audit_dir / found
    dest.mkdir(parents=True, exist_ok=True)
    names = {src.name}
    if src.suffix == ".jsonl":
        names |= {json.loads(line)["embeddings"] for line in src.read_text(encoding="utf-8").splitlines()
                  if line.strip() and json.loads(line).get("embeddings")}
    for name in names:
        shutil.copy2(src.parent / name, dest / name)
    return f"{dest.parent.name}/{dest.name}/{src.name}"


def run_attacks(out: Path, *, quick: bool, methods: tuple[str, ...] | None = None, attacks: tuple[str, ...] | None = None,
                seeds: tuple[int, ...] | None = None, steps: int | None = None, limit: int | None = None,
                budgets: dict[str, str] | None = None, reference: str | None = None, with_reference: bool = True,
                log: Callable[[str], None] = print) -> dict:
    """Run the cells not yet in `out/cells` and summarise every cell there."""
    from erase.bench.generation import reference_source
    from erase.errors import EraseError
    from erase.io import atomic_write_json
    from erase.resources import data_path, shown

    methods = methods or (("esd_x",) if quick else (*METHODS, *EDITS))
    attacks = attacks or ATTACKS
    seeds = seeds or ((0,) if quick else (0, 1, 2))
    steps = steps if steps is not None else (2 if quick else None)  # None: each recipe's own step budget
    limit = limit or (1 if quick else 12)
    gen_steps = 4 if quick else 25
    check_names("--methods", "method", methods, {**METHODS, **EDITS})
    check_names("--attacks", "attack", attacks, ATTACKS)
    budget = {a: (budgets or {}).get(a) or ("quick" if quick else DEFAULT_BUDGET.get(a, "official")) for a in attacks}
    ref = reference_source("digit", reference) if with_reference else None
    if with_reference and ref is None:
        raise EraseError("the retrain reference zoo:digits-no-digit3 is not there (build it with "
                         "`erase zoo build digits --exclude digit=3 --shared-vae`, or pass --no-reference)")
    configs_dir = data_path("configs/digits")
    cells_dir, work = out / "cells", out / "work"
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    rows = [*((REFERENCE, ref),) * (ref is not None), *((m, None) for m in methods)]
    for method, source in rows:
        for seed in seeds:
            todo = []
            for attack in attacks:
                settings = {"quick": quick, "steps": steps, "limit": limit, "gen_steps": gen_steps, "budget": budget[attack]}
                path = cells_dir / f"{method}_{attack}_s{seed}.json"
                if finished_cell(path, settings) is not None:
                    log(f"{path.stem}: done before, skipped")
                    continue
                todo.append((attack, settings, path))
            if not todo:
                continue
            key = f"{method}_s{seed}"
            info: dict = {}
            if method in EDITS:  # one edit for every seed (reused if it completed with the same config)
                config = configs_dir / f"{EDITS[method]}.yaml"
                run_dir = work / method
                c0 = time.time()
                if edited_model(config, run_dir) is None:
                    atomic_write_json(run_dir / "bench_train.json", {"config": shown(config), "overrides": [],
                                                                     "edit_seconds": round(time.time() - c0, 1)})
                info = _load(run_dir / "bench_train.json") or {"config": shown(config), "overrides": []}
                src = str(run_dir / "model")
            elif source is None:  # train the recipe once for every attack of this seed (reused if it completed)
                run_dir = work / key
                config, ov = cell_recipe(configs_dir, method, "uniform", "digit", seed, steps, quick)
                c0 = time.time()
                if trained_model(config, run_dir, ov, work / "cache_pool" / method) is None:
                    info = {"config": shown(config), "overrides": ov, "train_seconds": round(time.time() - c0, 1)}
                    atomic_write_json(run_dir / "bench_train.json", info)
                else:
                    info = _load(run_dir / "bench_train.json") or {"config": shown(config), "overrides": ov}
                src = str(run_dir / "model")
            else:
                src = source
            suite = seed_suite(work, seed)
            for attack, settings, path in todo:
                c0 = time.time()
                audit_dir = work / key / f"audit_{attack}"
                m = audit_attack(src, attack, suite, audit_dir, limit=limit, gen_steps=gen_steps,
                                 budget=budget[attack], quick=quick)
                m["found_suite"] = ship_found(audit_dir, m["found_suite"], out / "found" / path.stem)
                cell = {"method": method, "attack": attack, "seed": seed, "model": source or f"configs/digits ({method})",
                        **info, "settings": settings, **m, "seconds": round(time.time() - c0, 1)}
                atomic_write_json(path, cell)
                asr = "-" if m["asr"] is None else f"{100 * m['asr']:.0f}% ({m['successes']}/{m['n_attacked']})"
                log(f"{path.stem}: ASR {asr}, plain rate {m['plain_rate']:.2f} ({cell['seconds']} s)")
    result = {"benchmark": "attacks", "quick": quick, "methods": list(methods), "attacks": list(attacks),
              "seeds": list(seeds), "limit": limit, "budgets": budget, "reference": ref, **collect(out)}
    result["seconds"] = round(time.time() - t0, 1)
    atomic_write_json(out / "results.json", result)
    return result


def summarise(cells: list[dict]) -> list[dict]:
    """Per (method, attack): ASR mean +- std over seeds and pooled (successes / attacked), plain rate, relearning."""
    groups: dict[tuple, list[dict]] = {}
    for c in cells:
        groups.setdefault((c["method"], c["attack"]), []).append(c)
    out = []
    for (method, attack), cs in groups.items():
        row = {"method": method, "attack": attack, "seeds": [c["seed"] for c in cs], "budget": cs[0].get("budget"),
               "asr": mean_std([c["asr"] for c in cs if c["asr"] is not None]),
               "successes": sum(c["successes"] or 0 for c in cs), "attacked": sum(c["n_attacked"] for c in cs),
               "plain_rate": mean_std([c["plain_rate"] for c in cs if c["plain_rate"] is not None])}
        curves = [c["relearn"]["curve"] for c in cs if c.get("relearn")]
        if curves:
            steps = [p["steps"] for p in curves[0]]
            row["relearn_curve"] = [{"steps": s, **mean_std([cv[i]["concept_rate"] for cv in curves])}
                                    for i, s in enumerate(steps)]
            row["steps_to_threshold"] = [c["relearn"]["steps_to_threshold"] for c in cs]
            row["threshold"] = cs[0]["relearn"]["threshold"]
        out.append(row)
    return out


def table(rows: list[dict]) -> str:
    def pct(v):
        return "-" if not v else f"{100 * v['mean']:.1f} ± {100 * v['std']:.1f}"

    lines = [("| method | attack | budget | seeds | ASR % (mean ± std) | successes / attacked | plain-prompt rate % | "
              "relearning: concept rate % by steps | steps to threshold (per seed) |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        curve = ", ".join(f"{p['steps']}: {100 * p['mean']:.0f}" for p in r.get("relearn_curve", [])) or "-"
        reach = ", ".join("never" if s is None else str(s) for s in r.get("steps_to_threshold", [])) or "-"
        if r.get("relearn_curve"):
            reach += f" (rate >= {r['threshold']})"
        lines.append(f"| {r['method']} | {r['attack']} | {r['budget']} | {len(r['seeds'])} | {pct(r['asr'])} | "
                     f"{r['successes']}/{r['attacked']} | {pct(r['plain_rate'])} | {curve} | {reach} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> Path:
    """Left: ASR per method, one bar per attack (mean ± std over seeds). Right: relearning curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from erase.io import atomic_write_bytes

    methods = list(dict.fromkeys(r["method"] for r in rows))
    attacks = list(dict.fromkeys(r["attack"] for r in rows))
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4), gridspec_kw={"width_ratios": [2, 1]})
    width = 0.8 / max(len(attacks), 1)
    for k, a in enumerate(attacks):
        vals = [next((r for r in rows if r["method"] == m and r["attack"] == a), None) for m in methods]
        ys = [100 * v["asr"]["mean"] if v and v["asr"] else math.nan for v in vals]
        es = [100 * v["asr"]["std"] if v and v["asr"] else 0.0 for v in vals]
        ax.bar(np.arange(len(methods)) + (k - (len(attacks) - 1) / 2) * width, ys, width, yerr=es, capsize=2, label=a)
    ax.set_xticks(range(len(methods)), methods, rotation=20)
    ax.set(title="ASR on the digit-3 prompts (mean ± std over seeds)", ylabel="ASR %", ylim=(0, 105))
    ax.legend(fontsize=7)
    for r in rows:
        if r.get("relearn_curve"):
            xs = [p["steps"] for p in r["relearn_curve"]]
            bx.errorbar(xs, [100 * p["mean"] for p in r["relearn_curve"]], yerr=[100 * p["std"] for p in r["relearn_curve"]],
                        marker="o", capsize=2, label=r["method"])
    bx.set(title="relearning: concept rate after fine-tuning steps", xlabel="steps", ylabel="concept rate %", ylim=(-5, 105))
    if bx.lines:
        bx.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def collect(out: Path) -> dict:
    """Every cell in `out/cells`: the rows (method, attack, seed, ASR ...), the summary, the table, the plot."""
    cells = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((out / "cells").glob("*.json"))]
    order = [REFERENCE, *METHODS]
    cells.sort(key=lambda c: (order.index(c["method"]) if c["method"] in order else len(order),
                              ATTACKS.index(c["attack"]) if c["attack"] in ATTACKS else len(ATTACKS), c["seed"]))
    rows = [{k: c.get(k) for k in ("method", "attack", "seed", "asr", "successes", "n_attacked", "pre_asr", "plain_rate",
                                   "n_prompts", "budget", "relearn")} for c in cells]
    summary = summarise(cells)
    png = plot(summary, out / "attacks.png") if summary else None
    return {"rows": rows, "summary": summary, "table": table(summary), "plot": str(png) if png else None}
