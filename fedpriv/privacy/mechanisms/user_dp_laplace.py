"""``privacy=user_dp_laplace``: user-level DP-FedAvg with the Laplace mechanism.

Each client update is clipped to L1 norm ``clip_norm`` (C), the sum of the clipped updates
gets independent Laplace noise of scale ``b = noise_multiplier * C`` in every coordinate, and
the noised sum is divided by the expected cohort. The aggregation is the chain
``l1_clip(C) -> laplace_noise(z) -> mean(m)``.

The noise multiplier is the Laplace scale over the L1 sensitivity under adding or removing
one client, ``z = b / C``; a round on the whole population is then pure ``1/z``-DP, and
``T`` rounds are ``T/z``-DP by basic composition (tighter with RDP or PLD accounting).

References:
    Dwork, McSherry, Nissim, Smith, "Calibrating Noise to Sensitivity in Private Data
    Analysis", TCC 2006 (the Laplace mechanism).
    Dwork and Roth, "The Algorithmic Foundations of Differential Privacy", 2014, Theorem 3.6.
    Mironov, "Renyi Differential Privacy", CSF 2017, Proposition 6 (Laplace RDP).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import dp_accounting
import jax
import jax.numpy as jnp

from fedpriv.errors import ConfigError
from fedpriv.fl.aggregators import (
    AggregationTransform,
    Aggregator,
    as_aggregator,
    chain,
    identity_client,
    identity_scale,
)
from fedpriv.privacy.aggregators import UPDATE_NOISE_SLOT, mean
from fedpriv.privacy.ledger import LEDGER_FORMAT
from fedpriv.privacy.mechanisms._registry import register
from fedpriv.privacy.mechanisms.base import (
    ADD_OR_REMOVE_ONE,
    REPLACE_ONE,
    DpMechanism,
    DpSettings,
    PrivacyPlan,
    amplify,
    plan_common,
    record_cohort,
)

if TYPE_CHECKING:
    from fedpriv.accounting.events import RoundEvent

PyTree = Any

#: Standard deviation of the Laplace distribution over its scale.
STD_PER_SCALE = math.sqrt(2.0)


def l1_norm(tree: PyTree) -> jax.Array:
    """Global L1 norm of a pytree, accumulated in float32."""
    return sum(jnp.sum(jnp.abs(x.astype(jnp.float32))) for x in jax.tree.leaves(tree))


def l1_clip(clip_norm: float) -> AggregationTransform:
    """Scales each client update so its global L1 norm is at most ``clip_norm``, and masks it.

    Args:
        clip_norm: C > 0.

    Raises:
        ValueError: ``clip_norm <= 0``.

    Privacy:
        Every contribution has L1 norm at most C, so the sum has L1 sensitivity C under
        adding or removing one client and 2C under replacing one. The clip statistics
        (``clipped_fraction``, ``mean_update_norm_preclip``, here the L1 norm) are un-noised
        diagnostics.
    """
    if not clip_norm > 0:
        raise ValueError(f"clip_norm must be > 0, got {clip_norm}")
    bound = jnp.float32(clip_norm)

    def init(params):
        del params
        return ()

    def client(update, count, mask, state):
        del count, state
        norm = l1_norm(update)
        scale = jnp.minimum(1.0, bound / jnp.maximum(norm, 1e-12))
        contrib = jax.tree.map(lambda u: mask * (u * scale.astype(u.dtype)), update)
        stats = {"clipped": mask * (norm > bound).astype(jnp.float32), "norm": mask * norm}
        return contrib, mask, stats

    def update(total, state, key, info):
        del key
        n = jnp.maximum(info["total_weight"], 1.0)
        return (
            total,
            state,
            {
                "clip_norm": bound,
                "clipped_fraction": info["clipped"] / n,
                "mean_update_norm_preclip": info["norm"] / n,
            },
        )

    # No client_scale: an L1 clip is not a function of the update's L2 norm.
    return AggregationTransform(init, client, update)


def laplace_like(tree: PyTree, scale: jax.Array, key: jax.Array) -> PyTree:
    """Independent ``Laplace(0, scale)`` noise with the structure of ``tree``
    (simulation-grade: JAX's PRNG). Each leaf gets its own key from ``key``."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    noise = [
        scale * jax.random.laplace(k, x.shape, jnp.float32).astype(x.dtype)
        for k, x in zip(keys, leaves)
    ]
    return jax.tree.unflatten(treedef, noise)


