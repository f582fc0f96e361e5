import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


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
