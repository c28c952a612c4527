"""How good is the digits world's model? Prompted with held-out phrasings, does it draw the digit
and the ink it is asked for, and how close are its images to real held-out digits?

Prompts come only from `HELDOUT_TEMPLATES` (never seen in training): half name a colour, half only
the digit. Images are judged by the digits judges; the Frechet distance between judge features of
generated and real held-out images is compared with the distance between two halves of the real
held-out set (the floor a perfect generator would reach at this sample size).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from erase.audit.generate import GenSettings, sample
from erase.audit.metrics import frechet_distance, nearest_concepts
from erase.models.soft_prompt import encode_plain
from erase.zoo.digits import COLOUR_NAMES, DIGIT_WORDS, HELDOUT_TEMPLATES, caption, load_digits_world
from erase.zoo.judges import Judges


@dataclass(frozen=True)
class Prompt:
    text: str
    digit: int
    colour: int | None  # None: the prompt names no colour
    seed: int


def heldout_prompts(per_digit: int = 50, seed: int = 0, digits: tuple[int, ...] = tuple(range(10))) -> list[Prompt]:
    """`per_digit` prompts per digit from the held-out templates, half with a colour word."""
    rng = random.Random(seed)
    out = []
    for d in digits:
        for i in range(per_digit):
            if i % 2 == 0:
                c = rng.randrange(len(COLOUR_NAMES))
                text = caption(rng.choice(HELDOUT_TEMPLATES["both"]), d, COLOUR_NAMES[c])
            else:
                c, text = None, caption(rng.choice(HELDOUT_TEMPLATES["digit"]), d, "")
            out.append(Prompt(text, d, c, seed * 100_000 + d * 1000 + i))
    return out


def generate(pipe, prompts: list[Prompt], guidance: float, steps: int, batch_size: int = 50,
             desc: str = "generating") -> np.ndarray:
    """Images [N, H, W, 3] in [0, 1], one CPU generator per prompt (reproducible across batch sizes)."""
    settings = GenSettings("ddim", steps, batch_size)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    images = []
    for i in tqdm(range(0, len(prompts), batch_size), desc=desc, leave=False):
        chunk = prompts[i : i + batch_size]
        with torch.no_grad():
            cond = encode_plain(pipe.tokenizer, pipe.text_encoder, [p.text for p in chunk])
        gens = [torch.Generator("cpu").manual_seed(p.seed) for p in chunk]
        images.append(sample(pipe, cond, torch.full((len(chunk),), guidance), gens, settings, size, size))
    return np.concatenate(images)


def judge(judges: Judges, images: np.ndarray, prompts: list[Prompt]) -> dict:
    """Per-digit accuracy, colour accuracy (on prompts that name one) and the rate of each digit."""
    p = judges.predict(images)
    pred_d, pred_c = p["digit"].argmax(1), p["colour"].argmax(1)
    want_d = np.array([q.digit for q in prompts])
    per_digit = {DIGIT_WORDS[d]: float((pred_d[want_d == d] == d).mean()) for d in sorted(set(want_d.tolist()))}
    coloured = [i for i, q in enumerate(prompts) if q.colour is not None]
    colour_acc = float(np.mean([pred_c[i] == prompts[i].colour for i in coloured])) if coloured else None
    # the judge's mean probability of each digit on the images asked for each digit (pinpoint-ness)
    conf = {DIGIT_WORDS[d]: {DIGIT_WORDS[k]: float(p["digit"][want_d == d, k].mean()) for k in range(10)}
            for d in sorted(set(want_d.tolist()))}
    return {"digit_accuracy": float((pred_d == want_d).mean()), "digit_accuracy_per_digit": per_digit,
            "min_digit_accuracy": min(per_digit.values()), "colour_accuracy": colour_acc,
            "predicted_digit_counts": np.bincount(pred_d, minlength=10).tolist(), "confusion": conf}


def pinpoint(per_digit: dict[str, float], base_confusion: dict[str, dict[str, float]], erased: list[str],
             k: int = 2) -> dict[str, dict]:
    """HUB's pinpoint-ness per erased digit: its `k` nearest kept digits by the judge's symmetrised
    confusion on the BASE model's images, and their accuracy in `per_digit` (an erased model's)."""
    conf = {a: row for a, row in base_confusion.items() if all(b in row for b in base_confusion)}
    out = {}
    for w in erased:
        near = nearest_concepts(conf, w, k, exclude=tuple(erased))
        acc = [per_digit[n] for n in near if n in per_digit]
        out[w] = {"nearest": near, "accuracy": {n: per_digit.get(n) for n in near},
                  "retention": float(np.mean(acc)) if acc else None}
    return out


def compare(erased: dict, base: dict, digit: int | tuple[int, ...], base_model: str = "", max_rate: float = 0.05,
            max_drop: float = 0.05) -> dict:
    """An erased model's `judge` result next to its base's (same prompts and seeds).

    drop = base accuracy - erased accuracy, per digit, in [0, 1]. `passed`: every erased digit is
    drawn in at most `max_rate` of its prompts and no other digit lost more than `max_drop`.
    `digit`: one digit or several (a multi-concept run); `erased_rate` is then the largest of theirs,
    `erased_rates` each one's. `pinpoint`: each erased digit's nearest kept digits on the base model.
    """
    digits = (digit,) if isinstance(digit, int) else tuple(digit)
    words = [DIGIT_WORDS[d] for d in digits]
    word = words[0]
    acc = erased["digit_accuracy_per_digit"]
    drops = {w: base["digit_accuracy_per_digit"][w] - a for w, a in acc.items() if w not in words}
    worst = max(drops, key=drops.get)
    colour_drop = (base["colour_accuracy"] - erased["colour_accuracy"]) if erased["colour_accuracy"] is not None else None
    out = {"base_model": base_model, "erased_digit": word if len(words) == 1 else words,
           "erased_rate": max(acc[w] for w in words), "erased_rates": {w: acc[w] for w in words},
           "base_rate": base["digit_accuracy_per_digit"][word], "drop_per_digit": drops,
           "max_other_drop": drops[worst], "worst_other_digit": worst if drops[worst] > 0 else None, "colour_accuracy": erased["colour_accuracy"],
           "base_colour_accuracy": base["colour_accuracy"], "colour_drop": colour_drop,
           "erased": erased, "base": base}
    if "confusion" in base:
        out["pinpoint"] = pinpoint(acc, base["confusion"], words)
        for v in out["pinpoint"].values():
            v["base_accuracy"] = {n: base["digit_accuracy_per_digit"].get(n) for n in v["nearest"]}
    out["passed"] = out["erased_rate"] <= max_rate and out["max_other_drop"] <= max_drop
    return out


def real_heldout_images() -> np.ndarray:
    data = load_digits_world()
    held = data.subset(data.heldout)
    return ((held.images.permute(0, 2, 3, 1) + 1) / 2).numpy()


def frechet_report(judges: Judges, images: np.ndarray, seed: int = 0) -> dict:
    """FD(generated, real held-out) next to FD(real half A, real half B) at the same sample size."""
    real = real_heldout_images()
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(real))
    n = min(len(images), len(real) // 2)
    fa, fb = judges.features(real[idx[:n]]), judges.features(real[idx[n : 2 * n]])
    fg = judges.features(images[:n])
    return {"frechet_generated_vs_real": frechet_distance(fg, fb), "frechet_real_vs_real": frechet_distance(fa, fb),
            "frechet_n": n}


def save_grid(images: np.ndarray, path: str | Path, cols: int = 20, scale: int = 4) -> Path:
    from PIL import Image

    from erase.io import atomic_write_bytes

    n = len(images) - len(images) % cols or len(images)
    rows = max(1, n // cols)
    h, w = images.shape[1:3]
    canvas = np.ones((rows * h, cols * w, 3), dtype=np.float32)
    for i in range(min(n, rows * cols)):
        r, c = divmod(i, cols)
        canvas[r * h : (r + 1) * h, c * w : (c + 1) * w] = images[i]
    img = Image.fromarray((canvas * 255).round().astype(np.uint8)).resize((cols * w * scale, rows * h * scale), Image.NEAREST)
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())