def laplace_noise(noise_multiplier: float) -> AggregationTransform:
    """Adds ``Laplace(0, z C)`` to every coordinate of the sum, with C the ``clip_norm`` the
    clipping transform before it published.

    Args:
        noise_multiplier: z >= 0, the scale over the L1 sensitivity.

    Raises:
        ValueError: ``noise_multiplier < 0``.

    Privacy:
        With the sum's L1 sensitivity C (add/remove one client), the Laplace mechanism with
        scale ``z C`` is pure ``1/z``-DP (Dwork et al. 2006); under replace-one (sensitivity
        2C), ``2/z``. Draws from key slot ``UPDATE_NOISE_SLOT``.
    """
    if not noise_multiplier >= 0:
        raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")

    def init(params):
        del params
        return ()

    def update(total, state, key, info):
        scale = noise_multiplier * info["clip_norm"]
        noised = jax.tree.map(jnp.add, total, laplace_like(total, scale, key))
        return noised, state, {"noise_std": STD_PER_SCALE * scale}

    return AggregationTransform(
        init, identity_client, update, identity_scale, key_slot=UPDATE_NOISE_SLOT
    )


def laplace_fedavg(clip_norm: float, noise_multiplier: float, expected_cohort: float):
    """The chain ``l1_clip(C) -> laplace_noise(z) -> mean(m)`` as a transform.

    Privacy:
        See :class:`LaplaceDpFedAvg`.
    """
    return chain(l1_clip(clip_norm), laplace_noise(noise_multiplier), mean(expected_cohort))


