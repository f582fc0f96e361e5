import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import fedpriv
from tests import cli_zygote

REPO = Path(__file__).resolve().parent.parent

# One XLA CPU device per core, as the fedpriv-* commands ask for: the sharding tests and the
# tests that need several devices rely on it, and XLA reads the count only when JAX starts.
fedpriv.expose_cpu_devices()

# One persistent XLA compilation cache for the whole test session, shared by the xdist workers
# and every fedpriv-train the tests start (they inherit the environment): most runs compile
# the same few rounds, and a cached executable is the same program, so results do not change.
# It lives in a fresh temporary directory on this machine and is removed when the session ends.
_CACHE_VAR = "JAX_COMPILATION_CACHE_DIR"
_OWN_CACHE = None
if _CACHE_VAR not in os.environ:
    _OWN_CACHE = tempfile.mkdtemp(prefix="fedpriv-tests-xla-")
    os.environ[_CACHE_VAR] = _OWN_CACHE
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def pytest_sessionfinish(session):
    if _OWN_CACHE is not None and not hasattr(session.config, "workerinput"):
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


def _cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("JAX_PLATFORMS", "cpu")
    env["HYDRA_FULL_ERROR"] = "0"
    return env


class _Zygote:
    """The warm process of :mod:`tests.cli_zygote`, started on first use in each test
    process; commands run as its forked children. ``FEDPRIV_TESTS_FORK=0`` turns it off
    (every command then starts a fresh interpreter)."""

    proc: subprocess.Popen | None = None
    env: dict[str, str] | None = None

    @classmethod
    def run(cls, module: str, args: tuple[str, ...], cwd: Path, env: dict, timeout: float):
        if os.environ.get("FEDPRIV_TESTS_FORK", "1") == "0":
            return None
        if cls.proc is None or cls.proc.poll() is not None:
            cls.env = dict(env)
            cls.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.cli_zygote"],
                cwd=REPO,
                env=cls.env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            atexit.register(cls.close)
        if not cli_zygote.compatible(env, cls.env):
            return None
        request = {"module": module, "args": list(args), "cwd": str(cwd), "env": env}
        request["timeout"] = timeout
        try:
            cls.proc.stdin.write(json.dumps(request) + "\n")
            cls.proc.stdin.flush()
            line = cls.proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:  # the warm process is gone: this command starts a fresh interpreter
            cls.proc = None
            return None
        reply = json.loads(line)
        cmd = [sys.executable, "-m", module, *args]
        if reply["timed_out"]:
            raise subprocess.TimeoutExpired(cmd, timeout, reply["stdout"], reply["stderr"])
        return subprocess.CompletedProcess(
            cmd, reply["returncode"], reply["stdout"], reply["stderr"]
        )

    @classmethod
    def close(cls) -> None:
        if cls.proc is not None and cls.proc.poll() is None:
            cls.proc.stdin.close()
            try:
                cls.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                cls.proc.kill()


def run_cli(module: str, *args: str, cwd: Path | None = None, timeout: float = 600):
    """Runs ``python -m module args`` and returns the CompletedProcess (text mode).

    The command runs in its own process: a forked child of a process that has imported
    fedpriv's commands once (:mod:`tests.cli_zygote`), or, when the environment differs in
    what JAX reads at import, a fresh interpreter.
    """
    env = _cli_env()
    done = _Zygote.run(module, args, cwd or REPO, env, timeout)
    if done is not None:
        return done
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.fixture
def cli():
    return run_cli
