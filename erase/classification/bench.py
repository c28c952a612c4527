"""`erase bench classification`: every method x weighting x seed against Retrain, on digits or CIFAR-10.

Per forget set (`--forget random10|memorised|class`, or `all` for the three, each in OUT/<forget>/):

1. Tuning, on the VALIDATION split only (it stands in for the test split: TA = validation accuracy,
   MIA non-members = validation images), on the tuning seeds (100; never a test seed): for every
   (method, weighting) the same learning-rate grid (`LR_GRID` x the method's centre in
   `methods.DEFAULTS`: three points for uniform and for each LoReUn arm alike); the point with the
   lowest validation Avg. Gap wins. Fixed before any test-split number exists; saved to
   OUT/tuning.json (reused by a later run with the same settings).
2. Per test seed (each its own original model, forget draw and Retrain): every method at its
   chosen rate, with uniform weighting and, where it has a forget loss, LoReUn-s and LoReUn-d;
   metrics on the test split. Saved to OUT/seeds/seed_<s>.json (a later run reuses finished seeds).
3. `verdicts`: per (method, LoReUn weighting), Avg. Gap minus uniform's, paired by seed
   (`erase.stats.paired_interval`: mean, 95% paired-t interval, seeds lower, helps / hurts / no
   difference). `claims`: RUM against NegGrad+ (ToW, paired), and every method's forget-set
   accuracy and test accuracy against Retrain's (over-forgetting: UA above Retrain's).

Writes OUT/results.json (`rows`: one record per method, weighting and seed, LoReUn rows with
`tau` and `weight_spread`; `summary`; `tuning`; `verdicts`; `claims`), OUT/table.md and OUT/gap.png.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from erase.classification import data as D
from erase.classification import methods as M
from erase.classification.metrics import avg_gap, evaluate, tow
from erase.classification.models import build
from erase.classification.train import TrainRecipe, fit, per_sample_loss
from erase.stats import describe, paired_interval

WEIGHTINGS: tuple[str, ...] = ("uniform", "static", "dynamic")
LABELS = {"uniform": "uniform", "static": "LoReUn-s", "dynamic": "LoReUn-d"}
METRICS = ("UA", "RA", "TA", "MIA", "avg_gap", "ToW", "time_s")
FORGETS: tuple[str, ...] = ("random10", "memorised", "class")
LR_GRID: tuple[float, ...] = (1 / 3, 1.0, 3.0)  # x the method's centre rate; the same for every arm
TUNE_SEEDS: tuple[int, ...] = (100,)


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    data: str = "digits"
    data_dir: str | None = None
    forget: str = "random10"  # or "all"
    seeds: int | tuple[int, ...] = 5  # a count (seeds 0..N-1) or the seeds themselves
    quick: bool = False
    tau: float = M.DEFAULT_TAU
    normalize: str = "batch"
    standardize: bool = True
    width: int = 64  # ResNet-18 width (CIFAR-10 only)
    methods: tuple[str, ...] = M.METHODS
    tune: bool = True
    tune_seeds: tuple[int, ...] = TUNE_SEEDS

    @property
    def seed_list(self) -> tuple[int, ...]:
        return tuple(range(self.seeds)) if isinstance(self.seeds, int) else tuple(self.seeds)

    @property
    def forgets(self) -> tuple[str, ...]:
        return FORGETS if self.forget == "all" else (self.forget,)

    @property
    def epoch_factor(self) -> float:
        return 0.2 if self.quick else 1.0

    @property
    def recipe(self) -> TrainRecipe:
        if self.data == "cifar10":
            return TrainRecipe(epochs=4 if self.quick else 182, batch_size=64 if self.quick else 256)
        # SalUn's recipe (lr 0.1, x0.1 at 1/2 and 3/4, crop + flip) at 40 epochs of batch 128 on digits
        return TrainRecipe(epochs=8 if self.quick else 40, batch_size=128)


Originals = dict[int, tuple[torch.nn.Module, torch.Tensor]]


def original_model(cfg: BenchConfig, dataset: D.Dataset, seed: int, cache: Originals) -> tuple[torch.nn.Module, torch.Tensor]:
    """The original model of a seed (trained once, shared by the forget sets) and RUM's memorisation proxy."""
    if seed not in cache:
        torch.manual_seed(seed)
        model = build(dataset.name, dataset.num_classes, cfg.width).to(dataset.train.x.device)
        confidence = fit(model, dataset.train, cfg.recipe, seed=seed, record=True)
        model.eval()
        cache[seed] = (model, 1.0 - confidence.mean(0).cpu())
    return cache[seed]


