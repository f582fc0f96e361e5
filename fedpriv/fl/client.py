"""Local training on one client, as a pure function that vmaps over a cohort."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedpriv.errors import ArgumentError

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]
#: ``schedule(key, count) -> (idx[T, B], weights[T, B], step_keys[T], active[T])``.
Schedule = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array, jax.Array, jax.Array]]


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
    *,
    schedule: Schedule | None = None,
    proximal_mu: float = 0.0,
    work_fraction: Callable[[jax.Array], jax.Array] | None = None,
    normalize: Callable[[jax.Array], jax.Array] | None = None,
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
            replacing the plain weighted-mean gradient (example-level DP-SGD plugs in here,
            :func:`fedpriv.privacy.dpsgd.dpsgd_grad`).
        schedule: optional ``schedule(key, count) -> (idx[T, B], weights[T, B], keys[T],
            active[T])`` replacing the epoch schedule (:func:`batch_schedule`, whose active
            steps are those holding a real example): which examples each of the ``T`` steps
            sees, their weights, the step's key handed to ``grad_fn``, and whether the step is
            taken. DP-SGD's Poisson schedule takes every step, sampled example or not
            (:func:`fedpriv.privacy.dpsgd.poisson_schedule`). Every option below composes
            with it: FedProx's term is added to ``grad_fn``'s gradient, a work fraction masks
            the last active steps, FedNova normalises by the steps taken.
        proximal_mu: FedProx's mu (Li et al. 2020, Algorithm 2): local training minimises
            ``F_k(w) + mu/2 ||w - w_global||^2``, so ``mu (w - w_global)`` is added to each
            step's gradient before the optimizer (any optax optimizer). ``0`` is FedAvg: the
            term is not traced at all, so the program is FedAvg's, bit for bit.
        work_fraction: heterogeneous compute: ``work_fraction(key) -> f`` in ``(0, 1]``
            (e.g. :func:`fedpriv.fl.edge.uniform_work`), drawn from the client's key folded
            with :data:`COMPUTE_PURPOSE`. The client then takes only its first
            ``clip(round(f * T), 1, T)`` of its ``T`` non-empty steps; the rest are masked
            inside the scan, so every client runs the same compiled program. None: every
            client takes all its steps.
        normalize: FedNova's normalisation (Wang et al. 2020): ``normalize(steps) -> ||a||_1``
            (e.g. :func:`fednova_norm`); the returned update is the normalised update
            ``(local - global) / ||a||_1`` and the round rescales the aggregate by
            ``tau_eff`` (:class:`fedpriv.fl.edge.EdgeSpec`). None: the plain update.

    Returns:
        A pure function of ``(params, ClientBatch, key)``, safe to ``vmap`` and ``jit``.

    References:
        McMahan et al. "Communication-Efficient Learning of Deep Networks from Decentralized
        Data." AISTATS 2017 (ClientUpdate).
        Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith. "Federated Optimization in Heterogeneous
        Networks." MLSys 2020 (FedProx's proximal term; partial work of stragglers).
        Wang, Liu, Liang, Joshi, Poor. "Tackling the Objective Inconsistency Problem in
        Heterogeneous Federated Optimization." NeurIPS 2020 (FedNova).

    Privacy:
        Local training only; what reaches the server is bounded by the aggregator. With
        ``normalize`` the aggregator clips the normalised update (the sensitivity is the clip
        norm either way). ``proximal_mu`` and ``work_fraction`` change local computation
        only and never depend on other clients' data.
    """

    def mean_loss(params, x, y, w):
        per_example = cross_entropy(apply_fn(params, x), y)
        return jnp.sum(per_example * w) / jnp.maximum(jnp.sum(w), 1.0)

    def plain_grad(params, x, y, w, key):
        del key
        return jax.value_and_grad(mean_loss)(params, x, y, w)

    compute_grad = grad_fn or plain_grad

    def epochs_schedule(key: jax.Array, count: jax.Array):
        idx, weights, step_keys = batch_schedule(key, count, n_cap, batch_size, epochs)
        return idx, weights, step_keys, jnp.any(weights, axis=1)

    make_schedule = schedule or epochs_schedule

    def client_update(params: PyTree, batch: ClientBatch, key: jax.Array) -> ClientOutput:
        idx, weights, step_keys, taken = make_schedule(key, batch.count)
        if work_fraction is not None:
            fraction = work_fraction(jax.random.fold_in(key, COMPUTE_PURPOSE))
            taken = taken & step_budget_mask(taken[:, None], fraction)
            weights = weights & taken[:, None]

        def step(carry, inputs):
            local, opt_state = carry
            ix, w, k, active = inputs
            w = w.astype(jnp.float32)
            loss, grads = compute_grad(local, batch.x[ix], batch.y[ix], w, k)
            if proximal_mu:
                grads = jax.tree.map(
                    lambda g, w_local, w_global: g + proximal_mu * (w_local - w_global),
                    grads,
                    local,
                    params,
                )
            updates, new_opt_state = optimizer.update(grads, opt_state, local)
            new_local = optax.apply_updates(local, updates)
            keep = lambda new, old: jnp.where(active, new, old)
            local = jax.tree.map(keep, new_local, local)
            opt_state = jax.tree.map(keep, new_opt_state, opt_state)
            return (local, opt_state), (loss * active, active)

        (local, _), (losses, active) = jax.lax.scan(
            step, (params, optimizer.init(params)), (idx, weights, step_keys, taken)
        )
        steps = jnp.sum(active)
        update = jax.tree.map(jnp.subtract, local, params)
        if normalize is not None:
            norm = normalize(steps)
            norm = jnp.where(norm > 0, norm, 1.0)
            update = jax.tree.map(lambda u: u / norm, update)
        return ClientOutput(update, jnp.sum(losses) / jnp.maximum(steps, 1), steps)

    return client_update


