"""Importing fedpriv changes nothing in the process.

A fresh interpreter first imports every third-party module fedpriv imports at module level
(their own import-time effects are theirs), records the process state, then imports every
fedpriv module and records it again: environment variables, logger levels, handlers and
filters, warning filters, JAX's configuration and matplotlib's backend must be unchanged, and
no JAX backend may have started (XLA reads ``XLA_FLAGS`` only then; see
:func:`fedpriv.expose_cpu_devices`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

_PROBE = r"""
import importlib, json, logging, os, sys, warnings
from pathlib import Path

sys.path.insert(0, sys.argv[1])
from tests.test_package_structure import PACKAGE, REPO, collect_imports

modules, imports = collect_imports(REPO / PACKAGE)
for target in sorted({i.target for i in imports if not i.function_level}):
    if target.split(".")[0] == PACKAGE:
        continue
    try:
        importlib.import_module(target)
    except ImportError:
        pass  # ``from a import name``: ``a`` itself is imported below
    importlib.import_module(target.split(".")[0])

import jax
import matplotlib


def state():
    loggers = {"": logging.getLogger()}
    loggers.update(
        (name, lg)
        for name, lg in logging.root.manager.loggerDict.items()
        if isinstance(lg, logging.Logger)
    )
    return {
        "environ": dict(os.environ),
        "loggers": {
            name: [lg.level, [id(f) for f in lg.filters], [id(h) for h in lg.handlers],
                   lg.disabled, lg.propagate]
            for name, lg in loggers.items()
        },
        "logging_disable": logging.root.manager.disable,
        "warnings": [repr(f) for f in warnings.filters],
        "jax_config": {k: repr(v) for k, v in jax.config.values.items()},
        "mpl_backend": repr(dict.__getitem__(matplotlib.rcParams, "backend")),
    }


before = state()
for name in sorted(modules):
    importlib.import_module(name)
after = state()
from jax._src import xla_bridge

print(json.dumps({
    "before": before,
    "after": after,
    "backends": bool(xla_bridge.backends_are_initialized()),
    "count": len(modules),
}))
"""

# A logger no one configured: NOTSET, no filters, no handlers, enabled, propagating.
_DEFAULT_LOGGER = [0, [], [], False, True]


@pytest.fixture(scope="module")
def probe() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "FEDPRIV_CPU_DEVICES")}
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(REPO)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_imports_every_module(probe):
    assert probe["count"] > 50


def test_environment_unchanged(probe):
    before, after = probe["before"]["environ"], probe["after"]["environ"]
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, f"environment variables set on import: {changed}"
    assert "XLA_FLAGS" not in after


def test_no_jax_backend_started(probe):
    assert not probe["backends"], "a JAX backend started while fedpriv was imported"


def test_logging_unchanged(probe):
    before, after = probe["before"]["loggers"], probe["after"]["loggers"]
    changed = sorted(
        name for name, value in after.items() if value != before.get(name, _DEFAULT_LOGGER)
    )
    assert not changed, f"loggers configured on import: {changed}"
    assert probe["before"]["logging_disable"] == probe["after"]["logging_disable"]


@pytest.mark.parametrize("key", ["warnings", "jax_config", "mpl_backend"])
def test_global_configuration_unchanged(probe, key):
    assert probe["before"][key] == probe["after"][key]


_EXPOSE = r"""
import json, os, sys
import fedpriv
import jax

first = fedpriv.expose_cpu_devices()
count = jax.local_device_count()
second = fedpriv.expose_cpu_devices()  # the backend has started: nothing changes
print(json.dumps([first, count, second, os.environ.get("XLA_FLAGS")]))
"""


def test_expose_cpu_devices_sets_the_count_before_jax_starts():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", FEDPRIV_CPU_DEVICES="3")
    proc = subprocess.run(
        [sys.executable, "-c", _EXPOSE], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    first, count, second, flags = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (first, count, second) == (3, 3, None)
    assert flags == "--xla_force_host_platform_device_count=3"
