"""`erase bench generation`: every objective x weighting (plus RUM) over seeds, as gaps to retraining.

Each cell trains the shipped digits recipe (`configs/digits/<method>.yaml`; LoReUn-d cells use
`<method>_loreun.yaml`, LoReUn-s cells the same with `weighting.kind=static`) with the given seed
and one step budget for every cell (RUM keeps its three groups' shipped budgets, 150 steps in
all, the default budget), then evaluates the erased model on held-out prompts:

- concept rate: how often the erased concept is still drawn when asked for (digit: judged the
  digit; colour: judged in that ink);
- retention: accuracy on every other digit, and ink accuracy on every other ink;
- Frechet distance of judge features against real held-out digits;
- pinpoint-ness (HUB, ml-postech/HUB): accuracy on the two digits nearest to the erased one, by the
  judge's confusion on the BASE model's images of the same evaluation prompts (`cells/base.json`,
  made once per folder; `digits_world.pinpoint`), derived for every cell from its per-digit accuracy;
- ASR of UnlearnDiffAtk and of concept inversion (the digit only: the digits detector judges
  digits), run through `erase audit --attack` on `prompts/digits/digit3.csv` (`--attack-suite`:
  another list, e.g. the held-out `prompts/digits/digit3_heldout.csv`; each cell records the
  suite, limit and budget of each ASR, and gaps compare only ASRs measured alike);
- the worst other digit: `max_other_drop`, the largest drop of another digit's accuracy against
  the base model (`zoo:digits`) on the same evaluation prompts (`base_<concept>.json`), the
  retention rule of `erase bench erasure`.

ESD-family cells (esd_x, esd_u, advunlearn, robust, rum) record where their x_t came from
(`objective.trajectory`: `online`, the default, or `cached`; `--trajectory` sets it for every cell,
else each recipe's own value). Online cells are named `..._online`; cells without the suffix are
cached (the grid before issue 22 was run cached).

Each metric is reported raw and as the gap |erased - reference| to the retrain-without-the-
concept reference (`zoo:digits-no-digit3`, `zoo:digits-no-colourred`, shipped as their UNet and
text encoder on the base model's autoencoder: erase/zoo/registry.py); the bench never builds one
(`erase zoo build digits --exclude digit=3 --shared-vae`, ~25 CPU-minutes) and says so in the
result when one is missing. The mean gap is the average of the concept-rate and retention gaps
(fractions); the Frechet gap (another scale) and the ASR gaps are reported apart.

Resumable: each cell is saved to `OUT/cells/` when done and skipped by a later run (`run_generation`).

Prompts. The shipped recipes train on the digits world's TRAINING phrasings; their hyperparameters
were chosen with `erase bench erasure` (held-out phrasings, prompt draw and image seeds 0). The
evaluation here uses the held-out phrasings drawn with `--eval-seed` (default 1): other template
choices, other colour choices and other image seeds than the ones the recipes were tuned on.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from erase.stats import mean_std

METHODS = {  # name -> (config stem, overrides)
    "esd_x": ("esd", []), "esd_u": ("esd", ["objective.variant=u"]), "salun": ("salun", []),
    "erasediff": ("erasediff", []), "ablation": ("ablation", []), "advunlearn": ("advunlearn", []),
    "neggrad": ("neggrad", []), "rum": ("rum_esd", []), "robust": ("robust", []),
}
UNIFORM_ONLY = {"rum", "robust"}  # no LoReUn twin: RUM schedules its own groups; robust.yaml is one recipe
WEIGHTINGS = ("uniform", "loreun_s", "loreun_d")
ATTACKS = ("unlearndiffatk", "concept_inversion")
REFERENCES = {"digit": "digits-no-digit3", "colour": "digits-no-colourred"}
BUILD = {"digit": "erase zoo build digits --exclude digit=3 --shared-vae",
         "colour": "erase zoo build digits --exclude colour=red --shared-vae"}


def cell_overrides(method: str, weighting: str, concept: str, seed: int, steps: int | None) -> tuple[str, list[str]]:
    """(config stem, overrides) of one cell."""
    stem, ov = METHODS[method]
    if weighting != "uniform" and method not in UNIFORM_ONLY:
        stem = f"{stem}_loreun"
    ov = [*ov, f"train.seed={seed}", "train.checkpoint_every=0", "train.report_to=none"]
    if weighting == "loreun_s":
        ov.append("weighting.kind=static")
    elif weighting == "uniform" and method != "rum":
        ov.append("weighting.kind=uniform")
    if steps is not None and method != "rum":
        ov.append(f"train.steps={steps}")
    if concept == "colour":  # the digit recipe's hyperparameters, forget "red", retain the other inks
        from erase.zoo.digits import COLOUR_NAMES, DIGIT_WORDS

        forget = [f"a red handwritten {w}" for w in DIGIT_WORDS] + ["the number 3 written in red", "red ink"]
        retain = [f"a {c} handwritten {w}" for c in COLOUR_NAMES if c != "red" for w in DIGIT_WORDS[::3]]
        anchor = [f"a handwritten {w}" for w in DIGIT_WORDS]
        ov += ["concept=red ink", _list("data.forget.prompts", forget), _list("data.retain.prompts", retain),
               "data.retain.file=null", _list("data.anchor.prompts", anchor[: len(forget)] + anchor[:2])]
    return stem, ov


def _list(key: str, items: list[str]) -> str:
    return f"{key}=[" + ", ".join(json.dumps(x) for x in items) + "]"


def train_cell(config: Path, run_dir: Path, overrides: list[str], cache_pool: Path | None = None) -> dict:
    """Train one cell into `run_dir`. `cache_pool`: a folder of one-time caches (generated images,
    ESD trajectories, saliency masks) shared by the cells: the trainer names each cache file by a
    hash of everything it depends on (model, data config, prompts, seed), so the cells of one
    method and seed reuse them. One pool per method: LoReUn-s caches per-sample losses of the
    objective under a name that does not say which objective (esd_x and esd_u share a data key)."""
    from erase.config import load_config
    from erase.train.config import RunConfig, resolve_data_paths
    from erase.train.trainer import Trainer

    cfg = resolve_data_paths(load_config(RunConfig, config, overrides), config)
    cfg.output_dir = str(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    if cache_pool is not None and cache_pool.is_dir():
        (run_dir / "cache").mkdir(parents=True)
        for f in cache_pool.glob("*.safetensors"):
            shutil.copy2(f, run_dir / "cache" / f.name)
    if cfg.rum.enabled:
        from erase.rum.runner import run_rum

        info = run_rum(cfg, run_dir, str(config))
    else:
        info = Trainer(cfg, run_dir, str(config)).run()
    if cache_pool is not None:
        cache_pool.mkdir(parents=True, exist_ok=True)
        for f in (run_dir / "cache").glob("*.safetensors"):
            if not (cache_pool / f.name).exists():
                os.replace(f, cache_pool / f.name)
    shutil.rmtree(run_dir / "cache", ignore_errors=True)
    return info


def completed_run(run_dir: Path, config: Path, overrides: list[str]) -> float | None:
    """The training seconds of a run that already completed in `run_dir` with this cell's config
    (every key of the cell's resolved config equal to the run's config.yaml; the run's objective may
    list more, its defaults), else None."""
    from erase.config import load_config, read_yaml, to_dict
    from erase.train.config import RunConfig, resolve_data_paths

    info, saved = run_dir / "run.json", run_dir / "config.yaml"
    if not (info.is_file() and saved.is_file() and (run_dir / "model" / "model_index.json").is_file()):
        return None
    run = json.loads(info.read_text())
    if run.get("status") != "completed":
        return None
    want = to_dict(resolve_data_paths(load_config(RunConfig, config, overrides), config))
    have = read_yaml(saved)
    for k, v in want.items():
        if k == "output_dir":
            continue
        if k == "objective":
            if any(have.get(k, {}).get(a) != b for a, b in v.items()):
                return None
        elif have.get(k) != v:
            return None
    return float(run.get("wall_time_s", 0.0))


def model_metrics(source: str, concept: str, prompts: list, judges, guidance: float, steps: int) -> dict:
    """Concept rate, retention and Frechet distance of one model on the evaluation prompts."""
    from erase.bench import digits_world as dw
    from erase.models.loading import load_pipeline
    from erase.zoo.digits import COLOUR_NAMES

    images = dw.generate(load_pipeline(source), prompts, guidance, steps, desc=f"generating ({Path(source).name})")
    j = dw.judge(judges, images, prompts)
    pred_c = judges.predict(images)["colour"].argmax(1)
    per_colour = {}
    for c, name in enumerate(COLOUR_NAMES):
        idx = [i for i, p in enumerate(prompts) if p.colour == c]
        if idx:
            per_colour[name] = float(np.mean(pred_c[idx] == c))
    others = [a for w, a in j["digit_accuracy_per_digit"].items() if w != "three"]
    out = {"digit_rate": j["digit_accuracy_per_digit"].get("three"), "colour_rate": per_colour.get("red"),
           "other_digits": float(np.mean(others)), "other_inks": float(np.mean([a for n, a in per_colour.items() if n != "red"])),
           "frechet": dw.frechet_report(judges, images)["frechet_generated_vs_real"], "per_colour": per_colour,
           "per_digit": j["digit_accuracy_per_digit"]}
    out["concept_rate"] = out["digit_rate"] if concept == "digit" else out["colour_rate"]
    return out


DEFAULT_ATTACK_SUITE = "prompts/digits/digit3.csv"


def attack_asr(source: str, attack: str, out: Path, quick: bool, limit: int, budget: str | None = None,
               suite: str = DEFAULT_ATTACK_SUITE) -> float | None:
    """ASR (a fraction) of `erase audit --attack` on the digit-3 prompts of `suite` (its first `limit`)
    against the digits detector.

    `budget`: the attack's named budget (default: "quick" with --quick, else "official").
    """
    from erase.cli import main

    args = ["audit", "--model", source, "--suite", suite, "--detector", "digits:three",
            "--attack", attack, "--reference-model", "zoo:digits", "--attack-limit", str(limit), "--limit", str(limit),
            "--batch-size", str(max(1, limit)), "--out", str(out), "--steps", "4" if quick else "25"]
    args += ["--attack-budget", budget or ("quick" if quick else "official")]
    if quick:
        args += ["--attack-steps", "1"]
        if attack == "unlearndiffatk":
            args += ["--attack-timesteps", "1"]
    if main(args) != 0:
        raise RuntimeError(f"erase audit failed for {source} ({attack})")
    asr = json.loads((out / "results.json").read_text())["metrics"]["asr"]
    return None if asr is None else float(asr)


RATE_KEYS = ("concept_rate", "other_digits", "other_inks", "asr_unlearndiffatk", "asr_concept_inversion")
GAP_KEYS = (*RATE_KEYS[:3], "frechet", *RATE_KEYS[3:], "pinpoint")  # pinpoint: reported apart, like Frechet


def _alike(m: dict, ref: dict, key: str) -> bool:
    """Two ASRs compare only when measured with the same suite, prompt limit and budget."""
    if not key.startswith("asr_"):
        return True
    a = key.removeprefix("asr_")
    return (m.get("attack_settings") or {}).get(a) == (ref.get("attack_settings") or {}).get(a)


def gaps(m: dict, ref: dict | None) -> dict | None:
    if ref is None:
        return None
    return {k: abs(m[k] - ref[k]) for k in GAP_KEYS if m.get(k) is not None and ref.get(k) is not None and _alike(m, ref, k)}


def retention_drops(m: dict, base: dict | None, concept: str) -> dict:
    """The worst drops against the base on the same prompts: `max_other_drop` (the worst other
    digit; every digit for the colour concept) and `max_other_ink_drop` (every ink but red for the colour)."""
    if base is None:
        return {}
    out = {}
    digits = {w: base["per_digit"][w] - a for w, a in m["per_digit"].items() if not (concept == "digit" and w == "three")}
    if digits:
        worst = max(digits, key=digits.get)
        out.update(max_other_drop=digits[worst], worst_other_digit=worst)
    inks = {c: base["per_colour"][c] - a for c, a in m["per_colour"].items() if not (concept == "colour" and c == "red")}
    if inks:
        worst = max(inks, key=inks.get)
        out.update(max_other_ink_drop=inks[worst], worst_other_ink=worst)
    return out


MEAN_GAP_KEYS = RATE_KEYS[:3]  # the attacks' ASR gaps stay apart: they are run on some seeds only


def mean_rate_gap(gap: dict) -> float | None:
    """The average gap over concept rate and retention (fractions); the Frechet gap (another scale)
    and the ASR gaps (often measured on fewer seeds) are reported apart."""
    vals = [gap[k] for k in MEAN_GAP_KEYS if k in gap]
    return statistics.fmean(vals) if vals else None


def summarise(cells: list[dict]) -> list[dict]:
    """Mean +- std over seeds per (concept, method, weighting): raw metrics and mean gap."""
    groups: dict[tuple, list[dict]] = {}
    for c in cells:
        groups.setdefault((c["concept"], c["method"], c["weighting"], c.get("trajectory")), []).append(c)
    rows = []
    for (concept, method, weighting, trajectory), cs in groups.items():
        row = {"concept": concept, "method": method, "weighting": weighting, "trajectory": trajectory,
               "seeds": [c["seed"] for c in cs]}
        for k in GAP_KEYS:
            vals = [c["metrics"][k] for c in cs if c["metrics"].get(k) is not None]
            if vals:
                row[k] = mean_std(vals)
        for k in ("max_other_drop", "max_other_ink_drop"):
            vals = [c["retention"][k] for c in cs if k in c.get("retention", {})]
            if vals:
                row[k] = mean_std(vals)
        avg = [g for g in (mean_rate_gap(c["gap"]) for c in cs if c.get("gap")) if g is not None]
        row["mean_gap"] = mean_std(avg)
        row["frechet_gap"] = mean_std([c["gap"]["frechet"] for c in cs if c.get("gap") and "frechet" in c["gap"]])
        for k in RATE_KEYS:
            row[f"gap_{k}"] = mean_std([c["gap"][k] for c in cs if c.get("gap") and k in c["gap"]])
        rows.append(row)
    return rows


def _paired_values(cells: list[dict], key: str) -> dict[tuple, dict[int, float]]:
    """{(concept, method, weighting, trajectory): {seed: value}}: `key` is "mean_gap" (the cell's mean rate
    gap to the reference) or a raw metric (e.g. "concept_rate", "asr_concept_inversion")."""
    per: dict[tuple, dict[int, float]] = {}
    for c in cells:
        v = mean_rate_gap(c["gap"]) if key == "mean_gap" and c.get("gap") else c["metrics"].get(key)
        if v is not None:
            per.setdefault((c["concept"], c["method"], c["weighting"], c.get("trajectory")), {})[c["seed"]] = v
    return per


def _verdict(base: dict[int, float], arm: dict[int, float]) -> dict:
    """`erase.stats.paired_interval` of arm - base by seed (lower is better), with both arms' means."""
    from erase.stats import paired_interval

    v = paired_interval(base, arm, better="lower")
    mean = (lambda d: statistics.fmean(d[s] for s in v["seeds"]) if v["seeds"] else None)
    return {"base": mean(base), "arm": mean(arm),
            **{k: v[k] for k in ("mean_diff", "ci_low", "ci_high", "seeds_lower", "n", "verdict")}}


