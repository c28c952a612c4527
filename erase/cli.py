"""`erase` command line: one subcommand per capability, each in its own module.

A subcommand module exposes `add_arguments(parser)` and `run(args) -> int`, and may set `RERUN`
(what rerunning does after a failed write, e.g. "rerun with --resume latest"). Modules are imported
only when their command runs, so `erase --help` is instant.

Errors are one line on stderr and exit 2: user errors (`EraseError`), bad arguments (naming the
bad value and the valid ones), and failed writes caused by the environment (a full disk, a
read-only or missing folder). `--debug` shows the traceback instead. Library warnings and
progress bars stay off stderr unless `--verbose`; erase's own progress bars show on a terminal.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from erase.errors import EraseError

# name -> (module, one-line help). Adding a command is one module plus one line here.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("erase.commands.demo", "erase a digit from the embedded digits model, audit before/after, write a report"),
    "train": ("erase.commands.train", "fine-tune a model with an unlearning objective (Accelerate)"),
    "edit": ("erase.commands.edit", "erase concepts in closed form, in seconds (UCE): writes a run directory like train"),
    "audit": ("erase.commands.audit", "generate from a prompt suite, detect the concept, attack, report"),
    "export": ("erase.commands.export", "write an erased run as a diffusers folder, single file or LoRA, with a model card"),
    "push": ("erase.commands.push", "upload an exported folder to the Hugging Face Hub"),
    "zoo": ("erase.commands.zoo", "list or build the embedded models (digits world and its retrain references)"),
    "bench": ("erase.commands.bench", "run the benchmarks (exact-unlearning gap, robustness, speed, memory)"),
    "report": ("erase.commands.report", "put two or more audits side by side as one HTML page"),
}


_RERUN = "rerun the same command once the cause is fixed"
MAX_LINE = 1000  # characters: an error message is one readable line, whatever the input


class _ArgumentError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `erase audit: argument --attack: invalid choice: 'x' (choose from ...)`."""

    def error(self, message: str):  # type: ignore[override]
        raise _ArgumentError(f"{message} (see `{self.prog} --help`)")


def _quiet(verbose: bool) -> None:
    """Library warnings and progress bars off stderr, through each library's own switches.

    The environment variables are read when the libraries are first imported (after this), and are
    inherited by `accelerate launch` workers; a user's own setting of any of them wins.
    """
    if verbose:
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    if not sys.stderr.isatty():
        os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars only on a terminal
    for name in ("transformers", "diffusers"):  # already imported (erase.cli.main called in-process)
        if f"{name}.utils.logging" in sys.modules:
            sys.modules[f"{name}.utils.logging"].set_verbosity_error()
            sys.modules[f"{name}.utils.logging"].disable_progress_bar()
    warnings.filterwarnings("ignore", module=r"(torch|diffusers|transformers|huggingface_hub|accelerate|peft|safetensors|onnxruntime)(\.|$)")


def _fail(name: str | None, message: str) -> int:
    line = f"erase {name}: " if name else "erase: "
    line += " ".join(str(message).split())
    print(line if len(line) <= MAX_LINE else line[: MAX_LINE - 3] + "...", file=sys.stderr)
    return 2


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: erase [--debug] [--verbose] COMMAND [ARGS ...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`erase COMMAND --help` shows a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("ERASE_DEBUG") == "1"
    verbose = "--verbose" in argv or os.environ.get("ERASE_VERBOSE") == "1"
    argv = [a for a in argv if a not in ("--debug", "--verbose")]
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from erase import __version__

        print(f"erase {__version__}")
        return 0
    name = argv[0]
    if name not in COMMANDS:
        return _fail(None, f"unknown command {name!r} (choose from {', '.join(COMMANDS)})")
    module_name, help_ = COMMANDS[name]
    _quiet(verbose)
    module = importlib.import_module(module_name)
    parser = _Parser(prog=f"erase {name}", description=help_)
    module.add_arguments(parser)
    try:
        args = parser.parse_args(argv[1:])
    except _ArgumentError as err:
        return _fail(name, str(err))
    try:
        from erase.threads import configure_threads

        configure_threads()
        return int(module.run(args) or 0)
    except EraseError as err:
        if debug:
            raise
        from erase.io import disk_error_message

        if err.__cause__ is not None and disk_error_message(err.__cause__) is not None:  # erase.io's write errors
            return _fail(name, f"{err}; {getattr(module, 'RERUN', _RERUN)}")
        return _fail(name, str(err))
    except Exception as err:  # a write the environment refused: full disk, read-only folder ...
        from erase.io import disk_error_message

        message = disk_error_message(err)
        if message is None or debug:
            raise
        return _fail(name, f"{message}; {getattr(module, 'RERUN', _RERUN)}")
    except KeyboardInterrupt:
        print(f"erase {name}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
