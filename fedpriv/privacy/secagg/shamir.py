"""Shamir secret sharing of byte strings over the prime field ``GF(2^31 - 1)``, vectorised.

A 32-byte secret is split into 9 field elements of 30 bits; each is shared with its own
random polynomial of degree ``t - 1`` whose constant term is the element (Shamir 1979). Any
``t`` shares determine the secret by Lagrange interpolation at 0; any ``t - 1`` shares are
consistent with every secret, each equally often, so they reveal nothing. Polynomial
coefficients come from ``os.urandom`` (a cryptographic generator).

References:
    Shamir. "How to Share a Secret." Communications of the ACM 22(11), 1979.
"""

from __future__ import annotations

import os

import numpy as np

#: The Mersenne prime 2^31 - 1: products of two elements fit in uint64.
PRIME = (1 << 31) - 1
CHUNK_BITS = 30


def _chunks(secret: bytes) -> np.ndarray:
    value = int.from_bytes(secret, "big")
    n = -(-len(secret) * 8 // CHUNK_BITS)
    mask = (1 << CHUNK_BITS) - 1
    return np.array([(value >> (CHUNK_BITS * i)) & mask for i in range(n)], np.uint64)


def _unchunk(chunks: np.ndarray, length: int) -> bytes:
    value = 0
    for i, c in enumerate(np.asarray(chunks, np.uint64).tolist()):
        value |= int(c) << (CHUNK_BITS * i)
    return (value & ((1 << (8 * length)) - 1)).to_bytes(length, "big")


def _random_field(shape: tuple[int, ...], prime: int) -> np.ndarray:
    raw = np.frombuffer(os.urandom(8 * int(np.prod(shape))), np.uint64).reshape(shape)
    return raw % np.uint64(prime)  # bias below 2^-32


def share_elements(
    secret: np.ndarray, xs: np.ndarray, threshold: int, prime: int = PRIME
) -> np.ndarray:
    """Shares field elements ``secret[m]`` at points ``xs[k]`` (nonzero, distinct).

    Returns:
        ``shares[k, m]``: the value at ``xs[k]`` of the polynomial of degree ``t - 1`` with
        constant term ``secret[m]`` and uniformly random other coefficients.
    """
    p = np.uint64(prime)
    coeffs = _random_field((threshold - 1, secret.shape[0]), prime)
    x = np.asarray(xs, np.uint64)[:, None] % p
    acc = np.zeros((x.shape[0], secret.shape[0]), np.uint64)
    for c in coeffs[::-1]:  # Horner from the highest coefficient
        acc = (acc + c[None, :]) % p
        acc = (acc * x) % p
    return (acc + np.asarray(secret, np.uint64)[None, :] % p) % p


def _mulmod_reduce(a: np.ndarray, p: np.uint64) -> np.ndarray:
    """Product over the last axis modulo ``p`` by pairwise (log-depth) reduction."""
    while a.shape[-1] > 1:
        if a.shape[-1] % 2:
            a = np.concatenate([a, np.ones(a.shape[:-1] + (1,), np.uint64)], axis=-1)
        a = (a[..., 0::2] * a[..., 1::2]) % p
    return a[..., 0]


def _powmod(a: np.ndarray, e: int, p: np.uint64) -> np.ndarray:
    out = np.ones_like(a)
    base = a % p
    while e:
        if e & 1:
            out = (out * base) % p
        base = (base * base) % p
        e >>= 1
    return out


def lagrange_at_zero(xs: np.ndarray, prime: int = PRIME) -> np.ndarray:
    """Coefficients ``lambda_j = prod_{m != j} x_m / (x_m - x_j)`` (mod p) for interpolation
    at 0, vectorised: the products by pairwise reduction, the inverses by Fermat."""
    p = np.uint64(prime)
    x = np.asarray(xs, np.int64) % prime
    diff = (x[None, :] - x[:, None]) % prime  # [j, m] = x_m - x_j
    np.fill_diagonal(diff, 1)
    num = np.broadcast_to(x[None, :], diff.shape).astype(np.uint64).copy()
    np.fill_diagonal(num, 1)
    num = _mulmod_reduce(num, p)
    den = _mulmod_reduce(diff.astype(np.uint64), p)
    return (num * _powmod(den, prime - 2, p)) % p


def reconstruct_elements(xs: np.ndarray, shares: np.ndarray, prime: int = PRIME) -> np.ndarray:
    """The constant terms from shares ``shares[..., k, m]`` at points ``xs[k]``."""
    lam = lagrange_at_zero(xs, prime)
    terms = (lam[:, None] * (np.asarray(shares, np.uint64) % np.uint64(prime))) % np.uint64(prime)
    return terms.sum(axis=-2) % np.uint64(prime)


def share_secret(secret: bytes, xs: np.ndarray, threshold: int) -> np.ndarray:
    """Shares of a byte string at points ``xs``: ``shares[k, chunks]`` (uint64 < 2^31)."""
    return share_elements(_chunks(secret), xs, threshold)


def reconstruct_secret(xs: np.ndarray, shares: np.ndarray, length: int = 32) -> bytes:
    """The byte string from ``t`` shares (at distinct points ``xs``)."""
    return _unchunk(reconstruct_elements(xs, shares), length)
