"""`erase report DIR_A DIR_B [...] --out FILE`: audits side by side (e.g. before / after erasure)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("audits", nargs="+", metavar="DIR", help="audit output folders (from `erase audit --out`)")
    parser.add_argument("--out", default="comparison.html", help="HTML file to write (default comparison.html)")


def run(args: argparse.Namespace) -> int:
    from erase.audit.report import write_comparison

    path = write_comparison(args.audits, args.out)
    print(f"wrote {path}")
    return 0
