"""Score a digits-world model: how often prompts for each digit produce that digit (digit judge).

Generates `--seeds` images for each digit with the HELD-OUT caption templates (never seen in
training), classifies them with the shipped digit judge and prints, per digit, the share of
images judged to be that digit. For an erased model, the erased digit's share should be near 0
and every other digit's share close to the base model's.

    python scripts/eval_digits_erasure.py runs/esd_loreun/model --base zoo:digits --erased 3
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from erase.train.model import load_model
from erase.zoo.digits import COLOUR_NAMES, DIGIT_WORDS, HELDOUT_TEMPLATES, caption


def digit_rates(source: str, seeds: int, steps: int, guidance: float, batch: int = 64, judges_dir: str | None = None) -> list[float]:
    from erase.zoo.judges import load_judges

    pipe = load_model(source)
    judges = load_judges(judges_dir)
    size = pipe.unet.config.sample_size * 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    templates = HELDOUT_TEMPLATES["digit"] + HELDOUT_TEMPLATES["both"]
    rates = []
    for d in range(10):
        prompts, gens = [], []
        for s in range(seeds):
            t = templates[s % len(templates)]
            prompts.append(caption(t, d, COLOUR_NAMES[s % len(COLOUR_NAMES)]))
            gens.append(torch.Generator().manual_seed(1000 * d + s))
        images = []
        for i in range(0, len(prompts), batch):
            out = pipe(prompts[i:i + batch], height=size, width=size, num_inference_steps=steps, guidance_scale=guidance,
                       generator=gens[i:i + batch], output_type="np")
            images.append(out.images)
        pred = judges.predict(np.concatenate(images))["digit"].argmax(1)
        rates.append(float((pred == d).mean()))
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--base", default=None)
    ap.add_argument("--erased", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=40)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--judges", default=None, help="judges folder (default: the shipped ones)")
    args = ap.parse_args()
    result = {"model": args.model, "erased": DIGIT_WORDS[args.erased], "seeds_per_digit": args.seeds}
    result["rates"] = digit_rates(args.model, args.seeds, args.steps, args.guidance, judges_dir=args.judges)
    print("rates", [round(r, 3) for r in result["rates"]], flush=True)
    if args.base:
        result["base_rates"] = digit_rates(args.base, args.seeds, args.steps, args.guidance, judges_dir=args.judges)
        others = [d for d in range(10) if d != args.erased]
        result["max_drop_other_points"] = round(100 * max(result["base_rates"][d] - result["rates"][d] for d in others), 1)
    result["erased_rate_percent"] = round(100 * result["rates"][args.erased], 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
