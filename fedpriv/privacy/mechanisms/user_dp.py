"""``privacy=user_dp``: user-level DP-FedAvg with the Gaussian mechanism.

Each client update is clipped to L2 norm ``clip_norm``, the sum gets Gaussian noise of std
``noise_multiplier * clip_norm``, and is divided by the expected cohort (McMahan et al.
2018). The aggregation is the chain ``clip -> gaussian -> mean`` of
:mod:`fedpriv.privacy.aggregators`.

References:
    McMahan, Ramage, Talwar, Zhang. "Learning Differentially Private Recurrent Language
    Models." ICLR 2018 (DP-FedAvg, Algorithm 1).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from fedpriv.errors import ConfigError
from fedpriv.fl.aggregators import Aggregator
from fedpriv.privacy.aggregators import dp_fedavg
from fedpriv.privacy.mechanisms._gaussian import GaussianSum, is_user_like
from fedpriv.privacy.mechanisms._registry import register
from fedpriv.privacy.mechanisms.base import DpSettings, PrivacyPlan, plan_common


def read_per_layer(block: Mapping[str, Any]) -> bool:
    """``privacy.per_layer`` (default false).

    Raises:
        ConfigError: naming ``privacy.per_layer`` for a value that is not true or false.
    """
    value = block.get("per_layer", False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ConfigError("privacy.per_layer", f"must be true or false, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class DpFedAvg(GaussianSum):
    """User-level DP-FedAvg: clip to C, sum, add ``N(0, (z C)^2 I)``, divide by ``m``.

    Privacy:
        Unit one client (or one gateway with hierarchical gateway-level DP). Under adding or
        removing one client the round is the Gaussian mechanism with multiplier ``z``
        (sensitivity C), amplified by Poisson sampling; with fixed-size cohorts, replace-one
        adjacency (sensitivity 2C, multiplier ``z / 2``) amplified by sampling without
        replacement. See :class:`~fedpriv.privacy.mechanisms._gaussian.GaussianSum`.
    """

    name = "user_dp"
    unit = "user"
    gaussian_fedavg = True

    #: Per-layer clipping, with budgets whose squares sum to ``clip_norm^2``.
    per_layer: bool | None = None

    def claims(self, event) -> bool:
        return (
            event.mechanism == "gaussian" and is_user_like(event) and event.count_noise_std is None
        )

    def validate(self, privacy_cfg: Mapping[str, Any]) -> None:
        DpSettings.read(privacy_cfg, self.accountants, strict=True)
        read_per_layer(privacy_cfg)

    def plan_fields(self, privacy_cfg: Mapping[str, Any], plan: PrivacyPlan) -> PrivacyPlan:
        """Hook for the mechanisms built on this one: extra plan fields before calibration."""
        return plan

    def finish(self, plan: PrivacyPlan) -> PrivacyPlan:
        """Hook: the plan after calibration."""
        return plan

    def build(self, privacy_cfg, sampler, client, rounds, secagg, num_params=None, *, tools):
        settings = DpSettings.read(privacy_cfg, self.accountants)
        plan = PrivacyPlan(
            unit=self.unit,
            clip_norm=settings.clip_norm,
            noise_multiplier=settings.noise_multiplier,
            per_layer=read_per_layer(privacy_cfg),
            accountant=settings.accountant,
            mechanism=self,
            **plan_common(self.name, sampler, rounds),
        )
        plan = self.plan_fields(privacy_cfg, plan)
        # The default delta is below 1/(number of clients).
        return self.finish(self.with_delta_and_noise(plan, settings, plan.population, tools))

    def aggregator(self, plan: PrivacyPlan, weighting: str, key: Any, params: Any) -> Aggregator:
        """:func:`~fedpriv.privacy.aggregators.dp_fedavg` of the plan (``weighting`` is
        ignored: every clipped update counts once).

        Privacy:
            See :func:`~fedpriv.privacy.aggregators.dp_fedavg`.
        """
        return dp_fedavg(
            plan.clip_norm,
            plan.noise_multiplier,
            plan.expected_cohort,
            plan.per_layer,
            plan.adaptive,
        )

    def ledger_record(self, plan: PrivacyPlan, rnd: int, metrics: Mapping[str, Any]):
        """The round's record; ``clip_norm`` and ``noise_std`` are read from the round's own
        metrics (what the aggregation used; both public or functions of noised values). The
        realised cohort, which with Poisson sampling tells whether a client took part, is a
        diagnostic of the metrics (``clients``), not part of the record."""
        return self.gaussian_record(
            plan, rnd, float(metrics["clip_norm"]), float(metrics["noise_std"])
        )


MECHANISM = register(DpFedAvg())
