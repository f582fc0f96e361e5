"""Canary clients for the empirical privacy audit (Andrew et al. 2023).

``k`` canary clients join the population as clients ``N .. N+k-1`` (after the ``N`` real
ones) and are sampled exactly like them. A canary does no local training: its update is a
fixed random direction ``u_j`` (a unit vector drawn from the run's canary key folded with
``j``) scaled to the clip norm, so clipping leaves it unchanged. After training, the cosine
between the final model delta and each ``u_j`` is compared with the cosines of ``u`` further
directions that were never inserted (:mod:`fedpriv.audit.empirical` turns the two samples
into an epsilon estimate and a lower bound).

Canaries are members of the population, as in Andrew et al. (2023, Sec. 4): the sampler,
the expected cohort size (the DP-FedAvg divisor) and the ledger all count ``N + k`` clients,
so what is accounted is what ran.

References:
    Andrew, Kairouz, Oh, Oprea, McMahan, Suriyakumar. "One-shot Empirical Privacy
    Estimation for Federated Learning." ICLR 2024, arXiv:2302.03098 (Algorithm 2: canary
    clients with random update directions, cosine statistics of the final model).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

PyTree = Any

#: The file a run with canaries writes into its run directory.
CANARIES_FILE = "canaries.json"
#: Version of :data:`CANARIES_FILE`'s layout.
CANARIES_FORMAT = 1


def _clip_norm_of(agg_state: Any) -> jax.Array:
    return agg_state.clip_norm


@dataclasses.dataclass(frozen=True)
class CanarySpec:
    """Where canaries sit in the population and how their updates are drawn.

    Attributes:
        first_id: population index of canary 0 (the number of real clients ``N``).
        count: ``k``, the number of inserted canaries (population ids ``N .. N+k-1``).
        unseen: ``u``, directions ``k .. k+u-1`` that are drawn but never inserted.
        key: the canary purpose key; direction ``j`` uses ``fold_in(key, j)``.
        per_layer: directions for per-layer clipping: each of the ``L`` parameter arrays
            gets norm ``1 / sqrt(L)``, so per-layer clipping to ``C / sqrt(L)`` leaves the
            scaled canary unchanged, as flat clipping does for a unit vector.
        clip_norm: the current clip norm from the aggregator state (DP-FedAvg's
            ``DPState.clip_norm``; it moves with adaptive clipping).
    """

    first_id: int
    count: int
    unseen: int
    key: jax.Array
    per_layer: bool = False
    clip_norm: Callable[[Any], jax.Array] = _clip_norm_of

    def is_canary(self, client_ids: jax.Array) -> jax.Array:
        """``client_ids[...] >= first_id`` (padding slots have id -1)."""
        return client_ids >= self.first_id

    def update(self, params: PyTree, client_id: jax.Array, agg_state: Any) -> PyTree:
        """The update of the client slot ``client_id`` were it a canary: ``C * u_j``.

        ``client_id`` may be any id (it is clamped into range); the round selects this
        update with ``jnp.where`` on :meth:`is_canary`.

        Privacy:
            The canary's update has L2 norm ``C`` (per-layer norms ``C / sqrt(L)``), so it
            is a client contribution like any other: clipping leaves it unchanged and the
            add/remove-one-client guarantee of DP-FedAvg covers it.
        """
        index = jnp.clip(client_id - self.first_id, 0, self.count - 1)
        u = direction(self.key, index, params, self.per_layer)
        c = self.clip_norm(agg_state)
        return jax.tree.map(lambda x: (c * x).astype(x.dtype), u)


def direction(key: jax.Array, index: jax.Array, template: PyTree, per_layer: bool) -> PyTree:
    """Canary direction ``u_index``: a unit vector shaped like ``template`` (simulation-grade).

    Standard normal coordinates from ``fold_in(key, index)``, normalised to unit L2 norm
    (uniform on the sphere); with ``per_layer`` each parameter array is normalised to
    ``1 / sqrt(L)`` instead.

    Args:
        key: the canary purpose key.
        index: canary index ``j`` (inserted: ``0 .. k-1``; unseen: ``k .. k+u-1``).
        template: a parameter tree (shapes and dtypes only are used).
        per_layer: per-layer normalisation (see :class:`CanarySpec`).

    Returns:
        A tree like ``template`` with global L2 norm 1.
    """
    flat, unravel = ravel_pytree(template)
    z = jax.random.normal(jax.random.fold_in(key, index), flat.shape, jnp.float32)
    if not per_layer:
        return unravel((z / jnp.linalg.norm(z)).astype(flat.dtype))
    tree = unravel(z.astype(flat.dtype))
    leaves = jax.tree.leaves(tree)
    per = 1.0 / jnp.sqrt(float(len(leaves)))
    return jax.tree.map(lambda x: x * (per / jnp.sqrt(jnp.sum(jnp.square(x)))), tree)


def cosines(
    key: jax.Array,
    indices: np.ndarray,
    delta: np.ndarray,
    template: PyTree,
    per_layer: bool = False,
    batch: int | None = None,
) -> np.ndarray:
    """Cosines between a flat ``delta`` (e.g. final minus initial parameters) and directions.

    Directions are drawn ``batch`` at a time on the device, by the function the round uses;
    the dot products are taken on the host in float64.

    Args:
        key: the canary purpose key.
        indices: canary indices ``j``.
        delta: ``delta[d]``, flattened in :func:`jax.flatten_util.ravel_pytree` order.
        template: the parameter tree ``delta`` was flattened from.
        per_layer: per-layer directions (see :class:`CanarySpec`).
        batch: directions drawn at a time (None: about 2^24 numbers per batch).

    Returns:
        ``cos[len(indices)]`` (zeros when ``delta`` is zero).
    """
    flat = np.asarray(delta, dtype=np.float64)
    norm = float(np.linalg.norm(flat))
    indices = np.asarray(indices, dtype=np.int64)
    if norm == 0.0 or len(indices) == 0:
        return np.zeros(len(indices))
    unit = flat / norm
    if batch is None:
        batch = max(1, min(len(indices), 2**24 // max(flat.size, 1)))

    @jax.jit
    def draw(idx, template):
        one = lambda i: ravel_pytree(direction(key, i, template, per_layer))[0]
        return jax.vmap(one)(idx)

    out = []
    for lo in range(0, len(indices), batch):
        idx = indices[lo : lo + batch]
        padded = np.concatenate([idx, np.full(batch - len(idx), idx[-1])])
        dirs = draw(jnp.asarray(padded, jnp.int32), template)
        dirs = np.asarray(dirs, dtype=np.float64)[: len(idx)]
        out.append(dirs @ unit / np.linalg.norm(dirs, axis=1))
    return np.concatenate(out)


def participations(
    sampler: Any, sampling_key: Callable[[int], jax.Array], rounds: int, spec: CanarySpec
) -> list[int]:
    """Number of rounds among ``1 .. rounds`` in which each canary was sampled.

    Sampling is a pure function of the seed and the round, so this re-draws the cohorts
    (on the host) rather than recording them; a resumed run counts every round.
    """
    counts = np.zeros(spec.count, dtype=np.int64)
    for rnd in range(1, rounds + 1):
        ids, mask = sampler.sample(sampling_key(rnd), rnd)
        chosen = ids[mask.astype(bool) & (ids >= spec.first_id)] - spec.first_id
        np.add.at(counts, chosen, 1)
    return counts.tolist()


def write_canaries_file(
    run_dir: str | os.PathLike,
    spec: CanarySpec,
    initial_params: PyTree,
    final_params: PyTree,
    participation_counts: list[int],
) -> dict[str, Any]:
    """Writes :data:`CANARIES_FILE`: the cosines of the final model delta with every
    inserted and unseen canary direction, and how often each canary took part.

    Returns:
        The record written.
    """
    final = np.asarray(ravel_pytree(final_params)[0], np.float64)
    initial = np.asarray(ravel_pytree(initial_params)[0], np.float64)
    indices = np.arange(spec.count + spec.unseen)
    cos = cosines(spec.key, indices, final - initial, initial_params, spec.per_layer)
    record = {
        "format": CANARIES_FORMAT,
        "count": spec.count,
        "unseen": spec.unseen,
        "dimension": int(initial.size),
        "observation": "final_delta",
        "inserted_cosines": [float(c) for c in cos[: spec.count]],
        "unseen_cosines": [float(c) for c in cos[spec.count :]],
        "participations": [int(n) for n in participation_counts],
    }
    path = Path(run_dir) / CANARIES_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return record
