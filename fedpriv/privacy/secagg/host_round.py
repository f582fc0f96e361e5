"""A round whose aggregation runs the secure-aggregation protocol on the host.

The protocol exchanges messages and does real cryptography, so it cannot be part of a jit
function. :func:`make_protocol_round` splits the round in three, with the same signature and
keys as :func:`fedpriv.fl.round.make_round`:

1. jit: every client trains and encodes its contribution (the fast path's ``contribution``:
   clip, scale, rotate, round, noise, reduce to ``Z_2^b``), returning the vectors ``u[C, d]``;
2. host: :func:`fedpriv.privacy.secagg.protocol.simulate` runs the protocol over the real
   clients' vectors, with dropouts, and returns their modular sum;
3. jit: the aggregator's ``finalize`` (unmask check, lift, unscale, unrotate, divide) and the
   server optimizer.

Steps 1 and 3 are the fast path's own functions, so both paths compute the same model update
from the same modular sum. Weights and statistics of the included clients are summed in the
clear (simulation). If the protocol aborts (fewer than ``t`` survivors), the round releases
nothing: the parameters stay as they were and ``secagg_aborted`` is 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedpriv.fl.aggregators import Aggregator
from fedpriv.fl.round import (
    RoundInputs,
    ServerState,
    client_contribution,
    server_update,
    split_round_key,
)
from fedpriv.privacy.secagg import protocol
from fedpriv.privacy.secagg.fast import SecAggSpec

PyTree = Any


def make_protocol_round(
    client_update: Callable,
    aggregator: Aggregator,
    server_opt: optax.GradientTransformation,
    spec: SecAggSpec,
) -> Callable[[ServerState, RoundInputs, jax.Array], tuple[ServerState, dict[str, Any]]]:
    """``round_fn(state, inputs, key) -> (new_state, metrics)`` running the protocol on the host.

    Metrics add the protocol's costs (``secagg_client_seconds``, ``secagg_server_seconds``,
    ``secagg_client_bytes``, ``secagg_server_bytes``: totals over phases, per client and at
    the server) and ``secagg_included`` / ``secagg_survivors``.
    """

    @jax.jit
    def encode_all(params, agg_state, inputs: RoundInputs, client_key):
        def one(inp: RoundInputs):
            contrib, weight, stats, per_client = client_contribution(
                client_update, aggregator, params, agg_state, inp, client_key
            )
            pc = per_client
            return contrib, weight, stats, pc["loss"], pc["steps"], pc["finite"]

        return jax.vmap(one)(inputs)

    @jax.jit
    def finish(state: ServerState, total, total_w, stats, agg_key):
        new_state, mean, metrics = server_update(
            state, aggregator, server_opt, (total, total_w, stats), agg_key
        )
        return new_state, {**metrics, "update_norm": optax.tree.norm(mean)}

    def round_fn(state: ServerState, inputs: RoundInputs, key: jax.Array):
        client_key, agg_key, _ = split_round_key(key)
        (u, signed), weight, stats, loss, steps, finite = jax.device_get(
            encode_all(state.params, state.agg_state, inputs, client_key)
        )
        count = np.asarray(jax.device_get(inputs.count))
        mask = np.asarray(jax.device_get(inputs.client_mask)) > 0
        real = np.flatnonzero(count > 0)  # padding slots hold no client
        rng = np.random.default_rng(
            np.asarray(jax.random.key_data(jax.random.fold_in(agg_key, 0x5EC))).astype(np.uint64)
        )
        metrics: dict[str, Any] = {}
        try:
            result = protocol.simulate(
                np.asarray(u)[real],
                spec.bits,
                rng,
                threshold=spec.threshold,
                neighbours=spec.neighbours,
                dropout=spec.dropout,
                late_dropout=spec.late_dropout,
            )
        except protocol.ProtocolAbort:
            result = None
        n_real = int(mask.sum())
        metrics.update(
            train_loss=float(np.sum(loss)) / max(int(np.sum(mask & finite)), 1),
            clients=n_real,
            nonfinite_clients=int(np.sum(mask & ~finite)),
            local_steps=float(np.sum(steps)) / max(n_real, 1),
        )
        if result is None:
            return state._replace(round=state.round + 1), {**metrics, "secagg_aborted": 1}
        idx = real[result.included]
        total = (jnp.asarray(result.total), jnp.asarray(np.sum(np.asarray(signed)[idx], axis=0)))
        stats_sum = {k: jnp.asarray(np.sum(np.asarray(v)[idx], axis=0)) for k, v in stats.items()}
        total_w = jnp.asarray(np.sum(np.asarray(weight)[idx]), jnp.float32)
        new_state, agg_metrics = finish(state, total, total_w, stats_sum, agg_key)
        metrics.update(jax.device_get(agg_metrics))
        metrics.update(result.summary(), secagg_aborted=0)
        return new_state, metrics

    return round_fn
