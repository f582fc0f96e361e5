"""Local training on one client, as a pure function that vmaps over a cohort."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]


class ClientBatch(NamedTuple):
    """One client's padded data: ``x[n_cap, ...]``, ``y[n_cap]``, ``count`` (scalar)."""

    x: jax.Array
    y: jax.Array
    count: jax.Array


class ClientOutput(NamedTuple):
    """What one client returns.

    Attributes:
        update: ``local_params - global_params`` (same tree as params).
        loss: mean training loss over the client's local steps.
        steps: number of local steps actually taken (padding steps excluded).
    """

    update: PyTree
    loss: jax.Array
    steps: jax.Array


def batch_schedule(
    key: jax.Array, count: jax.Array, n_cap: int, batch_size: int, epochs: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Which examples each local step uses: ``epochs`` reshuffled passes in batches.

    Returns:
        ``(idx[T, B], weights[T, B], step_keys[T])`` with ``T = epochs * ceil(n_cap / B)``:
        example indices, 1 for real examples and 0 for padding, and a key per step. Real
        examples come first in each epoch's random order, so a client with ``n`` examples
        has ``ceil(n / B)`` non-empty steps per epoch.
    """
    steps_per_epoch = math.ceil(n_cap / batch_size)
    n_slots = steps_per_epoch * batch_size
    total_steps = epochs * steps_per_epoch
    shuffle_key, step_key = jax.random.split(key)
    count = count.astype(jnp.int32)

    def epoch_order(k):
        # Real examples first in random order, then padding; slots past n_cap point to 0.
        r = jax.random.uniform(k, (n_cap,))
        r = jnp.where(jnp.arange(n_cap) < count, r, 2.0 + jnp.arange(n_cap))
        order = jnp.argsort(r)
        return jnp.concatenate([order, jnp.zeros(n_slots - n_cap, order.dtype)])

    orders = jax.vmap(epoch_order)(jax.random.split(shuffle_key, epochs))
    idx = orders.reshape(total_steps, batch_size)
    weights = jnp.tile(jnp.arange(n_slots) < count, epochs).reshape(total_steps, batch_size)
    return idx, weights, jax.random.split(step_key, total_steps)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy, ``loss[B]``."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def num_local_steps(n_cap: int, batch_size: int, epochs: int) -> int:
    """Static number of scan steps: ``epochs * ceil(n_cap / batch_size)``."""
    return epochs * math.ceil(n_cap / batch_size)


def make_client_update(
    apply_fn: ApplyFn,
    optimizer: optax.GradientTransformation,
    epochs: int,
    batch_size: int,
    n_cap: int,
    grad_fn: Callable[..., tuple[jax.Array, PyTree]] | None = None,
) -> Callable[[PyTree, ClientBatch, jax.Array], ClientOutput]:
    """Builds ``client_update(params, batch, key) -> ClientOutput``.

    Local training is ``epochs`` passes of mini-batch training with ``batch_size`` over the
    client's ``count`` real examples, reshuffled each epoch (McMahan et al. 2017, Algorithm 1,
    ClientUpdate). Shapes are static: the scan always runs
    ``epochs * ceil(n_cap / batch_size)`` steps, and a step whose batch holds no real example
    leaves parameters and optimizer state unchanged. A client with ``n`` examples therefore
    takes exactly ``epochs * ceil(n / batch_size)`` steps; padded examples have zero weight.

    Args:
        apply_fn: ``apply_fn(params, x[B, ...]) -> logits[B, classes]``.
        optimizer: the client's optax optimizer (e.g. ``optax.sgd(lr)``).
        epochs: local epochs E.
        batch_size: local batch size B.
        n_cap: static number of example slots per client.
        grad_fn: optional ``grad_fn(params, x[B], y[B], w[B], key) -> (loss, grads)``
            replacing the plain weighted-mean gradient (example-level DP-SGD plugs in here).

    Returns:
        A pure function of ``(params, ClientBatch, key)``, safe to ``vmap`` and ``jit``.
    """

    def mean_loss(params, x, y, w):
        per_example = cross_entropy(apply_fn(params, x), y)
        return jnp.sum(per_example * w) / jnp.maximum(jnp.sum(w), 1.0)

    def plain_grad(params, x, y, w, key):
        del key
        return jax.value_and_grad(mean_loss)(params, x, y, w)

    compute_grad = grad_fn or plain_grad

    def client_update(params: PyTree, batch: ClientBatch, key: jax.Array) -> ClientOutput:
        idx, weights, step_keys = batch_schedule(key, batch.count, n_cap, batch_size, epochs)

        def step(carry, inputs):
            local, opt_state = carry
            ix, w, k = inputs
            w = w.astype(jnp.float32)
            loss, grads = compute_grad(local, batch.x[ix], batch.y[ix], w, k)
            updates, new_opt_state = optimizer.update(grads, opt_state, local)
            new_local = optax.apply_updates(local, updates)
            active = jnp.any(w > 0)
            keep = lambda new, old: jnp.where(active, new, old)
            local = jax.tree.map(keep, new_local, local)
            opt_state = jax.tree.map(keep, new_opt_state, opt_state)
            return (local, opt_state), (loss * active, active)

        (local, _), (losses, active) = jax.lax.scan(
            step, (params, optimizer.init(params)), (idx, weights, step_keys)
        )
        steps = jnp.sum(active)
        update = jax.tree.map(jnp.subtract, local, params)
        return ClientOutput(update, jnp.sum(losses) / jnp.maximum(steps, 1), steps)

    return client_update


def make_client_optimizer(
    name: str, lr: float, momentum: float = 0.0
) -> optax.GradientTransformation:
    """The client's local optimizer: ``sgd`` (with optional momentum) or ``adam``."""
    from fedpriv.errors import ConfigError

    if name == "sgd":
        return optax.sgd(lr, momentum=momentum or None)
    if name == "adam":
        return optax.adam(lr)
    raise ConfigError(
        "client.optimizer", f"unknown optimizer {name!r}; choose from ['sgd', 'adam']"
    )
