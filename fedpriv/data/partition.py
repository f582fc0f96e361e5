"""Partitioners: assign each example of a centralised data set to one client.

Each partitioner returns ``client_of[N]``, the client id of every example, so every example
belongs to exactly one client. Randomness comes from an explicit ``numpy.random.Generator``.
"""

from __future__ import annotations

import numpy as np

from fedpriv.errors import ConfigError


def iid(num_examples: int, num_clients: int, rng: np.random.Generator) -> np.ndarray:
    """Shuffles examples and deals them out in near-equal shares."""
    _check_clients(num_examples, num_clients)
    perm = rng.permutation(num_examples)
    client_of = np.empty(num_examples, dtype=np.int64)
    client_of[perm] = np.arange(num_examples) % num_clients
    return client_of


def dirichlet(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    rng: np.random.Generator,
    min_size: int = 1,
) -> np.ndarray:
    """Label-skewed split: client label proportions drawn from Dirichlet(alpha).

    For each class, the class's examples are split over clients in proportions drawn from
    ``Dirichlet(alpha * 1_K)`` (Hsu et al. 2019, "Measuring the effects of non-identical data
    distribution"). Small ``alpha`` gives few classes per client; ``alpha -> inf`` approaches
    IID. Clients left with fewer than ``min_size`` examples take examples from the largest
    clients, so no client is empty.

    Args:
        labels: ``labels[N]`` integer class labels.
        num_clients: number of clients K.
        alpha: concentration, > 0.
        rng: explicit random generator.
        min_size: smallest allowed client size.
    """
    if not alpha > 0:
        raise ConfigError("dataset.partition.alpha", f"must be > 0, got {alpha}")
    labels = np.asarray(labels)
    _check_clients(len(labels), num_clients, min_size)
    client_of = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        with np.errstate(under="ignore"):
            p = rng.dirichlet(np.full(num_clients, float(alpha)))
        p = np.nan_to_num(p, nan=0.0)
        if p.sum() <= 0:  # every gamma draw underflowed: give the class to one client
            p = np.eye(num_clients)[rng.integers(num_clients)]
        counts = _round_preserving_sum(p / p.sum() * len(idx))
        client_of[idx] = np.repeat(np.arange(num_clients), counts)
    return _fill_small_clients(client_of, num_clients, min_size, rng)


def shards(
    labels: np.ndarray, num_clients: int, shards_per_client: int, rng: np.random.Generator
) -> np.ndarray:
    """McMahan et al. 2017 pathological non-IID split.

    Examples are sorted by label, cut into ``num_clients * shards_per_client`` equal shards,
    and each client receives ``shards_per_client`` random shards (2 in the paper, so most
    clients see two classes).
    """
    if shards_per_client < 1:
        raise ConfigError(
            "dataset.partition.shards_per_client", f"must be >= 1, got {shards_per_client}"
        )
    labels = np.asarray(labels)
    num_shards = num_clients * shards_per_client
    _check_clients(len(labels), num_shards)
    order = np.argsort(labels + rng.random(len(labels)) * 0.5, kind="stable")
    shard_of_pos = (np.arange(len(labels)) * num_shards) // len(labels)
    owner_of_shard = rng.permutation(num_shards) % num_clients
    client_of = np.empty(len(labels), dtype=np.int64)
    client_of[order] = owner_of_shard[shard_of_pos]
    return client_of


def natural(user_ids: np.ndarray) -> np.ndarray:
    """One client per distinct user id (e.g. a writer or a speaker), in sorted id order."""
    _, client_of = np.unique(np.asarray(user_ids), return_inverse=True)
    return client_of.astype(np.int64)


def _check_clients(num_examples: int, num_clients: int, min_size: int = 1) -> None:
    if num_clients < 1:
        raise ConfigError("dataset.num_clients", f"must be >= 1, got {num_clients}")
    if num_clients * min_size > num_examples:
        raise ConfigError(
            "dataset.num_clients",
            f"{num_clients} clients need at least {num_clients * min_size} examples, "
            f"the data set has {num_examples}",
        )


def _round_preserving_sum(values: np.ndarray) -> np.ndarray:
    """Rounds non-negative values to integers with the same (integer) total."""
    floor = np.floor(values).astype(np.int64)
    short = int(round(values.sum())) - int(floor.sum())
    if short > 0:
        floor[np.argsort(floor - values)[:short]] += 1
    return floor


def _fill_small_clients(
    client_of: np.ndarray, num_clients: int, min_size: int, rng: np.random.Generator
) -> np.ndarray:
    sizes = np.bincount(client_of, minlength=num_clients)
    for k in np.flatnonzero(sizes < min_size):
        while sizes[k] < min_size:
            donor = int(np.argmax(sizes))
            moved = rng.choice(np.flatnonzero(client_of == donor))
            client_of[moved] = k
            sizes[donor] -= 1
            sizes[k] += 1
    return client_of