@dataclasses.dataclass(frozen=True)
class LaplaceDpFedAvg(DpMechanism):
    """User-level DP-FedAvg with L1 clipping and Laplace noise.

    Privacy:
        Unit one client. The sum of updates clipped to L1 norm C has L1 sensitivity C under
        adding or removing one client (:meth:`sensitivity`; 2C under replacing one), and
        ``Laplace(z C)`` noise per coordinate makes a round on the whole population pure
        ``1/z``-DP. Poisson sampling (add/remove) is accounted as
        ``PoissonSampledDpEvent(q, LaplaceDpEvent(z))`` (PLD only). Fixed-size cohorts use
        replace-one adjacency; no library analyses Laplace sampled without replacement, so
        those rounds are accounted without amplification as ``LaplaceDpEvent(z / 2)``
        (valid: for every cohort drawn independently of the data the round is pure
        ``2/z``-DP under replace-one, and a mixture of such mechanisms is too).
    """

    name = "user_dp_laplace"
    unit = "user"
    ledger_mechanism = "laplace"
    accountants = ("rdp", "pld")

    def validate(self, privacy_cfg: Mapping[str, Any]) -> None:
        DpSettings.read(privacy_cfg, self.accountants, strict=True)

    def build(self, privacy_cfg, sampler, client, rounds, secagg, num_params=None, *, tools):
        """The plan; with a target epsilon the noise is calibrated on the planned ledger.

        Raises:
            ConfigError: naming ``privacy.<field>``, or ``privacy.accountant`` when the
                accountant cannot analyse the sampling that runs.
        """
        settings = DpSettings.read(privacy_cfg, self.accountants)
        plan = PrivacyPlan(
            unit=self.unit,
            clip_norm=settings.clip_norm,
            noise_multiplier=settings.noise_multiplier,
            accountant=settings.accountant,
            mechanism=self,
            **plan_common(self.name, sampler, rounds),
        )
        supported = self._accountants_for(plan.sampling)
        if plan.accountant not in supported:
            raise ConfigError(
                "privacy.accountant",
                f"{plan.accountant!r} cannot analyse the Laplace mechanism with "
                f"{plan.sampling} sampling; use {' or '.join(supported)}",
            )
        return self.calibrated(plan, settings, plan.population, tools)

    def aggregator(self, plan: PrivacyPlan, weighting: str, key: Any, params: Any) -> Aggregator:
        """:func:`laplace_fedavg` as the round's aggregator (``weighting`` is ignored)."""
        return as_aggregator(
            laplace_fedavg(plan.clip_norm, plan.noise_multiplier, plan.expected_cohort), params
        )

    def noise_std(self, plan: PrivacyPlan, clip_norm: float) -> float:
        return STD_PER_SCALE * plan.noise_multiplier * clip_norm

    def ledger_record(self, plan: PrivacyPlan, rnd: int, metrics: Mapping[str, Any]):
        """Format 1 with ``mechanism: laplace``; ``clip_norm`` is the L1 bound and
        ``noise_std`` the noise's standard deviation, ``sqrt(2) z C``."""
        return {
            "format": LEDGER_FORMAT,
            "round": int(rnd),
            "mechanism": "laplace",
            "unit": plan.unit,
            "sampling": plan.sampling,
            "sampling_rate": plan.sampling_rate,
            "population": plan.population,
            "cohort_size": record_cohort(plan),
            "noise_multiplier": plan.noise_multiplier,
            "clip_norm": float(metrics["clip_norm"]),
            "noise_std": float(metrics["noise_std"]),
            "steps": 1,
            "example_sampling_rate": None,
        }

    # ----------------------------------------------------------------- ledger records

    def dp_event(self, event: RoundEvent) -> dp_accounting.DpEvent:
        """``LaplaceDpEvent(z / k)`` (``k``: the sensitivity in units of C), Poisson-sampled
        for Poisson rounds; fixed cohorts without amplification (see the class)."""
        base = dp_accounting.LaplaceDpEvent(
            event.noise_multiplier / self.sensitivity(self.relation(event), 1.0)
        )
        if event.sampling == "fixed":
            return base
        return amplify(event, base)

    @staticmethod
    def _accountants_for(sampling: str) -> tuple[str, ...]:
        if sampling == "poisson":
            return ("pld",)  # dp_accounting's RDP has no Poisson-sampled Laplace
        if sampling == "fixed":
            return ("rdp",)  # replace-one: dp_accounting's PLD has no replace-one Laplace
        return ("rdp", "pld")

    def supported_accountants(self, event: RoundEvent) -> tuple[str, ...]:
        return self._accountants_for(event.sampling)

    def describe_record(self, event: RoundEvent) -> str:
        relation = "replace-one" if self.relation(event) == REPLACE_ONE else "add/remove-one"
        return f"the Laplace mechanism with {event.sampling} sampling ({relation})"

    def expected_noise_std(self, event: RoundEvent) -> float | None:
        if event.clip_norm is None:
            return None
        return STD_PER_SCALE * event.noise_multiplier * event.clip_norm

    def noise_std_formula(self, event: RoundEvent) -> str:
        return "sqrt(2) * noise_multiplier * clip_norm"

    def audit_noise(self, event: RoundEvent, record: Mapping[str, Any]):
        clip = record.get("clip_norm")
        if clip is None:
            return None, "", []
        z = event.noise_multiplier
        return (
            STD_PER_SCALE * z * clip,
            f"sqrt(2) x noise_multiplier {z:.6g} x clip_norm {clip:.6g}",
            [],
        )

    def audit(self, run: Any, events: Any) -> list[str]:
        other = sorted({ev.mechanism for ev in events} - {"laplace"})
        return (
            [f"privacy={self.name} adds Laplace noise; the ledger records {other}"] if other else []
        )

    def sensitivity(
        self, relation: dp_accounting.NeighboringRelation, clip_norm: float = 1.0
    ) -> float:
        """L1 sensitivity of the sum: C (add/remove one client), 2C (replace one)."""
        if relation == ADD_OR_REMOVE_ONE:
            return clip_norm
        if relation == REPLACE_ONE:
            return 2.0 * clip_norm
        raise ValueError(f"relation must be a dp_accounting.NeighboringRelation, got {relation!r}")


MECHANISM = register(LaplaceDpFedAvg())
