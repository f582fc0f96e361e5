"""The federated algorithms, as typed choices of the ``algorithm`` configuration group.

Each class selects a preset of ``fedpriv/conf/algorithm`` and sets some of its fields (a
field left at ``None`` keeps the preset's value); pass one to :func:`fedpriv.simulate`.
An algorithm is one object: its server step is the optax transformation
:meth:`Algorithm.server_optimizer` returns, applied to the negated mean client update as a
pseudo-gradient (Reddi et al. 2021); what it changes in local training is
:meth:`Algorithm.local_options` (FedProx's proximal term) and whether it normalises each
update by its local steps (:attr:`Algorithm.normalizes`, FedNova; :mod:`fedpriv.fl.edge`).
The run builders receive the resolved object (:meth:`~fedpriv.groups.ConfigGroup.from_block`).

>>> from fedpriv import algorithms
>>> algorithms.FedAdam(server_lr=0.01).selections(), algorithms.FedAdam(server_lr=0.01).values()
(['algorithm=fedadam'], {'server_lr': 0.01})
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import optax

from fedpriv.groups import ConfigGroup

__all__ = [
    "Algorithm",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedNova",
    "FedProx",
    "FedYogi",
    "by_name",
]


def _value(value: float | None, default: float) -> float:
    return float(default if value is None else value)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Algorithm(ConfigGroup):
    """A federated algorithm: its server step and what it changes in local training.

    Attributes:
        normalizes: whether each client update is normalised by its local steps (FedNova).
    """

    group = "algorithm"
    normalizes: ClassVar[bool] = False

    #: The server optimizer's learning rate.
    server_lr: float | None = None
    #: ``count`` (each client update weighted by its example count) or ``uniform``.
    weighting: str | None = None

    @property
    def name(self) -> str:
        """The preset's name (``algorithm.name``)."""
        return self.preset

    def server_optimizer(self) -> optax.GradientTransformation:
        """The server step: SGD on the mean update at ``server_lr`` (FedAvg's)."""
        return optax.sgd(_value(self.server_lr, 1.0))

    def local_options(self) -> dict[str, Any]:
        """Keyword options of :func:`fedpriv.fl.client.make_client_update` (none)."""
        return {}


@dataclasses.dataclass(frozen=True, kw_only=True)
class FedAvg(Algorithm):
    """FedAvg (McMahan et al. 2017): server SGD on the mean update (``server_lr`` 1)."""

    preset = "fedavg"


@dataclasses.dataclass(frozen=True, kw_only=True)
class FedAvgM(Algorithm):
    """FedAvg with server momentum (Hsu et al. 2019)."""

    preset = "fedavgm"

    #: The server SGD's momentum.
    server_momentum: float | None = None

    def server_optimizer(self) -> optax.GradientTransformation:
        """Server SGD with momentum ``server_momentum`` (default 0.9)."""
        return optax.sgd(_value(self.server_lr, 1.0), momentum=_value(self.server_momentum, 0.9))


@dataclasses.dataclass(frozen=True, kw_only=True)
class FedAdam(Algorithm):
    """FedAdam (Reddi et al. 2021): server Adam with adaptivity ``tau``."""

    preset = "fedadam"

    beta1: float | None = None
    beta2: float | None = None
    #: The adaptivity (the optimizer's epsilon).
    tau: float | None = None

    def _moments(self) -> dict[str, float]:
        return dict(
            b1=_value(self.beta1, 0.9), b2=_value(self.beta2, 0.99), eps=_value(self.tau, 1e-3)
        )

    def server_optimizer(self) -> optax.GradientTransformation:
        """Server Adam (Reddi et al. 2021, Algorithm 2)."""
        return optax.adam(_value(self.server_lr, 1.0), **self._moments())


@dataclasses.dataclass(frozen=True, kw_only=True)
class FedYogi(FedAdam):
    """FedYogi (Reddi et al. 2021): server Yogi with adaptivity ``tau``."""

    preset = "fedyogi"

    def server_optimizer(self) -> optax.GradientTransformation:
        """Server Yogi (Reddi et al. 2021, Algorithm 2)."""
        return optax.yogi(_value(self.server_lr, 1.0), **self._moments())


@dataclasses.dataclass(frozen=True, kw_only=True)
class FedProx(Algorithm):
    """FedProx (Li et al. 2020): local objective ``F_k(w) + mu/2 ||w - w_global||^2``;
    the server step is FedAvg's."""

    preset = "fedprox"

    #: The proximal term's weight (0: FedAvg, bit for bit).
    mu: float | None = None

    def local_options(self) -> dict[str, Any]:
        """``proximal_mu`` (none at ``mu = 0``)."""
        mu = _value(self.mu, 0.0)
        return {"proximal_mu": mu} if mu else {}


@dataclasses.dataclass(frozen=True, kw_only=True)
class FedNova(Algorithm):
    """FedNova (Wang et al. 2020): updates normalised by each client's local steps, the
    normalised aggregate rescaled by ``tau_eff``; the server step is FedAvg's."""

    preset = "fednova"
    normalizes = True

    #: The public constant the normalised aggregate is rescaled by (None: the preset's; a
    #: null there is the scan length ``E ceil(n_cap / B)``).
    tau_eff: float | None = None


def by_name() -> dict[str, type[Algorithm]]:
    """The algorithm classes by preset name (``algorithm.name``)."""
    return {cls.preset: cls for cls in (FedAvg, FedAvgM, FedAdam, FedYogi, FedProx, FedNova)}
