"""Execute a notebook end to end with nbclient, in a scratch folder; the notebook file is not changed.

    python scripts/run_notebook.py notebooks/digits_quickstart.ipynb [--timeout 1800] [--keep DIR]

Fails (exit 1) if the notebook in git carries outputs (strip them before committing) or if a cell
raises; the failing cell's traceback is printed. `--keep DIR` runs in DIR and writes the executed
copy there as executed.ipynb.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


def unstripped(nb) -> list[int]:
    """Indices of code cells that carry outputs or an execution count."""
    return [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]


def this_python_kernel(folder: Path) -> str:
    """A kernelspec for the running interpreter, first on JUPYTER_PATH: the notebook runs in this
    environment even where another "python3" kernel is installed system-wide."""
    spec = folder / "kernels" / "erase-python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "Python 3 (erase)", "language": "python"}))
    os.environ["JUPYTER_PATH"] = os.pathsep.join([str(folder), *filter(None, [os.environ.get("JUPYTER_PATH")])])
    return spec.name


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebook", type=Path)
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per cell (default 1800: a loaded CI machine)")
    ap.add_argument("--keep", type=Path, help="run in this folder and keep the executed notebook there")
    args = ap.parse_args()
    nb = nbformat.read(args.notebook, as_version=4)
    dirty = unstripped(nb)
    if dirty:
        print(f"{args.notebook}: cells {dirty} have outputs; strip them before committing "
              "(e.g. jupyter nbconvert --clear-output --inplace)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="erase-notebook-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        kernel = this_python_kernel(Path(tmp) / "jupyter")
        client = NotebookClient(nb, timeout=args.timeout, kernel_name=kernel, resources={"metadata": {"path": str(work)}})
        try:
            client.execute()
        except CellExecutionError as err:
            print(f"{args.notebook}: a cell failed\n{err}", file=sys.stderr)
            return 1
        finally:
            if args.keep:
                nbformat.write(nb, work / "executed.ipynb")
    print(f"{args.notebook}: all {sum(c.cell_type == 'code' for c in nb.cells)} code cells ran")
    return 0


if __name__ == "__main__":
    sys.exit(main())
