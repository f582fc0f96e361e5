"""``privacy=distributed_dp``: distributed DP on secure aggregation.

Every client clips its update, quantises it and adds integer noise (Skellam or discrete
Gaussian) before masking, so the securely summed noise meets the accounted multiplier; the
server's part is DP-FedAvg without noise of its own inside
:func:`~fedpriv.privacy.secagg.fast.secure_aggregator`.

References:
    Kairouz, Liu, Steinke, "The Distributed Discrete Gaussian Mechanism for Federated
    Learning with Secure Aggregation", ICML 2021.
    Agarwal, Kairouz, Liu, "The Skellam Mechanism for Differentially Private Federated
    Learning", NeurIPS 2021.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import jax.numpy as jnp

from fedpriv.accounting.events import DistributedKind
from fedpriv.errors import ConfigError
from fedpriv.fl.aggregators import Aggregator
from fedpriv.privacy.aggregators import dp_fedavg
from fedpriv.privacy.distributed import (
    AMPLIFICATIONS,
    NOISE_KINDS,
    DistributedNoise,
    max_scale_for_sampler,
)
from fedpriv.privacy.ledger import LEDGER_FORMAT
from fedpriv.privacy.mechanisms._registry import register
from fedpriv.privacy.mechanisms.base import (
    DpMechanism,
    DpSettings,
    PrivacyPlan,
    choice,
    plan_common,
    resolve_delta,
)
from fedpriv.privacy.secagg import plan as secagg_plan
from fedpriv.privacy.secagg.fast import SecAggSpec, secure_aggregator
from fedpriv.privacy.secagg.quantize import auto_scale

if TYPE_CHECKING:
    from fedpriv.accounting.events import RoundEvent


def distributed_events(
    plan: PrivacyPlan, noise: DistributedNoise, rounds: int
) -> list[dict[str, Any]]:
    """The ledger a distributed-DP plan will write (``rounds`` identical records)."""
    record = {
        "format": LEDGER_FORMAT,
        "round": 0,
        "unit": "user",
        "sampling": plan.sampling,
        "population": plan.population,
        "cohort_size": int(round(plan.expected_cohort)),
        "noise_multiplier": noise.noise_multiplier,
        "clip_norm": noise.clip_norm,
        **noise.record(),
    }
    return [record] * max(int(rounds), 1)


def _reporting_noise(agg: Aggregator, noise_std: float) -> Aggregator:
    """``agg`` with its ``noise_std`` metric set to ``noise_std``: distributed DP's noise is
    added by the clients, so the wrapped DP-FedAvg (which adds none) would report 0."""

    def finalize(*args):
        mean, state, metrics = agg.finalize(*args)
        return mean, state, {**metrics, "noise_std": jnp.asarray(noise_std, jnp.float32)}

    return agg._replace(finalize=finalize)


@dataclasses.dataclass(frozen=True)
class DistributedDp(DistributedKind, DpMechanism):
    """Client-side integer noise on secure aggregation, fixed-size cohorts only.

    Privacy:
        Unit one client. Every client adds integer noise of variance ``(z C s)^2 / n`` for
        ``n`` the fewest clients whose noise is in a released sum (the cohort, or the Shamir
        threshold when clients may drop before their masked input), so the securely summed
        noise has standard deviation at least ``z C`` in model units. Fixed cohorts only:
        with Poisson sampling the realised cohort, and so the noise, could fall below what
        was accounted. Replace-one adjacency; accounted by fedpriv's own RDP bounds
        (:mod:`fedpriv.accounting.distributed`, no library analyses these mechanisms), with
        amplification by sampling the cohort without replacement unless
        ``privacy.amplification=none``.
    """

    name = "distributed_dp"
    unit = "user"
    owns_secagg = True

    #: ``skellam`` or ``discrete_gaussian``.
    noise: str | None = None
    #: ``sampling`` (amplification by the secret cohort draw) or ``none``.
    amplification: str | None = None
    #: The secure aggregation it runs on: ``fast`` or ``protocol``.
    secagg: str = "fast"

    def selections(self) -> list[str]:
        return [*super().selections(), f"secagg={self.secagg}"]

    def values(self) -> dict[str, Any]:
        out = super().values()
        out.pop("secagg")
        return out

    def validate(self, privacy_cfg: Mapping[str, Any]) -> None:
        choice(privacy_cfg, "noise", NOISE_KINDS, "skellam")
        choice(privacy_cfg, "amplification", AMPLIFICATIONS, "sampling")
        DpSettings.read(privacy_cfg, self.accountants, strict=True)

    def build(self, privacy_cfg, sampler, client, rounds, secagg, num_params=None, *, tools):
        """Resolves secure aggregation and the per-client noise.

        Raises:
            ConfigError: naming the field of a setting that cannot work.
        """
        base = PrivacyPlan(unit=None, mechanism=self, **plan_common(self.name, sampler, rounds))
        s = secagg_plan.resolve(base, secagg, num_params)
        if base.sampling != "fixed":
            raise ConfigError(
                "sampling.kind",
                f"privacy=distributed_dp needs fixed-size cohorts (sampling=fixed), got "
                f"{base.sampling!r}: the noise is summed over the clients that take part",
            )
        kind = choice(privacy_cfg, "noise", NOISE_KINDS, "skellam")
        amplification = choice(privacy_cfg, "amplification", AMPLIFICATIONS, "sampling")
        settings = DpSettings.read(privacy_cfg, self.accountants)
        clip = settings.clip_norm
        m = s.cohort
        noise_clients = s.threshold if (s.mode == "protocol" and s.dropout > 0) else m
        if base.population is None or m >= int(base.population):
            amplification = "none"  # every client takes part: nothing to amplify

        def noise_for(z: float) -> DistributedNoise:
            if s.explicit_scale is not None:
                scale = s.explicit_scale
            else:
                scale = min(
                    auto_scale(s.bits, m, clip, s.dimension, s.rotation, z),
                    max_scale_for_sampler(kind, z, clip, noise_clients),
                )
            return DistributedNoise(
                kind, z, clip, scale, int(noise_clients), s.dimension, s.bits, amplification
            )

        delta = resolve_delta({"delta": settings.delta}, base.population)
        target = settings.target_epsilon
        planned = max(int(base.rounds), 1)
        if target is None:
            z = settings.noise_multiplier
        else:

            def eps(z: float) -> float:
                events = distributed_events(base, noise_for(z), planned)
                return tools.epsilon(events, delta, "rdp")

            z = tools.calibrate_distributed(target, delta, eps)
        noise = noise_for(z)
        noise.check()
        spec = SecAggSpec(scale=noise.scale, noise=noise, **s.common)
        return dataclasses.replace(
            base,
            unit="user",
            clip_norm=clip,
            noise_multiplier=z,
            delta=delta,
            target_epsilon=target,
            accountant="rdp",
            secagg=spec,
        )

    def aggregator(self, plan: PrivacyPlan, weighting: str, key: Any, params: Any) -> Aggregator:
        """DP-FedAvg without noise of its own inside secure aggregation (the clients add
        the noise), reporting the summed noise's std.

        Privacy:
            See the class.
        """
        inner = dp_fedavg(plan.clip_norm, 0.0, plan.expected_cohort)
        agg = secure_aggregator(inner, plan.secagg, key, params)
        return _reporting_noise(agg, plan.noise_multiplier * plan.clip_norm)

    def ledger_record(self, plan: PrivacyPlan, rnd: int, metrics: Mapping[str, Any]):
        noise = plan.secagg.noise
        return {
            "format": LEDGER_FORMAT,
            "round": int(rnd),
            "unit": "user",
            "sampling": plan.sampling,
            "sampling_rate": plan.sampling_rate,
            "population": plan.population,
            "cohort_size": int(round(plan.expected_cohort)),
            "noise_multiplier": plan.noise_multiplier,
            "clip_norm": plan.clip_norm,
            "noise_std": plan.noise_multiplier * plan.clip_norm,
            "steps": 1,
            "example_sampling_rate": None,
            **noise.record(),
        }

    # ----------------------------------------------------------------- ledger records

    def audit_noise(self, event: RoundEvent, record: Mapping[str, Any]):
        """``z = sqrt(noise_clients * local_variance) / (scale * clip_norm)`` and
        ``noise_std = z * clip_norm``, from the record's own fields."""
        clip = record.get("clip_norm")
        if clip is None:
            return None, "", []
        z = event.noise_multiplier
        expected_z = (event.noise_clients * event.local_variance) ** 0.5 / (event.scale * clip)
        problems = []
        if abs(z - expected_z) / max(expected_z, 1e-300) > 1e-5:
            problems.append(
                f"round {event.round}: noise_multiplier {z:.6g} but sqrt(noise_clients * "
                f"local_variance) / (scale * clip_norm) = {expected_z:.6g}"
            )
        return z * clip, f"noise_multiplier {z:.6g} x clip_norm {clip:.6g}", problems

    def server_reports_noise(self, event: RoundEvent) -> bool:
        return False

    def audit(self, run: Any, events: Any) -> list[str]:
        problems = []
        kinds = {}
        for ev in events:
            kinds[ev.mechanism] = kinds.get(ev.mechanism, 0) + 1
        noise = run.config_get("privacy.noise")
        if noise is not None and set(kinds) != {noise}:
            problems.append(f"privacy.noise={noise} but the ledger records {kinds}")
        amplified = sum(ev.amplification == "sampling" for ev in events)
        if amplified and run.config_get("privacy.amplification") == "none":
            problems.append(
                f"privacy.amplification=none but {amplified} of {len(events)} records are "
                "accounted with amplification by sampling"
            )
        return problems


MECHANISM = register(DistributedDp())