#: Purpose id folded into a client's key for its compute draw (the batch order and the
#: DP-SGD noise use the key itself, so they are the same with and without the draw).
COMPUTE_PURPOSE = 0x636F6D70  # "comp"


def step_budget_mask(weights: jax.Array, fraction: jax.Array) -> jax.Array:
    """Which scheduled steps a client with work ``fraction`` takes: ``allowed[T]``.

    A client's non-empty steps (those with a real example in ``weights[T, B]``) are counted
    in order; it takes the first ``clip(round(fraction * T_i), 1, T_i)`` of its ``T_i``
    non-empty steps, so a client with ``fraction = k / E`` of ``E`` epochs runs exactly
    ``k`` epochs. ``fraction = 1`` allows every step.
    """
    has_data = jnp.any(weights, axis=1)
    total = jnp.sum(has_data)
    budget = jnp.minimum(jnp.maximum(jnp.round(fraction * total), 1), total)
    return jnp.cumsum(has_data) <= budget


def fednova_norm(momentum: float = 0.0) -> Callable[[jax.Array], jax.Array]:
    """FedNova's ``||a_i||_1`` as a function of the local steps ``tau_i`` (float32).

    Plain local SGD: ``||a_i||_1 = tau_i``. SGD with heavy-ball momentum ``rho`` (optax's
    ``sgd(lr, momentum)``): ``||a_i||_1 = (tau_i - rho (1 - rho^tau_i) / (1 - rho)) / (1 - rho)``
    (Wang et al. 2020, Section 5 and Appendix, "local momentum").

    References:
        Wang, Liu, Liang, Joshi, Poor. "Tackling the Objective Inconsistency Problem in
        Heterogeneous Federated Optimization." NeurIPS 2020.
    """
    rho = float(momentum)
    if not 0.0 <= rho < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {rho}")

    def norm(steps: jax.Array) -> jax.Array:
        tau = jnp.asarray(steps, jnp.float32)
        if rho == 0.0:
            return tau
        return (tau - rho * (1.0 - rho**tau) / (1.0 - rho)) / (1.0 - rho)

    return norm


def make_client_optimizer(
    name: str, lr: float, momentum: float = 0.0
) -> optax.GradientTransformation:
    """The client's local optimizer: ``sgd`` (with optional momentum) or ``adam``.

    Raises:
        ArgumentError: naming ``name`` (``client.optimizer`` in a run's configuration).
    """
    if name == "sgd":
        return optax.sgd(lr, momentum=momentum or None)
    if name == "adam":
        return optax.adam(lr)
    raise ArgumentError("name", f"unknown optimizer {name!r}; choose from ['sgd', 'adam']")
