"""Runs ``python -m MODULE ARGS`` commands as forked children of one warm process.

A fresh interpreter spends seconds importing JAX, flax, optax, orbax, Hydra and
dp_accounting before a ``fedpriv-*`` command reads its first argument; the suite runs about
two hundred such commands. This process imports the command modules once, then for each
request forks: the child is a separate process that changes to the request's directory and
environment, points its file descriptors 1 and 2 at files, sets ``sys.argv`` and runs the
module as ``__main__`` (``runpy``), exactly as ``python -m`` would from there on, and exits
with the command's status. Nothing a command does reaches the next one (each child is
discarded), and no JAX backend has started in this process (importing fedpriv starts none),
so every child initialises XLA itself from its own environment.

Protocol (JSON lines): a request ``{"module", "args", "cwd", "env", "timeout"}`` on stdin;
the reply ``{"returncode", "stdout", "stderr", "timed_out"}`` on stdout.

Only requests whose environment agrees with this process's on every variable that JAX and
XLA read at import time may be sent here (:func:`compatible`); the caller runs the others as
plain subprocesses.
"""

from __future__ import annotations

import json
import os
import runpy
import signal
import sys
import tempfile
import time
import traceback

#: The command modules (and so their dependencies) imported before the first fork.
PRELOAD = (
    "fedpriv.cli.train",
    "fedpriv.cli.account",
    "fedpriv.cli.audit",
    "fedpriv.cli.data",
    "fedpriv.cli.report",
)
#: Environment variables read when JAX or its dependencies are imported.
IMPORT_TIME_PREFIXES = ("JAX_", "TF_", "PYTHON", "OMP_", "MKL_")


def compatible(env: dict[str, str], base: dict[str, str]) -> bool:
    """Whether a command with environment ``env`` may run as a child of a process whose
    environment was ``base`` when it imported its modules."""
    keys = {k for k in (*env, *base) if k.startswith(IMPORT_TIME_PREFIXES)}
    return all(env.get(k) == base.get(k) for k in keys)


def _child(request: dict, out_path: str, err_path: str) -> None:
    """In the forked child: run the module and exit with its status (never returns)."""
    status = 1
    try:
        os.setpgid(0, 0)  # its own process group, so a timeout kills what it started too
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for fd, path in ((1, out_path), (2, err_path)):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(target, fd)
            os.close(target)
        sys.stdin = open(os.devnull)  # noqa: SIM115 - the child exits below
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.argv = [request["module"], *request["args"]]
        sys.path[0] = os.getcwd()
        # Run the module's own code afresh as __main__, as ``python -m`` does; what it
        # imports stays imported.
        sys.modules.pop(request["module"], None)
        try:
            runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
            status = 0
        except SystemExit as exc:
            code = exc.code
            if code is None:
                status = 0
            elif isinstance(code, int):
                status = code
            else:
                print(code, file=sys.stderr)
                status = 1
        except BaseException:  # noqa: BLE001 - as the interpreter reports an uncaught error
            traceback.print_exc()
            status = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status)


def serve() -> None:
    for module in PRELOAD:
        __import__(module)
    reply_to = sys.stdout
    for line in sys.stdin:
        request = json.loads(line)
        with tempfile.TemporaryDirectory(prefix="fedpriv-cli-") as tmp:
            out_path, err_path = os.path.join(tmp, "out"), os.path.join(tmp, "err")
            pid = os.fork()
            if pid == 0:
                _child(request, out_path, err_path)
            deadline = time.monotonic() + float(request.get("timeout") or 600)
            timed_out = False
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                if time.monotonic() > deadline:
                    timed_out = True
                    os.killpg(pid, signal.SIGKILL)
                    _, status = os.waitpid(pid, 0)
                    break
                time.sleep(0.005)
            code = os.waitstatus_to_exitcode(status)

            def read(path: str) -> str:
                try:
                    with open(path, encoding="utf-8", errors="replace") as f:
                        return f.read()
                except FileNotFoundError:
                    return ""

            reply = {
                "returncode": code,
                "stdout": read(out_path),
                "stderr": read(err_path),
                "timed_out": timed_out,
            }
        reply_to.write(json.dumps(reply) + "\n")
        reply_to.flush()


if __name__ == "__main__":
    serve()
