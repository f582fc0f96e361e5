"""Example-level DP-SGD inside each client (Abadi et al. 2016).

Reference:
    Abadi, Chu, Goodfellow, McMahan, Mironov, Talwar, Zhang. "Deep Learning with Differential
    Privacy." CCS 2016, Algorithm 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from fedpriv.fl.client import ClientBatch, ClientOutput, cross_entropy
from fedpriv.privacy.clipping import clip_flat
from fedpriv.privacy.noise import add_gaussian

PyTree = Any


def per_example_grads(apply_fn: Callable, params: PyTree, x: jax.Array, y: jax.Array):
    """``(loss[n], grads)`` with each leaf of ``grads`` shaped ``[n, ...]``: one gradient per
    example, by ``vmap`` of the single-example gradient."""

    def one(xi, yi):
        def loss(p):
            return cross_entropy(apply_fn(p, xi[None]), yi[None])[0]

        return jax.value_and_grad(loss)(params)

    return jax.vmap(one)(x, y)


def make_dpsgd_client_update(
    apply_fn: Callable,
    optimizer: optax.GradientTransformation,
    steps: int,
    sampling_rate: float,
    clip_norm: float,
    noise_multiplier: float,
    n_cap: int,
    expected_batch_size: float,
) -> Callable[[PyTree, ClientBatch, jax.Array], ClientOutput]:
    """Builds a client update that runs ``steps`` steps of DP-SGD on the client's examples.

    Each step Poisson-samples the client's real examples with probability ``q``, clips
    every sampled example's gradient to L2 norm ``C``, sums, adds ``N(0, (z C)^2 I)`` and
    divides by the declared expected batch size ``B`` (a public constant, the same for every
    client: never the client's own example count, which adding or removing one example
    changes). Every step is taken, even when no example was sampled (then the gradient is
    pure noise), as the analysis assumes.

    Args:
        apply_fn: ``apply_fn(params, x[B, ...]) -> logits``.
        optimizer: the client's optax optimizer, applied to the privatised gradient.
        steps: local DP-SGD steps per round (the same for every client).
        sampling_rate: q, the Poisson rate of each example in each step.
        clip_norm: C, the per-example clip norm.
        noise_multiplier: z; noise std on the clipped-gradient sum is ``z * C``.
        n_cap: example slots per client.
        expected_batch_size: B, the divisor of every step's noised sum.

    Privacy:
        Unit: one example (add/remove-one-example relation within a client). Each step is a
        Poisson-subsampled Gaussian mechanism with rate q and noise multiplier z on a sum of
        sensitivity C; a round composes ``steps`` of them. Amplification by the sampling of
        clients is not claimed. What the client releases (its update) is a function of the
        noised sums and of public constants only (q, z, C, B, ``steps``); the example count
        shapes nothing but which slots hold real examples.
    """

    def client_update(params: PyTree, batch: ClientBatch, key: jax.Array) -> ClientOutput:
        valid = jnp.arange(n_cap) < batch.count

        def step(carry, k):
            local, opt_state = carry
            sample_key, noise_key = jax.random.split(k)
            chosen = valid & jax.random.bernoulli(sample_key, sampling_rate, (n_cap,))
            w = chosen.astype(jnp.float32)
            losses, grads = per_example_grads(apply_fn, local, batch.x, batch.y)
            clipped = jax.vmap(lambda g: clip_flat(g, clip_norm)[0])(grads)
            summed = jax.tree.map(lambda g: jnp.tensordot(w, g, axes=1), clipped)
            noised = add_gaussian(summed, noise_multiplier * clip_norm, noise_key)
            grad = jax.tree.map(lambda g: g / expected_batch_size, noised)
            updates, opt_state = optimizer.update(grad, opt_state, local)
            local = optax.apply_updates(local, updates)
            loss = jnp.sum(losses * w) / jnp.maximum(jnp.sum(w), 1.0)
            return (local, opt_state), loss

        (local, _), losses = jax.lax.scan(
            step, (params, optimizer.init(params)), jax.random.split(key, steps)
        )
        update = jax.tree.map(jnp.subtract, local, params)
        return ClientOutput(update, jnp.mean(losses), jnp.asarray(steps, jnp.int32))

    return client_update
