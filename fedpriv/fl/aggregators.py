"""Aggregators: how client updates become one server update.

An :class:`Aggregator` is a pair of pure functions applied inside the jit-compiled round:

* ``contribution(update, count, mask, state) -> (contrib, weight, stats)`` runs per client
  (vmapped): it turns one client's update into what is summed, e.g. ``count * update`` for
  FedAvg or ``clip(update)`` for DP-FedAvg. ``stats`` is a dict of scalars summed over clients.
* ``finalize(total, total_weight, stats, state, key) -> (mean_update, new_state, metrics)`` runs
  once on the sums: divide (and, for DP, add noise first).

Only sums cross clients, so chunked, vmapped and sharded executions of a round agree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any


class Aggregator(NamedTuple):
    """A client-side transform and a server-side reduction (see module docstring).

    ``client_scale(norm, count, mask, state) -> (scale, weight, stats)``, when given, says
    that ``contribution`` is ``scale * update`` with a scalar that depends on the update only
    through its global L2 ``norm``. Execution paths that never materialise per-client updates
    (the factored low-rank path of :mod:`fedpriv.fl.lowrank`) require it.
    """

    init: Callable[[], PyTree]
    contribution: Callable[..., tuple[PyTree, jax.Array, dict[str, jax.Array]]]
    finalize: Callable[..., tuple[PyTree, PyTree, dict[str, jax.Array]]]
    client_scale: Callable[..., tuple[jax.Array, jax.Array, dict[str, jax.Array]]] | None = None


def weighted_mean(weighting: str = "count") -> Aggregator:
    """FedAvg's aggregation: the mean of client updates weighted by example count.

    Args:
        weighting: ``"count"`` weights each client by its number of examples (McMahan et al.
            2017); ``"uniform"`` gives every client weight 1.

    Privacy:
        None. The weights depend on private counts and updates are unbounded; use the
        aggregators of :mod:`fedpriv.privacy` for a DP guarantee.
    """
    if weighting not in ("count", "uniform"):
        from fedpriv.errors import ConfigError

        raise ConfigError(
            "algorithm.weighting", f"unknown weighting {weighting!r}; choose 'count' or 'uniform'"
        )

    def init():
        return ()

    def client_scale(norm, count, mask, state):
        del norm, state
        w = mask * (count.astype(jnp.float32) if weighting == "count" else 1.0)
        return w, w, {}

    def contribution(update, count, mask, state):
        w, weight, stats = client_scale(None, count, mask, state)
        return jax.tree.map(lambda u: w * u, update), weight, stats

    def finalize(total, total_weight, stats, state, key):
        del stats, key
        denom = jnp.maximum(total_weight, 1e-12)
        return jax.tree.map(lambda t: t / denom, total), state, {}

    return Aggregator(init, contribution, finalize, client_scale)
