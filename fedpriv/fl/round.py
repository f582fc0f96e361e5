"""One federated round as a single jit-compiled function of (server state, cohort, key)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from fedpriv.fl.aggregators import Aggregator
from fedpriv.fl.canaries import CanarySpec
from fedpriv.fl.client import ClientBatch, ClientOutput
from fedpriv.fl.edge import EdgeSpec

PyTree = Any


class ServerState(NamedTuple):
    """Everything the server carries between rounds.

    Attributes:
        params: global model parameters.
        opt_state: server optimizer state.
        agg_state: aggregator state (e.g. the adaptive clip norm).
        round: number of rounds completed (int32 scalar).
    """

    params: PyTree
    opt_state: PyTree
    agg_state: PyTree
    round: jax.Array


class RoundInputs(NamedTuple):
    """A cohort on the device, padded to ``C = num_chunks * chunk_size`` slots.

    Attributes:
        x: ``x[C, n_cap, ...]``; y: ``y[C, n_cap]``; count: ``count[C]``;
        client_mask: ``client_mask[C]`` (1.0 real, 0.0 padding); client_ids: ``client_ids[C]``.
    """

    x: jax.Array
    y: jax.Array
    count: jax.Array
    client_mask: jax.Array
    client_ids: jax.Array


def init_server_state(
    params: PyTree, server_opt: optax.GradientTransformation, aggregator: Aggregator
) -> ServerState:
    return ServerState(params, server_opt.init(params), aggregator.init(), jnp.zeros((), jnp.int32))


def split_round_key(key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(client_key, noise_key, round_key)`` of a round.

    A single key (``privacy.noise_source=seeded``) is split into the clients' and the
    aggregation's keys and is itself the round key (availability draws). A stack of three
    keys (``secure``: :meth:`fedpriv.fl.experiment.Experiment.round_key`) already holds them, the
    noise key drawn from a root the operating system's CSPRNG provided.
    """
    if key.shape == (3,):
        return key[0], key[1], key[2]
    client_key, agg_key = jax.random.split(key)
    return client_key, agg_key, key


def _tree_all_finite(tree: PyTree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves))


def client_contribution(
    client_update: Callable[[PyTree, ClientBatch, jax.Array], ClientOutput],
    aggregator: Aggregator,
    params: PyTree,
    agg_state: PyTree,
    inp: RoundInputs,
    client_key: jax.Array,
    canaries: CanarySpec | None = None,
) -> tuple[PyTree, jax.Array, dict, dict[str, jax.Array]]:
    """One client's slot of the cohort: local training, then the aggregator's contribution.

    The client uses ``fold_in(client_key, client_id)``. A non-finite update or loss makes the
    client contribute nothing (mask 0). Returns ``(contrib, weight, stats, per_client)`` with
    ``per_client`` holding the client's ``loss``, ``steps`` and ``finite`` flag.

    With ``canaries``, a slot whose id is a canary's (its data slot is empty, so local
    training is a no-op) contributes the canary's update instead, selected with
    ``jnp.where`` so the vmapped cohort stays one program.

    Privacy:
        The canary update has norm equal to the clip norm, so it passes through the
        aggregator's clipping unchanged and is protected like any client's contribution.
    """
    key = jax.random.fold_in(client_key, inp.client_ids)
    out = client_update(params, ClientBatch(inp.x, inp.y, inp.count), key)
    finite = _tree_all_finite(out.update) & jnp.isfinite(out.loss)
    update = jax.tree.map(lambda u: jnp.where(finite, u, 0.0), out.update)
    if canaries is not None:
        planted = canaries.update(params, inp.client_ids, agg_state)
        is_canary = canaries.is_canary(inp.client_ids)
        update = jax.tree.map(lambda u, c: jnp.where(is_canary, c, u), update, planted)
    mask = inp.client_mask * finite
    contrib, weight, stats = aggregator.contribution(update, inp.count, mask, agg_state)
    real = inp.client_mask > 0
    per_client = {
        "loss": jnp.where(real & finite, out.loss, 0.0),
        "steps": out.steps * real,
        "finite": finite | ~real,
    }
    return contrib, weight, stats, per_client


def cohort_sums(
    client_update: Callable[[PyTree, ClientBatch, jax.Array], ClientOutput],
    aggregator: Aggregator,
    params: PyTree,
    agg_state: PyTree,
    inputs: RoundInputs,
    client_key: jax.Array,
    chunk_size: int,
    canaries: CanarySpec | None = None,
) -> tuple[tuple[PyTree, jax.Array, dict], dict[str, jax.Array]]:
    """Runs every client of the cohort and sums their contributions.

    Clients run ``chunk_size`` at a time under ``vmap``; chunks run in sequence under
    ``lax.scan`` that accumulates only the sums, so memory holds one chunk of per-client
    parameter copies. Client ``i`` uses ``fold_in(client_key, client_ids[i])``, so results do
    not depend on the client's slot or chunk.

    A client whose update or loss is not finite contributes nothing (its mask becomes 0) and
    is counted in ``nonfinite``. ``canaries``: see :func:`client_contribution`.

    Returns:
        ``((total, total_weight, stats), per_client)`` with ``per_client`` holding
        ``loss[C]``, ``steps[C]``, ``finite[C]``.
    """

    def one_client(inp: RoundInputs):
        return client_contribution(
            client_update, aggregator, params, agg_state, inp, client_key, canaries
        )

    return chunked_sums(one_client, inputs, chunk_size, "cohort")


