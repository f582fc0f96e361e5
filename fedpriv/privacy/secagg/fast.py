"""The fast path of secure aggregation: an :class:`~fedpriv.fl.aggregators.Aggregator`.

:func:`secure_aggregator` wraps any aggregator whose ``finalize`` reads only sums (FedAvg's
weighted mean, DP-FedAvg): each client's contribution is flattened, zero-padded to a power of
two, scaled, optionally rotated, stochastically rounded, optionally noised with integer noise
(distributed DP) and reduced to ``Z_2^b``; the round sums the uint32 vectors (wrap-around is
exact), and ``finalize`` lifts the modular sum to signed integers, divides by the scale,
rotates back and hands the float sum to the wrapped aggregator. Everything stays inside the
jit-compiled, vmapped, chunked round.

Pairwise masks cancel exactly in ``Z_2^b``; with ``masks="expand"`` the masks of every pair in
the cohort's graph are generated each round and added to the modular sum (adding them to the
sum equals adding them to the inputs, by associativity in ``Z_2^b``), and
``secagg_mask_residual`` counts coordinates where they failed to cancel. With
``masks="verify"`` the check runs once, when the aggregator is built, on 64 coordinates of the
cohort's graph, and every round reports its result (cancellation does not depend on the
round's inputs, only on the graph and the signs).

Per-client randomness: the round passes each client update its own key
(``fold_in(client_key, client_id)``); :func:`with_client_key` wraps the client update to carry
``fold_in(key, SECAGG_PURPOSE)`` next to the update (as four 16-bit halves held exactly in
float32), and the contribution unpacks it for stochastic rounding and noise.

Statistics (clip counts, norms), the weight sum and the wrap-around diagnostics are summed in
the clear in this simulation; a deployment would aggregate the statistics securely too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from fedpriv.fl.aggregators import Aggregator
from fedpriv.fl.client import ClientOutput
from fedpriv.privacy.distributed import DistributedNoise
from fedpriv.privacy.secagg import graph
from fedpriv.privacy.secagg.masks import modular_sum, pairwise_masks
from fedpriv.privacy.secagg.quantize import (
    centred_lift,
    clamp_int32,
    modulus_mask,
    random_signs,
    rotate,
    stochastic_round,
    unrotate,
)

PyTree = Any

#: Purpose id folded into a client's key for its secure-aggregation randomness.
SECAGG_PURPOSE = 0x5EC
#: Coordinates on which ``masks="verify"`` checks cancellation.
VERIFY_COORDS = 64
MODES: tuple[str, ...] = ("none", "fast", "protocol")
MASK_MODES: tuple[str, ...] = ("verify", "expand")


@dataclasses.dataclass(frozen=True)
class SecAggSpec:
    """Secure-aggregation settings of a run, resolved against the model and the cohort.

    Attributes:
        mode: ``"fast"`` or ``"protocol"``.
        bits: ``b``, sums are taken modulo ``2^b`` (2..32).
        rotation: randomised Hadamard rotation before quantising.
        scale: ``s``, integers per model unit.
        num_params: parameters in the model (the unpadded length).
        dimension: ``d``, the padded length (a power of two).
        cohort: clients per round whose masks the fast path expands or verifies.
        masks: ``"verify"`` or ``"expand"``.
        neighbours: SecAgg+ graph degree ``k`` (None: complete graph).
        threshold: Shamir threshold ``t`` of the protocol (None: a majority of holders).
        dropout: fraction of clients dropping before sending the masked input (protocol).
        late_dropout: fraction dropping after sending it (protocol).
        noise: per-client integer noise for distributed DP, or None.
        rounding: where the stochastic-rounding uniforms come from: ``"hash"`` (a counter-based
            hash, fastest on CPU), ``"threefry"`` (JAX's default generator) or ``"rbg"``
            (XLA's RngBitGenerator); all simulation-grade.
    """

    mode: str
    bits: int
    rotation: bool
    scale: float
    num_params: int
    dimension: int
    cohort: int
    masks: str = "verify"
    neighbours: int | None = None
    threshold: int | None = None
    dropout: float = 0.0
    late_dropout: float = 0.0
    noise: DistributedNoise | None = None
    rounding: str = "hash"

    def describe(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["noise"] = None if self.noise is None else dataclasses.asdict(self.noise)
        return d


class SecAggState(NamedTuple):
    """Aggregator state: the wrapped aggregator's state and this round's public randomness
    (raw key data; it seeds the rotation signs and the simulated mask seeds)."""

    inner: PyTree
    key: jax.Array


def _pack_key(key: jax.Array) -> jax.Array:
    data = jax.random.key_data(key).reshape(-1)
    halves = jnp.stack([data & 0xFFFF, data >> 16], axis=-1).reshape(-1)
    return halves.astype(jnp.float32)  # 16-bit integers are exact in float32


def _unpack_key(packed: jax.Array, like: jax.Array) -> jax.Array:
    halves = packed.astype(jnp.uint32).reshape(-1, 2)
    data = (halves[:, 0] | (halves[:, 1] << 16)).reshape(jax.random.key_data(like).shape)
    return jax.random.wrap_key_data(data)


def with_client_key(
    client_update: Callable[[PyTree, Any, jax.Array], ClientOutput],
) -> Callable[[PyTree, Any, jax.Array], ClientOutput]:
    """Wraps a client update so that its update carries the client's secure-aggregation key.

    The wrapped update is ``(update, packed_key)``; training itself uses the unchanged key, so
    a run with secure aggregation trains exactly like one without it.
    """

    def wrapped(params: PyTree, batch: Any, key: jax.Array) -> ClientOutput:
        out = client_update(params, batch, key)
        packed = _pack_key(jax.random.fold_in(key, SECAGG_PURPOSE))
        return out._replace(update=(out.update, packed))

    return wrapped


def encode(
    flat: jax.Array, spec: SecAggSpec, signs: jax.Array, key: jax.Array, noisy: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One client's vector to ``Z_2^b``: pad, scale, rotate, round, add noise, reduce.

    Args:
        flat: ``flat[num_params]`` float32 contribution.
        spec: the settings. signs: rotation signs ``[d]``. key: the client's key.
        noisy: whether this client adds its noise share (bool scalar).

    Returns:
        ``(u[d] uint32, signed[d] float32, clamped)``: the element of ``Z_2^b``, its signed
        integer value before the reduction (a diagnostic) and how many coordinates had to be
        clamped to int32.
    """
    d = spec.dimension
    x = jnp.pad(flat.astype(jnp.float32), (0, d - flat.shape[0])) * spec.scale
    if spec.rotation:
        x = rotate(x, signs)
    k_round, k_noise = jax.random.split(key)
    if spec.rounding == "rbg":
        data = jax.random.key_data(k_round).reshape(-1)
        k_round = jax.random.wrap_key_data(
            jnp.concatenate([data, data ^ jnp.uint32(0x9E3779B9)])[:4], impl="unsafe_rbg"
        )
    q, clamped = clamp_int32(stochastic_round(x, k_round, spec.rounding))
    signed = q.astype(jnp.float32)
    u = jax.lax.bitcast_convert_type(q, jnp.uint32)
    if spec.noise is not None:
        z = jnp.where(noisy, spec.noise.sample(k_noise, (d,)), 0)
        u = u + jax.lax.bitcast_convert_type(z, jnp.uint32)
        signed = signed + z.astype(jnp.float32)
    return u & modulus_mask(spec.bits), signed, clamped


def decode(u_sum: jax.Array, spec: SecAggSpec, signs: jax.Array) -> jax.Array:
    """The modular sum back to a float vector ``[num_params]``: lift, unscale, unrotate."""
    s = centred_lift(u_sum & modulus_mask(spec.bits), spec.bits).astype(jnp.float32)
    s = s / spec.scale
    if spec.rotation:
        s = unrotate(s, signs)
    return s[: spec.num_params]


def round_signs(state_key: jax.Array, spec: SecAggSpec) -> jax.Array:
    key = jax.random.fold_in(jax.random.wrap_key_data(state_key), 1)
    return random_signs(key, spec.dimension)


def _mask_check(state_key: jax.Array, spec: SecAggSpec, d: int) -> jax.Array:
    """Sum over the cohort's graph of all pairwise masks on ``d`` coordinates (must be 0)."""
    key = jax.random.fold_in(jax.random.wrap_key_data(state_key), 2)
    c = max(spec.cohort, 2)
    nbr = graph.harary(c, spec.neighbours)
    masks = pairwise_masks(key, jnp.arange(c), jnp.asarray(nbr), d, spec.bits)
    return modular_sum(masks, spec.bits)


def secure_aggregator(
    inner: Aggregator, spec: SecAggSpec, key: jax.Array, params: PyTree
) -> Aggregator:
    """Secure aggregation (fast path) around ``inner``.

    Args:
        inner: an aggregator whose ``finalize`` depends on the contributions only through
            their sum (FedAvg, DP-FedAvg with ``noise_multiplier=0`` for distributed DP).
        spec: the settings (:class:`SecAggSpec`).
        key: root of the per-round public randomness (rotation signs, simulated mask seeds).
        params: a parameter tree of the model (for the flattening).

    Returns:
        An :class:`Aggregator` whose client updates must come from :func:`with_client_key`.

    Privacy:
        Unit: one client. The server sees only the modular sum. With ``spec.noise`` each
        client adds its integer noise share before the reduction, so the sum carries noise
        of variance ``noise_clients * local_variance`` in integer units: the distributed
        Skellam or discrete Gaussian mechanism with L2 sensitivity ``C s + sqrt(d)`` under
        adding or removing one client's update (see
        :func:`fedpriv.accounting.distributed.round_rdp`). Masks and noise use JAX's PRNG:
        simulation-grade.
    """
    _, unravel = ravel_pytree(params)
    root = jax.random.key_data(key)
    verified = 0
    if spec.masks == "verify":
        check = jax.jit(lambda k: _mask_check(k, spec, min(VERIFY_COORDS, spec.dimension)))
        verified = int(jnp.sum(check(root) != 0))
    half = float(2 ** (spec.bits - 1))

    def init():
        return SecAggState(inner.init(), root)

    def contribution(update, count, mask, state):
        delta, packed = update
        ckey = _unpack_key(packed, key)
        contrib, weight, stats = inner.contribution(delta, count, mask, state.inner)
        flat, _ = ravel_pytree(contrib)
        live = mask > 0
        noisy = live | (count > 0)  # a real client whose update was dropped still adds noise
        u, signed, clamped = encode(flat, spec, round_signs(state.key, spec), ckey, noisy)
        u = jnp.where(noisy, u, jnp.uint32(0))
        signed = jnp.where(noisy, signed, 0.0)
        stats = {**stats, "secagg_clamped": jnp.where(live, clamped, 0).astype(jnp.float32)}
        return (u, signed), weight, stats

    def finalize(total, total_weight, stats, state, key):
        u_sum, signed_sum = total
        stats = dict(stats)
        clamped = stats.pop("secagg_clamped")
        if spec.masks == "expand":
            mask_sum = _mask_check(state.key, spec, spec.dimension)
            residual = jnp.sum(mask_sum != 0)
            u_sum = u_sum + mask_sum
        else:
            residual = jnp.asarray(verified, jnp.int32)
        flat = decode(u_sum, spec, round_signs(state.key, spec))
        tree = unravel(flat)
        mean, inner_state, metrics = inner.finalize(tree, total_weight, stats, state.inner, key)
        overflow = jnp.sum((signed_sum >= half) | (signed_sum < -half))
        metrics = {
            **metrics,
            "secagg_sum_overflow": overflow,
            "secagg_clamped": clamped,
            "secagg_mask_residual": residual,
        }
        next_key = jax.random.key_data(jax.random.fold_in(jax.random.wrap_key_data(state.key), 0))
        return mean, SecAggState(inner_state, next_key), metrics

    return Aggregator(init, contribution, finalize)


__all__ = [
    "MASK_MODES",
    "MODES",
    "SecAggSpec",
    "SecAggState",
    "decode",
    "encode",
    "secure_aggregator",
    "with_client_key",
]
