"""One XLA CPU device per core, so cohorts shard across cores.

On a CPU, a single XLA device runs one client's small matrix products at a time and leaves
the other cores mostly idle; sharding the cohort over one device per core (the same
``clients`` mesh used for several GPUs) runs clients on every core. XLA reads the device
count from ``XLA_FLAGS`` once, when its CPU backend starts, so fedpriv sets
``--xla_force_host_platform_device_count`` on import, before any backend exists.

It changes nothing when ``XLA_FLAGS`` already names a device count, when a JAX backend has
already started, or when ``FEDPRIV_CPU_DEVICES`` is set (``FEDPRIV_CPU_DEVICES=1`` keeps one
device; another number asks for that many).
"""

from __future__ import annotations

import os
import sys

_FLAG = "--xla_force_host_platform_device_count"


def _backends_started() -> bool:
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except Exception:  # noqa: BLE001 - private API moved: assume started, change nothing
        return True


def expose_cpu_cores() -> int | None:
    """Sets the XLA CPU device count; returns the count set (None when left alone)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if _FLAG in flags or _backends_started():
        return None
    requested = os.environ.get("FEDPRIV_CPU_DEVICES")
    try:
        count = int(requested) if requested else len(os.sched_getaffinity(0))
    except (ValueError, AttributeError):
        count = os.cpu_count() or 1
    if count <= 1:
        return None
    os.environ["XLA_FLAGS"] = f"{flags} {_FLAG}={count}".strip()
    return count
