"""Gaussian noise for pytrees.

Noise is drawn with JAX's PRNG (threefry), which is simulation-grade: fine for research
simulations, not a cryptographically secure generator for a deployment.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


def gaussian_like(tree: PyTree, std: jax.Array, key: jax.Array) -> PyTree:
    """Independent ``N(0, std^2)`` noise with the structure of ``tree`` (simulation-grade).

    Each leaf gets its own key from ``key`` (split by leaf index), so the same key always
    gives the same noise.
    """
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    noise = [
        std * jax.random.normal(k, x.shape, jnp.float32).astype(x.dtype)
        for k, x in zip(keys, leaves)
    ]
    return jax.tree.unflatten(treedef, noise)


def add_gaussian(tree: PyTree, std: jax.Array, key: jax.Array) -> PyTree:
    """``tree + N(0, std^2)`` elementwise (simulation-grade)."""
    return jax.tree.map(jnp.add, tree, gaussian_like(tree, std, key))
