"""``privacy=user_dp_adaptive``: DP-FedAvg with adaptive clipping (Andrew et al. 2021).

The clip norm follows the ``target_quantile`` of update norms, estimated from a noised count;
the aggregation is the chain ``adaptive_clip -> gaussian -> mean``, with the update noise
from :func:`fedpriv.privacy.aggregators.split_noise`, the one implementation of the split.

References:
    Andrew, Thakkar, McMahan, Ramaswamy. "Differentially Private Learning with Adaptive
    Clipping." NeurIPS 2021 (Algorithm 1 and Theorem 1).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from fedpriv.errors import ConfigError
from fedpriv.privacy.aggregators import AdaptiveClip, default_count_noise_std, split_noise
from fedpriv.privacy.mechanisms._gaussian import is_user_like
from fedpriv.privacy.mechanisms._registry import register
from fedpriv.privacy.mechanisms.base import PrivacyPlan, number
from fedpriv.privacy.mechanisms.user_dp import DpFedAvg


def read_adaptive(block: Mapping[str, Any]) -> AdaptiveClip:
    """``privacy.adaptive`` (quantile 0.5, learning rate 0.2, count noise resolved later).

    Raises:
        ConfigError: naming ``privacy.adaptive.<field>``.
    """
    gamma = number(
        block, "adaptive.target_quantile", 0.5, low=0, high=1, low_open=True, high_open=True
    )
    eta = number(block, "adaptive.learning_rate", 0.2, low=0, low_open=True)
    sigma_b = number(block, "adaptive.count_noise_std", low=0, low_open=True)
    return AdaptiveClip(gamma, eta, sigma_b)


@dataclasses.dataclass(frozen=True)
class AdaptiveDpFedAvg(DpFedAvg):
    """DP-FedAvg whose clip norm adapts to a quantile of the update norms.

    Privacy:
        Unit one client. The update sum (multiplier ``z_update``) and the noised count of
        unclipped updates (sensitivity 1/2, std ``sigma_b``) are together one Gaussian
        mechanism with multiplier ``z = (z_update^-2 + (2 sigma_b)^-2)^-1/2`` under adding
        or removing one client (Andrew et al. 2021, Theorem 1); replace-one doubles both
        sensitivities. Accounted as :class:`DpFedAvg` with that ``z``.
    """

    name = "user_dp_adaptive"
    adaptive_clip = True

    #: The quantile of the update norms the clip norm tracks (``adaptive.target_quantile``).
    target_quantile: float | None = None
    #: The step size of the clip norm's geometric update (``adaptive.learning_rate``).
    clip_learning_rate: float | None = None
    #: The std of the noised count of unclipped updates (``adaptive.count_noise_std``).
    count_noise_std: float | None = None

    def values(self) -> dict[str, Any]:
        out = super().values()
        nested = {
            "target_quantile": out.pop("target_quantile", None),
            "learning_rate": out.pop("clip_learning_rate", None),
            "count_noise_std": out.pop("count_noise_std", None),
        }
        nested = {k: v for k, v in nested.items() if v is not None}
        if nested:
            out["adaptive"] = nested
        return out

    def claims(self, event) -> bool:
        return (
            event.mechanism == "gaussian"
            and is_user_like(event)
            and event.count_noise_std is not None
        )

    def validate(self, privacy_cfg: Mapping[str, Any]) -> None:
        super().validate(privacy_cfg)
        read_adaptive(privacy_cfg)

    def plan_fields(self, privacy_cfg: Mapping[str, Any], plan: PrivacyPlan) -> PrivacyPlan:
        return dataclasses.replace(plan, adaptive=read_adaptive(privacy_cfg))

    def finish(self, plan: PrivacyPlan) -> PrivacyPlan:
        """Fills in the default count noise and checks the noise split is possible.

        Raises:
            ConfigError: naming ``privacy.adaptive.count_noise_std`` when the count noise
                leaves no budget for the update sum.
        """
        sigma_b = plan.adaptive.count_noise_std
        if sigma_b is None:
            sigma_b = default_count_noise_std(plan.expected_cohort, plan.noise_multiplier)
        try:
            split_noise(plan.noise_multiplier, sigma_b)
        except ValueError as err:
            raise ConfigError("privacy.adaptive.count_noise_std", str(err)) from None
        return dataclasses.replace(plan, adaptive=plan.adaptive._replace(count_noise_std=sigma_b))

    def ledger_record(self, plan: PrivacyPlan, rnd: int, metrics: Mapping[str, Any]):
        """As :meth:`DpFedAvg.ledger_record`, with the count noise ``count_noise_std``."""
        record = super().ledger_record(plan, rnd, metrics)
        record["count_noise_std"] = plan.adaptive.count_noise_std
        return record

    def audit(self, run: Any, events: Any) -> list[str]:
        problems = super().audit(run, events)
        missing = sum(ev.count_noise_std is None for ev in events)
        if missing:
            problems.append(
                f"adaptive clipping noises the clip count, but {missing} of {len(events)} "
                "records have no count_noise_std"
            )
        return problems


MECHANISM = register(AdaptiveDpFedAvg())
