"""The federated algorithms, as typed choices of the ``algorithm`` configuration group.

Each class selects a preset of ``fedpriv/conf/algorithm`` and sets some of its fields (a
field left at ``None`` keeps the preset's value); pass one to :func:`fedpriv.simulate`.
The server step of every algorithm is an optax optimizer applied to the negated mean client
update (:mod:`fedpriv.fl.server`); FedProx and FedNova change local training and the
aggregate as well (:mod:`fedpriv.fl.client`, :mod:`fedpriv.fl.edge`).

>>> from fedpriv import algorithms
>>> algorithms.FedAdam(server_lr=0.01).selections(), algorithms.FedAdam(server_lr=0.01).values()
(['algorithm=fedadam'], {'server_lr': 0.01})
"""

from __future__ import annotations

import dataclasses

from fedpriv.groups import ConfigGroup

__all__ = ["FedAdam", "FedAvg", "FedAvgM", "FedNova", "FedProx", "FedYogi"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Algorithm(ConfigGroup):
    group = "algorithm"

    #: The server optimizer's learning rate.
    server_lr: float | None = None
    #: ``count`` (each client update weighted by its example count) or ``uniform``.
    weighting: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class FedAvg(_Algorithm):
    """FedAvg (McMahan et al. 2017): server SGD on the mean update (``server_lr`` 1)."""

    preset = "fedavg"


@dataclasses.dataclass(frozen=True, kw_only=True)
class FedAvgM(_Algorithm):
    """FedAvg with server momentum (Hsu et al. 2019)."""

    preset = "fedavgm"

    #: The server SGD's momentum.
    server_momentum: float | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class FedAdam(_Algorithm):
    """FedAdam (Reddi et al. 2021): server Adam with adaptivity ``tau``."""

    preset = "fedadam"

    beta1: float | None = None
    beta2: float | None = None
    #: The adaptivity (the optimizer's epsilon).
    tau: float | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class FedYogi(FedAdam):
    """FedYogi (Reddi et al. 2021): server Yogi with adaptivity ``tau``."""

    preset = "fedyogi"


@dataclasses.dataclass(frozen=True, kw_only=True)
class FedProx(_Algorithm):
    """FedProx (Li et al. 2020): local objective ``F_k(w) + mu/2 ||w - w_global||^2``."""

    preset = "fedprox"

    #: The proximal term's weight (0: FedAvg, bit for bit).
    mu: float | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class FedNova(_Algorithm):
    """FedNova (Wang et al. 2020): updates normalised by each client's local steps."""

    preset = "fednova"

    #: The public constant the normalised aggregate is rescaled by (None: the preset's; a
    #: null there is the scan length ``E ceil(n_cap / B)``).
    tau_eff: float | None = None
