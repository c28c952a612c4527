"""The table in docs/suites.md: every published prompt file under ROOT, loaded by erase and by pandas.

Usage: python scripts/suite_table.py ROOT   (ROOT: a folder of the suites you downloaded; nothing is shipped)
pandas applies the same rules independently: blank prompt, seed not an integer in [0, 2^63),
guidance not finite or < 0, size not a positive multiple of 8 -> skipped; filters first.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd

from erase.audit.suites import ALIASES, SuiteFilter, read_suite
from erase.errors import EraseError

root = Path(sys.argv[1])
def first(cols, name):
    return next((c for c in ALIASES[name] if c in cols), None)
def pandas_count(f, flt):
    if f.suffix == ".txt":
        lines = [l.strip() for l in f.read_text(encoding="utf-8-sig").splitlines()]
        return sum(1 for l in lines if l and not l.startswith("#")), 0
    df = pd.read_csv(f, encoding="utf-8-sig", dtype=str, keep_default_na=False)
    df.columns = [c.strip() for c in df.columns]
    p, s, g = first(df.columns, "prompt"), first(df.columns, "seed"), first(df.columns, "guidance")
    w, h = first(df.columns, "width"), first(df.columns, "height")
    keep = pd.Series(True, index=df.index)
    if flt.categories:
        keep &= df["categories"].str.split(",").apply(lambda cs: bool(set(flt.categories) & {c.strip() for c in cs}))
    if flt.min_nudity is not None:
        keep &= pd.to_numeric(df["nudity_percentage"], errors="coerce") >= flt.min_nudity
    ok = df[p].str.strip() != ""
    def num(col, test):
        v = pd.to_numeric(df[col].str.strip(), errors="coerce")
        return (df[col].str.strip() == "") | v.apply(lambda x: not math.isnan(x) and test(x))
    if s: ok &= num(s, lambda x: math.isfinite(x) and x == int(x) and 0 <= x < 2**63)
    if g: ok &= num(g, lambda x: math.isfinite(x) and x >= 0)
    for c in (w, h):
        if c: ok &= num(c, lambda x: math.isfinite(x) and x == int(x) and x > 0 and int(x) % 8 == 0)
    return int((keep & ok).sum()), int((keep & ~ok).sum())

print("| published suite (repository: path) | filter | rows | loaded | skipped (why) | pandas loaded/skipped | columns used |")
print("|---|---|---|---|---|---|---|")
for f in sorted(list(root.rglob("*.csv")) + list(root.rglob("*eval*.txt"))):
    rel = f.relative_to(root)
    filters = [("", SuiteFilter())]
    if "categor" in f.open(encoding="utf-8-sig").readline():
        filters += [("--category sexual", SuiteFilter(categories=("sexual",))), ("--min-nudity 50", SuiteFilter(min_nudity=50))]
    for fname, flt in filters:
        try:
            s = read_suite(f, flt)
        except EraseError as e:
            print(f"| {rel} | {fname} | - | error | {str(e).replace(str(f), '').strip(': ')} | | |")
            continue
        why = {}
        for k in s.skipped:
            why[k["reason"] if "guidance" not in k["reason"] else "negative/non-finite guidance"] = why.get(k["reason"], 0) + 1
        whys = "; ".join(f"{n} x {r}" for r, n in why.items()) or "0"
        pl, ps = pandas_count(f, flt)
        match = "" if (pl, ps) == (len(s.rows), len(s.skipped)) else " MISMATCH"
        cols = ", ".join(f"{k}<-{v or '(unnamed)'}" for k, v in s.columns.items() if k in ("seed", "guidance", "id", "label"))
        print(f"| {rel} | {fname} | {s.rows_read} | {len(s.rows)} | {len(s.skipped)}{' (' + whys + ')' if s.skipped else ''} | {pl}/{ps}{match} | {cols} |")
