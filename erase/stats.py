"""Paired comparisons over seeds: the one place where a "helps / hurts / no difference" verdict is made.

Two arms run on the same seeds (same original model, same forget set, same reference), so each seed
gives one difference d_s = b_s - a_s. The verdict reads a 95% paired-t interval of the mean
difference (Student's t with n - 1 degrees of freedom, scipy.stats.t):

    mean_diff = mean(d),  half = t_{0.975, n-1} * std(d) / sqrt(n),  [ci_low, ci_high] = mean_diff -+ half

"helps" when the whole interval lies on the better side of 0, "hurts" when it lies on the worse
side, "no difference" when it holds 0, "too few seeds" below 2 paired seeds (then the interval is
None, and so is the mean without any pair: the result stays valid JSON). `better` says which
side is better: "lower" for gaps to Retrain, "higher" for ToW. `seeds_better` counts the seeds on
the better side (for gaps: `seeds_lower`). Used by `erase bench classification` and
`erase bench generation`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from typing import Any, Literal

Better = Literal["lower", "higher"]


def mean_std(vals: list[float]) -> dict | None:
    """{"mean", "std" (sample std; 0 for one value), "n"} of a list over seeds, or None for an empty one."""
    if not vals:
        return None
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}


def paired_interval(a: Mapping[Any, float], b: Mapping[Any, float], better: Better = "lower",
                    level: float = 0.95) -> dict[str, Any]:
    """b - a paired by key (seed): mean, `level` paired-t interval, seeds on each side, verdict."""
    keys = sorted(k for k in set(a) & set(b) if math.isfinite(a[k]) and math.isfinite(b[k]))
    diffs = [float(b[k]) - float(a[k]) for k in keys]
    n = len(diffs)
    out: dict[str, Any] = {"n": n, "seeds": list(keys), "mean_diff": statistics.fmean(diffs) if diffs else None,
                           "ci_low": None, "ci_high": None,
                           "seeds_lower": sum(d < 0 for d in diffs), "seeds_higher": sum(d > 0 for d in diffs),
                           "better": better, "verdict": "too few seeds"}
    if n < 2:
        return out
    from scipy.stats import t

    sd = statistics.stdev(diffs)
    half = float(t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    mean = out["mean_diff"]
    out.update(ci_low=mean - half, ci_high=mean + half, diff_std=sd)
    low_side, high_side = out["ci_high"] < 0, out["ci_low"] > 0
    if not (low_side or high_side):
        out["verdict"] = "no difference"
    elif low_side == (better == "lower"):
        out["verdict"] = "helps"
    else:
        out["verdict"] = "hurts"
    return out


def describe(v: Mapping[str, Any], scale: float = 1.0, digits: int = 2) -> str:
    """`-1.23 [-2.01, -0.45], 5/5 lower: helps` (values times `scale`)."""
    if v["n"] < 2:
        mean = "-" if v["mean_diff"] is None else f"{scale * v['mean_diff']:+.{digits}f}"
        return f"{mean} (n={v['n']}): {v['verdict']}"
    side = "lower" if v["better"] == "lower" else "higher"
    count = v["seeds_lower"] if side == "lower" else v["seeds_higher"]
    return (f"{scale * v['mean_diff']:+.{digits}f} [{scale * v['ci_low']:+.{digits}f}, {scale * v['ci_high']:+.{digits}f}], "
            f"{count}/{v['n']} {side}: {v['verdict']}")
