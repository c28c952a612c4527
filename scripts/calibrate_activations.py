"""Calibrate the dry run's activation count (erase.train.activations) against the CPU allocator.

For each UNet (erase's tiny builders) and trained parameter set, one batch-1 forward at a given latent
size is run for real on the CPU, and the bytes it leaves allocated for the backward (torch.profiler's
allocator events, `self_cpu_memory_usage` summed over the forward, less the output) are divided by the
count. Modes:
  bf16       weights in bf16: saved weights cost nothing, so the count is taken less its weight copies
  autocast   fp32 weights under bf16 autocast (the trainer's mixed precision): the copies are real
  sdpa       bf16 weights with PyTorch's own attention kernel instead of the counting stand-in
Each row runs in its own process (allocations of one row must not be freed inside another's window).

    PYTHONPATH=. OMP_NUM_THREADS=1 python scripts/calibrate_activations.py [--latent 32]
"""

from __future__ import annotations

import argparse
import subprocess
import sys

ROWS = [("tiny-sdxl", "xattn"), ("tiny-sdxl", "noxattn"), ("tiny-sd2", "xattn"), ("tiny", "noxattn")]
MODES = ("bf16", "autocast", "sdpa")


def measure(size: str, spec: str, mode: str, latent: int) -> tuple[int, int]:
    """(bytes left allocated by the forward, the count it is compared with)."""
    import torch

    from erase.models.builder import build_pipeline
    from erase.train.activations import (
        _CountingAttnProcessor,
        _unet_inputs,
        allocated_by_forward,
        count_unet_activations,
    )
    from erase.train.params import select_parameters

    torch.set_num_threads(1)
    pipe = build_pipeline(size)
    unet = pipe.unet
    select_parameters({"unet": unet, "text_encoder": pipe.text_encoder}, spec)
    unet.register_to_config(sample_size=latent)
    count = count_unet_activations(unet)  # leaves the UNet in bf16, its processors restored
    args, kwargs = _unet_inputs(unet, torch.bfloat16)
    if mode != "sdpa":
        unet.set_attn_processor(_CountingAttnProcessor())
    if mode == "autocast":
        unet.to(torch.float32)
        args = (args[0].float(), args[1])
        kwargs = {k: v.float() if isinstance(v, torch.Tensor) else {a: b.float() for a, b in v.items()}
                  for k, v in kwargs.items()}
    got = allocated_by_forward(unet, args, kwargs, autocast=mode == "autocast")
    want = count["no_checkpointing"] - (0 if mode == "autocast" else count["weight_copies"])
    return got, want


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latent", type=int, default=32)
    parser.add_argument("--one", nargs=3, metavar=("SIZE", "SPEC", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        got, want = measure(*args.one, args.latent)
        print(got, want)
        return
    print("| UNet, trained set | mode | allocated | counted | ratio |\n|---|---|---|---|---|")
    for size, spec in ROWS:
        for mode in MODES:
            out = subprocess.run([sys.executable, __file__, "--latent", str(args.latent), "--one", size, spec, mode],
                                 capture_output=True, text=True, check=True).stdout.split()
            got, want = int(out[-2]), int(out[-1])
            print(f"| {size}, {spec} | {mode} | {got:,} | {want:,} | {got / want:.3f} |", flush=True)


if __name__ == "__main__":
    main()
