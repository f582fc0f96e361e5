"""L2 clipping of client updates, flat or per layer."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


def l2_norm(tree: PyTree) -> jax.Array:
    """Global L2 norm of a pytree, accumulated in float32."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def clip_flat(tree: PyTree, clip_norm: jax.Array) -> tuple[PyTree, jax.Array]:
    """Scales ``tree`` so its global L2 norm is at most ``clip_norm``.

    Returns:
        ``(clipped, norm)`` with ``norm`` the norm before clipping.

    Privacy:
        ``||clipped||_2 <= clip_norm`` for any input, so a sum of clipped contributions has
        L2 sensitivity ``clip_norm`` under adding or removing one contributor (``2 *
        clip_norm`` under replacing one).
    """
    norm = l2_norm(tree)
    scale = jnp.minimum(1.0, clip_norm / jnp.maximum(norm, 1e-12))
    return jax.tree.map(lambda x: x * scale.astype(x.dtype), tree), norm


def layer_budgets(tree: PyTree, clip_norm: jax.Array) -> PyTree:
    """Equal per-layer budgets ``clip_norm / sqrt(L)`` whose squares sum to ``clip_norm**2``."""
    leaves = jax.tree.leaves(tree)
    per = clip_norm / jnp.sqrt(float(len(leaves)))
    return jax.tree.map(lambda _: per, tree)


def clip_per_layer(tree: PyTree, clip_norm: jax.Array) -> tuple[PyTree, jax.Array]:
    """Clips each parameter array (layer) to its own budget (McMahan et al. 2018, Sec. 3).

    Budgets are equal, ``C / sqrt(L)`` for ``L`` arrays, so the clipped update's global norm
    is at most ``sqrt(sum_l C_l^2) = C``.

    Returns:
        ``(clipped, norm)`` with ``norm`` the global norm before clipping.

    Privacy:
        Same sensitivity as :func:`clip_flat`: the clipped update has global norm ``<= C``.
    """
    budgets = layer_budgets(tree, clip_norm)

    def clip_leaf(x, c):
        n = jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32))))
        return x * jnp.minimum(1.0, c / jnp.maximum(n, 1e-12)).astype(x.dtype)

    return jax.tree.map(clip_leaf, tree, budgets), l2_norm(tree)


def clip(tree: PyTree, clip_norm: jax.Array, per_layer: bool = False) -> tuple[PyTree, jax.Array]:
    """Flat or per-layer clipping (see :func:`clip_flat`, :func:`clip_per_layer`)."""
    return (clip_per_layer if per_layer else clip_flat)(tree, clip_norm)
