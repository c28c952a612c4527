"""`erase report DIR_A DIR_B [...] --out FILE`: audits side by side (e.g. before / after erasure)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("audits", nargs="+", metavar="DIR", help="audit output folders (from `erase audit --out`)")
    parser.add_argument("--out", default="comparison.html", help="HTML file to write (default comparison.html)")


def check_results(folder: str) -> None:
    """DIR/results.json, if present, is an audit result (a JSON object with metrics): one line if not."""
    import json
    from pathlib import Path

    from erase.errors import EraseError

    path = Path(folder).expanduser() / "results.json"
    if not path.is_file():
        return  # write_comparison says how to make one
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise EraseError(f"{path}: not valid JSON ({type(err).__name__}); rerun the audit to rewrite it") from None
    if not (isinstance(results, dict) and isinstance(results.get("metrics"), dict) and "model" in results):
        raise EraseError(f"{path}: not an audit result (expected a JSON object with model and metrics, from `erase audit`)")


def run(args: argparse.Namespace) -> int:
    from erase.audit.report import write_comparison

    for folder in args.audits:
        check_results(folder)
    path = write_comparison(args.audits, args.out)
    differ = protocols_differ(args.audits)
    if differ:
        import sys

        text = f"warning: these audits were made under different protocols ({', '.join(differ)}): not comparable"
        print(f"\033[31m{text}\033[0m" if sys.stdout.isatty() else text)
    print(f"wrote {path}")
    return 0


def protocols_differ(folders: list[str]) -> list[str]:
    """The protocol settings (erase.audit.report.comparable) on which the audits disagree."""
    import json
    from pathlib import Path

    from erase.audit.report import comparable

    comps = [comparable(json.loads((Path(f).expanduser() / "results.json").read_text(encoding="utf-8"))) for f in folders]
    return [k for k in comps[0] if len({json.dumps(c[k], sort_keys=True, default=str) for c in comps}) > 1]
