"""Flags and dispatch of `erase bench speed`, `generation` and `attacks` (kept out of
erase/commands/bench.py so that the other benchmarks' flags stay in one place)."""

from __future__ import annotations

import argparse
import json


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("speed, generation and attacks")
    g.add_argument("--objectives", type=_names, help="speed: comma-separated digits configs (default: every objective)")
    g.add_argument("--arch", choices=["digits", "tiny", "small", "sd15", "sdxl"],
                   help="speed: model (default digits; --quick: tiny); edit: sd15 (default) or sdxl; sd15 / sdxl = the "
                        "real architecture, random weights")
    g.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="speed: device (default cpu)")
    g.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help="speed: mixed precision (fp16 needs cuda)")
    g.add_argument("--repeats", type=int, help="speed: interleaved timing pairs per ratio (default 7; --quick 2)")
    g.add_argument("--methods", type=_names, help="generation, attacks: comma-separated (esd_x, esd_u, salun, erasediff, "
                   "ablation, advunlearn, neggrad, rum, robust; generation: default all but robust; attacks: these and uce, "
                   "the closed-form recipe, default all); "
                   "classification: e.g. NatMU,RUM (Retrain always runs)")
    g.add_argument("--weightings", type=_names, help="generation: uniform, loreun_s, loreun_d (default all)")
    g.add_argument("--concepts", type=_names, default=("digit",),
                   help="generation: digit and/or colour (default digit); edit: N, the number of concepts (default 100)")
    g.add_argument("--ratios", action="store_true",
                   help="edit: also UCE at N = 1, 10, 100 against one ESD-x step on the same model")
    g.add_argument("--train-steps", type=int, help="generation: step budget of every cell (default 150); "
                   "attacks: default each recipe's own")
    g.add_argument("--attacks", type=_names, help="generation: unlearndiffatk, concept_inversion (default both; 'none'); "
                   "attacks: any of erase audit's --attack names (default all)")
    g.add_argument("--attack-limit", action="append", default=[], metavar="N|ATTACK=N", dest="gen_attack_limit",
                   help="generation: concept prompts attacked per model (default 10); ATTACK=N for one attack, "
                        "e.g. unlearndiffatk=3; attacks: digit-3 prompts per model (default 12, all)")
    g.add_argument("--attack-suite", default="prompts/digits/digit3.csv",
                   help="generation: the attacks' prompt list (default prompts/digits/digit3.csv, the validation "
                        "list; prompts/digits/digit3_heldout.csv: the held-out one)")
    g.add_argument("--trajectory", choices=["online", "cached"],
                   help="generation: objective.trajectory of every ESD-family cell (default: each recipe's own)")
    g.add_argument("--attack-budget", action="append", default=[], metavar="ATTACK=BUDGET", dest="gen_attack_budget",
                   help="generation, attacks: an attack's named budget, e.g. concept_inversion=standard, p4d=quick "
                        "(default: official, relearn standard; --quick: quick)")
    g.add_argument("--no-reference", action="store_true", help="attacks: leave out the retrain reference's row")
    g.add_argument("--eval-seed", type=int, default=1, help="generation: draw of the held-out evaluation prompts (default 1)")
    g.add_argument("--reference", action="append", default=[], metavar="CONCEPT=SOURCE",
                   help="generation: retrain reference, e.g. digit=zoo:digits-no-digit3 (default: the zoo entry if built)")


def _pairs(items: list[str], keys: tuple[str, ...], flag: str, form: str) -> dict[str, str]:
    from erase.errors import EraseError

    out = {}
    for r in items:
        key, sep, value = r.partition("=")
        if not sep or key not in keys or not value:
            raise EraseError(f"{flag} {r}: expected {form} with the first part one of {', '.join(keys)}")
        out[key] = value
    return out


def _attack_limits(items: list[str], attacks: tuple[str, ...]) -> tuple[int | None, dict[str, int]]:
    """`--attack-limit N` (every attack) and `--attack-limit ATTACK=N` (one attack)."""
    from erase.errors import EraseError

    limit, limits = None, {}
    for r in items:
        attack, sep, n = r.rpartition("=")
        if (sep and attack not in attacks) or not n.isdigit() or int(n) < 1:
            raise EraseError(f"--attack-limit {r}: expected N or ATTACK=N (N >= 1, ATTACK one of {', '.join(attacks)})")
        if sep:
            limits[attack] = int(n)
        else:
            limit = int(n)
    return limit, limits


def run_bench(args: argparse.Namespace) -> int:
    from erase.errors import EraseError
    from erase.io import atomic_write_json, atomic_write_text

    out = args.out / args.name
    if args.name == "edit":
        from erase.bench.edit import run_edit_bench

        given = args.concepts if args.concepts != ("digit",) else ("100",)
        if len(given) != 1 or not given[0].isdigit() or int(given[0]) < 1:
            raise EraseError(f"--concepts {','.join(given)}: bench edit takes one number of concepts >= 1, e.g. --concepts 100")
        arch = args.arch or "sd15"
        if arch not in ("sd15", "sdxl", "tiny"):
            raise EraseError(f"--arch {arch}: bench edit runs on sd15 or sdxl")
        result = run_edit_bench(arch, int(given[0]), ratios=args.ratios)
        atomic_write_json(out / "results.json", result)
        print(json.dumps(result, indent=1))
        print(f"wrote {out / 'results.json'}")
        return 0
    if args.name == "speed":
        from erase.bench.speed import run_speed, table

        result = run_speed(out, quick=args.quick, objectives=args.objectives, arch=args.arch, device=args.device,
                           dtype=args.dtype, repeats=args.repeats)
        text = table(result)
    elif args.name == "attacks":
        from erase.bench.attacks import ATTACKS, run_attacks

        refs = _pairs(args.reference, ("digit",), "--reference", "digit=SOURCE")
        budgets = _pairs(args.gen_attack_budget, ATTACKS, "--attack-budget", "ATTACK=BUDGET")
        result = run_attacks(out, quick=args.quick, methods=args.methods, attacks=args.attacks, seeds=args.seeds,
                             steps=args.train_steps, limit=_attack_limits(args.gen_attack_limit, ATTACKS)[0], budgets=budgets,
                             reference=refs.get("digit"), with_reference=not args.no_reference)
        text = result["table"]
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
        attack_limit, limits = _attack_limits(args.gen_attack_limit, ATTACKS)
        attacks = ATTACKS if args.attacks is None else tuple(a for a in args.attacks if a != "none")
        per_digit = args.per_digit if args.per_digit != 50 else None  # 50 is the other benches' default
        result = run_generation(out, quick=args.quick, methods=args.methods, weightings=args.weightings,
                                concepts=args.concepts, seeds=args.seeds, steps=args.train_steps, per_digit=per_digit,
                                attacks=attacks, attack_limit=attack_limit, eval_seed=args.eval_seed, references=refs,
                                attack_budgets=budgets, attack_limits=limits, attack_suite=args.attack_suite,
                                trajectory=args.trajectory)
        text = result["table"]
    atomic_write_json(out / "results.json", result)
    atomic_write_text(out / "table.md", text + "\n")
    print(text)
    print(json.dumps({k: v for k, v in result.items() if k not in ("cells", "objectives", "summary", "table", "rows")},
                     indent=1, default=str))
    print(f"wrote {out / 'results.json'}")
    return 0