def loreun_verdicts(cells: list[dict], key: str = "mean_gap") -> list[dict]:
    """Per (concept, method) and LoReUn weighting: `key` against uniform, paired by seed
    (`erase.stats.paired_interval`: mean difference, 95% paired-t interval, seeds lower; verdict
    "helps" / "hurts" / "no difference" read off the interval, "too few seeds" below 2 pairs)."""
    per = _paired_values(cells, key)
    out = []
    for (concept, method, weighting, trajectory), arm in per.items():
        uni = per.get((concept, method, "uniform", trajectory))  # online and cached cells are never paired
        if weighting == "uniform" or uni is None:
            continue
        v = _verdict(uni, arm)
        out.append({"concept": concept, "method": method, "weighting": weighting, "key": key,
                    "uniform": v.pop("base"), "loreun": v.pop("arm"), **v})
    return out


def trajectory_verdicts(cells: list[dict], keys: tuple[str, ...]) -> list[dict]:
    """Per (concept, method, weighting) trained both ways: online minus cached for each of `keys`, paired
    by seed as `loreun_verdicts` pairs LoReUn with uniform ("helps": online lower)."""
    out = []
    for key in keys:
        per = _paired_values(cells, key)
        for (concept, method, weighting, trajectory), online in per.items():
            cached = per.get((concept, method, weighting, "cached"))
            if trajectory != "online" or cached is None:
                continue
            v = _verdict(cached, online)
            out.append({"concept": concept, "method": method, "weighting": weighting, "key": key,
                        "cached": v.pop("base"), "online": v.pop("arm"), **v})
    return out


