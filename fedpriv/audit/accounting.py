"""Accounting audit: epsilon recomputed from a run's ledger, beside the epsilon the run reported.

The ledger (``ledger.jsonl``) is the run's own statement of what ran, one DP event per executed
round (DESIGN.md section 4, rule 4). This module maps it to each accountant library's input
itself, without :mod:`fedpriv.accounting.accountants`, so that a mistake in fedpriv's mapping,
grouping or bookkeeping shows up as a disagreement:

* ``rdp``: dp_accounting's ``RdpAccountant`` on ``dp_accounting`` events (Mironov 2017;
  Mironov, Talwar, Zhang 2019; Wang, Balle, Kasiviswanathan 2019 for sampling without
  replacement), conversion of Canonne, Kamath, Steinke 2020, Proposition 12.
* ``pld``: dp_accounting's ``PLDAccountant`` on the same events, pessimistic discretisation
  with interval :data:`PLD_DISCRETIZATION` (Doroshenko et al. 2022).
* ``prv``: opacus's ``PRVAccountant`` on a history of ``(noise_multiplier, sample_rate,
  steps)``, its upper bound with ``eps_error`` :data:`PRV_EPS_ERROR` (Gopi, Lee, Wutschitz
  2021).
* ``opacus_rdp``: opacus's ``RDPAccountant`` on the same history (conversion of Balle et al.
  2020, Theorem 21).

Each record is read through the mechanism that wrote it (the registry of
:mod:`fedpriv.privacy.mechanisms`): the mechanism names the record's neighbouring relation,
its grouping key, its ``dp_accounting`` event, its opacus history and the accountants that
analyse it, so a mechanism added in one module is audited without a mapping here. The
independent references stay independent: the maintained libraries compute every number, and
the closed form below checks them.

Consecutive rounds with the same accounting parameters are grouped into one self-composed
event, so a 1,000-round ledger costs each accountant one composition.

Where no library applies the audit says so instead of skipping: fixed-size cohorts (sampling
without replacement, replace-one adjacency) are analysed by dp_accounting's RDP accountant
only; distributed DP rounds (Skellam, distributed discrete Gaussian) by no library at all, so
their ``rdp`` value comes from fedpriv's own bounds (:mod:`fedpriv.accounting.distributed`)
and is marked as not independent.

Error bounds used to compare numbers (see :func:`reported_tolerance` and
:mod:`fedpriv.audit.consistency`):

* the same accountant on the same ledger: relative :data:`REPORTED_RTOL` (the run and the audit
  call the same library on the same events; they differ by floating-point summation order, as
  in the run's per-round RDP tracker, many orders of magnitude below this);
* PLD, which is pessimistic, is at least the exact epsilon and at most ``k h`` above it for
  ``k`` composed mechanisms discretised with interval ``h`` (each composition rounds every
  privacy loss up by less than ``h``);
* PRV's upper bound is at least the exact epsilon and at most ``2 eps_error`` above it (Gopi
  et al. 2021: the estimate is within ``eps_error`` of the exact value and the upper bound adds
  ``eps_error``);
* RDP conversions are upper bounds on the exact epsilon, so PLD and PRV must not exceed the
  smallest RDP value by more than their own error bound.

For ledgers of Gaussian rounds without sampling amplification (full participation, or rate 1)
the exact epsilon is known in closed form: ``T`` rounds with multipliers ``z_t`` compose into one
Gaussian mechanism with ``z = (sum_t z_t^-2)^-1/2`` (Dong, Roth, Su 2022, Corollary 3.3), whose
epsilon at ``delta`` is given by the analytic Gaussian mechanism (Balle and Wang 2018,
Theorem 8); :func:`analytic_gaussian_epsilon` computes it and the audit checks every accountant
against it.

References:
    Abadi et al., "Deep Learning with Differential Privacy", CCS 2016 (DP-SGD).
    Andrew et al., "Differentially Private Learning with Adaptive Clipping", NeurIPS 2021,
    Theorem 1.
    Mironov, "Renyi Differential Privacy", CSF 2017.
    Mironov, Talwar, Zhang, "Renyi Differential Privacy of the Sampled Gaussian Mechanism",
    arXiv:1908.10530, 2019.
    Wang, Balle, Kasiviswanathan, "Subsampled Renyi Differential Privacy and Analytical Moments
    Accountant", AISTATS 2019, Theorem 27.
    Canonne, Kamath, Steinke, "The Discrete Gaussian for Differential Privacy", NeurIPS 2020.
    Balle, Barthe, Gaboardi, Hsu, Sato, "Hypothesis Testing Interpretations and Renyi
    Differential Privacy", AISTATS 2020.
    Gopi, Lee, Wutschitz, "Numerical Composition of Differential Privacy", NeurIPS 2021.
    Doroshenko, Ghazi, Kamath, Kumar, Manurangsi, "Connect the Dots: Tighter Discrete
    Approximations of Privacy Loss Distributions", PETS 2022.
    Balle and Wang, "Improving the Gaussian Mechanism for Differential Privacy: Analytical
    Calibration and Optimal Denoising", ICML 2018, Theorem 8.
    Dong, Roth, Su, "Gaussian Differential Privacy", JRSS B 2022.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import warnings
from collections.abc import Sequence
from importlib import metadata
from typing import Any

import dp_accounting
import numpy as np
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant
from scipy import optimize, special

from fedpriv.accounting import default_delta, distributed
from fedpriv.accounting.events import REPLACE_ONE, RoundEvent
from fedpriv.audit._files import RunFiles, get
from fedpriv.errors import ConfigError
from fedpriv.privacy import mechanisms

#: Accountants the audit recomputes, in table order.
ACCOUNTANTS: tuple[str, ...] = ("rdp", "pld", "prv", "opacus_rdp")
#: The library behind each accountant name.
LIBRARIES: dict[str, str] = {
    "rdp": "dp_accounting RDP",
    "pld": "dp_accounting PLD",
    "prv": "opacus PRV",
    "opacus_rdp": "opacus RDP",
}
#: Interval of PLD's pessimistic discretisation (the value fedpriv's ``pld`` backend uses).
PLD_DISCRETIZATION = 1e-4
#: ``eps_error`` of opacus's PRV accountant (its default, the value fedpriv's ``prv`` uses).
PRV_EPS_ERROR = 0.01
#: Relative tolerance between the epsilon a run reported and the same accountant recomputed.
REPORTED_RTOL = 1e-3

RECOMPUTED = "recomputed"
NOT_INDEPENDENT = "fedpriv analysis"
NOT_SUPPORTED = "not supported"
FAILED = "error"


@dataclasses.dataclass(frozen=True)
class LedgerGroup:
    """A run of consecutive ledger rounds with the same accounting parameters.

    Attributes:
        event: The first round of the run.
        count: Number of rounds.
    """

    event: RoundEvent
    count: int

    @property
    def compositions(self) -> int:
        """Base mechanisms composed: rounds, times local DP-SGD steps for example-level DP."""
        return self.count * (self.event.steps if self.event.unit == "example" else 1)


def _parameters(ev: RoundEvent) -> tuple[Any, ...]:
    """What a round's privacy cost depends on (its mechanism's grouping key)."""
    return mechanisms.for_record(ev).accounting_key(ev)


def _relation(ev: RoundEvent) -> str:
    """The round's neighbouring relation, as its mechanism names it: replace-one for user- or
    gateway-level fixed cohorts (population public), else add/remove-one."""
    return mechanisms.for_record(ev).relation_name(ev)


def group_rounds(events: Sequence[RoundEvent]) -> list[LedgerGroup]:
    """Groups consecutive rounds with equal accounting parameters, in ledger order."""
    groups: list[LedgerGroup] = []
    last = None
    for ev in events:
        key = _parameters(ev)
        if groups and key == last:
            groups[-1] = LedgerGroup(groups[-1].event, groups[-1].count + 1)
        else:
            groups.append(LedgerGroup(ev, 1))
            last = key
    return groups


def _base_event(ev: RoundEvent):
    """The ``dp_accounting`` event of one round.

    Privacy:
        * user-level, Poisson rate ``q``: ``PoissonSampledDpEvent(q, GaussianDpEvent(z))``.
          The noised sum of updates clipped to ``C`` has add/remove-one-client sensitivity
          ``C`` and noise ``N(0, (zC)^2)``: the sampled Gaussian mechanism (Mironov, Talwar,
          Zhang 2019).
        * user-level, fixed cohorts of ``m`` of ``n``:
          ``SampledWithoutReplacementDpEvent(n, m, GaussianDpEvent(z / 2))`` under
          replace-one adjacency (Wang, Balle, Kasiviswanathan 2019, Theorem 27). Replacing one
          clipped update moves the sum by up to ``2C``; a Gaussian with std ``zC`` and
          sensitivity ``2C`` has the RDP ``alpha (2C)^2 / (2 (zC)^2)`` of a unit-sensitivity
          Gaussian with multiplier ``z / 2`` (Mironov 2017, Proposition 7).
        * user-level, full participation: ``GaussianDpEvent(z)``.
        * example-level: ``steps`` DP-SGD steps, each ``PoissonSampledDpEvent(q_ex,
          GaussianDpEvent(z))`` under add/remove-one-example adjacency (Abadi et al. 2016),
          without credit for client sampling.
        * adaptive clipping: ``z`` is the multiplier of the (update sum, clip count) pair,
          one Gaussian mechanism (Andrew et al. 2021, Theorem 1).
        * other mechanisms: as the module that defines them states
          (:meth:`fedpriv.privacy.mechanisms.Mechanism.dp_event`).
    """
    return mechanisms.for_record(ev).dp_event(ev)


def gaussian_floor(groups: Sequence[LedgerGroup], delta: float) -> float | None:
    """For a distributed-DP ledger: dp_accounting's RDP epsilon of the Gaussian mechanism with
    the same noise multiplier, sampling and adjacency in every round; None for other ledgers.

    Privacy:
        The distributed bounds are never below it: their sensitivity ``C s + sqrt(d)`` is at
        least ``C s``, each bound is at least the Gaussian's ``alpha Delta_2^2 / (2 mu)``, and
        the general sampling bound they use (Wang, Balle, Kasiviswanathan 2019, Theorem 9)
        is at least dp_accounting's Gaussian-only one (Theorem 27). A distributed epsilon
        below this floor is wrong, and the floor comes from a maintained library.
    """
    if not groups or not all(g.event.is_distributed for g in groups):
        return None
    replace_one = _relation(groups[0].event) == REPLACE_ONE
    events = []
    for g in groups:
        ev = g.event
        if ev.noise_multiplier == 0.0:
            return math.inf
        mech = mechanisms.for_record(ev)
        # The Gaussian's multiplier at unit sensitivity: z over the relation's sensitivity.
        base = dp_accounting.GaussianDpEvent(
            ev.noise_multiplier / mech.sensitivity(mech.relation(ev), 1.0)
        )
        if replace_one and ev.amplification == "sampling":
            base = dp_accounting.SampledWithoutReplacementDpEvent(
                ev.population, int(ev.cohort_size), base
            )
        events.append(dp_accounting.SelfComposedDpEvent(base, g.count))
    relation = (
        dp_accounting.NeighboringRelation.REPLACE_ONE
        if replace_one
        else dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
    )
    acc = rdp_privacy_accountant.RdpAccountant(neighboring_relation=relation)
    acc.compose(dp_accounting.ComposedDpEvent(events))
    return float(acc.get_epsilon(delta))


def _dp_event(groups: Sequence[LedgerGroup]):
    return dp_accounting.ComposedDpEvent(
        [dp_accounting.SelfComposedDpEvent(_base_event(g.event), g.count) for g in groups]
    )


def _opacus_history(groups: Sequence[LedgerGroup]) -> list[tuple[float, float, int]]:
    """opacus's ``(noise_multiplier, sample_rate, steps)`` per group (add/remove only)."""
    out = []
    for g in groups:
        z, q, steps = mechanisms.for_record(g.event).opacus_steps(g.event)
        out.append((z, q, steps * g.count))
    return out


