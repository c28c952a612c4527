"""`erase bench classification`: every method x weighting x seed against Retrain, on digits or CIFAR-10.

Per seed: train the original model (recording RUM's confidence proxy), choose the forget set,
retrain without it (the reference), then run every method with uniform weighting and, where it has
a forget loss, LoReUn-s and LoReUn-d. Writes DIR/results.json (`rows`: one record per method,
weighting and seed; `summary`: mean and std per method and weighting), DIR/table.md and
DIR/gap.png (Avg. Gap to Retrain per method and weighting, error bars = std over seeds).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from erase.classification import data as D
from erase.classification import methods as M
from erase.classification.metrics import avg_gap, evaluate, tow
from erase.classification.models import build
from erase.classification.train import TrainRecipe, fit

WEIGHTINGS: tuple[str, ...] = ("uniform", "static", "dynamic")
LABELS = {"uniform": "uniform", "static": "LoReUn-s", "dynamic": "LoReUn-d"}
METRICS = ("UA", "RA", "TA", "MIA", "avg_gap", "ToW", "time_s")


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    data: str = "digits"
    data_dir: str | None = None
    forget: str = "random10"
    seeds: int | tuple[int, ...] = 5  # a count (seeds 0..N-1) or the seeds themselves
    quick: bool = False
    tau: float = M.DEFAULT_TAU
    normalize: str = "batch"
    width: int = 64  # ResNet-18 width (CIFAR-10 only)
    methods: tuple[str, ...] = M.METHODS

    @property
    def seed_list(self) -> tuple[int, ...]:
        return tuple(range(self.seeds)) if isinstance(self.seeds, int) else tuple(self.seeds)

    @property
    def epoch_factor(self) -> float:
        return 0.2 if self.quick else 1.0

    @property
    def recipe(self) -> TrainRecipe:
        if self.data == "cifar10":
            return TrainRecipe(epochs=4 if self.quick else 60, lr=0.1, batch_size=64 if self.quick else 256)
        return TrainRecipe(epochs=8 if self.quick else 30)


def make_task(cfg: BenchConfig, dataset: D.Dataset, seed: int) -> M.Task:
    """Train the original model for this seed and pick the forget set."""
    torch.manual_seed(seed)
    model = build(dataset.name, dataset.num_classes, cfg.width).to(dataset.train.x.device)
    confidence = fit(model, dataset.train, cfg.recipe, seed=seed, record=True)
    model.eval()
    memorisation = 1.0 - confidence.mean(0).cpu()
    forget_idx = D.forget_indices(cfg.forget, dataset.train, seed, memorisation)  # type: ignore[arg-type]
    test = dataset.test
    if cfg.forget == "class":
        test = test.subset(torch.nonzero(test.y != D.FORGET_CLASS).flatten())
    return M.Task(dataset, forget_idx, model, memorisation, test, cfg.recipe)


def method_config(method: str, cfg: BenchConfig) -> M.MethodConfig | None:
    if method in ("Retrain", "Original"):
        return None
    return M.defaults_for(cfg.data)[method].scaled(cfg.epoch_factor)


def run_seed(cfg: BenchConfig, dataset: D.Dataset, seed: int, log=print) -> list[dict[str, Any]]:
    task = make_task(cfg, dataset, seed)
    forget, retain = task.forget, task.retain
    rows: list[dict[str, Any]] = []
    ref: dict[str, float] | None = None
    for method in ("Retrain", *[m for m in cfg.methods if m != "Retrain"]):
        kinds = WEIGHTINGS if method in M.FORGET_LOSS_METHODS else ("uniform",)
        for kind in kinds:
            model, seconds = M.unlearn(task, method, M.weighting_config(kind, cfg.tau, cfg.normalize), seed,
                                       method_config(method, cfg))
            m = evaluate(model, forget, retain, task.test, seed)
            if ref is None:
                ref = dict(m)
            row = {"method": method, "weighting": kind, "seed": seed, **{k: round(v, 4) for k, v in m.items()},
                   "avg_gap": round(avg_gap(m, ref), 4), "ToW": round(tow(m, ref), 6), "time_s": round(seconds, 3),
                   "forget": cfg.forget, "n_forget": len(forget)}
            rows.append(row)
            log(f"seed {seed} {method:>9} {LABELS[kind]:>8}: UA {m['UA']:6.2f} RA {m['RA']:6.2f} TA {m['TA']:6.2f} "
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
        out.append(rec)
    return out


def compare_weightings(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For every method with a forget loss: LoReUn-s / -d minus uniform in Avg. Gap, paired by seed.

    `beyond_spread` is true when the mean change is larger than the seed-to-seed std of both the
    uniform and the LoReUn gaps (a change smaller than that is within the spread of seeds)."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        uni = {r["seed"]: r["avg_gap"] for r in rows if r["method"] == method and r["weighting"] == "uniform"}
        for kind in ("static", "dynamic"):
            other = {r["seed"]: r["avg_gap"] for r in rows if r["method"] == method and r["weighting"] == kind}
            seeds = sorted(set(uni) & set(other))
            if not seeds:
                continue
            diffs = [other[s] - uni[s] for s in seeds]
            spread = max(statistics.stdev([uni[s] for s in seeds]) if len(seeds) > 1 else 0.0,
                         statistics.stdev([other[s] for s in seeds]) if len(seeds) > 1 else 0.0)
            mean = statistics.fmean(diffs)
            out.append({"method": method, "weighting": kind, "gap_change": mean,
                        "gap_change_std": statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
                        "seed_spread": spread, "lower": mean < 0, "beyond_spread": abs(mean) > spread,
                        "seeds_lower": sum(d < 0 for d in diffs), "n": len(seeds)})
    return out


def table(summary: list[dict[str, Any]]) -> str:
    head = "| method | weighting | UA | RA | TA | MIA | Avg. Gap | ToW | time (s) |\n|---|---|---|---|---|---|---|---|---|"
    lines = [head]
    for s in summary:
        cells = [f"{s[k]:.2f} ± {s[k + '_std']:.2f}" for k in ("UA", "RA", "TA", "MIA", "avg_gap")]
        cells.append(f"{s['ToW']:.3f} ± {s['ToW_std']:.3f}")
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


def run(cfg: BenchConfig, out: Path, log=print) -> dict[str, Any]:
    from erase.io import atomic_write_json, atomic_write_text

    t0 = time.time()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dataset = D.load(cfg.data, cfg.data_dir).to(device)
    rows: list[dict[str, Any]] = []
    for seed in cfg.seed_list:
        rows += run_seed(cfg, dataset, seed, log)
    summary = summarise(rows)
    comparison = compare_weightings(rows)
    result = {
        "benchmark": "classification", "data": cfg.data, "forget": cfg.forget, "seeds": list(cfg.seed_list), "quick": cfg.quick,
        "tau": cfg.tau, "normalize": cfg.normalize, "recipe": dataclasses.asdict(cfg.recipe),
        "methods": {m: dataclasses.asdict(c) for m in cfg.methods if (c := method_config(m, cfg)) is not None},
        "rows": rows, "summary": summary, "loreun_vs_uniform": comparison, "seconds": round(time.time() - t0, 1),
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", result)
    text = table(summary)
    atomic_write_text(out / "table.md", text + "\n")
    plot(summary, out / "gap.png", f"{cfg.data}, forget {cfg.forget}, {len(cfg.seed_list)} seeds")
    log(text)
    for c in comparison:
        log(f"{c['method']} {LABELS[c['weighting']]} vs uniform: Avg. Gap {c['gap_change']:+.2f} "
            f"(paired std {c['gap_change_std']:.2f}; seed spread {c['seed_spread']:.2f}; lower in {c['seeds_lower']}/{c['n']} seeds)"
            + (" beyond the spread" if c["beyond_spread"] else " within the spread"))
    log(f"wrote {out / 'results.json'}, {out / 'table.md'} and {out / 'gap.png'} in {result['seconds']} s")
    return result
