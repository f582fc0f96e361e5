"""``privacy=none``: no differential privacy; FedAvg's weighted mean."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from fedpriv.fl.aggregators import Aggregator, weighted_mean
from fedpriv.privacy.mechanisms._registry import register
from fedpriv.privacy.mechanisms.base import Mechanism, PrivacyPlan, plan_common


@dataclasses.dataclass(frozen=True)
class NoPrivacy(Mechanism):
    """No DP: plain client training and the example-count weighted mean.

    Privacy:
        None: nothing is clipped or noised, no ledger is written and no epsilon is claimed.
    """

    name = "none"
    unit = None
    private = False
    samplings = ("fixed", "poisson", "cyclic")

    def validate(self, privacy_cfg: Mapping[str, Any]) -> None:
        return None

    def build(self, privacy_cfg, sampler, client, rounds, secagg, num_params=None, *, tools):
        return PrivacyPlan(unit=None, mechanism=self, **plan_common(self.name, sampler, rounds))

    def aggregator(self, plan: PrivacyPlan, weighting: str, key: Any, params: Any) -> Aggregator:
        return weighted_mean(weighting)

    def claims(self, event) -> bool:
        return False


MECHANISM = register(NoPrivacy())