def unsupported_reason(accountant: str, groups: Sequence[LedgerGroup]) -> str | None:
    """Why ``accountant`` cannot analyse the grouped ledger (None when it can)."""
    relations = {_relation(g.event) for g in groups}
    if len(relations) > 1 or len({g.event.unit for g in groups}) > 1:
        return (
            "the ledger mixes units of privacy or neighbouring relations; no accountant "
            "composes them into one guarantee"
        )
    distributed_rounds = [g.event.is_distributed for g in groups]
    if any(distributed_rounds) and not all(distributed_rounds):
        if accountant != "rdp":
            return mechanisms.for_record(
                next(g.event for g in groups if g.event.is_distributed)
            ).unsupported_reason(accountant, groups[0].event)
        return "the ledger mixes distributed-DP and Gaussian rounds"
    for g in groups:
        reason = mechanisms.for_record(g.event).unsupported_reason(accountant, g.event)
        if reason is not None:
            return reason
    return None


def recompute(groups: Sequence[LedgerGroup], delta: float, accountant: str) -> float:
    """Epsilon of the grouped ledger at ``delta`` with one accountant library.

    Args:
        groups: The ledger, grouped (:func:`group_rounds`).
        delta: Target delta in (0, 1).
        accountant: One of :data:`ACCOUNTANTS`.

    Returns:
        Epsilon (``inf`` when a round had no noise; 0 for an empty ledger).

    Raises:
        ConfigError: the accountant does not support the ledger (see
            :func:`unsupported_reason`).

    Privacy:
        An (epsilon, delta)-DP guarantee under the ledger's unit and neighbouring relation;
        see :func:`_base_event` for the event of each round.
    """
    reason = unsupported_reason(accountant, groups)
    if reason is not None:
        raise ConfigError("accountant", f"{accountant!r}: {reason}")
    if not groups:
        return 0.0
    if any(g.event.noise_multiplier == 0.0 for g in groups):
        return math.inf
    if groups[0].event.is_distributed:
        orders = np.asarray(rdp_privacy_accountant.DEFAULT_RDP_ORDERS, dtype=np.float64)
        total = sum(g.count * distributed.round_rdp(g.event, orders) for g in groups)
        eps, _ = rdp_privacy_accountant.compute_epsilon(orders, total, delta)
        return float(eps)
    if accountant in ("rdp", "pld"):
        if accountant == "rdp":
            first = groups[0].event
            relation = mechanisms.for_record(first).relation(first)
            acc = rdp_privacy_accountant.RdpAccountant(neighboring_relation=relation)
        else:
            acc = pld_privacy_accountant.PLDAccountant(
                value_discretization_interval=PLD_DISCRETIZATION
            )
        acc.compose(_dp_event(groups))
        return float(acc.get_epsilon(delta))
    from opacus.accountants import PRVAccountant, RDPAccountant

    acc = RDPAccountant() if accountant == "opacus_rdp" else PRVAccountant()
    acc.history = _opacus_history(groups)
    with (
        warnings.catch_warnings(),
        np.errstate(divide="ignore", invalid="ignore", over="ignore"),
    ):
        warnings.filterwarnings("ignore", message="Optimal order is the")
        if accountant == "opacus_rdp":
            return float(acc.get_epsilon(delta))
        return float(acc.get_epsilon(delta, eps_error=PRV_EPS_ERROR))


