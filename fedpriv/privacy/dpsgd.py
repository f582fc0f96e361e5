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

from fedpriv.fl.client import (
    ClientBatch,
    ClientOutput,
    Schedule,
    cross_entropy,
    make_client_update,
)
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


def poisson_schedule(steps: int, sampling_rate: float, n_cap: int) -> Schedule:
    """DP-SGD's step schedule for :func:`fedpriv.fl.client.make_client_update`.

    Each of ``steps`` steps sees all ``n_cap`` slots, weighted 1 where a real example is
    Poisson-sampled with probability ``q`` and 0 elsewhere, and is taken whether or not any
    example was sampled (the analysis counts every step). A step's key (handed to the
    gradient, :func:`dpsgd_grad`, for its noise) and its sampling come from the client key,
    one split per step.
    """

    def schedule(key: jax.Array, count: jax.Array):
        valid = jnp.arange(n_cap) < count
        keys = jax.random.split(key, steps)
        pairs = jax.vmap(jax.random.split)(keys)  # (sample key, noise key) of each step
        chosen = jax.vmap(lambda k: jax.random.bernoulli(k, sampling_rate, (n_cap,)))(pairs[:, 0])
        idx = jnp.broadcast_to(jnp.arange(n_cap), (steps, n_cap))
        return idx, chosen & valid, pairs[:, 1], jnp.ones(steps, bool)

    return schedule


def dpsgd_grad(
    apply_fn: Callable, clip_norm: float, noise_multiplier: float, expected_batch_size: float
) -> Callable[..., tuple[jax.Array, PyTree]]:
    """DP-SGD's gradient for :func:`fedpriv.fl.client.make_client_update`:
    ``grad(params, x, y, w, key) -> (loss, g)`` with
    ``g = (sum_i w_i clip(grad_i, C) + N(0, (z C)^2 I)) / B``.

    The divisor ``B`` is the declared expected batch size, a public constant; ``w`` is the
    0/1 Poisson sample of :func:`poisson_schedule`; ``loss`` is the sampled examples' mean
    loss (a diagnostic, not released).

    Privacy:
        The clipped sum has L2 sensitivity ``C`` under adding or removing one example; with
        the noise the step is the Gaussian mechanism with multiplier ``z`` on it.
    """

    def grad(params: PyTree, x: jax.Array, y: jax.Array, w: jax.Array, key: jax.Array):
        losses, grads = per_example_grads(apply_fn, params, x, y)
        clipped = jax.vmap(lambda g: clip_flat(g, clip_norm)[0])(grads)
        summed = jax.tree.map(lambda g: jnp.tensordot(w, g, axes=1), clipped)
        noised = add_gaussian(summed, noise_multiplier * clip_norm, key)
        loss = jnp.sum(losses * w) / jnp.maximum(jnp.sum(w), 1.0)
        return loss, jax.tree.map(lambda g: g / expected_batch_size, noised)

    return grad


def make_dpsgd_client_update(
    apply_fn: Callable,
    optimizer: optax.GradientTransformation,
    steps: int,
    sampling_rate: float,
    clip_norm: float,
    noise_multiplier: float,
    n_cap: int,
    expected_batch_size: float,
    **local: Any,
) -> Callable[[PyTree, ClientBatch, jax.Array], ClientOutput]:
    """Builds a client update that runs ``steps`` steps of DP-SGD on the client's examples.

    Each step Poisson-samples the client's real examples with probability ``q``, clips
    every sampled example's gradient to L2 norm ``C``, sums, adds ``N(0, (z C)^2 I)`` and
    divides by the declared expected batch size ``B`` (a public constant, the same for every
    client: never the client's own example count, which adding or removing one example
    changes). Every step is taken, even when no example was sampled (then the gradient is
    pure noise), as the analysis assumes.

    It is local training (:func:`fedpriv.fl.client.make_client_update`) with DP-SGD's
    schedule (:func:`poisson_schedule`) and gradient (:func:`dpsgd_grad`), so the options of
    local training compose with it (``local``: FedProx's ``proximal_mu``, a
    ``work_fraction`` for heterogeneous compute, FedNova's ``normalize``).

    Args:
        apply_fn: ``apply_fn(params, x[B, ...]) -> logits``.
        optimizer: the client's optax optimizer, applied to the privatised gradient.
        steps: local DP-SGD steps per round (the same for every client).
        sampling_rate: q, the Poisson rate of each example in each step.
        clip_norm: C, the per-example clip norm.
        noise_multiplier: z; noise std on the clipped-gradient sum is ``z * C``.
        n_cap: example slots per client.
        expected_batch_size: B, the divisor of every step's noised sum.
        **local: options of :func:`~fedpriv.fl.client.make_client_update`.

    Privacy:
        Unit: one example (add/remove-one-example relation within a client). Each step is a
        Poisson-subsampled Gaussian mechanism with rate q and noise multiplier z on a sum of
        sensitivity C; a round composes ``steps`` of them. Amplification by the sampling of
        clients is not claimed. What the client releases (its update) is a function of the
        noised sums and of public constants only (q, z, C, B, ``steps``); the example count
        shapes nothing but which slots hold real examples. The local options keep this:
        FedProx adds ``mu (w_local - w_global)``, a function of the noised iterates and the
        public global model; a work fraction, drawn from the client's key independently of
        its data, only leaves steps out (a client that takes fewer steps composes fewer
        mechanisms, so the ``steps`` accounted bound it); FedNova divides by a function of
        the steps taken, which depend on that draw alone.
    """
    return make_client_update(
        apply_fn,
        optimizer,
        1,
        n_cap,
        n_cap,
        dpsgd_grad(apply_fn, clip_norm, noise_multiplier, expected_batch_size),
        schedule=poisson_schedule(steps, sampling_rate, n_cap),
        **local,
    )
