"""Validation of everything that enters through configuration.

:func:`validate` checks a composed run configuration before anything is loaded or written,
raising :class:`~fedpriv.errors.ConfigError` that names the field, the value and what is
allowed. Checks that need the loaded data (e.g. cohort size against the population) run in
the components that receive it and raise the same error type.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedpriv.errors import ConfigError

FILE_DATASETS = ("mnist", "fashion_mnist", "cifar10", "femnist", "shakespeare", "emnist_tff")
MODELS = ("logreg", "mlp", "cnn", "cnn_cifar", "resnet18_gn", "char_lstm")
ALGORITHMS = ("fedavg", "fedavgm", "fedadam", "fedyogi")
PARTITIONS = ("iid", "dirichlet", "shards", "natural")
SAMPLINGS = ("fixed", "poisson")
CLIENT_OPTIMIZERS = ("sgd", "adam")
PRIVACY = ("none", "user_dp", "user_dp_adaptive", "example_dp", "distributed_dp")
SECAGG_MODES = ("none", "fast", "protocol")
SECAGG_MASKS = ("verify", "expand")
NOISE_KINDS = ("skellam", "discrete_gaussian")
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
    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"
    allowed = f"{lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}"
    bad_low = low is not None and (value <= low if low_open else value < low)
    bad_high = high is not None and (value >= high if high_open else value > high)
    if bad_low or bad_high or value != value:
        raise ConfigError(path, f"must be in {allowed}, got {raw!r}")
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
    if privacy == "distributed_dp":
        choice(cfg, "privacy.noise", NOISE_KINDS)
        if mode == "none":
            raise ConfigError(
                "secagg.mode",
                "privacy=distributed_dp needs secure aggregation; choose secagg=fast or "
                "secagg=protocol",
            )
        accountant = _get(cfg, "privacy.accountant")
        if accountant not in (None, "rdp"):
            raise ConfigError(
                "privacy.accountant",
                f"distributed DP is supported by rdp only, got {accountant!r}",
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


def validate(cfg: Mapping[str, Any]) -> None:
    """Checks a composed ``fedpriv-train`` configuration.

    Raises:
        ConfigError: on the first bad field.
    """
    number(cfg, "seed", low=0, integer=True)
    number(cfg, "rounds", low=1, integer=True)
    number(cfg, "eval_every", low=1, integer=True)
    _run_control(cfg)

    from fedpriv.data import available as available_datasets

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
    else:
        number(cfg, "sampling.rate", low=0, high=1, low_open=True)

    privacy = choice(cfg, "privacy.name", PRIVACY)
    if privacy != "none":
        number(cfg, "privacy.clip_norm", low=0, low_open=True)
        noise = _get(cfg, "privacy.noise_multiplier")
        target = _get(cfg, "privacy.target_epsilon")
        if noise is not None and target is not None:
            raise ConfigError(
                "privacy.noise_multiplier",
                f"set either a noise multiplier ({noise}) or privacy.target_epsilon ({target}), "
                "not both",
            )
        if target is None:
            number(cfg, "privacy.noise_multiplier", low=0)
        else:
            number(cfg, "privacy.target_epsilon", low=0, low_open=True)
        number(cfg, "privacy.delta", low=0, high=1, low_open=True, high_open=True, required=False)
        number(cfg, "privacy.stop_at_epsilon", low=0, low_open=True, required=False)
        accountant = _get(cfg, "privacy.accountant")
        if accountant is not None:
            choice(cfg, "privacy.accountant", ACCOUNTANTS)
    if privacy == "user_dp_adaptive":
        number(
            cfg, "privacy.adaptive.target_quantile", low=0, high=1, low_open=True, high_open=True
        )
        number(cfg, "privacy.adaptive.learning_rate", low=0, low_open=True)
        number(cfg, "privacy.adaptive.count_noise_std", low=0, low_open=True, required=False)
    if privacy == "example_dp":
        number(cfg, "privacy.example_sampling_rate", low=0, high=1, low_open=True, required=False)

    devices = _get(cfg, "execution.devices", "auto")
    if devices not in (None, "auto"):
        number(cfg, "execution.devices", low=1, integer=True)
    validate_secagg(cfg)

    if _get(cfg, "execution.path") is not None:
        choice(cfg, "execution.path", ("auto", "direct", "lowrank"))
    chunk = _get(cfg, "execution.chunk_size", "auto")
    if chunk not in (None, "auto"):
        number(cfg, "execution.chunk_size", low=1, integer=True)