def analytic_gaussian_epsilon(noise_multiplier: float, delta: float) -> float:
    """Exact epsilon at ``delta`` of the Gaussian mechanism with sensitivity 1, std ``z``.

    The smallest ``eps >= 0`` with
    ``Phi(1/(2z) - eps z) - exp(eps) Phi(-1/(2z) - eps z) <= delta`` (Balle and Wang 2018,
    Theorem 8), found by bisection on the (decreasing) left-hand side.

    Args:
        noise_multiplier: ``z > 0``, the noise std over the sensitivity.
        delta: Target delta in (0, 1).

    Returns:
        Epsilon, a float (0 when the mechanism is ``(0, delta)``-DP).

    Privacy:
        Tight: no smaller epsilon holds at this delta (the condition is necessary and
        sufficient).
    """
    z = float(noise_multiplier)
    if z <= 0.0:
        return math.inf

    def excess(eps: float) -> float:
        a, b = 0.5 / z - eps * z, -0.5 / z - eps * z
        return float(special.ndtr(a) - math.exp(eps + special.log_ndtr(b)) - delta)

    if excess(0.0) <= 0.0:
        return 0.0
    hi = 1.0
    while excess(hi) > 0.0:
        hi *= 2.0
    return float(optimize.brentq(excess, 0.0, hi, xtol=1e-12, rtol=1e-12))


