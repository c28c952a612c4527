"""`erase edit --config FILE [key=value ...] [--out DIR]`: closed-form concept editing (UCE).

Writes the run directory `erase train` writes (RUN/model, RUN/run.json, RUN/config.yaml): `erase
export RUN`, `erase audit --model RUN` and the benches take it unchanged. The folder is locked while
the edit runs; an edit that dies records "failed" in RUN/run.json. Rerunning redoes the edit (seconds).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from erase.config import load_config
from erase.errors import EraseError
from erase.resources import locate

RERUN = "rerun the same command once the cause is fixed (an edit takes seconds)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=locate,
                        help="edit config YAML; configs/... also finds the recipes erase ships (e.g. configs/digits/uce.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override config keys, e.g. edit.lamb=0.1")
    parser.add_argument("--out", help="run directory (default: output_dir of the config, else runs/<config name>)")
    from erase.commands._model_args import add_model_arguments

    add_model_arguments(parser, ("--model-config",))


def run(args: argparse.Namespace) -> int:
    from erase.edit.config import EditConfig
    from erase.io import check_out_dir, command_line, output_lock
    from erase.train.config import resolve_data_paths

    for o in args.overrides:
        if "=" not in o:
            raise EraseError(f"override {o!r}: expected key=value")
    cfg = resolve_data_paths(load_config(EditConfig, args.config, args.overrides), args.config)
    if args.model_config:
        cfg.model_config = args.model_config
    if args.allow_pickle:
        cfg.allow_pickle = True
    run_dir = check_out_dir(args.out or cfg.output_dir or Path("runs") / Path(args.config).stem)
    cfg.output_dir = str(run_dir)
    from erase.edit.runner import run_edit
    from erase.train.output import record_failure

    started = time.time()
    with output_lock(run_dir, command_line()):
        try:
            info = run_edit(cfg, run_dir, str(args.config))
        except BaseException as err:
            record_failure(run_dir, err, since=started)
            raise
    m = info["metrics"]
    print(f"erase edit: {info['status']}; {m['layers']} projections edited in {m['edit_seconds']} s "
          f"({m['erase_keys']} erase keys, {m['preserve_keys']} preserve keys); model in {run_dir / 'model'} "
          f"({info['wall_time_s']} s in all)")
    return 0
