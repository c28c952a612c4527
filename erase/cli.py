"""`erase` command line: one subcommand per capability, each in its own module.

A subcommand module exposes `add_arguments(parser)` and `run(args) -> int`. Modules are imported
only when their command runs, so `erase --help` is instant. User errors (`EraseError`) print one
line and exit 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from erase.errors import EraseError

# name -> (module, one-line help). Adding a command is one module plus one line here.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("erase.commands.demo", "erase a digit from the embedded digits model, audit before/after, write a report"),
    "train": ("erase.commands.train", "fine-tune a model with an unlearning objective (Accelerate)"),
    "audit": ("erase.commands.audit", "generate from a prompt suite, detect the concept, attack, report"),
    "export": ("erase.commands.export", "write an erased run as a diffusers folder, single file or LoRA, with a model card"),
    "push": ("erase.commands.push", "upload an exported folder to the Hugging Face Hub"),
    "zoo": ("erase.commands.zoo", "list or build the embedded models (digits world and its retrain references)"),
    "bench": ("erase.commands.bench", "run the benchmarks (exact-unlearning gap, robustness, speed, memory)"),
    "report": ("erase.commands.report", "put two or more audits side by side as one HTML page"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: erase [--debug] COMMAND [ARGS ...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`erase COMMAND --help` shows a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("ERASE_DEBUG") == "1"
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from erase import __version__

        print(f"erase {__version__}")
        return 0
    name = argv[0]
    if name not in COMMANDS:
        print(f"erase: unknown command {name!r} (choose from {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    module_name, help_ = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        print(f"erase {name}: not built yet in this version", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog=f"erase {name}", description=help_)
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except EraseError as err:
        if debug:
            raise
        print(f"erase {name}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"erase {name}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