def verdict_table(verdicts: list[dict], base: str, arm: str) -> str:
    """Markdown rows of `loreun_verdicts` (base "uniform", arm "loreun") or `trajectory_verdicts`
    ("cached", "online"); rates in points."""
    head = (f"| concept | method | weighting | metric | {base} | {arm} | paired change [95% CI] | seeds lower | verdict |\n"
            "|---|---|---|---|---|---|---|---|---|\n")
    return head + "\n".join(
        f"| {v['concept']} | {v['method']} | {v['weighting']} | {v['key']} | {_pct(v[base])} | {_pct(v[arm])} | "
        f"{_pct(v['mean_diff'], '+')} [{_pct(v['ci_low'], '+')}, {_pct(v['ci_high'], '+')}] | {v['seeds_lower']}/{v['n']} | "
        f"{v['verdict']} |" for v in verdicts)


def _pct(x: float | None, sign: str = "") -> str:
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:{sign}.1f}"


def table(rows: list[dict]) -> str:
    def f(v, pct=True):
        if not v:
            return "-"
        s = 100 if pct else 1
        return f"{s * v['mean']:.1f} ± {s * v['std']:.1f}"

    head = ("| concept | method | weighting | seeds | concept rate % | other digits % | other inks % | Frechet | "
            "worst other digit, drop vs base (points) | ASR UDA % | ASR CI % | "
            "mean gap to retrain (concept rate, retention; points) | Frechet gap | nearest digits % (pinpoint) |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        # the attacks often run on fewer seeds than the cell has: say on how many
        asr = [f(r.get(k)) + (f" (n={r[k]['n']})" if r.get(k) and r[k]["n"] != len(r["seeds"]) else "")
               for k in ("asr_unlearndiffatk", "asr_concept_inversion")]
        method = r["method"] + (f" ({r['trajectory']})" if r.get("trajectory") else "")
        lines.append(f"| {r['concept']} | {method} | {r['weighting']} | {len(r['seeds'])} | {f(r.get('concept_rate'))} | "
                     f"{f(r.get('other_digits'))} | {f(r.get('other_inks'))} | {f(r.get('frechet'), False)} | "
                     f"{f(r.get('max_other_drop'))} | {asr[0]} | {asr[1]} | "
                     f"{f(r['mean_gap']) if r['mean_gap'] else 'no reference'} | {f(r.get('frechet_gap'), False)} | "
                     f"{f(r.get('pinpoint'))} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, key: str) -> Path:
    """Bars per method, one per weighting, mean +- std over seeds of `key` (the gap, else the raw metric)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from erase.io import atomic_write_bytes

    concepts = sorted({r["concept"] for r in rows})
    fig, axes = plt.subplots(1, len(concepts), figsize=(6 * len(concepts), 3.6), squeeze=False)
    for ax, concept in zip(axes[0], concepts):
        rs = [r for r in rows if r["concept"] == concept]
        label = (lambda r: r["method"] + (" (online)" if r.get("trajectory") == "online" else ""))  # online: a bar group of its own
        methods = list(dict.fromkeys(label(r) for r in rs))
        for k, w in enumerate(WEIGHTINGS):
            vals = [next((r for r in rs if label(r) == m and r["weighting"] == w), None) for m in methods]
            scale = 1.0 if "frechet" in key else 100.0  # rates in points
            ys = [scale * (v.get(key) or {}).get("mean", math.nan) if v else math.nan for v in vals]
            es = [scale * (v.get(key) or {}).get("std", 0.0) if v else 0.0 for v in vals]
            ax.bar(np.arange(len(methods)) + (k - 1) * 0.27, ys, 0.27, yerr=es, capsize=3, label=w)
        ax.set_xticks(range(len(methods)), methods, rotation=30)
        ax.set(title=f"{concept}: {key} (mean ± std over seeds)", ylabel="Frechet" if "frechet" in key else "points")
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def reference_source(concept: str, given: str | None) -> str | None:
    """The retrain reference for `concept`: the given source, else the zoo entry if it is built."""
    if given:
        return given
    from erase.zoo.registry import entries

    name = REFERENCES[concept]
    return f"zoo:{name}" if any(e.name == name and e.exists for e in entries()) else None


TRAJECTORY_METHODS = {"esd_x", "esd_u", "advunlearn", "robust", "rum"}  # x_t from DDIM trajectories (objective.trajectory)


def _cell_key(concept: str, method: str, weighting: str, seed: int, trajectory: str | None = None) -> str:
    return f"{concept}_{method}_{weighting}_s{seed}" + ("_online" if trajectory == "online" else "")


def resolved_trajectory(config: Path, overrides: list[str]) -> str | None:
    """The `objective.trajectory` a cell's run will use (None for objectives without one; RUM: its groups')."""
    from erase.config import load_config
    from erase.objectives import build_objective
    from erase.train.config import RunConfig

    cfg = load_config(RunConfig, config, overrides)
    obj = build_objective(cfg.method, cfg.objective, str(config))
    return getattr(obj.config, "trajectory", None)


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _check_settings(saved: dict, settings: dict, path: Path) -> None:
    from erase.errors import EraseError

    diff = [k for k in settings if saved.get("settings", {}).get(k) != settings[k]]
    if diff:
        raise EraseError(f"{path}: settings: made with other {', '.join(diff)} than this run; use another --out")


# The cell-resume pieces `erase bench generation` and `erase bench attacks` share.
QUICK_TRAIN = ["train.batch_size=2", "data.forget.samples_per_prompt=1", "objective.ddim_steps=4",
               "objective.retain_weight=0", "data.generate_steps=4"]  # --quick: seconds per recipe (ESD's keys on ESD only)


def finished_cell(path: Path, settings: dict) -> dict | None:
    """The cell saved at `path` (None: not done yet); one made with other `settings` is refused (use another --out)."""
    saved = _load(path)
    if saved is not None:
        _check_settings(saved, settings, path)
    return saved


def check_names(flag: str, kind: str, given, known, note: str = "") -> None:
    """--methods / --attacks / --weightings: every name known, else one line before any work."""
    from erase.errors import EraseError

    for name in given:
        if name not in known:
            raise EraseError(f"{flag}: unknown {kind} {name!r} (known: {', '.join(known)}{note})")


def cell_recipe(configs_dir: Path, method: str, weighting: str, concept: str, seed: int, steps: int | None,
                quick: bool) -> tuple[Path, list[str]]:
    """(recipe file, overrides) of one cell's training run: `cell_overrides`, plus QUICK_TRAIN under --quick."""
    stem, ov = cell_overrides(method, weighting, concept, seed, steps)
    if quick:
        ov += [o for o in QUICK_TRAIN if not (o.startswith("objective.") and "esd" not in stem)]
    return configs_dir / f"{stem}.yaml", ov


def trained_model(config: Path, run_dir: Path, overrides: list[str], cache_pool: Path) -> float | None:
    """Train the cell into `run_dir` unless a run of this very config completed there (`completed_run`); returns
    that earlier run's seconds, or None when it trained now. An interrupted or different run is trained again."""
    done = completed_run(run_dir, config, overrides)
    if done is None:
        train_cell(config, run_dir, overrides, cache_pool)
    return done


def run_generation(out: Path, *, quick: bool, methods: tuple[str, ...] | None = None,
                   weightings: tuple[str, ...] | None = None, concepts: tuple[str, ...] = ("digit",),
                   seeds: tuple[int, ...] | None = None, steps: int | None = None, per_digit: int | None = None,
                   attacks: tuple[str, ...] = ATTACKS, attack_limit: int | None = None, eval_seed: int = 1,
                   references: dict[str, str | None] | None = None, configs_dir: Path | None = None,
                   attack_budgets: dict[str, str] | None = None, attack_limits: dict[str, int] | None = None,
                   attack_suite: str = DEFAULT_ATTACK_SUITE, trajectory: str | None = None,
                   log: Callable[[str], None] = print) -> dict:
    """Run the cells not yet in `out` and summarise every cell there.

    Resumable: each cell (and each reference's metrics) is written to `out/cells/KEY.json` as soon
    as it is done, and a later run with the same evaluation settings skips it; an attack asked for
    later is added to a finished cell whose model is still in `out/work`. So a grid survives an
    interruption and can be split over invocations (`--methods`, `--seeds`, `--concepts`) into one
    folder. Gaps to the reference are computed at the end from whatever references are there.
    A cell whose run already completed in `out/work/KEY` with the same config is evaluated, not retrained.

    `attack_limits`: prompts attacked per attack (default `attack_limit` for each); `trajectory`:
    `objective.trajectory` of every ESD-family cell (None: each recipe's own).
    """
    from erase.bench import digits_world as dw
    from erase.errors import EraseError
    from erase.io import atomic_write_json
    from erase.resources import data_path, shown
    from erase.zoo.judges import load_judges

    configs_dir = configs_dir or data_path("configs/digits")
    methods = methods or (("esd_x",) if quick else tuple(m for m in METHODS if m != "robust"))
    weightings = weightings or (("uniform",) if quick else WEIGHTINGS)
    seeds = seeds or ((0,) if quick else (0, 1, 2))
    steps = steps if steps is not None else (2 if quick else 150)
    per_digit = per_digit or (1 if quick else 20)
    attack_limit = attack_limit or (1 if quick else 10)
    guidance, gen_steps = 5.0, (4 if quick else 25)
    budgets = {a: (attack_budgets or {}).get(a) or ("quick" if quick else "official") for a in ATTACKS}
    limits = {a: (attack_limits or {}).get(a) or attack_limit for a in ATTACKS}
    if trajectory not in (None, "online", "cached"):
        raise EraseError(f"--trajectory: expected online or cached, got {trajectory!r}")
    if not data_path(attack_suite).is_file() and not Path(attack_suite).is_file():
        raise EraseError(f"--attack-suite: {attack_suite}: no such file")
    check_names("--methods", "method", methods, METHODS)
    check_names("--weightings", "weighting", weightings, WEIGHTINGS)
    check_names("--attacks", "attack", attacks, ATTACKS, ", none")
    judges = load_judges()
    prompts = dw.heldout_prompts(per_digit, eval_seed)
    settings = {"quick": quick, "steps": steps, "per_digit": per_digit, "eval_seed": eval_seed, "guidance": guidance,
                "ddim_steps": gen_steps}
    attack_settings = {"attack_limits": limits, "attack_budgets": budgets, "attack_suite": attack_suite}
    result: dict = {"benchmark": "generation", **settings, "seeds": list(seeds), "attacks": list(attacks),
                    **attack_settings, "references": {}, "cells": []}
    cells_dir = out / "cells"
    t0 = time.time()
    if "digit" in concepts:  # the base model's confusions, for pinpoint-ness (once per folder)
        base_path = cells_dir / "base.json"
        if finished_cell(base_path, settings) is None:
            from erase.models.loading import load_pipeline

            j = dw.judge(judges, dw.generate(load_pipeline("zoo:digits"), prompts, guidance, gen_steps, desc="generating (base)"), prompts)
            atomic_write_json(base_path, {"source": "zoo:digits", "settings": settings, "confusion": j["confusion"],
                                          "per_digit": j["digit_accuracy_per_digit"]})

    def with_attacks(m: dict, src: str, work: Path, concept: str) -> bool:
        """Add the attacks asked for that `m` lacks; True if any was added."""
        added = False
        for a in attacks if concept == "digit" else ():
            want = {"limit": limits[a], "budget": budgets[a], **({"suite": attack_suite} if attack_suite != DEFAULT_ATTACK_SUITE else {})}
            if f"asr_{a}" in m:
                if (m.get("attack_settings") or {}).get(a) != want:
                    log(f"{work}: {a} was measured with {m['attack_settings'][a]}, kept (not {want})")
                continue
            if not Path(src).exists() and not src.startswith("zoo:"):
                log(f"{work}: the model is gone; {a} not run")
                continue
            m[f"asr_{a}"] = attack_asr(src, a, work / f"audit_{a}", quick, limits[a], budgets[a], attack_suite)
            m.setdefault("attack_settings", {})[a] = want
            added = True
        return added

    for concept in concepts:  # the base model on the same prompts: the worst-other-digit rule's yardstick
        path = cells_dir / f"base_{concept}.json"
        if finished_cell(path, settings) is None:
            atomic_write_json(path, {"source": "zoo:digits", "settings": settings,
                                     "metrics": model_metrics("zoo:digits", concept, prompts, judges, guidance, gen_steps)})
    for concept in concepts:
        path = cells_dir / f"reference_{concept}.json"
        saved = finished_cell(path, settings)
        src = (references or {}).get(concept) or reference_source(concept, None)
        if saved is None and src is not None:
            saved = {"source": src, "settings": settings, "metrics": model_metrics(src, concept, prompts, judges, guidance, gen_steps)}
        if saved is not None and with_attacks(saved["metrics"], saved["source"], out / "work" / f"ref_{concept}", concept) | (
                not path.is_file()):
            atomic_write_json(path, saved)
    for concept in concepts:
        for method in methods:
            for weighting in (("uniform",) if method in UNIFORM_ONLY else weightings):
                for seed in seeds:
                    config, ov = cell_recipe(configs_dir, method, weighting, concept, seed, steps, quick)
                    if trajectory and method in TRAJECTORY_METHODS and method != "rum":
                        ov.append(f"objective.trajectory={trajectory}")
                    traj = resolved_trajectory(config, ov) if method in TRAJECTORY_METHODS else None
                    key = _cell_key(concept, method, weighting, seed, traj)
                    path, run_dir = cells_dir / f"{key}.json", out / "work" / key
                    cell = finished_cell(path, settings)
                    if cell is not None:
                        if with_attacks(cell["metrics"], str(run_dir / "model"), run_dir, concept):
                            atomic_write_json(path, cell)
                        log(f"{key}: done before, skipped")
                        continue
                    c0 = time.time()
                    train_s = trained_model(config, run_dir, ov, out / "work" / "cache_pool" / f"{concept}_{method}")
                    if train_s is not None:
                        log(f"{key}: the run in {run_dir} completed before ({train_s:.0f} s): evaluated, not retrained")
                    src = str(run_dir / "model")
                    m = model_metrics(src, concept, prompts, judges, guidance, gen_steps)
                    with_attacks(m, src, run_dir, concept)
                    cell = {"concept": concept, "method": method, "weighting": weighting, "seed": seed,
                            **({"trajectory": traj} if traj else {}),
                            "config": shown(config), "overrides": ov, "settings": settings, "metrics": m,
                            "seconds": round(time.time() - c0 + (train_s or 0.0), 1)}
                    atomic_write_json(path, cell)
                    log(f"{key}: concept rate {m['concept_rate']:.2f}, other digits {m['other_digits']:.2f}, "
                        f"other inks {m['other_inks']:.2f} ({cell['seconds']} s)")
    result.update(collect(out))
    result["seconds"] = round(time.time() - t0, 1)
    atomic_write_json(out / "results.json", result)
    return result


def with_pinpoint(m: dict, concept: str, base: dict | None) -> None:
    """Add `pinpoint` (mean accuracy on the two digits nearest to three on the base model) and
    `pinpoint_nearest` to a digit cell's metrics, from its per-digit accuracy and the base confusions."""
    if concept != "digit" or base is None or not m.get("per_digit"):
        return
    from erase.bench.digits_world import pinpoint

    p = pinpoint(m["per_digit"], base["confusion"], ["three"])["three"]
    m["pinpoint"], m["pinpoint_nearest"] = p["retention"], p["nearest"]


def collect(out: Path) -> dict:
    """Every finished cell and reference in `out/cells`, with gaps, the summary, the table and the plot."""
    refs = {p.stem.removeprefix("reference_"): json.loads(p.read_text()) for p in sorted((out / "cells").glob("reference_*.json"))}
    confusion_base = _load(out / "cells" / "base.json")  # the base model's confusions (pinpoint-ness)
    for concept, ref in refs.items():
        with_pinpoint(ref["metrics"], concept, confusion_base)
    bases = {p.stem.removeprefix("base_"): json.loads(p.read_text()) for p in sorted((out / "cells").glob("base_*.json"))}
    cells = []
    for p in sorted((out / "cells").glob("*.json")):
        if p.stem.startswith(("reference_", "base_")) or p.stem == "base":
            continue
        c = json.loads(p.read_text())
        with_pinpoint(c["metrics"], c["concept"], confusion_base)
        ref = refs.get(c["concept"])
        c["gap"] = gaps(c["metrics"], ref["metrics"] if ref else None)
        base = bases.get(c["concept"])
        c["retention"] = retention_drops(c["metrics"], base["metrics"] if base else None, c["concept"])
        cells.append(c)
    order = list(METHODS)
    cells.sort(key=lambda c: (c["concept"], order.index(c["method"]) if c["method"] in order else len(order),
                              WEIGHTINGS.index(c["weighting"]), c.get("trajectory") or "", c["seed"]))
    references = {concept: refs[concept] if concept in refs else
                  {"source": None, "note": f"not built: gaps omitted; build it with `{BUILD[concept]}`"}
                  for concept in sorted({c["concept"] for c in cells} | set(refs))}
    summary = summarise(cells)
    has_gap = any(r["mean_gap"] for r in summary)
    png = plot(summary, out / "generation.png", "mean_gap" if has_gap else "concept_rate") if summary else None
    verdicts = loreun_verdicts(cells, "mean_gap" if has_gap else "concept_rate")
    # online vs cached trajectories (objective.trajectory), where a recipe was trained both ways
    trajectory = trajectory_verdicts(cells, ("mean_gap" if has_gap else "concept_rate", "asr_concept_inversion"))
    text = table(summary)
    if verdicts:
        text += "\n\n" + verdict_table(verdicts, "uniform", "loreun")
    if trajectory:
        text += "\n\n" + verdict_table(trajectory, "cached", "online")
    return {"references": references, "bases": bases, "cells": cells, "summary": summary, "table": text, "loreun": verdicts,
            "trajectory": trajectory, "plot": str(png) if png else None}
