"""Data sets as federated populations.

A loader returns a :class:`FederatedData`: the training population (a
:class:`~fedpriv.data.store.PopulationStore`) and a held-out test set. Centralised data sets
are split over clients by a partitioner; data sets with natural clients keep them.
New loaders register with :func:`register` and receive the ``dataset`` config node.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from sklearn.datasets import load_digits as sk_load_digits

from fedpriv.conf import with_preset
from fedpriv.data import partition as partition_lib
from fedpriv.data.store import PopulationStore
from fedpriv.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class FederatedData:
    """A training population and a centralised test set.

    Attributes:
        train: the clients' training examples.
        test_x: ``x[N_test, ...]`` held-out examples.
        test_y: ``y[N_test]`` held-out labels.
    """

    train: PopulationStore
    test_x: np.ndarray
    test_y: np.ndarray

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def example_shape(self) -> tuple[int, ...]:
        return self.train.example_shape


Loader = Callable[[Mapping[str, Any], np.random.Generator], FederatedData]
_LOADERS: dict[str, Loader] = {}


def register(name: str) -> Callable[[Loader], Loader]:
    """Decorator that registers a data set loader under ``name``."""

    def deco(fn: Loader) -> Loader:
        _LOADERS[name] = fn
        return fn

    return deco


def available() -> list[str]:
    return sorted(_LOADERS)


def load(cfg: Mapping[str, Any], rng: np.random.Generator) -> FederatedData:
    """Loads the data set named by ``cfg["name"]`` with its partition.

    Args:
        cfg: the ``dataset`` config node.
        rng: generator for splitting and partitioning (derived from the run's data seed).

    Raises:
        ConfigError: unknown data set name or bad partition settings.
    """
    name = cfg.get("name")
    if name not in _LOADERS:
        raise ConfigError("dataset.name", f"unknown data set {name!r}; choose from {available()}")
    # Keys left out take the preset's defaults (fedpriv/conf/dataset/<name>.yaml).
    return _LOADERS[name](with_preset("dataset", cfg), rng)


def partition_population(
    x: np.ndarray,
    y: np.ndarray,
    cfg: Mapping[str, Any],
    num_classes: int,
    rng: np.random.Generator,
    name: str,
    user_ids: np.ndarray | None = None,
) -> PopulationStore:
    """Splits centralised ``(x, y)`` over clients as ``cfg["partition"]`` says.

    ``cfg["partition"]["kind"]`` is one of ``iid``, ``dirichlet`` (with ``alpha``), ``shards``
    (with ``shards_per_client``) or ``natural`` (needs ``user_ids``).
    """
    part = dict(required(cfg, "partition"))
    kind = required(part, "kind", "dataset.partition")
    num_clients = int(required(cfg, "num_clients"))
    if kind == "iid":
        client_of = partition_lib.iid(len(y), num_clients, rng)
    elif kind == "dirichlet":
        alpha = _number(required(part, "alpha", "dataset.partition"), "dataset.partition.alpha")
        min_size = int(required(part, "min_size", "dataset.partition"))
        client_of = partition_lib.dirichlet(y, num_clients, alpha, rng, min_size=min_size)
    elif kind == "shards":
        per_client = int(required(part, "shards_per_client", "dataset.partition"))
        client_of = partition_lib.shards(y, num_clients, per_client, rng)
    elif kind == "natural":
        if user_ids is None:
            raise ConfigError(
                "dataset.partition.kind", f"'natural' needs user ids, which {name} does not have"
            )
        client_of = partition_lib.natural(user_ids)
    else:
        raise ConfigError(
            "dataset.partition.kind",
            f"unknown partition {kind!r}; choose from ['iid', 'dirichlet', 'shards', 'natural']",
        )
    return PopulationStore.from_assignment(x, y, client_of, num_classes, name)


def train_test_split(
    x: np.ndarray, y: np.ndarray, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stratified split: each class contributes ``test_fraction`` of its examples to test."""
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError("dataset.test_fraction", f"must be in (0, 1), got {test_fraction}")
    test = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        test[idx[: int(round(test_fraction * len(idx)))]] = True
    return x[~test], y[~test], x[test], y[test]


def required(block: Mapping[str, Any], key: str, where: str = "dataset") -> Any:
    """``block[key]``, which must be set (``load`` fills it from the preset).

    Raises:
        ConfigError: naming ``<where>.<key>`` when it is missing or null.
    """
    value = block.get(key) if isinstance(block, Mapping) else None
    if value is None:
        raise ConfigError(f"{where}.{key}", "is required")
    return value


def _number(value: Any, field: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(field, f"must be a number, got {value!r}") from None


@register("digits")
def load_digits(cfg: Mapping[str, Any], rng: np.random.Generator) -> FederatedData:
    """scikit-learn's handwritten digits (1,797 images of 8x8 pixels, 10 classes).

    Real data shipped inside scikit-learn, so it needs no download. Pixels are scaled to
    [0, 1]; images have shape ``(8, 8, 1)``. A stratified ``test_fraction`` is held out, the
    rest is partitioned over ``num_clients`` clients.
    """
    bunch = sk_load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[..., None]
    y = bunch.target.astype(np.int32)
    x_tr, y_tr, x_te, y_te = train_test_split(
        x, y, _number(cfg.get("test_fraction", 0.2), "dataset.test_fraction"), rng
    )
    store = partition_population(x_tr, y_tr, cfg, 10, rng, "digits")
    return FederatedData(store, x_te, y_te)
