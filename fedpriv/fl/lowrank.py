"""Factored (low-rank) local SGD for dense networks: the shared products done once.

With plain local SGD, a dense layer's weights on client ``i`` after ``t`` steps are the shared
global weights plus a low-rank sum, ``W_i^(t) = W + sum_{s<t} U_s^T V_s``, where ``U_s[B, d_in]``
are the layer's inputs at step ``s`` and ``V_s[B, d_out] = -lr * dL/dZ_s`` its (weighted,
batch-averaged) output gradients. Every product with ``W_i^(t)`` splits into a product with
the shared ``W``, which is one large matrix product over all clients of a chunk (``vmap``
with ``W`` unbatched), plus a small per-client correction through ``B x B`` Gram matrices:

    A W_i^(t)        = A W   + sum_s (A U_s^T) V_s          (forward)
    dZ W_i^(t)^T     = dZ W^T + sum_s (dZ V_s^T) U_s        (backward to the layer below)

A client's update is never formed: ``Delta W_i = U_i^T V_i`` with ``U_i, V_i`` the stacked
factors over its ``T`` local steps; its squared Frobenius norm is
``sum((U_i U_i^T) * (V_i V_i^T))`` (Gram matrices of size ``TB x TB``), so clipping works on
the factors, and the cohort's (scaled) sum ``sum_i c_i U_i^T V_i`` is again one large product.

The corrections cost ``O(T * B^2 * (d_in + d_out))`` per step and layer, growing with the
square of the local steps; the planner uses this path only for few local steps.

Applies to: a chain of dense layers with ReLU between them and softmax cross-entropy on the
last (``fedpriv.models.MLP``, ``LogReg``), plain SGD (no momentum) on the clients, and an
aggregator with a ``client_scale`` (FedAvg's weighted mean, DP-FedAvg with flat clipping).
It computes the same function as :func:`fedpriv.fl.client.make_client_update` with the same
keys (the batch schedule is shared), up to floating-point rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from fedpriv.errors import ConfigError
from fedpriv.fl.aggregators import Aggregator
from fedpriv.fl.client import batch_schedule
from fedpriv.fl.round import RoundInputs
from fedpriv.settings import LocalTraining

PyTree = Any


def dense_layers(params: PyTree) -> list[str] | None:
    """Names of the dense layers ``Dense_0..Dense_L`` of an MLP/LogReg parameter tree, in
    order, or None when the tree is not such a chain."""
    inner = params.get("params") if isinstance(params, dict) else None
    if not isinstance(inner, dict) or not inner:
        return None
    names = [f"Dense_{i}" for i in range(len(inner))]
    if set(names) != set(inner):
        return None
    for name in names:
        layer = inner[name]
        if set(layer) != {"kernel", "bias"} or layer["kernel"].ndim != 2:
            return None
    return names


def make_lowrank_client(
    layers: list[str],
    lr: float,
    epochs: int,
    batch_size: int,
    n_cap: int,
    preprocess: Callable[[jax.Array], jax.Array] | None = None,
) -> Callable:
    """Builds ``client(params, x[n_cap, ...], y[n_cap], count, key) -> factors``.

    Returns per client: ``us[l][T, B, d_in]``, ``vs[l][T, B, d_out]``, bias deltas
    ``db[l][d_out]``, mean loss and number of active steps. ``vmap`` it with ``params``
    unbatched so the products with shared weights become one matrix product per chunk.
    """
    n_layers = len(layers)

    def client(params, x, y, count, key):
        weights = [params["params"][name]["kernel"] for name in layers]
        biases = [params["params"][name]["bias"] for name in layers]
        idx, wts, _ = batch_schedule(key, count, n_cap, batch_size, epochs)
        total = idx.shape[0]
        xf = x.reshape((n_cap, -1))
        if preprocess is not None:
            xf = preprocess(xf)
        xf = xf.astype(jnp.float32)
        # Layer 0's inputs are the client's examples: every Gram product with them is a
        # lookup in one n_cap x n_cap Gram matrix, and its factor U_0 = x[idx] is not stored.
        gram_x = xf @ xf.T
        us0 = [jnp.zeros((total, batch_size, 0), jnp.float32)] + [
            jnp.zeros((total, batch_size, w.shape[0]), jnp.float32) for w in weights[1:]
        ]
        vs0 = [jnp.zeros((total, batch_size, w.shape[1]), jnp.float32) for w in weights]
        db0 = [jnp.zeros_like(b) for b in biases]

        def step(carry, inputs):
            us, vs, db = carry
            t, ix, w = inputs
            w = w.astype(jnp.float32)
            n_eff = jnp.maximum(jnp.sum(w), 1.0)
            a = xf[ix]
            acts, pre = [], []
            for layer in range(n_layers):
                acts.append(a)
                # (A U_s^T) V_s over all earlier steps s; slots s >= t of V hold zeros.
                if layer == 0:
                    gram = jnp.transpose(gram_x[ix][:, idx], (1, 0, 2))
                else:
                    gram = jnp.einsum("bi,sci->sbc", a, us[layer])
                z = a @ weights[layer] + jnp.einsum("sbc,sco->bo", gram, vs[layer])
                z = z + biases[layer] + db[layer]
                pre.append(z)
                a = jax.nn.relu(z) if layer < n_layers - 1 else z
            logits = a
            onehot = jax.nn.one_hot(y[ix], logits.shape[-1], dtype=jnp.float32)
            logp = jax.nn.log_softmax(logits)
            loss = -jnp.sum(w * jnp.sum(onehot * logp, -1)) / n_eff
            dz = (jnp.exp(logp) - onehot) * (w / n_eff)[:, None]
            new_us, new_vs, new_db = list(us), list(vs), list(db)
            for layer in reversed(range(n_layers)):
                if layer > 0:  # gradient to the layer below, through W_i^(t) (steps < t)
                    gram = jnp.einsum("bo,sco->sbc", dz, vs[layer])
                    da = dz @ weights[layer].T + jnp.einsum("sbc,sci->bi", gram, us[layer])
                    dz_below = da * (pre[layer - 1] > 0)
                if layer > 0:
                    new_us[layer] = us[layer].at[t].set(acts[layer])
                new_vs[layer] = vs[layer].at[t].set(-lr * dz)
                new_db[layer] = db[layer] - lr * jnp.sum(dz, axis=0)
                if layer > 0:
                    dz = dz_below
            active = jnp.any(w > 0)
            return (new_us, new_vs, new_db), (loss * active, active)

        (us, vs, db), (losses, active) = jax.lax.scan(
            step, (us0, vs0, db0), (jnp.arange(total), idx, wts)
        )
        steps = jnp.sum(active)
        flat_idx = idx.reshape(-1)
        us = [xf[flat_idx].reshape((total, batch_size, -1))] + us[1:]
        gram0 = gram_x[flat_idx][:, flat_idx]
        return us, vs, db, jnp.sum(losses) / jnp.maximum(steps, 1), steps, gram0

    return client


def factored_norms(
    us: list[jax.Array], vs: list[jax.Array], db: list[jax.Array], gram0: jax.Array | None = None
) -> jax.Array:
    """Global L2 norm of one client's update ``{U_l^T V_l, db_l}`` from Gram matrices
    (``gram0``, when given, is layer 0's ``U_0 U_0^T``)."""
    sq = 0.0
    for layer, (u, v, b) in enumerate(zip(us, vs, db)):
        u2 = u.reshape((-1, u.shape[-1]))
        v2 = v.reshape((-1, v.shape[-1]))
        uu = gram0 if (layer == 0 and gram0 is not None) else u2 @ u2.T
        sq = sq + jnp.sum(uu * (v2 @ v2.T)) + jnp.sum(b * b)
    return jnp.sqrt(jnp.maximum(sq, 0.0))


def make_lowrank_cohort_sums(
    layers: list[str],
    lr: float,
    epochs: int,
    batch_size: int,
    n_cap: int,
    aggregator: Aggregator,
    chunk_size: int,
    preprocess: Callable[[jax.Array], jax.Array] | None = None,
) -> Callable:
    """A drop-in for :func:`fedpriv.fl.round.cohort_sums` on the factored path.

    Returns ``sums(params, agg_state, inputs, client_key) -> ((total, weight, stats),
    per_client)`` with the same meaning: ``total`` is ``sum_i scale_i * update_i`` where
    ``scale_i`` comes from ``aggregator.client_scale`` and the update's norm.

    Privacy:
        Same as the aggregator's: its clipping factor is applied to each client's exact
        update norm (computed from the factors), so DP-FedAvg's sensitivity is unchanged.
    """
    if aggregator.client_scale is None:
        raise ValueError("the factored path needs an aggregator with client_scale")
    client = make_lowrank_client(layers, lr, epochs, batch_size, n_cap, preprocess)
    aggregator_uses_norm = _uses_norm(aggregator)

    def sums(params, agg_state, inputs: RoundInputs, client_key):
        num_slots = inputs.count.shape[0]
        chunks = jax.tree.map(
            lambda a: a.reshape((num_slots // chunk_size, chunk_size) + a.shape[1:]), inputs
        )

        def one(inp):
            key = jax.random.fold_in(client_key, inp.client_ids)
            us, vs, db, loss, steps, gram0 = client(params, inp.x, inp.y, inp.count, key)
            if aggregator_uses_norm:
                norm = factored_norms(us, vs, db, gram0)
            else:  # the weights ignore the norm; only its finiteness matters
                norm = sum(jnp.sum(v) for v in vs) * 0.0
            finite = jnp.isfinite(norm) & jnp.isfinite(loss)
            mask = inp.client_mask * finite
            scale, weight, stats = aggregator.client_scale(
                jnp.where(finite, norm, 0.0), inp.count, mask, agg_state
            )
            us = [jnp.where(finite, u, 0.0) for u in us]
            vs = [jnp.where(finite, v * scale, 0.0) for v in vs]
            db = [jnp.where(finite, b * scale, 0.0) for b in db]
            real = inp.client_mask > 0
            per_client = {
                "loss": jnp.where(real & finite, loss, 0.0),
                "steps": steps * real,
                "finite": finite | ~real,
            }
            return us, vs, db, weight, stats, per_client

        def run_chunk(acc, chunk):
            us, vs, db, weight, stats, per_client = jax.vmap(one)(chunk)
            total, total_w, total_stats = acc
            new_total = {"params": {}}
            for layer, name in enumerate(layers):
                u = us[layer].reshape((-1, us[layer].shape[-1]))
                v = vs[layer].reshape((-1, vs[layer].shape[-1]))
                prev = total["params"][name]
                new_total["params"][name] = {
                    "kernel": prev["kernel"] + u.T @ v,  # one product over the whole chunk
                    "bias": prev["bias"] + jnp.sum(db[layer], axis=0),
                }
            total_stats = {k: total_stats[k] + jnp.sum(v, axis=0) for k, v in stats.items()}
            return (new_total, total_w + jnp.sum(weight), total_stats), per_client

        zero_total = jax.tree.map(jnp.zeros_like, params)
        first = jax.tree.map(lambda a: a[0, 0], chunks)
        stats_shape = jax.eval_shape(one, first)[4]
        acc0 = (
            zero_total,
            jnp.zeros((), jnp.float32),
            {k: jnp.zeros(v.shape, v.dtype) for k, v in stats_shape.items()},
        )
        out, per_client = jax.lax.scan(run_chunk, acc0, chunks)
        per_client = jax.tree.map(lambda a: a.reshape((num_slots,) + a.shape[2:]), per_client)
        return out, per_client

    return sums


def _uses_norm(aggregator: Aggregator) -> bool:
    """Whether the aggregator's client scale depends on the update norm (probed on inputs)."""
    state = aggregator.init()
    one = jnp.ones((), jnp.float32)
    a = aggregator.client_scale(one * 1e-6, one, one, state)[0]
    b = aggregator.client_scale(one * 1e6, one, one, state)[0]
    return not bool(jnp.all(a == b))


PATHS = ("auto", "direct", "lowrank")


def choose_path(
    requested: str,
    params: PyTree,
    client: LocalTraining,
    aggregator: Aggregator,
    example_level_dp: bool,
) -> str:
    """``"direct"`` or ``"lowrank"`` for this run.

    ``auto`` picks the direct path: on the 2NN benchmark the factored path has not yet
    measured faster than the direct one on CPU with one device per core (see the README's
    performance section), so it is an opt-in (``execution.path=lowrank``).

    Raises:
        ConfigError: ``lowrank`` requested where it does not apply, naming why.
    """
    if requested not in PATHS:
        raise ConfigError("execution.path", f"unknown path {requested!r}; choose from {PATHS}")
    if requested != "lowrank":
        return "direct"
    reasons = []
    if dense_layers(params) is None:
        reasons.append("the model must be a chain of dense layers (model=mlp or logreg)")
    if (client.optimizer or "sgd") != "sgd" or float(client.momentum or 0):
        reasons.append("clients must use plain SGD (client.optimizer=sgd, momentum 0)")
    if aggregator.client_scale is None:
        reasons.append(
            "the aggregation must scale whole updates (no per-layer clipping or secure aggregation)"
        )
    if example_level_dp:
        reasons.append("example-level DP-SGD clips per example, not per client")
    if reasons:
        raise ConfigError("execution.path", "lowrank does not apply: " + "; ".join(reasons))
    return "lowrank"


def lowrank_chunk(
    clients_per_device: int,
    n_cap: int,
    batch_size: int,
    epochs: int,
    layer_dims: list[tuple[int, int]],
    budget_bytes: int = 1 << 30,
) -> int:
    """Chunk width for the factored path: as wide as the factors fit in ``budget_bytes``
    (up to 512 clients, past which CPU timings stopped improving)."""
    steps = epochs * math.ceil(n_cap / batch_size)
    per_client = 4 * steps * batch_size * sum(i + o for i, o in layer_dims) * 3
    per_client += 4 * n_cap * n_cap
    k = max(1, min(clients_per_device, 512, budget_bytes // max(per_client, 1)))
    return math.ceil(clients_per_device / math.ceil(clients_per_device / k))
