"""One XLA CPU device per core, so cohorts shard across cores (:func:`expose_cpu_devices`).

On a CPU, a single XLA device runs one client's small matrix products at a time and leaves
the other cores mostly idle; sharding the cohort over one device per core (the same
``clients`` mesh used for several GPUs) runs clients on every core. XLA reads the device
count from ``XLA_FLAGS`` once, when its CPU backend starts, so the flag has to be set before
that; importing fedpriv sets nothing, the program's entry point asks for it.
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


def expose_cpu_devices() -> int | None:
    """Asks XLA for one CPU device per core, so a cohort can be sharded across the cores.

    Call it at the start of a program, before JAX's CPU backend starts: before the first
    array is created, ``jax.devices()`` is called or anything is compiled. Importing JAX or
    fedpriv does not start the backend, so calling it after the imports is fine. The
    ``fedpriv-*`` commands call it themselves. It appends
    ``--xla_force_host_platform_device_count=N`` to the ``XLA_FLAGS`` environment variable,
    which child processes inherit.

    It changes nothing when ``XLA_FLAGS`` already names a device count, when a JAX backend
    has already started (the count is fixed by then), or when there is one core. The
    environment variable ``FEDPRIV_CPU_DEVICES`` sets the count instead of the number of
    cores the process may run on (``FEDPRIV_CPU_DEVICES=1`` keeps a single device).

    Returns:
        The device count set, or None when ``XLA_FLAGS`` was left as it was.

    Example:
        >>> import fedpriv
        >>> fedpriv.expose_cpu_devices()  # doctest: +SKIP
        8
    """
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
