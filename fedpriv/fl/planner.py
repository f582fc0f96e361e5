"""Execution planner: how many clients run side by side (vmap width) per chunk.

A round runs its cohort as ``num_chunks`` sequential chunks of ``chunk_size`` vmapped clients
(:func:`fedpriv.fl.round.cohort_sums`). Wider chunks use accelerators better but hold one
copy of the parameters, gradients and optimizer state per client; on CPU, narrow chunks are
faster because each client's layers stay plain matrix products instead of batched ones.
"""

from __future__ import annotations

import dataclasses
import math

import jax

from fedpriv.errors import ConfigError

#: Bytes per client slot budgeted for per-client state, as multiples of the parameter bytes:
#: local params, gradients, optimizer state, update, and slack for temporaries.
_COPIES_PER_CLIENT = 6


@dataclasses.dataclass(frozen=True)
class ExecutionPlan:
    """How a round executes.

    Attributes:
        chunk_size: clients vmapped together (K).
        num_chunks: sequential chunks per round.
        backend: the JAX backend the plan was made for.
        est_bytes: estimated peak bytes of per-client state in one chunk.
    """

    chunk_size: int
    num_chunks: int
    backend: str
    est_bytes: int

    @property
    def slots(self) -> int:
        return self.chunk_size * self.num_chunks


def plan(
    cohort_capacity: int,
    num_params: int,
    example_bytes: int,
    n_cap: int,
    chunk_size: int | str | None = "auto",
    memory_budget_bytes: int | None = None,
    backend: str | None = None,
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

    Returns:
        The plan; ``chunk_size * num_chunks >= cohort_capacity``, the extra slots are padding.
    """
    backend = backend or jax.default_backend()
    per_client = _COPIES_PER_CLIENT * 4 * num_params + n_cap * example_bytes
    if memory_budget_bytes is None:
        memory_budget_bytes = (1 << 30) if backend == "cpu" else (4 << 30)
    if chunk_size in (None, "auto"):
        fit = max(1, memory_budget_bytes // max(per_client, 1))
        # CPU: one client per step keeps each layer a dense matmul; accelerators: go wide.
        preferred = 1 if backend == "cpu" else cohort_capacity
        k = int(max(1, min(cohort_capacity, fit, preferred)))
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
    return ExecutionPlan(k, num_chunks, backend, k * per_client)
