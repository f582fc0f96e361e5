"""Server optimizers (Reddi et al. 2021, "Adaptive Federated Optimization").

The server treats the negated mean client update as a pseudo-gradient and applies an optax
optimizer to it: SGD with learning rate 1 is FedAvg, SGD with momentum is FedAvgM, Adam is
FedAdam and Yogi is FedYogi (with ``tau`` as the adaptivity epsilon).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optax

from fedpriv.errors import ArgumentError, config_fields

ALGORITHMS = ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedprox", "fednova")


def server_optimizer(
    name: str,
    lr: float = 1.0,
    momentum: float = 0.9,
    beta1: float = 0.9,
    beta2: float = 0.99,
    tau: float = 1e-3,
) -> optax.GradientTransformation:
    """Returns the optax transformation for the federated algorithm ``name``.

    Args:
        name: one of ``fedavg``, ``fedavgm``, ``fedadam``, ``fedyogi``, ``fedprox``,
            ``fednova`` (the last two: server SGD, as FedAvg).
        lr: server learning rate (1.0 for plain FedAvg).
        momentum: FedAvgM's server momentum.
        beta1, beta2: FedAdam/FedYogi moment decays.
        tau: adaptivity (the optimizer's epsilon), Reddi et al. 2021, Algorithm 2.

    Raises:
        ArgumentError: naming ``name`` (``algorithm.name`` in a run's configuration).
    """
    if name in ("fedavg", "fedprox", "fednova"):
        # FedProx and FedNova change local training and the aggregate
        # (fedpriv.fl.client, fedpriv.fl.edge); their server step is FedAvg's.
        return optax.sgd(lr)
    if name == "fedavgm":
        return optax.sgd(lr, momentum=momentum)
    if name == "fedadam":
        return optax.adam(lr, b1=beta1, b2=beta2, eps=tau)
    if name == "fedyogi":
        return optax.yogi(lr, b1=beta1, b2=beta2, eps=tau)
    raise ArgumentError("name", f"unknown algorithm {name!r}; choose from {list(ALGORITHMS)}")


def server_optimizer_from_config(alg: Mapping[str, Any]) -> optax.GradientTransformation:
    """:func:`server_optimizer` for an ``algorithm`` config group (plain dict); a missing or
    null value takes the default (a zero momentum or beta stays zero)."""

    def value(key: str, default: float) -> float:
        v = alg.get(key)
        return float(default if v is None else v)

    with config_fields({"name": "algorithm.name"}):
        return server_optimizer(
            alg["name"],
            float(alg["server_lr"]),
            value("server_momentum", 0.9),
            value("beta1", 0.9),
            value("beta2", 0.99),
            value("tau", 1e-3),
        )
