"""The Python examples of the README and the Python guide run as shown.

Every ``python`` block of :data:`RUNNABLE` is a complete program; each runs in a fresh
interpreter in a temporary work directory (its run directory lands there) and must exit 0.
The other guides' ``python`` blocks are excerpts of library modules, not programs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

RUNNABLE = ("README.md", "docs/guides/python-api.md")
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _examples() -> list[tuple[str, str]]:
    found = []
    for rel in RUNNABLE:
        for n, m in enumerate(BLOCK.finditer((REPO / rel).read_text()), 1):
            found.append((f"{rel}#{n}", m.group(1)))
    return found


EXAMPLES = _examples()


def test_each_runnable_page_shows_a_python_example():
    assert {name.split("#")[0] for name, _ in EXAMPLES} == set(RUNNABLE)


@pytest.mark.parametrize(("name", "source"), EXAMPLES, ids=[n for n, _ in EXAMPLES])
def test_python_example_runs(name, source, tmp_path):
    env = dict(os.environ, TMPDIR=str(tmp_path), PYTHONPATH=str(REPO))
    env.setdefault("JAX_PLATFORMS", "cpu")
    proc = subprocess.run(
        [sys.executable, "-c", source],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"{name}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert proc.stdout.strip(), f"{name} printed nothing"
    if "simulate(" in source:  # simulate writes its run directory under TMPDIR
        assert any(p.name.startswith("fedpriv-run-") for p in tmp_path.iterdir())
