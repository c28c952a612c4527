"""`erase train --config FILE [key=value ...] [--out DIR] [--resume latest|PATH] [--dry-run]`.

The same code path runs under `accelerate launch -m erase train --config FILE`.

The run directory is locked while training (a second `erase train` on it is refused, naming the
holder). A run that dies records "failed" (or "interrupted") and the error in RUN/run.json.
`--resume latest` with no checkpoint yet says so on one line and starts at step 0, so one command
line serves both the first start and every restart (as `erase demo` uses it).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from pathlib import Path

from erase.config import load_config
from erase.errors import EraseError
from erase.resources import locate

RERUN = "the checkpoints written so far are intact; fix the cause and rerun with --resume latest to continue"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=locate,
                        help="run config YAML; configs/... also finds the recipes erase ships (configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override config keys, e.g. train.lr=1e-5")
    parser.add_argument("--out", help="run directory (default: output_dir of the config, else runs/<config name>)")
    parser.add_argument("--resume", metavar="latest|PATH", help="continue from the newest checkpoint of the run dir, or from a step_N folder")
    parser.add_argument("--dry-run", action="store_true", help="build at real size without weights, check the parameter selection, estimate memory, exit")
    from erase.train.dryrun import ENGINES

    parser.add_argument("--num-gpus", type=int, default=None, metavar="N",
                        help="with --dry-run: also the peak memory per GPU on N GPUs (default engine: fsdp)")
    parser.add_argument("--engine", choices=ENGINES, default=None,
                        help="with --dry-run: the accelerate engine of configs/accelerate/ the per-GPU estimate assumes")
    from erase.commands._model_args import add_model_arguments

    add_model_arguments(parser, ("--model-config",))  # sets the run config's model_config / allow_pickle


def run(args: argparse.Namespace) -> int:
    from erase.edit.registry import is_edit_config
    from erase.train.config import RunConfig, resolve_data_paths

    if is_edit_config(args.config):
        raise EraseError(f"{args.config}: method: a closed-form edit, not a training run; run `erase edit --config {args.config}`")
    cfg = resolve_data_paths(load_config(RunConfig, args.config, args.overrides), args.config)
    if args.model_config:
        cfg.model_config = args.model_config
    if args.allow_pickle:
        cfg.allow_pickle = True
    for o in args.overrides:
        if "=" not in o:
            raise EraseError(f"override {o!r}: expected key=value")
    where = str(args.config)
    if (args.num_gpus is not None or args.engine) and not args.dry_run:
        raise EraseError("--num-gpus / --engine: only with --dry-run (a real run's engine is the accelerate launch config)")
    if args.num_gpus is not None and args.num_gpus < 1:
        raise EraseError(f"--num-gpus: must be >= 1, got {args.num_gpus}")
    if args.dry_run:
        from erase.train.dryrun import dry_run, format_report

        engine = args.engine or ("fsdp" if args.num_gpus else None)
        print(format_report(dry_run(cfg, where, num_gpus=args.num_gpus or 1, engine=engine, compare=True)))
        if cfg.rum.enabled:
            from erase.rum.runner import check_groups

            check_groups(cfg, where)
            print(f"  rum: {len(cfg.rum.groups)} groups by {cfg.rum.score}: "
                  + " -> ".join(g.objective or cfg.method for g in cfg.rum.groups))
        return 0
    from erase.io import check_out_dir, command_line, output_lock
    from erase.train.output import record_failure

    run_dir = check_out_dir(args.out or cfg.output_dir or Path("runs") / Path(args.config).stem)
    if args.resume and args.resume != "latest" and not Path(args.resume).expanduser().is_dir():
        raise EraseError(f"--resume: {args.resume}: no such checkpoint folder (use latest or RUN/checkpoints/step_N)")
    cfg.output_dir = str(run_dir)
    main = os.environ.get("RANK", "0") == "0"  # accelerate launch: only the main process locks and records
    started = time.time()
    with output_lock(run_dir, command_line()) if main else contextlib.nullcontext():
        try:
            info = _train(cfg, run_dir, where, args.resume)
        except BaseException as err:
            if main:
                record_failure(run_dir, err, since=started)
            raise
    if info:
        print(f"erase train: {info['status']}; model in {run_dir / 'model'} ({info['wall_time_s']} s)")
    return 0


def _train(cfg, run_dir: Path, where: str, resume: str | None) -> dict:
    from erase.train.trainer import Trainer

    if cfg.rum.enabled:
        from erase.rum.runner import run_rum

        return run_rum(cfg, run_dir, where, resume=resume)
    return Trainer(cfg, run_dir, where).run(resume=resume)