def make_task(cfg: BenchConfig, dataset: D.Dataset, seed: int, forget: str | None = None,
              cache: Originals | None = None, validation: bool = False) -> M.Task:
    """The original model for this seed and the forget set; `validation`: metrics on the validation split."""
    forget = forget or cfg.forgets[0]
    model, memorisation = original_model(cfg, dataset, seed, {} if cache is None else cache)
    forget_idx = D.forget_indices(forget, dataset.train, seed, memorisation)  # type: ignore[arg-type]
    test = dataset.val if validation else dataset.test
    if forget == "class":
        test = test.subset(torch.nonzero(test.y != D.FORGET_CLASS).flatten())
    return M.Task(dataset, forget_idx, model, memorisation, test, cfg.recipe)


def method_config(method: str, cfg: BenchConfig, lr: float | None = None) -> M.MethodConfig | None:
    if method in ("Retrain", "Original"):
        return None
    base = M.defaults_for(cfg.data)[method].scaled(cfg.epoch_factor)
    return base if lr is None else dataclasses.replace(base, lr=lr)


def arms(cfg: BenchConfig) -> list[tuple[str, str]]:
    """(method, weighting) of every unlearning run, Retrain first."""
    out = []
    for method in ("Retrain", *[m for m in cfg.methods if m != "Retrain"]):
        out += [(method, k) for k in (WEIGHTINGS if method in M.FORGET_LOSS_METHODS else ("uniform",))]
    return out


def _wcfg(cfg: BenchConfig, kind: str):
    return M.weighting_config(kind, cfg.tau, cfg.normalize, cfg.standardize)


def _settings(cfg: BenchConfig, forget: str) -> dict[str, Any]:
    return {"data": cfg.data, "forget": forget, "quick": cfg.quick, "tau": cfg.tau, "normalize": cfg.normalize,
            "standardize": cfg.standardize, "recipe": dataclasses.asdict(cfg.recipe), "lr_grid": list(LR_GRID),
            "tune": cfg.tune, "tune_seeds": list(cfg.tune_seeds), "width": cfg.width,
            "methods": {m: dataclasses.asdict(c) for m in cfg.methods if (c := method_config(m, cfg)) is not None}}


def _load(path: Path, settings: dict) -> Any | None:
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    return saved if saved.get("settings") == settings else None


def tune(cfg: BenchConfig, dataset: D.Dataset, forget: str, cache: Originals, out: Path, log=print) -> dict[str, Any]:
    """{"method/weighting": {"lr", "val_gap", "grid": [[lr, val_gap], ...]}} on the validation split."""
    from erase.io import atomic_write_json

    settings = _settings(cfg, forget)
    saved = _load(out / "tuning.json", settings)
    if saved is not None:
        log(f"{forget}: tuning done before ({out / 'tuning.json'})")
        return saved["chosen"]
    tasks, refs = [], []
    for seed in cfg.tune_seeds:
        task = make_task(cfg, dataset, seed, forget, cache, validation=True)
        model, _ = M.unlearn(task, "Retrain", _wcfg(cfg, "uniform"), seed)
        tasks.append(task)
        refs.append(evaluate(model, task.forget, task.retain, task.test, seed))
    chosen: dict[str, Any] = {}
    for method, kind in arms(cfg):
        if method in ("Retrain", "Original"):
            continue
        centre = method_config(method, cfg).lr
        grid = []
        for factor in LR_GRID:
            lr = float(f"{centre * factor:.4g}")
            gaps = []
            for seed, task, ref in zip(cfg.tune_seeds, tasks, refs):
                model, _ = M.unlearn(task, method, _wcfg(cfg, kind), seed, method_config(method, cfg, lr))
                gaps.append(avg_gap(evaluate(model, task.forget, task.retain, task.test, seed), ref))
            grid.append([lr, round(statistics.fmean(gaps), 4)])
        best = min(grid, key=lambda g: g[1])
        chosen[f"{method}/{kind}"] = {"lr": best[0], "val_gap": best[1], "grid": grid}
        log(f"{forget}: tuned {method:>9} {LABELS[kind]:>8}: lr {best[0]:g} (validation Avg. Gap "
            + ", ".join(f"{lr:g}: {g:.2f}" for lr, g in grid) + ")")
    atomic_write_json(out / "tuning.json", {"settings": settings, "chosen": chosen})
    return chosen


