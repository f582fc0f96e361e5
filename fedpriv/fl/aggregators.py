"""Aggregators: how client updates become one server update.

Aggregation is built from composable transforms in the spirit of optax: an
:class:`AggregationTransform` has ``init(params)`` and pure per-client and server steps, and
:func:`chain` composes them, e.g. ``chain(clip(C), gaussian(z), mean(m))`` for DP-FedAvg
(:mod:`fedpriv.privacy.aggregators`). :func:`as_aggregator` turns a transform into the
:class:`Aggregator` that the jit-compiled round runs.

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
#: Number of sub-keys a chain splits the round key into at least (see :func:`chain`).
MIN_KEY_SLOTS = 2
#: Weightings of :func:`weighted_mean`.
WEIGHTINGS: tuple[str, ...] = ("count", "uniform")


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

    Raises:
        ValueError: an unknown ``weighting``.

    Privacy:
        None. The weights depend on private counts and updates are unbounded; use the
        aggregators of :mod:`fedpriv.privacy` for a DP guarantee.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be 'count' or 'uniform', got {weighting!r}")

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


class AggregationTransform(NamedTuple):
    """One composable step of aggregation, with its own state (optax's ``init``/``update``).

    * ``init(params) -> state``: the transform's state (a small pytree; ``()`` when none);
      ``params`` is a parameter tree of the model (or None when the transform needs none).
    * ``client(update, count, mask, state) -> (update, weight, stats)``: per client
      (vmapped), pure. ``weight`` is what the client adds to ``total_weight`` (``mask``, or
      ``mask * count``); ``stats`` is a dict of scalars summed over clients.
    * ``update(total, state, key, info) -> (total, new_state, metrics)``: once per round on
      the sums, pure. ``info`` holds ``total_weight``, the summed ``stats`` and the metrics
      of the transforms before this one in a chain (a clipping transform publishes the bound
      it used as ``clip_norm``, which a noise transform scales its noise by).
    * ``client_scale(norm, count, mask, state) -> (scale, weight, stats)``, optional: says
      that ``client`` multiplies the update by a scalar depending on it only through its
      global L2 ``norm`` (what the factored low-rank path needs).
    * ``key_slot``: which sub-key of the round key the transform draws from (None: it draws
      none); :func:`chain` gives distinct slots distinct keys and refuses a repeated slot.
    """

    init: Callable[[PyTree], PyTree]
    client: Callable[..., tuple[PyTree, jax.Array, dict[str, jax.Array]]]
    update: Callable[..., tuple[PyTree, PyTree, dict[str, jax.Array]]]
    client_scale: Callable[..., tuple[jax.Array, jax.Array, dict[str, jax.Array]]] | None = None
    key_slot: int | None = None


def identity_client(update, count, mask, state):
    """The client step of a transform that acts on the server only: the update unchanged,
    no weight of its own (None), no stats."""
    del count, mask, state
    return update, None, {}


def identity_scale(norm, count, mask, state):
    """:func:`identity_client` in scalar form: no scale and no weight of its own (None)."""
    del norm, count, mask, state
    return None, None, {}


def chain(*transforms: AggregationTransform) -> AggregationTransform:
    """Composes transforms: client steps left to right, then server steps left to right.

    The state is the tuple of the transforms' states. A client's weight and scale are the
    products of those the transforms return (None: the transform has none; ``mask`` when no
    transform gives a weight, 1 when none gives a scale); stats and metrics are merged (a key
    must come from one transform only). The round key is split once into
    ``max(2, largest key_slot + 1)`` sub-keys and each randomised transform gets the sub-key
    of its ``key_slot``, so a transform's noise does not depend on its neighbours in the
    chain.

    Raises:
        ValueError: two transforms draw from the same key slot, or no transform is given.

    Privacy:
        Post-processing aside, a chain is as private as its noise transforms make the sums
        its clipping transforms bound; the composition itself adds nothing and removes
        nothing.
    """
    if not transforms:
        raise ValueError("chain needs at least one transform")
    slots = [t.key_slot for t in transforms if t.key_slot is not None]
    if len(set(slots)) != len(slots):
        raise ValueError(f"transforms draw from the same key slot: {slots}")
    num_keys = max(MIN_KEY_SLOTS, max(slots, default=0) + 1)

    def init(params):
        return tuple(t.init(params) for t in transforms)

    def client(update, count, mask, state):
        weight = None
        stats: dict[str, jax.Array] = {}
        for t, s in zip(transforms, state):
            update, w, st = t.client(update, count, mask, s)
            weight = _times(weight, w)
            stats.update(st)
        return update, mask if weight is None else weight, stats

    def update(total, state, key, info):
        keys = jax.random.split(key, num_keys)
        info = dict(info)
        metrics: dict[str, jax.Array] = {}
        new_state = []
        for t, s in zip(transforms, state):
            sub = keys[t.key_slot] if t.key_slot is not None else None
            total, s, m = t.update(total, s, sub, info)
            new_state.append(s)
            info.update(m)
            metrics.update(m)
        return total, tuple(new_state), metrics

    client_scale = None
    if all(t.client_scale is not None for t in transforms):

        def client_scale(norm, count, mask, state):
            scale = weight = None
            stats: dict[str, jax.Array] = {}
            for t, s in zip(transforms, state):
                sc, w, st = t.client_scale(norm, count, mask, s)
                scale, weight = _times(scale, sc), _times(weight, w)
                stats.update(st)
            if scale is None:
                scale = jnp.ones_like(mask, jnp.float32)
            return scale, mask if weight is None else weight, stats

    return AggregationTransform(init, client, update, client_scale)


def _times(a: jax.Array | None, b: jax.Array | None) -> jax.Array | None:
    if a is None:
        return b
    return a if b is None else a * b


def as_aggregator(transform: AggregationTransform, params: PyTree = None) -> Aggregator:
    """The :class:`Aggregator` that runs ``transform`` in the round (``init`` bound to
    ``params``).

    A chain's state is stored without the empty states of its stateless transforms, and a
    single remaining state stands alone (DP-FedAvg's state is its clip state, as before
    transforms composed), so checkpoints and readers of the state see the same pytree.
    """
    full = transform.init(params)
    chained = isinstance(full, tuple) and not hasattr(full, "_fields")
    kept = [i for i, s in enumerate(full) if not _empty(s)] if chained else []

    def pack(state):
        if not chained:
            return state
        parts = tuple(state[i] for i in kept)
        return parts[0] if len(parts) == 1 else parts

    def unpack(packed):
        if not chained:
            return packed
        parts = (packed,) if len(kept) == 1 else tuple(packed)
        out = list(full)
        for i, part in zip(kept, parts):
            out[i] = part
        return tuple(out)

    def init():
        return pack(transform.init(params))

    def contribution(update, count, mask, state):
        return transform.client(update, count, mask, unpack(state))

    def finalize(total, total_weight, stats, state, key):
        info = {"total_weight": total_weight, **stats}
        mean, new_state, metrics = transform.update(total, unpack(state), key, info)
        return mean, pack(new_state), metrics

    client_scale = None
    if transform.client_scale is not None:

        def client_scale(norm, count, mask, state):
            return transform.client_scale(norm, count, mask, unpack(state))

    return Aggregator(init, contribution, finalize, client_scale)


def _empty(state: PyTree) -> bool:
    return not jax.tree.leaves(state)
