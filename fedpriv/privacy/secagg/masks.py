"""Pairwise masks in ``Z_2^b`` for the fast path (simulation-grade, JAX PRNG).

Clients ``i`` and ``j`` share a seed; ``i`` adds ``PRG(s_ij)`` and ``j`` subtracts it (the
client with the smaller id adds), so over any set of clients that all send their masked
inputs the masks cancel exactly modulo ``2^b`` (Bonawitz et al. 2017, Section 3, Eq. 1):

    y_i = x_i + sum_{j in N(i), id_j > id_i} PRG(s_ij) - sum_{j in N(i), id_j < id_i} PRG(s_ij)

Here seeds are ``fold_in(fold_in(key, min id), max id)`` and ``PRG`` is ``jax.random.bits``:
simulation-grade masks. The protocol path (:mod:`fedpriv.privacy.secagg.protocol`) derives
seeds by X25519 key agreement and expands them with AES-CTR.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fedpriv.privacy.secagg.quantize import modulus_mask


def _pair_bits(key: jax.Array, a: jax.Array, b: jax.Array, d: int) -> jax.Array:
    lo, hi = jnp.minimum(a, b), jnp.maximum(a, b)
    k = jax.random.fold_in(jax.random.fold_in(key, lo), hi)
    return jax.random.bits(k, (d,), jnp.uint32)


def pairwise_masks(key: jax.Array, ids: jax.Array, nbr: jax.Array, d: int, bits: int) -> jax.Array:
    """Every client's total pairwise mask, ``masks[C, d]`` (uint32 in ``Z_2^b``).

    Args:
        key: the round's mask key (simulation-grade).
        ids: ``ids[C]`` distinct client ids.
        nbr: ``nbr[C, k]`` neighbour slots (indices into ``ids``), a symmetric graph.
        d: vector length.
        bits: ``b``.

    Privacy:
        None by itself; masks hide individual inputs from the server only when seeds are
        secret, which JAX's PRNG does not provide (simulation-grade).
    """
    ids = jnp.asarray(ids, jnp.uint32)

    def step(acc, col):
        other = ids[col]
        words = jax.vmap(lambda a, b: _pair_bits(key, a, b, d))(ids, other)
        add = (ids < other)[:, None]
        return jnp.where(add, acc + words, acc - words), None

    acc0 = jnp.zeros((ids.shape[0], d), jnp.uint32)
    acc, _ = jax.lax.scan(step, acc0, jnp.asarray(nbr).T)
    return acc & modulus_mask(bits)


def mask_inputs(
    u: jax.Array, key: jax.Array, ids: jax.Array, nbr: jax.Array, bits: int
) -> jax.Array:
    """Masked inputs ``y[C, d] = u + masks (mod 2^b)``; their modular sum equals ``u``'s."""
    return (u + pairwise_masks(key, ids, nbr, u.shape[1], bits)) & modulus_mask(bits)


def modular_sum(u: jax.Array, bits: int) -> jax.Array:
    """``sum_i u[i] mod 2^b`` over the first axis (uint32 wrap-around is exact mod 2^32)."""
    return jnp.sum(u, axis=0, dtype=jnp.uint32) & modulus_mask(bits)
