"""Execution planner: how many clients run side by side (vmap width) per chunk.

A round runs its cohort as ``num_chunks`` sequential chunks of ``chunk_size`` vmapped clients
(:func:`fedpriv.fl.round.cohort_sums`). Wider chunks use accelerators better but hold one
copy of the parameters, gradients and optimizer state per client; on CPU, narrow chunks are
faster because each client's layers stay plain matrix products instead of batched ones.
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import numpy as np

from fedpriv.errors import ConfigError

#: Bytes per client slot budgeted for per-client state, as multiples of the parameter bytes:
#: local params, gradients, optimizer state, update, and slack for temporaries.
_COPIES_PER_CLIENT = 6


@dataclasses.dataclass(frozen=True)
class ExecutionPlan:
    """How a round executes.

    Attributes:
        chunk_size: clients vmapped together (K) on each device.
        num_chunks: sequential chunks per round on each device.
        backend: the JAX backend the plan was made for.
        est_bytes: estimated peak bytes of per-client state in one chunk on one device.
        num_devices: devices the cohort is sharded over (a ``clients`` mesh axis).
    """

    chunk_size: int
    num_chunks: int
    backend: str
    est_bytes: int
    num_devices: int = 1

    @property
    def slots(self) -> int:
        """Client slots per round: ``num_devices * num_chunks * chunk_size``."""
        return self.chunk_size * self.num_chunks * self.num_devices

    @property
    def slot_multiple(self) -> int:
        """Cohorts are padded to a multiple of this many slots."""
        return self.chunk_size * self.num_devices


def plan(
    cohort_capacity: int,
    num_params: int,
    example_bytes: int,
    n_cap: int,
    chunk_size: int | str | None = "auto",
    memory_budget_bytes: int | None = None,
    backend: str | None = None,
    num_devices: int | str | None = 1,
) -> ExecutionPlan:
    """Chooses the vmap width and number of chunks for a cohort.

    Args:
        cohort_capacity: static number of client slots the sampler produces.
        num_params: model parameter count.
        example_bytes: bytes of one example's features.
        n_cap: example slots per client.
        chunk_size: ``"auto"``/None for the planner's choice, or a positive int override.
        memory_budget_bytes: bytes allowed for one chunk's per-client state (default: 1 GiB
            on CPU, 4 GiB on accelerators).
        backend: JAX backend name (default: the current default backend).
        num_devices: devices to shard the cohort over; ``"auto"`` uses every local device.

    Returns:
        The plan; ``slots >= cohort_capacity``, the extra slots are padding.
    """
    backend = backend or jax.default_backend()
    devices = _num_devices(num_devices)
    cohort_capacity = math.ceil(cohort_capacity / devices)  # clients per device
    per_client = _COPIES_PER_CLIENT * 4 * num_params + n_cap * example_bytes
    if memory_budget_bytes is None:
        memory_budget_bytes = (1 << 30) if backend == "cpu" else (4 << 30)
    if chunk_size in (None, "auto"):
        fit = max(1, memory_budget_bytes // max(per_client, 1))
        # CPU: one client per step keeps each layer a dense matmul; accelerators: go wide.
        preferred = 1 if backend == "cpu" else cohort_capacity
        k = int(max(1, min(cohort_capacity, fit, preferred)))
        # Even chunks: the fewest chunks of width <= k, each as narrow as possible.
        k = math.ceil(cohort_capacity / math.ceil(cohort_capacity / k))
    else:
        try:
            k = int(chunk_size)
        except (TypeError, ValueError):
            raise ConfigError(
                "execution.chunk_size", f"must be 'auto' or a positive integer, got {chunk_size!r}"
            ) from None
        if k < 1:
            raise ConfigError(
                "execution.chunk_size", f"must be 'auto' or a positive integer, got {chunk_size}"
            )
        k = min(k, cohort_capacity)
    num_chunks = math.ceil(cohort_capacity / k)
    return ExecutionPlan(k, num_chunks, backend, k * per_client, devices)


def _num_devices(value: int | str | None) -> int:
    available = jax.local_device_count()
    if value in (None, "auto"):
        return available
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ConfigError(
            "execution.devices", f"must be 'auto' or an integer >= 1, got {value!r}"
        ) from None
    if not 1 <= n <= available:
        raise ConfigError(
            "execution.devices", f"must be between 1 and the {available} local devices, got {n}"
        )
    return n


def make_mesh(num_devices: int) -> jax.sharding.Mesh | None:
    """A one-axis ``clients`` mesh over the first ``num_devices`` local devices (None for 1)."""
    if num_devices <= 1:
        return None
    return jax.sharding.Mesh(np.array(jax.local_devices()[:num_devices]), ("clients",))


def estimate_peak_bytes(
    plan: ExecutionPlan,
    n_cap: int,
    example_bytes: int,
    population_bytes: int,
    server_state_bytes: int = 0,
) -> int:
    """Rough peak memory of a run: the population on the host, the cohort batch on the host
    and on the device(s), one chunk of per-client state per device, and the server state's
    aggregation part on each device (``server_state_bytes``: e.g. the band history or BLT
    buffers of correlated noise, one model-sized copy each), kept twice while a round
    replaces it."""
    cohort_bytes = plan.slots * n_cap * (example_bytes + 4)
    return (
        population_bytes
        + 2 * cohort_bytes
        + plan.num_devices * (plan.est_bytes + 2 * int(server_state_bytes))
    )


def available_bytes() -> int | None:
    """Memory available to this process now (None when it cannot be read)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - psutil missing or unsupported platform
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None


def memory_warning(peak: int, available: int | None) -> str | None:
    """A one-line warning when the estimated peak exceeds the available memory."""
    if available is None or peak <= available:
        return None
    return (
        f"estimated peak memory {peak / 2**30:.1f} GiB exceeds the {available / 2**30:.1f} GiB "
        "available; lower execution.chunk_size, the cohort size or client.max_examples"
    )
