"""The privacy plan: the one way to build a differentially private round.

:func:`build_plan` looks the ``privacy`` config's mechanism up in the registry
(:mod:`fedpriv.privacy.mechanisms`), lets it build the :class:`PrivacyPlan` from the sampler
that will run, and adds secure aggregation when the ``secagg`` group asks for it. The plan
bundles the unit of privacy, the sampling, clipping and noise, builds the aggregator and the
client update, and writes the round's DP event; because the same object builds the mechanism
and describes it, the ledger cannot drift from what ran.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedpriv import accounting
from fedpriv.accounting import distributed as distributed_accounting
from fedpriv.conf import with_preset
from fedpriv.privacy import mechanisms
from fedpriv.privacy.mechanisms.base import AccountingTools, PrivacyPlan, resolve_delta
from fedpriv.privacy.secagg.plan import build_secure_plan
from fedpriv.settings import LocalTraining, SecureAggregation

__all__ = ["PrivacyPlan", "build_plan", "mechanism_names", "resolve_delta"]


def mechanism_names() -> list[str]:
    """The names ``privacy.name`` may take (the registry's)."""
    return mechanisms.names()


def build_plan(
    privacy: Mapping[str, Any],
    sampler: Any,
    client: LocalTraining | None = None,
    rounds: int = 1,
    secagg: SecureAggregation | None = None,
    num_params: int | None = None,
) -> PrivacyPlan:
    """Builds the plan from the ``privacy`` block and the sampler that will run.

    With ``privacy.target_epsilon`` set, the noise multiplier is calibrated (one-sided) with
    ``privacy.accountant`` for the planned rounds before training starts. ``client`` is the
    clients' local training (None: the ``client`` preset's). ``secagg`` (the ``secagg``
    group) and ``num_params`` (the model size) resolve secure aggregation
    (:func:`fedpriv.privacy.secagg.plan.build_secure_plan`); a mechanism that builds its own
    secure aggregation (``distributed_dp``) receives them.

    The ``privacy`` block is the one the mechanism its ``name`` names reads: each mechanism
    has its own fields (:mod:`fedpriv.privacy.mechanisms`).

    Keys the ``privacy`` block leaves out take the values of the preset its ``name`` names;
    a ``noise_multiplier`` given without ``target_epsilon`` is the fixed noise (the preset's
    target is cleared).

    Raises:
        ConfigError: a bad privacy setting, or one that cannot work with this population.

    Privacy:
        The plan's guarantee is its mechanism's (see each module of
        :mod:`fedpriv.privacy.mechanisms`); secure aggregation changes what the server sees,
        not the accounted guarantee.
    """
    # Keys left out take the preset's defaults (fedpriv/conf/privacy/<name>.yaml); a noise
    # multiplier given without a target replaces the preset's target, as on the command line.
    given = dict(privacy)
    if given.get("noise_multiplier") is not None and "target_epsilon" not in given:
        given["target_epsilon"] = None
    privacy = with_preset("privacy", given)
    mechanism = mechanisms.get(privacy.get("name", "none"))
    tools = AccountingTools(
        accounting.epsilon, accounting.calibrate_noise, distributed_accounting.calibrate
    )
    client = LocalTraining.from_block(client.values() if client is not None else {})
    secagg = SecureAggregation.from_block(secagg.values() if secagg is not None else {})
    plan = mechanism.build(privacy, sampler, client, rounds, secagg, num_params, tools=tools)
    if mechanism.owns_secagg:
        return plan
    if secagg.enabled:
        return build_secure_plan(plan, secagg, num_params)
    return plan