def run_seed(cfg: BenchConfig, dataset: D.Dataset, seed: int, forget: str | None = None,
             chosen: dict[str, Any] | None = None, cache: Originals | None = None, log=print) -> list[dict[str, Any]]:
    forget = forget or cfg.forgets[0]
    task = make_task(cfg, dataset, seed, forget, cache)
    f_set, retain = task.forget, task.retain
    first = per_sample_loss(task.original, f_set)
    rows: list[dict[str, Any]] = []
    ref: dict[str, float] | None = None
    for method, kind in arms(cfg):
        pick = (chosen or {}).get(f"{method}/{kind}")
        mcfg = method_config(method, cfg, pick["lr"] if pick else None)
        wcfg = _wcfg(cfg, kind)
        model, seconds = M.unlearn(task, method, wcfg, seed, mcfg)
        m = evaluate(model, f_set, retain, task.test, seed)
        if ref is None:
            ref = dict(m)
        row = {"method": method, "weighting": kind, "seed": seed, **{k: round(v, 4) for k, v in m.items()},
               "avg_gap": round(avg_gap(m, ref), 4), "ToW": round(tow(m, ref), 6), "time_s": round(seconds, 3),
               "forget": forget, "n_forget": len(f_set), "lr": mcfg.lr if mcfg else None}
        if method in M.FORGET_LOSS_METHODS:
            row.update(tau=cfg.tau if kind != "uniform" else None, normalize=cfg.normalize, standardize=cfg.standardize,
                       weight_spread=round(M.weight_spread(wcfg, first), 4))
        rows.append(row)
        log(f"{forget} seed {seed} {method:>9} {LABELS[kind]:>8}: UA {m['UA']:6.2f} RA {m['RA']:6.2f} TA {m['TA']:6.2f} "
            f"MIA {m['MIA']:6.2f} gap {row['avg_gap']:5.2f} ({seconds:.1f} s)")
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    keys = list(dict.fromkeys((r["method"], r["weighting"]) for r in rows))
    for method, kind in keys:
        sel = [r for r in rows if r["method"] == method and r["weighting"] == kind]
        rec: dict[str, Any] = {"method": method, "weighting": kind, "n": len(sel)}
        for k in METRICS:
            vals = [float(r[k]) for r in sel]
            rec[k] = statistics.fmean(vals)
            rec[k + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        if sel and "weight_spread" in sel[0]:
            rec["weight_spread"] = statistics.fmean(float(r["weight_spread"]) for r in sel)
        out.append(rec)
    return out


def _by_seed(rows: list[dict[str, Any]], method: str, kind: str, key: str) -> dict[int, float]:
    return {r["seed"]: float(r[key]) for r in rows if r["method"] == method and r["weighting"] == kind}


def verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method with a forget loss and LoReUn weighting: Avg. Gap minus uniform's, paired by seed."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        uni = _by_seed(rows, method, "uniform", "avg_gap")
        for kind in ("static", "dynamic"):
            other = _by_seed(rows, method, kind, "avg_gap")
            if not other or not uni:
                continue
            v = paired_interval(uni, other, better="lower")
            out.append({"method": method, "weighting": kind, "forget": rows[0]["forget"], "metric": "avg_gap",
                        "uniform": statistics.fmean(uni[s] for s in v["seeds"]) if v["seeds"] else None,
                        "loreun": statistics.fmean(other[s] for s in v["seeds"]) if v["seeds"] else None, **v})
    return out


def claims(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The seeds' other claims, paired by seed: RUM against NegGrad+ (ToW and Avg. Gap, per weighting),
    and each method's UA and TA against Retrain's (uniform weighting): UA above Retrain's with an
    interval clear of 0 is over-forgetting, below it under-forgetting."""
    out = []
    for kind in WEIGHTINGS:
        ng, rum = _by_seed(rows, "NegGrad+", kind, "ToW"), _by_seed(rows, "RUM", kind, "ToW")
        if ng and rum:
            out.append({"claim": "RUM improves ToW over NegGrad+", "weighting": kind, "metric": "ToW",
                        **paired_interval(ng, rum, better="higher")})
            out.append({"claim": "RUM lowers Avg. Gap against NegGrad+", "weighting": kind, "metric": "avg_gap",
                        **paired_interval(_by_seed(rows, "NegGrad+", kind, "avg_gap"), _by_seed(rows, "RUM", kind, "avg_gap"))})
    ref_ua, ref_ta = _by_seed(rows, "Retrain", "uniform", "UA"), _by_seed(rows, "Retrain", "uniform", "TA")
    for method in dict.fromkeys(r["method"] for r in rows):
        if method == "Retrain":
            continue
        ua = paired_interval(ref_ua, _by_seed(rows, method, "uniform", "UA"))
        reading = ("too few seeds" if ua["n"] < 2 else "over-forgets" if ua["ci_low"] > 0
                   else "under-forgets" if ua["ci_high"] < 0 else "as Retrain")
        out.append({"claim": "forgetting against Retrain", "method": method, "weighting": "uniform", "metric": "UA",
                    **ua, "reading": reading})
        out.append({"claim": "test accuracy against Retrain", "method": method, "weighting": "uniform", "metric": "TA",
                    **paired_interval(ref_ta, _by_seed(rows, method, "uniform", "TA"), better="higher")})
    return out


def verdict_table(vs: list[dict[str, Any]], cs: list[dict[str, Any]]) -> str:
    lines = ["| method | weighting | Avg. Gap uniform | LoReUn | paired change [95% CI], seeds lower: verdict |",
             "|---|---|---|---|---|"]
    for v in vs:
        lines.append(f"| {v['method']} | {LABELS[v['weighting']]} | {v['uniform']:.2f} | {v['loreun']:.2f} | {describe(v)} |")
    lines += ["", "| claim | method / weighting | metric | paired difference [95% CI]: verdict |", "|---|---|---|---|"]
    for c in cs:
        who = f"{c.get('method', 'RUM - NegGrad+')} / {LABELS[c['weighting']]}"
        text = describe(c, digits=3 if c["metric"] == "ToW" else 2)
        if "reading" in c:
            text += f" ({c['reading']})"
        lines.append(f"| {c['claim']} | {who} | {c['metric']} | {text} |")
    return "\n".join(lines)


def table(summary: list[dict[str, Any]], chosen: dict[str, Any] | None = None) -> str:
    head = ("| method | weighting | UA | RA | TA | MIA | Avg. Gap | ToW | lr | weight max/min | time (s) |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for s in summary:
        cells = [f"{s[k]:.2f} ± {s[k + '_std']:.2f}" for k in ("UA", "RA", "TA", "MIA", "avg_gap")]
        cells.append(f"{s['ToW']:.3f} ± {s['ToW_std']:.3f}")
        pick = (chosen or {}).get(f"{s['method']}/{s['weighting']}")
        cells.append(f"{pick['lr']:g}" if pick else "-")
        cells.append(f"{s['weight_spread']:.1f}" if "weight_spread" in s else "-")
        cells.append(f"{s['time_s']:.1f}")
        lines.append(f"| {s['method']} | {LABELS[s['weighting']]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(summary: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in dict.fromkeys(s["method"] for s in summary) if m != "Retrain"]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(methods) + 2), 3.6))
    width = 0.27
    for j, kind in enumerate(WEIGHTINGS):
        xs, ys, es = [], [], []
        for i, m in enumerate(methods):
            s = next((s for s in summary if s["method"] == m and s["weighting"] == kind), None)
            if s is not None:
                alone = not any(t["method"] == m and t["weighting"] != "uniform" for t in summary)
                xs.append(i + (0 if alone else (j - 1) * width))
                ys.append(s["avg_gap"])
                es.append(s["avg_gap_std"])
        if xs:
            ax.bar(xs, ys, width, yerr=es, capsize=2, label=LABELS[kind])
    ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
    ax.set_yscale("symlog", linthresh=1.0)  # linear below 1 point, logarithmic above: collapses stay on the chart
    ax.set_ylim(bottom=0)
    ax.set_ylabel("Avg. Gap to Retrain (points)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    import io

    from erase.io import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def run_forget(cfg: BenchConfig, dataset: D.Dataset, forget: str, out: Path, cache: Originals, log=print) -> dict[str, Any]:
    from erase.io import atomic_write_json, atomic_write_text

    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    chosen = tune(cfg, dataset, forget, cache, out, log) if cfg.tune else {}
    settings = {**_settings(cfg, forget), "chosen": hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:16]}
    rows: list[dict[str, Any]] = []
    for seed in cfg.seed_list:
        path = out / "seeds" / f"seed_{seed}.json"
        saved = _load(path, settings)
        if saved is None:
            saved = {"settings": settings, "rows": run_seed(cfg, dataset, seed, forget, chosen, cache, log)}
            atomic_write_json(path, saved)
        else:
            log(f"{forget} seed {seed}: done before ({path})")
        rows += saved["rows"]
    summary = summarise(rows)
    vs, cs = verdicts(rows), claims(rows)
    result = {
        "benchmark": "classification", "data": cfg.data, "forget": forget, "seeds": list(cfg.seed_list), "quick": cfg.quick,
        "tau": cfg.tau, "normalize": cfg.normalize, "standardize": cfg.standardize, "recipe": dataclasses.asdict(cfg.recipe),
        "lr_grid": list(LR_GRID), "tune_seeds": list(cfg.tune_seeds) if cfg.tune else [],
        "methods": {m: dataclasses.asdict(c) for m in cfg.methods if (c := method_config(m, cfg)) is not None},
        "tuning": chosen, "rows": rows, "summary": summary, "verdicts": vs, "claims": cs,
        "seconds": round(time.time() - t0, 1),
    }
    atomic_write_json(out / "results.json", result)
    text = table(summary, chosen) + "\n\n" + verdict_table(vs, cs)
    atomic_write_text(out / "table.md", text + "\n")
    plot(summary, out / "gap.png", f"{cfg.data}, forget {forget}, {len(cfg.seed_list)} seeds")
    log(text)
    log(f"wrote {out / 'results.json'}, {out / 'table.md'} and {out / 'gap.png'} in {result['seconds']} s")
    return result


def run(cfg: BenchConfig, out: Path, log=print) -> dict[str, Any]:
    """One forget set: OUT/results.json; `forget="all"`: OUT/<forget>/results.json for each.

    On a CPU, oneDNN (mkldnn) is off for the run: its convolution backward crashed the process (SIGSEGV)
    on an AMD EPYC host with torch 2.13 (the CIFAR-10 path's conv net, in training and in unlearning; the
    MLPs never reach it); torch's native kernels compute the same thing."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dataset = D.load(cfg.data, cfg.data_dir).to(device)
    cache: Originals = {}
    with torch.backends.mkldnn.flags(enabled=device.type != "cpu"):
        results = {f: run_forget(cfg, dataset, f, out / f if cfg.forget == "all" else out, cache, log)
                   for f in cfg.forgets}
    return results[cfg.forgets[0]] if len(results) == 1 else {"forgets": results}