def unamplified_noise_multiplier(groups: Sequence[LedgerGroup]) -> float | None:
    """``(sum_t z_t^-2)^-1/2`` when every round is a Gaussian mechanism without sampling
    amplification under add/remove adjacency (full participation or rate 1), else None.

    Privacy:
        Such a ledger composes exactly into one Gaussian mechanism with this multiplier
        (Dong, Roth, Su 2022, Corollary 3.3: ``mu``-GDP composes as
        ``sqrt(sum_t mu_t^2)`` with ``mu_t = 1 / z_t``).
    """
    if not groups:
        return None
    total = 0.0
    for g in groups:
        z = mechanisms.for_record(g.event).unamplified_gaussian_multiplier(g.event)
        if z is None:
            return None
        if z == 0.0:
            return 0.0
        total += g.compositions * z**-2
    return total**-0.5


def run_delta(run: RunFiles) -> tuple[float | None, str]:
    """The delta of the run's claim and where it comes from.

    ``summary.json``'s ``delta``; without a summary, ``privacy.delta`` of the configuration;
    without either, fedpriv's default for the ledger's population (as the run resolved it).
    """
    if run.summary_get("delta") is not None:
        return float(run.summary["delta"]), "summary.json"
    cfg_delta = run.config_get("privacy.delta")
    if isinstance(cfg_delta, (int, float)) and not isinstance(cfg_delta, bool):
        if 0.0 < cfg_delta < 1.0:
            return float(cfg_delta), ".hydra/config.yaml privacy.delta"
    pops = [ev.population for ev in run.events if ev.population is not None]
    if pops:
        return default_delta(max(pops)), f"default for population {max(pops)} (no summary.json)"
    return None, "unknown (no summary.json, no privacy.delta, no population in the ledger)"


