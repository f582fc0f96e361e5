import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import fedpriv

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


def run_cli(module: str, *args: str, cwd: Path | None = None, timeout: float = 600):
    """Runs ``python -m module args`` and returns the CompletedProcess (text mode)."""
    env = dict(os.environ)
    env.setdefault("JAX_PLATFORMS", "cpu")
    env["HYDRA_FULL_ERROR"] = "0"
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
