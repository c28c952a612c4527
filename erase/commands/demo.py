"""`erase demo`: the whole product on the embedded digits world, end to end, on a laptop CPU.

1. erase "three" from `zoo:digits` with ESD + LoReUn (configs/digits/esd_loreun.yaml);
2. audit the original and the erased model on held-out prompts for 3 and for the other digits,
   with the digit judge as detector and UnlearnDiffAtk as the attack;
3. write both reports and a side-by-side page.
Every step resumes: rerunning `erase demo` after an interruption continues where it stopped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "digits" / "esd_loreun.yaml"
PROMPTS = Path(__file__).resolve().parents[2] / "prompts" / "digits"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="folder for the run, audits and report")
    p.add_argument("--config", type=Path, default=CONFIG, help="erasure config (default: ESD-x + LoReUn, digit 3)")
    p.add_argument("--attack-limit", type=int, default=8, help="UnlearnDiffAtk on at most N prompts (default 8)")
    p.add_argument("--steps", type=int, default=25, help="denoising steps for the audits (default 25)")


def _step(argv: list[str]) -> None:
    from erase.cli import main
    from erase.errors import EraseError

    print("\n$ erase " + " ".join(argv), flush=True)
    if main(argv) != 0:
        raise EraseError(f"demo step failed: erase {' '.join(argv[:1])} (rerun `erase demo` to resume)")


def run(args: argparse.Namespace) -> int:
    from erase.errors import EraseError

    out: Path = args.out
    if not args.config.is_file():
        raise EraseError(f"{args.config}: demo config not found")
    run_dir = out / "esd_loreun"
    if not (run_dir / "model" / "model_index.json").is_file():
        resume = ["--resume", "latest"] if (run_dir / "checkpoints").is_dir() else []
        _step(["train", "--config", str(args.config), "--out", str(run_dir), *resume])
    suites = ["--suite", str(PROMPTS / "digit3.csv"), "--suite", str(PROMPTS / "other_digits.csv")]
    common = [*suites, "--detector", "digits", "--concept", "three", "--steps", str(args.steps),
              "--attack", "unlearndiffatk", "--attack-budget", "quick", "--reference-model", "zoo:digits",
              "--attack-limit", str(args.attack_limit)]
    _step(["audit", "--model", "zoo:digits", "--out", str(out / "audit_original"), *common])
    _step(["audit", "--model", str(run_dir), "--out", str(out / "audit_erased"), *common])
    page = out / "comparison.html"
    _step(["report", str(out / "audit_original"), str(out / "audit_erased"), "--out", str(page)])
    print(f"\nerase demo: done. Open {page} (per-model reports: {out}/audit_*/report.html)")
    return 0