@dataclasses.dataclass(frozen=True)
class AccountantRow:
    """One accountant's recomputed and reported epsilon.

    Attributes:
        accountant: ``rdp``, ``pld``, ``prv`` or ``opacus_rdp`` (or a name the run reported
            that the audit does not know).
        library: The library that computed ``recomputed``.
        status: ``recomputed``; ``fedpriv analysis`` (distributed DP: recomputed with
            fedpriv's own bound, not independently); ``not supported``; ``error``.
        recomputed: The audit's epsilon (None when not computed; ``inf`` for no guarantee).
        reported: The run's epsilon in ``summary.json`` (None when not reported).
        tolerance: Allowed ``|recomputed - reported|`` (None when there is nothing to compare).
        agrees: Whether they agree within ``tolerance`` (None when there is nothing to compare).
        note: Why a value is missing, or what it rests on.
    """

    accountant: str
    library: str
    status: str
    recomputed: float | None = None
    reported: float | None = None
    tolerance: float | None = None
    agrees: bool | None = None
    note: str = ""

    @property
    def difference(self) -> float | None:
        """``recomputed - reported`` (None when either is missing)."""
        if self.recomputed is None or self.reported is None:
            return None
        if math.isinf(self.recomputed) and math.isinf(self.reported):
            return 0.0
        return self.recomputed - self.reported

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["difference"] = self.difference
        return {k: _json_number(v) for k, v in out.items()}


