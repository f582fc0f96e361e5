"""Server optimizers (Reddi et al. 2021, "Adaptive Federated Optimization").

The server treats the negated mean client update as a pseudo-gradient and applies an optax
optimizer to it: SGD with learning rate 1 is FedAvg, SGD with momentum is FedAvgM, Adam is
FedAdam and Yogi is FedYogi (with ``tau`` as the adaptivity epsilon).
"""

from __future__ import annotations

import dataclasses

import optax

from fedpriv import algorithms
from fedpriv.errors import ArgumentError

ALGORITHMS = tuple(algorithms.by_name())


def server_optimizer(
    name: str,
    lr: float = 1.0,
    momentum: float = 0.9,
    beta1: float = 0.9,
    beta2: float = 0.99,
    tau: float = 1e-3,
) -> optax.GradientTransformation:
    """Returns the optax transformation for the federated algorithm ``name``
    (:meth:`fedpriv.algorithms.Algorithm.server_optimizer` of its class).

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
    cls = algorithms.by_name().get(name)
    if cls is None:
        raise ArgumentError("name", f"unknown algorithm {name!r}; choose from {list(ALGORITHMS)}")
    given = dict(server_lr=lr, server_momentum=momentum, beta1=beta1, beta2=beta2, tau=tau)
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in given.items() if k in fields}).server_optimizer()
