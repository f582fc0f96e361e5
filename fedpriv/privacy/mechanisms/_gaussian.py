"""The noised sum of L2-clipped contributions with Gaussian noise: what ``user_dp``,
``user_dp_adaptive`` and ``example_dp`` records share (ledger ``mechanism: gaussian``).

References:
    Mironov, "Renyi Differential Privacy", CSF 2017, Proposition 7 (Gaussian RDP).
    Mironov, Talwar, Zhang, "Renyi Differential Privacy of the Sampled Gaussian Mechanism",
    arXiv:1908.10530, 2019 (Poisson subsampling).
    Wang, Balle, Kasiviswanathan, "Subsampled Renyi Differential Privacy and Analytical
    Moments Accountant", AISTATS 2019, Theorem 27 (sampling without replacement).
    Andrew et al., "Differentially Private Learning with Adaptive Clipping", NeurIPS 2021,
    Theorem 1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fedpriv.accounting.events import GaussianSumKind
from fedpriv.privacy.ledger import LEDGER_FORMAT
from fedpriv.privacy.mechanisms.base import (
    ADD_OR_REMOVE_ONE,
    USER_LIKE,
    AccountingTools,
    DpMechanism,
    DpSettings,
    PrivacyPlan,
    record_cohort,
    resolve_delta,
)

if TYPE_CHECKING:
    from fedpriv.accounting.events import RoundEvent


@dataclasses.dataclass(frozen=True)
class GaussianSum(GaussianSumKind, DpMechanism):
    """Gaussian noise of std ``z C`` on a sum of contributions of L2 norm at most ``C``.

    Privacy:
        The sum has L2 sensitivity ``C`` under adding or removing one contribution and
        ``2C`` under replacing one (:meth:`sensitivity`), so a round is the Gaussian
        mechanism with multiplier ``noise_std / sensitivity``: ``z`` (add/remove), ``z / 2``
        (replace-one), before sampling amplification (:func:`amplify`). With adaptive
        clipping (``count_noise_std`` set) the update sum and the noised clip count are one
        Gaussian mechanism with multiplier ``z`` (Andrew et al. 2021, Theorem 1); under
        replace-one both sensitivities double, so the ``z / 2`` reading holds for the pair.
    """

    def audit_noise(
        self, event: RoundEvent, record: Mapping[str, Any]
    ) -> tuple[float | None, str, list[str]]:
        """The noise std the record implies, how it is computed, and problems found.

        Returns:
            ``(expected, formula, problems)``; ``expected`` is None when the record cannot
            be checked (no clip) or is already wrong (``problems``).
        """
        z = event.noise_multiplier
        try:
            z_update = self.update_multiplier(event)
        except ValueError:
            return (
                None,
                "",
                [
                    f"round {event.round}: count_noise_std {event.count_noise_std:.6g} <= "
                    f"noise_multiplier / 2 = {z / 2:.6g}: the clip-count noise alone exceeds "
                    "the accounted noise"
                ],
            )
        clip = record.get("clip_norm")
        if clip is None:
            return None, "", []
        what = "noise_multiplier" if z_update == z else "z_update"
        return z_update * clip, f"{what} {z_update:.6g} x clip_norm {clip:.6g}", []

    def unamplified_gaussian_multiplier(self, event: RoundEvent) -> float | None:
        if self.relation(event) != ADD_OR_REMOVE_ONE:
            return None
        if event.sampling == "poisson" and event.sampling_rate != 1.0:
            return None
        return event.noise_multiplier

    def audit(self, run: Any, events: Any) -> list[str]:
        kinds = {ev.mechanism for ev in events}
        if kinds != {"gaussian"}:
            counts = {k: sum(ev.mechanism == k for ev in events) for k in sorted(kinds)}
            return [f"privacy={self.name} adds Gaussian noise; ledger: {counts}"]
        return []

    # ----------------------------------------------------------------- shared building

    def gaussian_record(
        self, plan: PrivacyPlan, rnd: int, clip_norm: float, noise_std: float
    ) -> dict[str, Any]:
        """Format 1 of a Gaussian round (field order as the ledger has always had it)."""
        return {
            "format": LEDGER_FORMAT,
            "round": int(rnd),
            "mechanism": "gaussian",
            "unit": plan.unit,
            "sampling": plan.sampling,
            "sampling_rate": plan.sampling_rate,
            "population": plan.population,
            "cohort_size": record_cohort(plan),
            "noise_multiplier": plan.noise_multiplier,
            "clip_norm": clip_norm,
            "noise_std": noise_std,
            "steps": plan.steps if plan.unit == "example" else 1,
            "example_sampling_rate": plan.example_sampling_rate,
        }

    def with_delta_and_noise(
        self, plan: PrivacyPlan, settings: DpSettings, units: int, tools: AccountingTools
    ) -> PrivacyPlan:
        """``plan`` with its delta and, with a target epsilon, the noise multiplier from
        :func:`fedpriv.accounting.calibrate_noise` (one-sided) for the planned rounds.

        Privacy:
            The returned plan's rounds are ``(target_epsilon, delta)``-DP under its
            accountant, for the unit and relation of its records.
        """
        delta = resolve_delta({"delta": settings.delta}, units)
        if settings.target_epsilon is None:
            return dataclasses.replace(plan, delta=delta)
        noise = tools.calibrate_noise(
            settings.target_epsilon,
            delta,
            plan.rounds,
            sampling=plan.sampling,
            sampling_rate=plan.sampling_rate if plan.sampling == "poisson" else None,
            population=plan.population,
            cohort_size=int(round(plan.expected_cohort)) if plan.sampling == "fixed" else None,
            steps=plan.steps,
            example_sampling_rate=plan.example_sampling_rate,
            unit=plan.unit,
            accountant=plan.accountant,
        )
        return dataclasses.replace(
            plan, delta=delta, noise_multiplier=noise, target_epsilon=settings.target_epsilon
        )


def is_user_like(event: RoundEvent) -> bool:
    """A user- or gateway-level record (one clipped contribution per unit per round)."""
    return event.unit in USER_LIKE