def _json_number(value: Any) -> Any:
    """``inf`` as the string ``"inf"`` (JSON has no infinity)."""
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def reported_tolerance(value: float) -> float:
    """Allowed difference between a reported and a recomputed epsilon of one accountant."""
    return REPORTED_RTOL * abs(value) + 1e-9 if math.isfinite(value) else 0.0


def _agree(a: float, b: float, tolerance: float) -> bool:
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= tolerance


@dataclasses.dataclass(frozen=True)
class AccountingAudit:
    """The accounting audit of one run.

    Attributes:
        delta: The delta of the run's claim (None when it cannot be found).
        delta_source: Where ``delta`` comes from.
        records: Ledger records accounted (replayed rounds included).
        groups: Groups of identical consecutive rounds composed.
        compositions: Base mechanisms composed (rounds, times DP-SGD steps).
        unit: ``user`` or ``example`` (None for an empty ledger).
        relation: The neighbouring relation (``add/remove-one`` or ``replace-one``).
        mechanisms: Noise mechanisms in the ledger.
        rows: One :class:`AccountantRow` per accountant.
        exact: The closed-form epsilon (Balle and Wang 2018) for unamplified Gaussian ledgers,
            else None.
        exact_noise_multiplier: The composed ``z`` behind ``exact``.
        accountant: The accountant the run reported as its own (``summary.json``), if any.
        notes: Remarks on the recomputation (library versions, non-independent values).
        seconds: Time the recomputation took.
        gaussian_floor: Distributed-DP ledgers: :func:`gaussian_floor`, an independent lower
            bound on their epsilon; else None.
    """

    delta: float | None
    delta_source: str
    records: int
    groups: int
    compositions: int
    unit: str | None
    relation: str | None
    mechanisms: tuple[str, ...]
    rows: tuple[AccountantRow, ...]
    exact: float | None
    exact_noise_multiplier: float | None
    accountant: str | None
    notes: tuple[str, ...]
    seconds: float
    gaussian_floor: float | None = None

    def row(self, accountant: str) -> AccountantRow | None:
        """The row of ``accountant`` (None when absent)."""
        for r in self.rows:
            if r.accountant == accountant:
                return r
        return None

    def recomputed(self) -> dict[str, float]:
        """``{accountant: epsilon}`` of the accountants that recomputed a value."""
        return {r.accountant: r.recomputed for r in self.rows if r.recomputed is not None}

    @property
    def claimed_epsilon(self) -> float | None:
        """The epsilon the run claims: its own accountant's reported value, else recomputed."""
        if self.accountant is None:
            return None
        row = self.row(self.accountant)
        if row is None:
            return None
        return row.reported if row.reported is not None else row.recomputed

    def to_dict(self) -> dict[str, Any]:
        out = {
            k: getattr(self, k)
            for k in (
                "delta",
                "delta_source",
                "records",
                "groups",
                "compositions",
                "unit",
                "relation",
                "exact",
                "exact_noise_multiplier",
                "accountant",
                "seconds",
                "gaussian_floor",
            )
        }
        out["claimed_epsilon"] = self.claimed_epsilon
        out["mechanisms"] = list(self.mechanisms)
        out["notes"] = list(self.notes)
        out["accountants"] = [r.to_dict() for r in self.rows]
        return {k: _json_number(v) for k, v in out.items()}


def _reported(run: RunFiles) -> dict[str, float]:
    eps = run.summary_get("epsilon") or {}
    return {k: (math.inf if v is None else float(v)) for k, v in eps.items()}


def _version_notes(run: RunFiles) -> list[str]:
    notes = []
    for name in ("dp-accounting", "opacus"):
        ran = get(run.summary, f"versions.{name}")
        try:
            here = metadata.version(name)
        except metadata.PackageNotFoundError:
            here = "not installed"
        if ran is not None and ran != here:
            notes.append(
                f"the run used {name} {ran}, this audit {here}; reported and recomputed values "
                "may differ by the libraries' changes"
            )
    return notes


