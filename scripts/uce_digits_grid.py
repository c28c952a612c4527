"""The grid behind configs/digits/uce.yaml's scales: UCE on the digits world at several erase / preserve
scales and two guides, each judged on held-out prompts (draw seed 0: 12 prompts asking for three; where
three drops to <= 10%, 6 prompts for every other digit). Guidance 5, DDIM 25, as `erase bench erasure`.

    PYTHONPATH=. OMP_NUM_THREADS=1 python scripts/uce_digits_grid.py [--out benchmarks/edit/uce_digits_grid.json]
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

from erase.bench import digits_world as dw
from erase.config import load_config
from erase.edit.config import EditConfig
from erase.edit.registry import build_editor
from erase.edit.runner import edit_set
from erase.io import atomic_write_json
from erase.models.core import Models
from erase.resources import data_path
from erase.train.config import resolve_data_paths
from erase.train.model import load_model
from erase.zoo.judges import load_judges

SCALES = ((1, 1), (4, 1), (1, 0.3), (4, 0.3), (16, 1))  # (erase_scale, preserve_scale)
GUIDES = ("", "a handwritten digit")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/edit/uce_digits_grid.json"))
    args = p.parse_args()
    path = data_path("configs/digits/uce.yaml")
    cfg = resolve_data_paths(load_config(EditConfig, path), path)
    base, judges = load_model(cfg.model), load_judges()
    threes, others = dw.heldout_prompts(12, 0, (3,)), dw.heldout_prompts(6, 0, (0, 1, 2, 4, 5, 6, 7, 8, 9))
    rows = []
    for es, ps in SCALES:
        for guide in GUIDES:
            pipe, c = copy.deepcopy(base), copy.deepcopy(cfg)
            c.concepts[0].anchor = [guide]
            options = {**cfg.edit, "erase_scale": es, "preserve_scale": ps}
            build_editor("uce", options).edit(Models.from_pipeline(pipe, device="cpu"), edit_set(c))
            row = {"erase_scale": es, "preserve_scale": ps, "guide": guide, "tokens": options.get("tokens"),
                   "three": dw.judge(judges, dw.generate(pipe, threes, 5.0, 25), threes)["digit_accuracy_per_digit"]["three"]}
            if row["three"] <= 0.1:
                row["others"] = dw.judge(judges, dw.generate(pipe, others, 5.0, 25), others)["digit_accuracy_per_digit"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    atomic_write_json(args.out, {"prompts": "held-out, draw seed 0: 12 for three, 6 per other digit", "rows": rows})


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
