"""Validation of everything that enters through configuration.

:func:`validate` checks a composed run configuration before anything is loaded or written,
raising :class:`~fedpriv.errors.ConfigError` that names the field, the value and what is
allowed. Checks that need the loaded data (e.g. cohort size against the population) run in
the components that receive it and raise the same error type.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from fedpriv import algorithms
from fedpriv.data import available as available_datasets
from fedpriv.errors import ConfigError, check_range
from fedpriv.privacy import mechanisms
from fedpriv.privacy.release import NOISE_SOURCES, RELEASE_MODES
from fedpriv.settings import RunConfig

FILE_DATASETS = ("mnist", "fashion_mnist", "cifar10", "femnist", "shakespeare", "emnist_tff")
MODELS = ("logreg", "mlp", "cnn", "cnn_cifar", "resnet18_gn", "char_lstm")
ALGORITHMS = tuple(algorithms.by_name())
PARTITIONS = ("iid", "dirichlet", "shards", "natural")
SAMPLINGS = ("fixed", "poisson", "cyclic", "cyclic_poisson", "min_separation")
CLIENT_OPTIMIZERS = ("sgd", "adam")
#: The privacy mechanisms (the registry's names, :mod:`fedpriv.privacy.mechanisms`).
PRIVACY = tuple(mechanisms.names())
SECAGG_MODES = ("none", "fast", "protocol")
SECAGG_MASKS = ("verify", "expand")
NOISE_KINDS = ("skellam", "discrete_gaussian")
AMPLIFICATIONS = ("none", "sampling")
ACCOUNTANTS = ("rdp", "pld", "prv", "opacus_rdp")


def _get(cfg: Mapping[str, Any], path: str, default: Any = None) -> Any:
    node: Any = cfg
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def _require(cfg: Mapping[str, Any], path: str) -> Any:
    value = _get(cfg, path, _MISSING)
    if value is _MISSING or value is None:
        raise ConfigError(path, "is required")
    return value


_MISSING = object()


def number(
    cfg: Mapping[str, Any],
    path: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
    required: bool = True,
) -> float | int | None:
    """Reads ``path`` as a number and checks it lies in the stated range.

    Raises:
        ConfigError: missing (when required), not a number, or out of range; the message
            states the allowed range.
    """
    raw = _get(cfg, path, None)
    if raw is None:
        if required:
            raise ConfigError(path, "is required")
        return None
    kind = "an integer" if integer else "a number"
    if isinstance(raw, bool):
        raise ConfigError(path, f"must be {kind}, got {raw!r}")
    try:
        value = int(raw) if integer else float(raw)
        if integer and float(raw) != value:
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(path, f"must be {kind}, got {raw!r}") from None
    check_range(path, value, raw, low=low, high=high, low_open=low_open, high_open=high_open)
    return value


def choice(cfg: Mapping[str, Any], path: str, allowed: tuple[str, ...]) -> str:
    value = _require(cfg, path)
    if value not in allowed:
        raise ConfigError(path, f"unknown value {value!r}; choose from {list(allowed)}")
    return value


def _run_control(cfg: Mapping[str, Any]) -> None:
    """Checks ``resume``, ``checkpoint.*``, ``faults.*`` and ``dataset.path``."""
    resume = _get(cfg, "resume", False)
    if not isinstance(resume, bool):
        raise ConfigError("resume", f"must be true or false, got {resume!r}")
    number(cfg, "checkpoint.every", low=0, integer=True, required=False)
    number(cfg, "checkpoint.keep", low=1, integer=True, required=False)
    number(cfg, "faults.crash_at_round", low=1, integer=True, required=False)
    nan_clients = _get(cfg, "faults.nan_clients")
    if nan_clients is not None:
        if not isinstance(nan_clients, (list, tuple)):
            raise ConfigError(
                "faults.nan_clients", f"must be a list of client ids, got {nan_clients!r}"
            )
        clients = _get(cfg, "dataset.num_clients")
        for cid in nan_clients:
            top = "inf" if clients is None else int(clients) - 1
            if (
                isinstance(cid, bool)
                or not isinstance(cid, int)
                or cid < 0
                or (clients is not None and cid >= int(clients))
            ):
                raise ConfigError(
                    "faults.nan_clients", f"client ids must be integers in [0, {top}], got {cid!r}"
                )
    if _get(cfg, "dataset.name") == "npz":
        path = _get(cfg, "dataset.path")
        if not isinstance(path, str) or not path.strip():
            raise ConfigError(
                "dataset.path", f"is required for dataset=npz (a .npz file), got {path!r}"
            )
    if _get(cfg, "dataset.name") in FILE_DATASETS:
        root = _get(cfg, "dataset.root")
        if not isinstance(root, str) or not root.strip():
            raise ConfigError(
                "dataset.root",
                f"is required for dataset={_get(cfg, 'dataset.name')} (the directory holding "
                f"its files; `fedpriv-data download NAME --root DIR` fetches them), got {root!r}",
            )


def validate_secagg(cfg: Mapping[str, Any]) -> None:
    """Checks the ``secagg`` group and ``privacy=distributed_dp``.

    Raises:
        ConfigError: bits outside [2, 32], a threshold above the cohort size or the number of
            neighbours, a dropout rate outside [0, 1), an unknown mode, mask mode or noise, or
            distributed DP without secure aggregation.
    """
    mode = _get(cfg, "secagg.mode", "none")
    if mode is None:
        mode = "none"
    if mode not in SECAGG_MODES:
        raise ConfigError(
            "secagg.mode", f"unknown value {mode!r}; choose from {list(SECAGG_MODES)}"
        )
    privacy = _get(cfg, "privacy.name", "none")
    allowed = mechanisms.get(privacy).secagg_modes
    if mode not in allowed:
        raise ConfigError(
            "secagg.mode",
            f"privacy={privacy} runs with {' or '.join(f'secagg={m}' for m in allowed)}, "
            f"not secagg={mode}",
        )
    if privacy == "distributed_dp" and mode == "none":
        # The block itself (noise, amplification, accountant) is checked by the mechanism.
        raise ConfigError(
            "secagg.mode",
            "privacy=distributed_dp needs secure aggregation; choose secagg=fast or "
            "secagg=protocol",
        )
    if mode == "none":
        return
    number(cfg, "secagg.bits", low=2, high=32, integer=True)
    number(cfg, "secagg.scale", low=0, low_open=True, required=False)
    number(cfg, "secagg.bound", low=0, low_open=True, required=False)
    if _get(cfg, "secagg.masks") is not None:
        choice(cfg, "secagg.masks", SECAGG_MASKS)
    rotation = _get(cfg, "secagg.rotation", True)
    if not isinstance(rotation, bool):
        raise ConfigError("secagg.rotation", f"must be true or false, got {rotation!r}")
    neighbours = number(cfg, "secagg.neighbours", low=1, integer=True, required=False)
    threshold = number(cfg, "secagg.threshold", low=1, integer=True, required=False)
    dropout = number(cfg, "secagg.dropout", low=0, high=1, high_open=True, required=False) or 0.0
    late = number(cfg, "secagg.late_dropout", low=0, high=1, high_open=True, required=False) or 0
    if dropout + late >= 1:
        raise ConfigError(
            "secagg.late_dropout",
            f"secagg.dropout + secagg.late_dropout must be < 1, got {dropout} + {late}",
        )
    if threshold is not None:
        cohort = None
        if _get(cfg, "sampling.kind") == "fixed":
            cohort = _get(cfg, "sampling.cohort_size")
        if cohort is not None and threshold > int(cohort):
            raise ConfigError(
                "secagg.threshold",
                f"must be at most the cohort size (sampling.cohort_size={cohort}), got {threshold}",
            )
        if neighbours is not None and threshold > neighbours:
            raise ConfigError(
                "secagg.threshold",
                f"must be at most secagg.neighbours ({neighbours}): shares go to the "
                f"neighbours, got {threshold}",
            )


#: The mechanisms whose rounds are Gaussian DP-FedAvg's (canaries and gateway-level DP).
CANARY_PRIVACY = tuple(m.name for m in mechanisms.mechanisms() if m.gaussian_fedavg)


def validate_canaries(cfg: Mapping[str, Any]) -> None:
    """Checks the ``canaries`` block (canary clients for the empirical privacy audit).

    Canaries stand in for clients under user-level DP-FedAvg: their updates are planted in
    the vmapped round on the direct path, so they need ``privacy=user_dp`` or
    ``user_dp_adaptive``, plain (not secure) aggregation and ``execution.path`` other than
    ``lowrank``.

    Raises:
        ConfigError: a count that is not an integer >= 0, or canaries with a setting they
            cannot run with; naming ``canaries.count`` and what is allowed.
    """
    count = number(cfg, "canaries.count", low=0, integer=True, required=False) or 0
    number(cfg, "canaries.unseen", low=0, integer=True, required=False)
    if not count:
        return
    privacy = _get(cfg, "privacy.name", "none")
    if privacy not in CANARY_PRIVACY:
        raise ConfigError(
            "canaries.count",
            f"canary clients need user-level DP-FedAvg (privacy: one of "
            f"{list(CANARY_PRIVACY)}), got privacy={privacy}; set canaries.count=0 otherwise",
        )
    secagg = _get(cfg, "secagg.mode", "none") or "none"
    if secagg != "none":
        raise ConfigError(
            "canaries.count",
            f"canary clients need plain aggregation (secagg=none), got secagg.mode={secagg}",
        )
    if _get(cfg, "execution.path") == "lowrank":
        raise ConfigError(
            "canaries.count",
            "canary clients need execution.path=direct or auto, got execution.path=lowrank",
        )


def _private_npz(cfg: Mapping[str, Any]) -> None:
    """A private run on the user's own ``.npz`` file publishes nothing read off its labels or
    examples: the number of classes is declared, and a strict release needs a held-out test
    set in the file (test metrics on examples split off the private data carry no noise)."""
    if _get(cfg, "dataset.num_classes") is None:
        raise ConfigError(
            "dataset.num_classes",
            "must be set for a private run on an npz file: inferred from the labels, the "
            "model's output size would publish the largest label of the private data",
        )
    path = _get(cfg, "dataset.path")
    if _get(cfg, "privacy.release") != "strict" or path is None:
        return
    try:
        with np.load(path, allow_pickle=False) as arrays:
            held_out = "x_test" in arrays.files and "y_test" in arrays.files
    except (OSError, ValueError):
        return  # the loader names what is wrong with the file
    if not held_out:
        raise ConfigError(
            "dataset.path",
            f"{path} has no x_test, y_test: privacy.release=strict needs a held-out test set "
            "in the file; a test fraction split off the private data would release test "
            "metrics without noise",
        )


def validate(cfg: Mapping[str, Any]) -> RunConfig:
    """Checks a composed ``fedpriv-train`` configuration and returns its typed form, what
    the library below ``fedpriv.cli`` receives (:class:`fedpriv.settings.RunConfig`).

    Raises:
        ConfigError: on the first bad field (also a key a group does not have).
    """
    number(cfg, "seed", low=0, integer=True)
    number(cfg, "rounds", low=1, integer=True)
    number(cfg, "eval_every", low=1, integer=True)
    _run_control(cfg)

    choice(cfg, "dataset.name", tuple(available_datasets()))
    number(cfg, "dataset.num_clients", low=1, integer=True, required=False)
    number(
        cfg, "dataset.test_fraction", low=0, high=1, low_open=True, high_open=True, required=False
    )
    kind = choice(cfg, "dataset.partition.kind", PARTITIONS)
    if kind == "dirichlet":
        number(cfg, "dataset.partition.alpha", low=0, low_open=True)
    if kind == "shards":
        number(cfg, "dataset.partition.shards_per_client", low=1, integer=True)

    choice(cfg, "model.name", MODELS)

    choice(cfg, "algorithm.name", ALGORITHMS)
    number(cfg, "algorithm.server_lr", low=0, low_open=True)
    number(cfg, "algorithm.server_momentum", low=0, high=1, high_open=True, required=False)
    number(cfg, "algorithm.beta1", low=0, high=1, high_open=True, required=False)
    number(cfg, "algorithm.beta2", low=0, high=1, high_open=True, required=False)
    number(cfg, "algorithm.tau", low=0, low_open=True, required=False)

    choice(cfg, "client.optimizer", CLIENT_OPTIMIZERS)
    number(cfg, "client.lr", low=0, low_open=True)
    number(cfg, "client.momentum", low=0, high=1, high_open=True, required=False)
    number(cfg, "client.epochs", low=1, integer=True)
    number(cfg, "client.batch_size", low=1, integer=True)
    number(cfg, "client.max_examples", low=1, integer=True, required=False)

    sampling = choice(cfg, "sampling.kind", SAMPLINGS)
    clients = _get(cfg, "dataset.num_clients")
    if sampling == "fixed":
        size = number(cfg, "sampling.cohort_size", low=1, integer=True)
        if clients is not None and size > int(clients):
            raise ConfigError(
                "sampling.cohort_size",
                f"cohort of {size} is larger than the population (dataset.num_clients="
                f"{clients}); allowed 1 to {clients}",
            )
    elif sampling == "cyclic":
        groups = number(cfg, "sampling.groups", low=1, integer=True)
        size = number(cfg, "sampling.cohort_size", low=1, integer=True)
        if clients is not None and size > int(clients) // groups:
            raise ConfigError(
                "sampling.cohort_size",
                f"must be at most the smallest group's size {int(clients) // groups} "
                f"(dataset.num_clients={clients} in sampling.groups={groups}), got {size}",
            )
    elif sampling == "cyclic_poisson":
        groups = number(cfg, "sampling.groups", low=1, integer=True)
        if clients is not None and groups > int(clients):
            raise ConfigError(
                "sampling.groups",
                f"must be at most the population (dataset.num_clients={clients}), got {groups}",
            )
        number(cfg, "sampling.rate", low=0, high=1, low_open=True)
    elif sampling == "min_separation":
        separation = number(cfg, "sampling.separation", low=1, integer=True)
        size = number(cfg, "sampling.cohort_size", low=1, integer=True, required=False)
        rate = number(cfg, "sampling.rate", low=0, high=1, low_open=True, required=False)
        if (size is None) == (rate is None):
            raise ConfigError(
                "sampling.cohort_size",
                "set exactly one of sampling.cohort_size (fixed-size) and sampling.rate "
                "(Poisson) with sampling=min_separation",
            )
        if size is not None and clients is not None and size * separation > int(clients):
            raise ConfigError(
                "sampling.cohort_size",
                f"must be at most dataset.num_clients / sampling.separation = "
                f"{int(clients) // separation} so that enough clients are always eligible, "
                f"got {size}",
            )
    else:
        number(cfg, "sampling.rate", low=0, high=1, low_open=True)

    privacy = choice(cfg, "privacy.name", PRIVACY)
    if sampling not in mechanisms.get(privacy).samplings:
        raise ConfigError(
            "sampling.kind",
            f"privacy={privacy} is accounted for {list(mechanisms.get(privacy).samplings)} "
            f"sampling, not {sampling!r}",
        )
    if _get(cfg, "privacy.release") is not None:
        choice(cfg, "privacy.release", RELEASE_MODES)
    if _get(cfg, "privacy.noise_source") is not None:
        choice(cfg, "privacy.noise_source", NOISE_SOURCES)
    if privacy != "none" and _get(cfg, "dataset.name") == "npz":
        _private_npz(cfg)
    # Every default and range check of the block lives in its mechanism's module.
    mechanisms.get(privacy).validate(_get(cfg, "privacy", {}) or {})
    mechanisms.get(privacy).validate_sampling(
        _get(cfg, "privacy", {}) or {}, _get(cfg, "sampling", {}) or {}
    )

    devices = _get(cfg, "execution.devices", "auto")
    if devices not in (None, "auto"):
        number(cfg, "execution.devices", low=1, integer=True)
    validate_secagg(cfg)
    validate_canaries(cfg)
    validate_edge(cfg)
    validate_hierarchy(cfg)
    validate_async(cfg)

    if _get(cfg, "execution.path") is not None:
        choice(cfg, "execution.path", ("auto", "direct", "lowrank"))
    chunk = _get(cfg, "execution.chunk_size", "auto")
    if chunk not in (None, "auto"):
        number(cfg, "execution.chunk_size", low=1, integer=True)
    cache = _get(cfg, "execution.compilation_cache")
    if cache is not None:
        if not isinstance(cache, str) or not cache.strip():
            raise ConfigError(
                "execution.compilation_cache", f"must be a directory path or null, got {cache!r}"
            )
        where = os.path.expanduser(cache)
        if os.path.exists(where) and not os.path.isdir(where):
            raise ConfigError(
                "execution.compilation_cache", f"{where} exists and is not a directory"
            )
    return RunConfig.from_mapping(cfg)


HIERARCHY = ("none", "gateways")
HIERARCHY_ASSIGN = ("modulo", "blocks")
HIERARCHY_DP_UNITS = ("client", "gateway")
GATEWAY_PRIVACY = CANARY_PRIVACY


def validate_hierarchy(cfg: Mapping[str, Any]) -> None:
    """Checks the ``hierarchy`` group (hierarchical aggregation, :mod:`fedpriv.fl.hierarchy`).

    ``hierarchy.gateways`` must be an integer in ``[1, dataset.num_clients]``. Gateway-level
    DP (``dp_unit=gateway``) needs user-level DP-FedAvg (``privacy=user_dp`` or
    ``user_dp_adaptive``) without secure aggregation, and with fixed cohorts at most
    ``hierarchy.gateways`` gateways per round. Any hierarchy needs the direct execution path,
    no canary clients, synchronous rounds and not the secure-aggregation protocol path.

    Raises:
        ConfigError: naming the field and what is allowed.
    """
    name = _get(cfg, "hierarchy.name", "none") or "none"
    if name not in HIERARCHY:
        raise ConfigError(
            "hierarchy.name", f"unknown value {name!r}; choose from {list(HIERARCHY)}"
        )
    if name == "none":
        return
    gateways = number(cfg, "hierarchy.gateways", low=1, integer=True)
    clients = _get(cfg, "dataset.num_clients")
    if clients is not None and gateways > int(clients):
        raise ConfigError(
            "hierarchy.gateways",
            f"must be in [1, {clients}] (at most dataset.num_clients), got {gateways}",
        )
    choice(cfg, "hierarchy.assign", HIERARCHY_ASSIGN)
    unit = choice(cfg, "hierarchy.dp_unit", HIERARCHY_DP_UNITS)
    secagg = _get(cfg, "secagg.mode", "none") or "none"
    if secagg == "protocol":
        raise ConfigError(
            "secagg.mode",
            "hierarchical aggregation runs secure aggregation on the fast path only; choose "
            "secagg=fast or secagg=none with hierarchy=gateways",
        )
    if (_get(cfg, "canaries.count") or 0) > 0:
        raise ConfigError(
            "hierarchy.name",
            "canary clients need flat aggregation; set hierarchy=none or canaries.count=0",
        )
    if _get(cfg, "execution.path") == "lowrank":
        raise ConfigError(
            "execution.path",
            "hierarchical aggregation needs execution.path=direct or auto, got lowrank",
        )
    if (_get(cfg, "async.name", "none") or "none") != "none":
        raise ConfigError(
            "hierarchy.name",
            "hierarchical aggregation runs synchronous rounds; set async=none or hierarchy=none",
        )
    if unit == "gateway":
        privacy = _get(cfg, "privacy.name", "none")
        if privacy not in GATEWAY_PRIVACY:
            raise ConfigError(
                "hierarchy.dp_unit",
                f"gateway-level DP needs DP-FedAvg (privacy: one of {list(GATEWAY_PRIVACY)}), "
                f"got privacy={privacy}; use hierarchy.dp_unit=client otherwise",
            )
        if secagg != "none":
            raise ConfigError(
                "secagg.mode",
                "hierarchy.dp_unit=gateway clips each gateway's sum in the clear; secure "
                "aggregation is supported with hierarchy.dp_unit=client only",
            )
        if _get(cfg, "sampling.kind") == "fixed":
            size = _get(cfg, "sampling.cohort_size")
            if size is not None and int(size) > gateways:
                raise ConfigError(
                    "sampling.cohort_size",
                    f"with hierarchy.dp_unit=gateway the cohort counts gateways: must be in "
                    f"[1, {gateways}] (hierarchy.gateways), got {size}",
                )


ASYNC = ("none", "fedbuff")
ASYNC_DELAYS = ("exponential", "lognormal", "constant")
ASYNC_ACCOUNTING = ("no_amplification", "uniform_subset")


def validate_async(cfg: Mapping[str, Any]) -> None:
    """Checks the ``async`` group (buffered asynchronous aggregation, :mod:`fedpriv.fl.fedbuff`).

    FedBuff needs integers ``buffer_size >= 1``, ``concurrency >= 1`` and ``max_staleness >=
    0`` with ``concurrency + buffer_size - 1 <= dataset.num_clients`` (clients in flight and
    clients waiting in the buffer are not drawn again), a ``staleness_exponent >= 0``, a
    delay model (``exponential``, ``lognormal`` or ``constant`` with ``mean > 0``,
    ``sigma > 0``, ``stragglers`` in [0, 1], ``slowdown >= 1``) and an accounting mode; it
    runs without secure aggregation, canaries, availability or compute models, FedNova, or
    resumption.

    Raises:
        ConfigError: naming the field and what is allowed.
    """
    name = _get(cfg, "async.name", "none") or "none"
    if name not in ASYNC:
        raise ConfigError("async.name", f"unknown value {name!r}; choose from {list(ASYNC)}")
    if name == "none":
        return
    k = number(cfg, "async.buffer_size", low=1, integer=True)
    m = number(cfg, "async.concurrency", low=1, integer=True)
    number(cfg, "async.max_staleness", low=0, integer=True)
    number(cfg, "async.staleness_exponent", low=0)
    choice(cfg, "async.delay.distribution", ASYNC_DELAYS)
    number(cfg, "async.delay.mean", low=0, low_open=True)
    number(cfg, "async.delay.sigma", low=0, low_open=True, required=False)
    number(cfg, "async.delay.stragglers", low=0, high=1, required=False)
    number(cfg, "async.delay.slowdown", low=1, required=False)
    choice(cfg, "async.accounting", ASYNC_ACCOUNTING)
    clients = _get(cfg, "dataset.num_clients")
    if clients is not None and m + k - 1 > int(clients):
        raise ConfigError(
            "async.concurrency",
            f"must be in [1, {int(clients) - k + 1}] (dataset.num_clients - async.buffer_size "
            f"+ 1: clients in flight and clients waiting in the buffer are not drawn again), "
            f"got {m}",
        )
    if (_get(cfg, "secagg.mode", "none") or "none") != "none":
        raise ConfigError("secagg.mode", "async=fedbuff runs without secure aggregation")
    if (_get(cfg, "canaries.count") or 0) > 0:
        raise ConfigError("async.name", "async=fedbuff runs without canary clients")
    for group in ("availability", "compute"):
        kind = _get(cfg, f"{group}.kind", "none") or "none"
        if kind != "none":
            raise ConfigError(
                f"{group}.kind",
                f"async=fedbuff simulates its own delays; set {group}=none (got {kind!r})",
            )
    if _get(cfg, "algorithm.name") == "fednova":
        raise ConfigError(
            "algorithm.name", "async=fedbuff does not run FedNova; choose another algorithm"
        )
    if _get(cfg, "resume", False):
        raise ConfigError("resume", "async=fedbuff runs cannot be resumed; start a new run")


AVAILABILITY = ("none", "bernoulli", "diurnal", "trace")
COMPUTE = ("none", "uniform", "stragglers")


def validate_edge(cfg: Mapping[str, Any]) -> None:
    """Checks the ``availability`` and ``compute`` groups, FedProx / FedNova
    (:mod:`fedpriv.fl.edge`) and ``eval_train`` (true or false: also evaluate the global
    model on the training population, for the federated objective of Li et al. 2020).

    ``availability``: ``bernoulli`` needs ``dropout`` in [0, 1); ``diurnal`` needs ``low`` in
    [0, 1], ``high`` in (0, 1] with ``low <= high``, ``period > 0``; ``trace`` needs a
    ``path`` (the file is read by :func:`fedpriv.validation.check_data_files`); all take
    ``round_duration > 0``. ``compute``: ``uniform`` needs ``low_fraction`` in (0, 1];
    ``stragglers`` needs ``fraction`` in [0, 1], ``steps_fraction`` in (0, 1] or null and
    ``drop`` true or false. ``algorithm=fedprox`` needs ``mu >= 0``; ``algorithm=fednova``
    needs client SGD (``client.optimizer=sgd``) and an optional ``tau_eff > 0``. Dropping
    clients after sampling needs the jit-compiled round (not ``secagg=protocol``, which has
    its own dropout model) and no canary clients; changes to local training
    (``compute`` with ``drop: false``, FedProx, FedNova) need the direct execution path; they
    compose with example-level DP-SGD.

    Raises:
        ConfigError: naming the field and what is allowed.
    """
    eval_train = _get(cfg, "eval_train", False)
    if not isinstance(eval_train, bool):
        raise ConfigError("eval_train", f"must be true or false, got {eval_train!r}")
    kind = _get(cfg, "availability.kind", "none") or "none"
    if kind not in AVAILABILITY:
        raise ConfigError(
            "availability.kind", f"unknown value {kind!r}; choose from {list(AVAILABILITY)}"
        )
    if kind != "none":
        number(cfg, "availability.round_duration", low=0, low_open=True, required=False)
    if kind == "bernoulli":
        number(cfg, "availability.dropout", low=0, high=1, high_open=True)
    elif kind == "diurnal":
        low = number(cfg, "availability.low", low=0, high=1)
        high = number(cfg, "availability.high", low=0, high=1, low_open=True)
        if low > high:
            raise ConfigError(
                "availability.low",
                f"must be at most availability.high ({high}), got {low}",
            )
        number(cfg, "availability.period", low=0, low_open=True)
    elif kind == "trace":
        path = _get(cfg, "availability.path")
        if not isinstance(path, str) or not path.strip():
            raise ConfigError(
                "availability.path",
                f"is required for availability=trace (a CSV of client, available_from, "
                f"available_to), got {path!r}",
            )
    compute = _get(cfg, "compute.kind", "none") or "none"
    if compute not in COMPUTE:
        raise ConfigError("compute.kind", f"unknown value {compute!r}; choose from {list(COMPUTE)}")
    drop = False
    if compute == "uniform":
        number(cfg, "compute.low_fraction", low=0, high=1, low_open=True)
    elif compute == "stragglers":
        number(cfg, "compute.fraction", low=0, high=1)
        number(cfg, "compute.steps_fraction", low=0, high=1, low_open=True, required=False)
        drop = _get(cfg, "compute.drop", False)
        if not isinstance(drop, bool):
            raise ConfigError("compute.drop", f"must be true or false, got {drop!r}")
    algorithm = _get(cfg, "algorithm.name")
    if algorithm == "fedprox":
        number(cfg, "algorithm.mu", low=0)
    if algorithm == "fednova":
        number(cfg, "algorithm.tau_eff", low=0, low_open=True, required=False)
        if (_get(cfg, "hierarchy.name", "none") or "none") != "none":
            raise ConfigError(
                "algorithm.name",
                "algorithm=fednova rescales the flat aggregate; use it with hierarchy=none",
            )
        if _get(cfg, "client.optimizer") != "sgd":
            raise ConfigError(
                "client.optimizer",
                "algorithm=fednova normalises by local SGD steps; choose client.optimizer=sgd, "
                f"got {_get(cfg, 'client.optimizer')!r}",
            )
    drops = kind != "none" or drop
    local = (compute != "none" and not drop) or algorithm in ("fedprox", "fednova")
    if drops or algorithm == "fednova":
        if (_get(cfg, "secagg.mode", "none") or "none") == "protocol":
            raise ConfigError(
                "secagg.mode",
                "availability, dropped stragglers and FedNova run in the jit-compiled round; "
                "secagg=protocol has its own dropout model (secagg.dropout); choose "
                "secagg=none or fast",
            )
    if drops and (_get(cfg, "canaries.count") or 0) > 0:
        raise ConfigError(
            "canaries.count",
            "canary clients are never dropped: use availability=none and no dropped stragglers "
            "with canaries, or set canaries.count=0",
        )
    if (drops or local) and (_get(cfg, "async.name", "none") or "none") != "none":
        raise ConfigError(
            "async.name",
            "async=fedbuff has its own delay and straggler model; use availability=none, "
            "compute=none and a synchronous algorithm with it",
        )
    if local:
        if _get(cfg, "execution.path") == "lowrank":
            raise ConfigError(
                "execution.path",
                "compute=uniform/stragglers (drop=false), algorithm=fedprox and fednova change "
                "local training; choose execution.path=direct or auto, got lowrank",
            )