def accounting_audit(run: RunFiles, delta: float | None = None) -> AccountingAudit:
    """Recomputes the run's epsilon from its ledger with every accountant that supports it.

    Args:
        run: The run's files (:func:`fedpriv.audit.read_run`).
        delta: The delta to account at (default: the run's own, :func:`run_delta`).

    Returns:
        The recomputed values beside the reported ones.

    Privacy:
        Each recomputed value is an (epsilon, delta)-DP guarantee of the ledger under its unit
        and neighbouring relation (see :func:`_base_event`); values marked ``fedpriv
        analysis`` rest on fedpriv's own distributed-DP bounds.
    """
    start = time.perf_counter()
    source = "given"
    if delta is None:
        delta, source = run_delta(run)
    groups = group_rounds(run.events)
    reported = _reported(run)
    notes = _version_notes(run)
    rows = []
    # dp_accounting logs, through absl, each RDP order it drops for lack of convergence
    # (dropping an order only loosens the bound); those records alone are dropped, by a filter
    # attached for this loop only, so the process's logging configuration is left alone.
    absl = logging.getLogger("absl")

    def keep(record: logging.LogRecord) -> bool:
        return "failed to converge" not in record.getMessage()

    absl.addFilter(keep)
    try:
        for name in ACCOUNTANTS:
            rows.append(_row(name, groups, delta, reported.get(name)))
    finally:
        absl.removeFilter(keep)
    for name, value in reported.items():
        if name not in ACCOUNTANTS:
            rows.append(
                AccountantRow(
                    name, "unknown", NOT_SUPPORTED, reported=value, note="unknown accountant"
                )
            )
    if any(r.status == NOT_INDEPENDENT for r in rows):
        notes.append(
            "distributed DP: no library analyses the Skellam or distributed discrete Gaussian "
            "mechanism, so rdp is recomputed with fedpriv's own bounds "
            "(fedpriv.accounting.distributed), not independently"
        )
    z = unamplified_noise_multiplier(groups)
    exact = None
    if z is not None and delta is not None:
        exact = math.inf if z == 0.0 else analytic_gaussian_epsilon(z, delta)
    events = run.events
    accountant = run.summary_get("accountant") or run.config_get("privacy.accountant")
    return AccountingAudit(
        delta=delta,
        delta_source=source,
        records=len(events),
        groups=len(groups),
        compositions=sum(g.compositions for g in groups),
        unit=events[0].unit if events else None,
        relation=_relation(events[0]) if events else None,
        mechanisms=tuple(sorted({ev.mechanism for ev in events})),
        rows=tuple(rows),
        exact=exact,
        exact_noise_multiplier=z,
        accountant=accountant if isinstance(accountant, str) else None,
        notes=tuple(notes),
        seconds=time.perf_counter() - start,
        gaussian_floor=None if delta is None else gaussian_floor(groups, delta),
    )


def _row(
    name: str, groups: Sequence[LedgerGroup], delta: float | None, reported: float | None
) -> AccountantRow:
    library = LIBRARIES[name]
    reason = unsupported_reason(name, groups)
    if reason is not None:
        return AccountantRow(name, library, NOT_SUPPORTED, reported=reported, note=reason)
    if delta is None:
        return AccountantRow(
            name, library, FAILED, reported=reported, note="the run's delta is unknown"
        )
    status = RECOMPUTED
    if groups and groups[0].event.is_distributed:
        library, status = "fedpriv.accounting.distributed RDP", NOT_INDEPENDENT
    try:
        value = recompute(groups, delta, name)
    except Exception as err:  # noqa: BLE001 - a library failure is a finding, not a crash
        return AccountantRow(
            name, library, FAILED, reported=reported, note=f"{type(err).__name__}: {err}"
        )
    if reported is None:
        return AccountantRow(name, library, status, recomputed=value, note="not reported")
    tol = reported_tolerance(value)
    return AccountantRow(
        name,
        library,
        status,
        recomputed=value,
        reported=reported,
        tolerance=tol,
        agrees=_agree(value, reported, tol),
    )
