"""Fixed-point encoding for secure aggregation: rotation, stochastic rounding, Z_2^b arithmetic.

A client's (clipped) update ``x`` is flattened, zero-padded to ``d = 2^k`` coordinates,
optionally rotated (``R x = H D x`` with random signs ``D`` and the orthonormal Walsh-Hadamard
matrix ``H``, so that quantisation error and wrap-around spread over all coordinates), scaled
by ``s`` and rounded to integers with unbiased stochastic rounding. Integers live in
``Z_2^b``, held as ``uint32`` whose wrap-around is exact modulo ``2^32`` (and so modulo ``2^b``
for ``b <= 32``). The server maps the modular sum back to signed integers (centred lift),
divides by ``s`` and applies ``R^-1 = D H``.

References:
    Suresh, Yu, Kumar, McMahan. "Distributed Mean Estimation with Limited Communication."
    ICML 2017 (randomised Hadamard rotation, Section 4).
    Kairouz, Liu, Steinke. "The Distributed Discrete Gaussian Mechanism for Federated
    Learning with Secure Aggregation." ICML 2021 (Algorithm 1: scale, rotate, round, wrap).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

MIN_BITS, MAX_BITS = 2, 32


def padded_dim(d: int) -> int:
    """The smallest power of two ``>= d`` (the Hadamard transform's length)."""
    return 1 << max(0, (int(d) - 1).bit_length())


def modulus_mask(bits: int) -> jax.Array:
    """``2^bits - 1`` as uint32 (for ``bits == 32`` all ones)."""
    return jnp.asarray((1 << bits) - 1, jnp.uint32)


def fwht(x: jax.Array) -> jax.Array:
    """Orthonormal fast Walsh-Hadamard transform over the last axis (``x[..., d]``, ``d = 2^k``).

    ``H / sqrt(d)`` in Sylvester order; it is symmetric and its own inverse. ``k`` butterfly
    stages of reshapes and adds, ``O(d log d)``.
    """
    d = x.shape[-1]
    if d & (d - 1):
        raise ValueError(f"fwht needs a power-of-two length, got {d}")
    lead = x.shape[:-1]
    h = 1
    while h < d:
        y = x.reshape(lead + (d // (2 * h), 2, h))
        a, b = y[..., 0, :], y[..., 1, :]
        x = jnp.stack([a + b, a - b], axis=-2).reshape(lead + (d,))
        h *= 2
    return x * (1.0 / math.sqrt(d))


def random_signs(key: jax.Array, d: int) -> jax.Array:
    """The diagonal ``D`` of the rotation: ``d`` independent signs ``+-1`` (simulation-grade)."""
    return jnp.where(jax.random.bernoulli(key, 0.5, (d,)), 1.0, -1.0).astype(jnp.float32)


def rotate(x: jax.Array, signs: jax.Array) -> jax.Array:
    """``H D x`` over the last axis (Suresh et al. 2017, Section 4)."""
    return fwht(x * signs)


def unrotate(y: jax.Array, signs: jax.Array) -> jax.Array:
    """``D H y``, the inverse of :func:`rotate`."""
    return fwht(y) * signs


ROUNDING_RNGS = ("hash", "threefry", "rbg")


def hash_uniform(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Uniform ``[0, 1)`` floats from a counter-based hash of ``(key, coordinate index)``.

    Each coordinate's 32-bit counter is mixed with the key's two words and passed through
    MurmurHash3's 32-bit finaliser (Appleby; an avalanche mix: every input bit flips each
    output bit with probability about 1/2); the top 24 bits give the float. It fuses into the
    surrounding elementwise code and costs about a tenth of threefry on a CPU. Simulation-grade:
    fine for simulating stochastic rounding, not a generator for a deployment.
    """
    words = jax.random.key_data(key).reshape(-1).astype(jnp.uint32)
    n = 1
    for dim in shape:
        n *= dim
    h = jnp.arange(n, dtype=jnp.uint32) * jnp.uint32(0x9E3779B1) + words[0]
    h = h ^ words[-1]
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    h = h ^ (h >> 16)
    return ((h >> 8).astype(jnp.float32) * (1.0 / (1 << 24))).reshape(shape)


def stochastic_round(x: jax.Array, key: jax.Array, rng: str = "hash") -> jax.Array:
    """Unbiased randomised rounding to integers: ``floor(x) + Bernoulli(x - floor(x))``.

    ``E[round(x)] = x`` and every coordinate moves by less than 1, so
    ``||round(x)||_2 <= ||x||_2 + sqrt(d)``. Returns float32 holding integers (exact while
    ``|x| < 2^24``; beyond that float32 has no fractional part to round). The uniforms come
    from :func:`hash_uniform` (``rng="hash"``) or ``jax.random.uniform`` with ``key``'s own
    implementation (``"threefry"``, ``"rbg"``); all are simulation-grade.
    """
    lo = jnp.floor(x)
    u = hash_uniform(key, x.shape) if rng == "hash" else jax.random.uniform(key, x.shape)
    return lo + (u < (x - lo)).astype(x.dtype)


def to_modular(q: jax.Array, bits: int) -> jax.Array:
    """Signed integers (int32) to ``Z_2^b`` as uint32 (two's complement, then reduced)."""
    return jax.lax.bitcast_convert_type(q.astype(jnp.int32), jnp.uint32) & modulus_mask(bits)


def centred_lift(u: jax.Array, bits: int) -> jax.Array:
    """Elements of ``Z_2^b`` (uint32) to the signed representatives in ``[-2^(b-1), 2^(b-1))``.

    Shifts the ``b`` bits to the top of the word and back with an arithmetic (sign-extending)
    shift, so no intermediate overflows for any ``b <= 32``.
    """
    shift = jnp.asarray(32 - bits, jnp.uint32)
    top = jax.lax.bitcast_convert_type(u << shift, jnp.int32)
    return top >> (32 - bits)


def clamp_int32(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Float integers clamped to int32's range; also returns how many were out of it."""
    lo, hi = -(2.0**31), 2.0**31 - 128.0  # the largest float32 below 2^31
    out = (x < lo) | (x > hi)
    return jnp.clip(x, lo, hi).astype(jnp.int32), jnp.sum(out)


def rotation_coordinate_bound(d: int, beta: float = 1e-6) -> float:
    """``rho`` with ``P(|(H D x)_i| > rho ||x||_2 for some i) <= beta`` (Hoeffding + union bound).

    Each coordinate of ``H D x`` is a Rademacher sum with variance ``||x||^2 / d``.
    """
    return min(1.0, math.sqrt(2.0 * math.log(2.0 * d / beta) / d))


def auto_scale(
    bits: int,
    clients: float,
    bound: float,
    dim: int,
    rotation: bool,
    noise_multiplier: float = 0.0,
    k: float = 3.0,
) -> float:
    """A scale ``s`` such that the modular sum of ``clients`` contributions rarely wraps.

    Worst case, all contributions point the same way: each coordinate of the sum is at most
    ``clients * rho * bound`` (``rho = 1`` without rotation, :func:`rotation_coordinate_bound`
    with it), and the noise of the sum has std ``noise_multiplier * bound``. The scale puts
    that signal plus ``k`` noise standard deviations inside ``[-2^(b-1), 2^(b-1))``
    (Kairouz et al. 2021, Section 4.2 choose the scale the same way).

    Args:
        bits: ``b``. clients: number of summed contributions. bound: L2 bound (clip) of one
        contribution. dim: padded dimension. rotation: whether rotation is applied.
        noise_multiplier: the sum's noise std over ``bound``. k: noise standard deviations kept.
    """
    rho = rotation_coordinate_bound(dim) if rotation else 1.0
    per_unit = bound * (clients * rho + k * noise_multiplier)
    return (2.0 ** (bits - 1) - 1.0) / per_unit