def chunked_sums(
    one_slot: Callable[[Any], tuple[PyTree, jax.Array, dict, dict[str, jax.Array]]],
    inputs: Any,
    chunk_size: int,
    what: str = "cohort",
) -> tuple[tuple[PyTree, jax.Array, dict], dict[str, jax.Array]]:
    """Sums ``one_slot``'s ``(contrib, weight, stats, per_slot)`` over the slots of ``inputs``.

    Slots run ``chunk_size`` at a time under ``vmap``; chunks run in sequence under
    ``lax.scan``, which carries only the sums, so memory holds one chunk of per-slot results.
    ``inputs`` is a pytree whose leaves share the leading slot axis.

    Returns:
        ``((total, total_weight, stats), per_slot)``, ``per_slot`` leaves with the slot axis.
    """
    num_slots = jax.tree.leaves(inputs)[0].shape[0]
    if num_slots % chunk_size:
        raise ValueError(f"{what} slots {num_slots} not a multiple of chunk_size {chunk_size}")
    chunks = jax.tree.map(
        lambda a: a.reshape((num_slots // chunk_size, chunk_size) + a.shape[1:]), inputs
    )

    def run_chunk(acc, chunk):
        contrib, weight, stats, per_slot = jax.vmap(one_slot)(chunk)
        total, total_w, total_stats = acc
        total = jax.tree.map(lambda a, c: a + jnp.sum(c, axis=0), total, contrib)
        total_stats = {k: total_stats[k] + jnp.sum(v, axis=0) for k, v in stats.items()}
        return (total, total_w + jnp.sum(weight), total_stats), per_slot

    # Shapes of the accumulators, from one slot's abstract evaluation.
    first = jax.tree.map(lambda a: a[0, 0], chunks)
    contrib_shape, _, stats_shape, _ = jax.eval_shape(one_slot, first)
    zeros = lambda s: jnp.zeros(s.shape, s.dtype)
    acc0 = (
        jax.tree.map(zeros, contrib_shape),
        jnp.zeros((), jnp.float32),
        {k: zeros(v) for k, v in stats_shape.items()},
    )
    sums, per_slot = jax.lax.scan(run_chunk, acc0, chunks)
    per_slot = jax.tree.map(lambda a: a.reshape((num_slots,) + a.shape[2:]), per_slot)
    return sums, per_slot


CLIENTS_AXIS = "clients"


def sharded_cohort_sums(local: Callable, mesh: jax.sharding.Mesh | None) -> Callable:
    """Runs ``local(params, agg_state, inputs, client_key)`` (a :func:`cohort_sums`-like
    function) on a cohort sharded over the mesh's ``clients`` axis.

    Each device runs its own slice of the cohort in chunks; the sums are the only
    cross-device reduction (one ``psum``). Without a mesh this is ``local`` itself.
    """
    if mesh is None:
        return local

    def per_device(params, agg_state, inputs, client_key):
        sums, per_client = local(params, agg_state, inputs, client_key)
        return jax.lax.psum(sums, CLIENTS_AXIS), per_client

    return jax.shard_map(
        per_device,
        mesh=mesh,
        in_specs=(P(), P(), P(CLIENTS_AXIS), P()),
        out_specs=(P(), P(CLIENTS_AXIS)),
        # The scan accumulators start as replicated zeros and become per-device partial sums;
        # the psum above makes the outputs replicated again.
        check_vma=False,
    )


def server_update(
    state: ServerState,
    aggregator: Aggregator,
    server_opt: optax.GradientTransformation,
    sums: tuple[PyTree, jax.Array, dict],
    noise_key: jax.Array,
    rescale: Callable[[PyTree], tuple[PyTree, dict]] | None = None,
) -> tuple[ServerState, PyTree, dict[str, jax.Array]]:
    """The server half of every round and server step: the aggregator's ``finalize`` (for
    DP: noise on the sum, division by the public denominator), an optional ``rescale`` of
    the mean update (FedNova's ``tau_eff``), then the server optimizer on ``-mean_update``
    as a pseudo-gradient (Reddi et al. 2021).

    Args:
        state: the server state before the step.
        aggregator: the run's aggregator.
        server_opt: the server optimizer.
        sums: ``(total, total_weight, stats)`` of the contributions (:func:`cohort_sums`).
        noise_key: the aggregation (noise) key of the round.
        rescale: ``mean_update -> (mean_update, metrics)``, or None.

    Returns:
        ``(new_state, mean_update, metrics)``; ``new_state.round`` is one more.

    Privacy:
        What ``aggregator.finalize`` releases; everything after it (rescale by a public
        value, the optimizer) is post-processing.
    """
    total, total_weight, stats = sums
    mean_update, agg_state, metrics = aggregator.finalize(
        total, total_weight, stats, state.agg_state, noise_key
    )
    if rescale is not None:
        mean_update, more = rescale(mean_update)
        metrics = {**metrics, **more}
    pseudo_grad = jax.tree.map(jnp.negative, mean_update)
    updates, opt_state = server_opt.update(pseudo_grad, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return ServerState(params, opt_state, agg_state, state.round + 1), mean_update, metrics


def cohort_metrics(
    per_client: dict[str, jax.Array], real: jax.Array, trained: jax.Array | None = None
) -> dict[str, jax.Array]:
    """The clients' side of a round's metrics (diagnostics: not noised).

    Args:
        per_client: ``loss[C]``, ``steps[C]``, ``finite[C]`` of :func:`cohort_sums`.
        real: ``real[C]``, the slots that hold a client.
        trained: ``trained[C]``, the slots that trained locally (default: ``real``).

    Returns:
        ``train_loss`` (mean over finite trained clients), ``clients``,
        ``nonfinite_clients`` and ``local_steps`` (mean over trained clients).
    """
    trained = real if trained is None else trained
    finite = per_client["finite"]
    n_trained = jnp.maximum(jnp.sum(trained), 1)
    return {
        "train_loss": jnp.sum(per_client["loss"]) / jnp.maximum(jnp.sum(trained & finite), 1),
        "clients": jnp.sum(real),
        "nonfinite_clients": jnp.sum(real & ~finite),
        "local_steps": jnp.sum(per_client["steps"]) / n_trained,
    }


def make_round(
    client_update: Callable[[PyTree, ClientBatch, jax.Array], ClientOutput],
    aggregator: Aggregator,
    server_opt: optax.GradientTransformation,
    chunk_size: int,
    mesh: jax.sharding.Mesh | None = None,
    local_sums: Callable | None = None,
    canaries: CanarySpec | None = None,
    edge: EdgeSpec | None = None,
) -> Callable[[ServerState, RoundInputs, jax.Array], tuple[ServerState, dict[str, jax.Array]]]:
    """Builds ``round_fn(state, inputs, key) -> (new_state, metrics)`` (not yet jitted).

    The round: each client trains locally (:func:`cohort_sums`), the aggregator reduces the
    sums to one mean update, and the server optimizer applies ``-mean_update`` as a
    pseudo-gradient. ``key`` is the round key; it is split by purpose into client and
    aggregation (noise) keys (:func:`split_round_key`). With a ``mesh``, the cohort axis of
    ``inputs`` is sharded over its ``clients`` axis (``C`` must be a multiple of
    ``devices * chunk_size``).
    ``local_sums`` replaces :func:`cohort_sums` (e.g. the factored path of
    :mod:`fedpriv.fl.lowrank`); it takes ``(params, agg_state, inputs, client_key)``.

    ``canaries`` (:class:`~fedpriv.fl.canaries.CanarySpec`): cohort slots with canary ids
    contribute their canary update instead of local training; they count in ``clients``
    (they took part in the mechanism) but not in ``train_loss`` or ``local_steps``, and the
    metric ``canaries`` counts them. Needs the direct path (no ``local_sums``).

    ``edge`` (:class:`~fedpriv.fl.edge.EdgeSpec`): sampled clients that are unavailable this
    round are dropped before local training (mask and count 0, inside the jitted round;
    metrics ``sampled``, ``dropped``, ``participated``; ``clients`` counts the survivors),
    and FedNova's ``tau_eff`` rescales the aggregate. The aggregator's divisor is unchanged.
    """
    if local_sums is None:

        def local_sums(params, agg_state, inputs, client_key):
            return cohort_sums(
                client_update,
                aggregator,
                params,
                agg_state,
                inputs,
                client_key,
                chunk_size,
                canaries,
            )

    elif canaries is not None:
        raise ValueError("canary clients need the direct path (local_sums=None)")

    sums_fn = sharded_cohort_sums(local_sums, mesh)

    def round_fn(state: ServerState, inputs: RoundInputs, key: jax.Array):
        client_key, agg_key, key = split_round_key(key)
        edge_metrics = {}
        if edge is not None and edge.selects:
            inputs, edge_metrics = edge.select(inputs, state.round, key)
        (total, total_w, stats), per_client = sums_fn(
            state.params, state.agg_state, inputs, client_key
        )
        rescale = None
        if edge is not None:

            def rescale(mean_update):
                return edge.rescale(mean_update, per_client, inputs)

        new_state, mean_update, agg_metrics = server_update(
            state, aggregator, server_opt, (total, total_w, stats), agg_key, rescale
        )
        real = inputs.client_mask > 0
        trained = real
        extra = {}
        if canaries is not None:
            planted = real & canaries.is_canary(inputs.client_ids)
            trained = real & ~planted
            extra["canaries"] = jnp.sum(planted)
        metrics = {
            **cohort_metrics(per_client, real, trained),
            "update_norm": optax.tree.norm(mean_update),
            **extra,
            **edge_metrics,
            **agg_metrics,
        }
        return new_state, metrics

    return round_fn
