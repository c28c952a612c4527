"""Every objective at real size on a GPU: step time, peak memory, and how the dry run's estimate compares.

For each architecture (SD-1.5 and SDXL, built at their published sizes with RANDOM weights by
erase.models.builder: nothing is downloaded) and each objective (the shipped digits recipes,
configs/digits/<name>.yaml, data cut to two prompts per set, one sample each, 2-step image generation
and 4-step ESD trajectories: a step's cost does not depend on them), the real
`Trainer` is built on the GPU in bf16 mixed precision at batch size 1 (native resolution: 512 px,
1024 px), one warm-up step runs, then `--steps` timed steps. Written to `--out` (JSON, rewritten
after every row):

  step_s             median seconds per training step (erase.bench.speed.timed: the GPU is
                     synchronised before and after each step), with min and max
  peak_bytes         torch.cuda.max_memory_allocated over the timed steps (weights, optimizer states,
                     caches and activations: everything the step holds)
  dry_run_peak       `erase train --dry-run`'s estimate of the same (erase/train/dryrun.py,
                     peak_bf16_batch1.peak: no gradient checkpointing), and ratio = measured / estimate

AdvUnlearn runs with `warmup_steps: 0`, so that the timed steps include its attack. A row that fails
(e.g. out of memory) records its error and the next one runs; the exit status is then 1.

    python scripts/gpu_check.py --out gpu_check.json                         # a GPU: the real check
    python scripts/gpu_check.py --device cpu --arch tiny --objectives esd    # a smoke run anywhere

Without a CUDA GPU, `--device cuda` (the default) exits 2 with one line.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from erase.bench.speed import OBJECTIVES  # every objective, by its recipe's name in configs/digits/

ARCHS = {"sd15": {"real": "sd15", "tiny": "tiny"}, "sdxl": {"real": "sdxl", "tiny": "tiny-sdxl"}}
# The data cut to what a step needs (step time and memory at batch 1 do not depend on the data's size; the
# one-time caches do): two prompts per set, one sample each, 2-step image generation, ESD-style trajectories
# of 4 steps.
SMALL_DATA = ['data.forget.prompts=["a handwritten three", "the number 3"]', "data.forget.file=null",
              'data.retain.prompts=["a handwritten seven", "a red two"]', "data.retain.file=null",
              'data.anchor.prompts=["a handwritten eight", "the number 8"]', "data.anchor.file=null",
              "data.forget.samples_per_prompt=1", "data.retain.samples_per_prompt=1", "data.anchor.samples_per_prompt=1",
              "data.generate_steps=2", "train.batch_size=1", "train.retain_batch_size=null",
              "train.gradient_accumulation_steps=1", "train.gradient_checkpointing=false"]
WITH_TRAJECTORIES = ("esd", "advunlearn")  # objectives with `ddim_steps`


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="the JSON file to write (default gpu_check.json)")
    p.add_argument("--archs", nargs="+", choices=list(ARCHS), default=list(ARCHS), help="architectures (default: both)")
    p.add_argument("--objectives", nargs="+", choices=OBJECTIVES, default=list(OBJECTIVES), help="objectives (default: all)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per row, after one warm-up step (default 3)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cuda (default) or cpu (a smoke run)")
    p.add_argument("--arch", choices=["real", "tiny"], default="real",
                   help="real: the published sizes (default); tiny: erase's tiny builders (a smoke run)")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps: must be >= 1")
    return args


def dry_run_peak(recipe: Path, overrides: list[str]) -> int:
    from erase.config import load_config
    from erase.train.config import RunConfig, resolve_data_paths
    from erase.train.dryrun import dry_run

    cfg = resolve_data_paths(load_config(RunConfig, recipe, overrides), recipe)
    return int(dry_run(cfg, str(recipe))["peak_bf16_batch1"]["peak"])


def check_row(arch: str, objective: str, args: argparse.Namespace, work: Path) -> dict:
    import torch

    from erase.bench.speed import StepRunner, make_trainer, timed
    from erase.resources import data_path

    size = ARCHS[arch][args.arch]
    recipe = data_path(f"configs/digits/{objective}.yaml")
    overrides = [*SMALL_DATA, *(["objective.ddim_steps=4"] if objective in WITH_TRAJECTORIES else []),
                 *(["objective.warmup_steps=0"] if objective == "advunlearn" else [])]
    row: dict = {"arch": arch, "builder": size, "objective": objective, "recipe": f"configs/digits/{objective}.yaml",
                 "dry_run_peak": dry_run_peak(recipe, [f"model=builder:{size}", "train.mixed_precision=bf16", *overrides])}
    tr = make_trainer(recipe, f"builder:{size}", work / f"{arch}-{objective}", overrides, "bf16", args.device)
    dev = tr.models.device
    row.update(device=str(dev), trainable=sum(p.numel() for p in tr.params), build_s=round(tr.build_seconds, 2))
    step = StepRunner(tr)
    step()  # warm-up: kernels chosen, optimizer states allocated
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    times = [timed(step, dev) for _ in range(args.steps)]
    row.update(step_s=statistics.median(times), step_s_min=min(times), step_s_max=max(times), steps=args.steps)
    if dev.type == "cuda":
        row["peak_bytes"] = int(torch.cuda.max_memory_allocated(dev))
        row["ratio"] = row["peak_bytes"] / row["dry_run_peak"]
    else:
        row["peak_bytes"] = row["ratio"] = None  # CPU smoke run: no allocator peak to compare
    return row


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import gc

    import torch

    from erase.errors import EraseError
    from erase.io import atomic_write_json

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check.py: --device cuda: no CUDA GPU on this machine (torch.cuda.is_available() is False); "
              "for a smoke run use --device cpu --arch tiny", file=sys.stderr)
        return 2
    result = {"device": args.device, "arch": args.arch, "precision": "bf16", "batch_size": 1, "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None, "rows": []}
    failed = 0
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        for arch in args.archs:
            for objective in args.objectives:
                print(f"gpu_check: {arch} {objective} ...", flush=True)
                try:
                    row = check_row(arch, objective, args, Path(tmp))
                except (RuntimeError, ValueError, EraseError) as err:  # e.g. CUDA out of memory: recorded, the rest still run
                    failed += 1
                    row = {"arch": arch, "objective": objective, "error": f"{type(err).__name__}: {err}"[:500]}
                result["rows"].append(row)
                atomic_write_json(args.out, result)
                print(f"gpu_check: {row}", flush=True)
                gc.collect()
                if args.device == "cuda":
                    torch.cuda.empty_cache()
    print(f"gpu_check: wrote {args.out} ({len(result['rows'])} rows, {failed} failed)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
