"""Flags and dispatch of `erase bench speed` and `erase bench generation` (kept out of
erase/commands/bench.py so that the other benchmarks' flags stay in one place)."""

from __future__ import annotations

import argparse
import json


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("speed and generation")
    g.add_argument("--objectives", type=_names, help="speed: comma-separated digits configs (default: every objective)")
    g.add_argument("--arch", choices=["digits", "tiny", "small", "sd15"],
                   help="speed: model (default digits; --quick: tiny); sd15 = SD-1.5 architecture, random weights")
    g.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="speed: device (default cpu)")
    g.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help="speed: mixed precision (fp16 needs cuda)")
    g.add_argument("--repeats", type=int, help="speed: interleaved timing pairs per ratio (default 7; --quick 2)")
    g.add_argument("--methods", type=_names, help="generation: comma-separated (esd_x, esd_u, salun, erasediff, "
                   "ablation, advunlearn, neggrad, rum; default all; robust: configs/digits/robust.yaml, on request); "
                   "classification: e.g. NatMU,RUM (Retrain always runs)")
    g.add_argument("--weightings", type=_names, help="generation: uniform, loreun_s, loreun_d (default all)")
    g.add_argument("--concepts", type=_names, default=("digit",), help="generation: digit and/or colour (default digit)")
    g.add_argument("--train-steps", type=int, help="generation: step budget of every cell (default 150)")
    g.add_argument("--attacks", type=_names, help="generation: unlearndiffatk, concept_inversion (default both; 'none')")
    g.add_argument("--attack-limit", type=int, help="generation: concept prompts attacked per model (default 10)")
    g.add_argument("--attack-budget", action="append", default=[], metavar="ATTACK=BUDGET", dest="gen_attack_budget",
                   help="generation: an attack's named budget, e.g. concept_inversion=standard (default: official; --quick: quick)")
    g.add_argument("--eval-seed", type=int, default=1, help="generation: draw of the held-out evaluation prompts (default 1)")
    g.add_argument("--reference", action="append", default=[], metavar="CONCEPT=SOURCE",
                   help="generation: retrain reference, e.g. digit=zoo:digits-no-digit3 (default: the zoo entry if built)")


def run_bench(args: argparse.Namespace) -> int:
    from erase.errors import EraseError
    from erase.io import atomic_write_json, atomic_write_text

    out = args.out / args.name
    if args.name == "speed":
        from erase.bench.speed import run_speed, table

        result = run_speed(out, quick=args.quick, objectives=args.objectives, arch=args.arch, device=args.device,
                           dtype=args.dtype, repeats=args.repeats)
        text = table(result)
    else:
        from erase.bench.generation import ATTACKS, run_generation

        refs = {}
        for r in args.reference:
            concept, sep, source = r.partition("=")
            if not sep or concept not in ("digit", "colour"):
                raise EraseError(f"--reference {r}: expected digit=SOURCE or colour=SOURCE")
            refs[concept] = source
        budgets = {}
        for r in args.gen_attack_budget:
            attack, sep, budget = r.partition("=")
            if not sep or attack not in ATTACKS or not budget:
                raise EraseError(f"--attack-budget {r}: expected ATTACK=BUDGET with ATTACK one of {', '.join(ATTACKS)}")
            budgets[attack] = budget
        attacks = ATTACKS if args.attacks is None else tuple(a for a in args.attacks if a != "none")
        per_digit = args.per_digit if args.per_digit != 50 else None  # 50 is the other benches' default
        result = run_generation(out, quick=args.quick, methods=args.methods, weightings=args.weightings,
                                concepts=args.concepts, seeds=args.seeds, steps=args.train_steps, per_digit=per_digit,
                                attacks=attacks, attack_limit=args.attack_limit, eval_seed=args.eval_seed, references=refs,
                                attack_budgets=budgets)
        text = result["table"]
    atomic_write_json(out / "results.json", result)
    atomic_write_text(out / "table.md", text + "\n")
    print(text)
    print(json.dumps({k: v for k, v in result.items() if k not in ("cells", "objectives", "summary", "table")}, indent=1, default=str))
    print(f"wrote {out / 'results.json'}")
    return 0
