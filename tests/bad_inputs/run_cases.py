"""Run `erase` command lines in one fresh interpreter, as the `erase` script would: `erase.cli.main`
is the first thing to import any library, so its quiet-output settings apply as they do for a user.

Usage: python run_cases.py CASES.json RESULTS.json, where CASES.json is [[id, argv], ...]; writes
{id: {"code", "stdout", "stderr"}} (an exception escaping main is recorded with its traceback).
"""

import contextlib
import io
import json
import sys
import traceback


def main() -> None:
    # nothing else first: torch imports tqdm (and OMP_NUM_THREADS=1 keeps torch to one thread)
    from erase.cli import main as erase_main

    with open(sys.argv[1]) as f:
        cases = json.load(f)
    results = {}
    for case_id, argv in cases:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = erase_main(argv)
            except BaseException:  # noqa: BLE001 - what escaped is the finding
                traceback.print_exc(file=err)
                code = "exception"
        results[case_id] = {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}
    with open(sys.argv[2], "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
