"""`erase zoo list` and `erase zoo build digits [--exclude digit=3]`: the embedded models."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="show the embedded and user-built models and where they are")
    b = sub.add_parser("build", help="train a zoo model from its recipe")
    b.add_argument("name", choices=["digits", "judges"])
    b.add_argument("--exclude", action="append", default=[], metavar="AXIS=VALUE",
                   help="drop a concept from the training data (digit=3, colour=red): the retrain reference")
    b.add_argument("--out", type=Path, default=None, help="output folder (default: the user cache, ~/.cache/erase/zoo/NAME)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--steps", type=int, default=None, help="override the recipe's UNet steps (changes the artifact)")
    b.add_argument("--shared-vae", action="store_true",
                   help="train on the shipped model's frozen autoencoder (skips stage 1), as the shipped references do")
    b.add_argument("--compact", action="store_true",
                   help="with --shared-vae: keep only the UNet and text encoder (+ shares.json), as the package ships references")


def run(args: argparse.Namespace) -> int:
    from erase.zoo import registry

    if args.action == "list":
        rows = [(e.name, "yes" if e.exists else "no", str(e.path), e.description) for e in registry.entries()]
        w = [max(len(r[i]) for r in rows + [("name", "built", "path", "")]) for i in range(3)]
        print(f"{'name':<{w[0]}}  {'built':<{w[1]}}  {'path':<{w[2]}}  description")
        for r in rows:
            print(f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]}")
        return 0
    if args.name == "judges":
        from erase.zoo.digits import load_digits_world
        from erase.zoo.judges import JudgeRecipe, Judges, evaluate_judges, train_judge

        out = args.out or registry.cache_dir() / "judges"
        data = load_digits_world()
        recipe = JudgeRecipe(seed=args.seed)
        digit = train_judge(data, data.digits, 10, recipe, "digit judge")
        colour = train_judge(data, data.colours, 4, JudgeRecipe(seed=args.seed, epochs=2), "colour judge")
        judges = Judges(digit, colour)
        metrics = evaluate_judges(judges, data)
        judges.save(out, recipe, metrics)
        print(f"judges written to {out}: {metrics}")
        return 0
    import dataclasses

    from erase.zoo.digits import parse_exclude
    from erase.zoo.recipe import DigitsRecipe, train_digits_model

    parse_exclude(args.exclude)  # validate before spending minutes
    if args.compact and not args.shared_vae:
        from erase.errors import EraseError

        raise EraseError("--compact: needs --shared-vae (only the base model's autoencoder can be left out)")
    recipe = DigitsRecipe(seed=args.seed, exclude=tuple(args.exclude))
    if args.steps is not None:
        recipe = dataclasses.replace(recipe, steps=args.steps)
    out = args.out or registry.cache_dir() / registry.reference_name(args.exclude)
    info = train_digits_model(recipe, out, vae_from=registry.ARTIFACTS / "digits" if args.shared_vae else None)
    if args.compact:
        registry.compact(out)
    print(f"{out}: trained in {info['train_seconds']:.0f} s on {info['n_train_images']} images")
    return 0
