"""Runs documented commands one after another in this process, as their console scripts would.

``python -m tests.docs.run_commands SPEC RESULTS`` reads a JSON list of
``{"id", "argv", "cwd"}`` (``argv[0]`` names a console script of the fedpriv package) and writes
``{id: {"status", "stdout", "stderr", "seconds"}}`` to RESULTS after every command, so a crash
of this process leaves the results of the commands before it. One process for all commands
saves starting Python, JAX and Hydra once per command.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import sys
import time
import traceback
from importlib.metadata import distribution
from pathlib import Path


def entry_points() -> dict[str, str]:
    """Console script name -> ``module:function``, as installed from ``pyproject.toml``."""
    return {
        e.name: e.value
        for e in distribution("fedpriv").entry_points
        if e.group == "console_scripts"
    }


def run_one(target: str, argv: list[str]) -> tuple[int, str, str]:
    """Calls ``module:function`` with ``sys.argv = argv`` as the console script wrapper does
    (``sys.exit(function())``) and returns (exit status, stdout, stderr)."""
    module, func = target.split(":")
    out, err = io.StringIO(), io.StringIO()
    saved = sys.argv
    sys.argv = list(argv)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                result = getattr(importlib.import_module(module), func)()
                status = result if isinstance(result, int) else 0
            except SystemExit as exc:
                code = exc.code
                status = code if isinstance(code, int) else (0 if code is None else 1)
                if not isinstance(code, int | type(None)):
                    print(code, file=sys.stderr)
            except BaseException:  # noqa: BLE001 - an uncaught error is exit status 1
                traceback.print_exc()
                status = 1
    finally:
        sys.argv = saved
    return status, out.getvalue(), err.getvalue()


def main(spec_path: str, results_path: str) -> None:
    scripts = entry_points()
    results: dict[str, dict] = {}
    home = os.getcwd()
    for job in json.loads(Path(spec_path).read_text()):
        start = time.time()
        os.chdir(job["cwd"])
        try:
            status, out, err = run_one(scripts[job["argv"][0]], job["argv"])
        finally:
            os.chdir(home)
        results[job["id"]] = {
            "status": status,
            "stdout": out,
            "stderr": err,
            "seconds": round(time.time() - start, 2),
        }
        Path(results_path).write_text(json.dumps(results))


if __name__ == "__main__":
    main(*sys.argv[1:3])
