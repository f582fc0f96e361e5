"""Epsilon of a ledger under maintained accountants, in one call or round by round.

Backends (DESIGN.md section 4, rule 7: host-side, float64, outside jit):

* ``"rdp"``: dp_accounting's ``RdpAccountant`` (Mironov 2017; Mironov, Talwar, Zhang 2019;
  Wang, Balle, Kasiviswanathan 2019 for sampling without replacement), RDP-to-DP conversion
  of Canonne, Kamath, Steinke 2020, Proposition 12.
* ``"pld"``: dp_accounting's ``PLDAccountant`` (privacy loss distributions, Meiser and
  Mohammadi 2018; Koskela et al. 2020; Doroshenko et al., "Connect the Dots", PETS 2022),
  pessimistic discretisation with interval ``1e-4``.
* ``"prv"``: opacus's ``PRVAccountant`` (Gopi, Lee, Wutschitz, "Numerical Composition of
  Differential Privacy", NeurIPS 2021), its upper bound with ``eps_error=0.01``.
* ``"opacus_rdp"``: opacus's ``RDPAccountant`` (Mironov, Talwar, Zhang 2019), conversion of
  Balle et al. 2020, Theorem 21.

The ledger is mapped to the libraries' own inputs (dp_accounting events; opacus histories of
``(noise_multiplier, sample_rate, steps)``) and their numbers are returned unchanged.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import dp_accounting
import numpy as np
from dp_accounting.pld import pld_privacy_accountant, privacy_loss_distribution
from dp_accounting.rdp import rdp_privacy_accountant

from fedpriv._logs import quiet_rdp_orders
from fedpriv.accounting import _checks, _rdp
from fedpriv.accounting._checks import ACCOUNTANTS
from fedpriv.accounting.delta import warn_if_delta_too_large
from fedpriv.accounting.events import (
    REPLACE_ONE,
    EventLike,
    RoundEvent,
    as_events,
    check_homogeneous,
    group_events,
    groups_to_dp_event,
)
from fedpriv.errors import ConfigError

#: Accountants that analyse sampling without replacement (replace-one adjacency).
REPLACE_ONE_ACCOUNTANTS: tuple[str, ...] = ("rdp",)
#: Accountants that analyse distributed DP (Skellam, distributed discrete Gaussian) through
#: fedpriv's own RDP bounds (:mod:`fedpriv.accounting.distributed`).
DISTRIBUTED_ACCOUNTANTS: tuple[str, ...] = ("rdp",)


def supported_accountants(events: Iterable[EventLike]) -> list[str]:
    """Names of the accountants that can analyse a ledger, in :data:`ACCOUNTANTS` order.

    Fixed-size cohorts (sampling without replacement, replace-one adjacency) are analysed
    only by ``"rdp"``; every other ledger by all four.

    Raises:
        ConfigError: if the ledger is invalid.
    """
    evs = as_events(events)
    if any(ev.is_distributed for ev in evs):
        return list(DISTRIBUTED_ACCOUNTANTS)
    if evs and evs[0].neighboring_relation == REPLACE_ONE:
        return list(REPLACE_ONE_ACCOUNTANTS)
    # Each round's mechanism names the accountants that analyse it.
    return [name for name in ACCOUNTANTS if all(name in ev.accountants() for ev in evs)]


def _check_support(accountant: str, relation: str, event: RoundEvent | None = None) -> None:
    if event is not None and event.is_distributed and accountant not in DISTRIBUTED_ACCOUNTANTS:
        raise event.unsupported(repr(accountant))
    if relation == REPLACE_ONE and accountant not in REPLACE_ONE_ACCOUNTANTS:
        raise ConfigError(
            "accountant",
            f"{accountant!r} does not support fixed-size cohorts sampled without replacement "
            "(replace-one adjacency); accountants that do: " + ", ".join(REPLACE_ONE_ACCOUNTANTS),
        )
    if event is not None and accountant not in event.accountants():
        raise event.unsupported(repr(accountant))


def _opacus_history(groups: Sequence[tuple[RoundEvent, int]]) -> list[tuple[float, float, int]]:
    history = []
    for ev, count in groups:
        z, q, steps = ev.opacus_steps()
        if steps:  # a round that releases nothing new (steps 0) adds no history
            history.append((z, q, steps * count))
    return history


def _epsilon_of_groups(
    groups: Sequence[tuple[RoundEvent, int]], delta: float, accountant: str
) -> float:
    """Epsilon of validated, homogeneous, grouped rounds."""
    if not groups:
        return 0.0
    for ev, _ in groups:
        _check_support(accountant, ev.neighboring_relation, ev)
    if any(ev.noise_multiplier == 0.0 for ev, _ in groups):
        return math.inf  # no noise: no finite guarantee (every library agrees or fails)
    if any(ev.is_distributed for ev, _ in groups):
        # Distributed DP: RDP vectors of fedpriv's own bounds (and dp_accounting's, for any
        # Gaussian rounds in the same ledger) added over rounds, converted as dp_accounting does.
        total = sum(count * _rdp.round_rdp(ev, accountant) for ev, count in groups)
        return _rdp.to_epsilon(accountant, total, delta)
    if accountant == "rdp":
        relation = (
            dp_accounting.NeighboringRelation.REPLACE_ONE
            if groups[0][0].neighboring_relation == REPLACE_ONE
            else dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
        )
        acc = rdp_privacy_accountant.RdpAccountant(neighboring_relation=relation)
        with quiet_rdp_orders():
            acc.compose(groups_to_dp_event(groups))
        return float(acc.get_epsilon(delta))
    if accountant == "pld":
        acc = pld_privacy_accountant.PLDAccountant()
        acc.compose(groups_to_dp_event(groups))
        return float(acc.get_epsilon(delta))
    return _opacus_epsilon(groups, delta, accountant)


_PLD_INTERVAL = 1e-4  # PLDAccountant's default value_discretization_interval
_NO_OP = object()  # a group of rounds with nothing to compose


def _group_pld(ev: RoundEvent, count: int, cache: dict[tuple[Any, ...], Any]) -> Any | None:
    """dp_accounting's PLD of ``count`` rounds like ``ev``, built as its ``PLDAccountant`` does.

    The arguments are those ``PLDAccountant`` (default discretisation, add/remove relation)
    passes for a Poisson-sampled Gaussian round, whose one-round PLD is built once per
    accounting key and self-composed ``count`` times, and for a Gaussian round, whose
    standard deviation it divides by ``sqrt(count)``. :data:`_NO_OP` for a round that releases
    nothing (the accountant composes nothing for it); ``None`` for any other event.
    """
    event = ev.dp_event()
    relation = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
    if isinstance(event, dp_accounting.NoOpDpEvent):
        return _NO_OP
    if isinstance(event, dp_accounting.GaussianDpEvent) and event.noise_multiplier > 0:
        return privacy_loss_distribution.from_gaussian_mechanism(
            standard_deviation=event.noise_multiplier / math.sqrt(count),
            value_discretization_interval=_PLD_INTERVAL,
            neighboring_relation=relation,
        )
    if (
        isinstance(event, dp_accounting.PoissonSampledDpEvent)
        and isinstance(event.event, dp_accounting.GaussianDpEvent)
        and event.event.noise_multiplier > 0
        and event.sampling_probability > 0
    ):
        key = ev.accounting_key()
        one = cache.get(key)
        if one is None:
            one = privacy_loss_distribution.from_gaussian_mechanism(
                standard_deviation=event.event.noise_multiplier,
                value_discretization_interval=_PLD_INTERVAL,
                sampling_prob=event.sampling_probability,
                neighboring_relation=relation,
            )
            cache[key] = one
        return one.self_compose(count)
    return None


def _opacus_epsilon(
    groups: Sequence[tuple[RoundEvent, int]], delta: float, accountant: str
) -> float:
    """Epsilon of grouped rounds from opacus's ``"opacus_rdp"`` or ``"prv"`` accountant."""
    history = _opacus_history(groups)
    # opacus imports torch (seconds); only its two backends need it.
    if accountant == "opacus_rdp":
        from opacus.accountants import RDPAccountant

        acc = RDPAccountant()
        acc.history = history
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Optimal order is the")
            return float(acc.get_epsilon(delta))
    from opacus.accountants import PRVAccountant

    acc = PRVAccountant()
    acc.history = history
    try:
        # PRV sizes its domain with opacus's RDP accountant, which may warn about its orders.
        with (
            np.errstate(divide="ignore", invalid="ignore", over="ignore"),
            warnings.catch_warnings(),
        ):
            warnings.filterwarnings("ignore", message="Optimal order is the")
            return float(acc.get_epsilon(delta))
    except (ValueError, RuntimeError) as err:
        raise ConfigError(
            "accountant", f"'prv' cannot analyse this plan at delta={delta!r}: {err}"
        ) from None


def _population(events: Sequence[RoundEvent]) -> int | None:
    pops = [ev.population for ev in events if ev.population is not None]
    return max(pops) if pops else None


def epsilon(events: Iterable[EventLike], delta: float, accountant: str = "pld") -> float:
    """Epsilon spent by a ledger at ``delta``.

    Args:
        events: Ledger records (dicts as in ``ledger.jsonl``) or :class:`RoundEvent`.
        delta: Target delta in (0, 1).
        accountant: One of ``"rdp"``, ``"pld"``, ``"prv"``, ``"opacus_rdp"``.

    Returns:
        Epsilon as a float (0 for an empty ledger; ``inf`` if a round had no noise).

    Raises:
        ConfigError: bad delta, unknown accountant, invalid ledger, or an accountant that
            does not support the ledger's sampling.

    Warns:
        DeltaWarning: if ``delta >= 1 / population`` for the population in the ledger.

    Privacy:
        An (epsilon, delta)-DP guarantee for the ledger's unit of privacy and neighbouring
        relation (see :meth:`RoundEvent.dp_event`): add/remove one client (Poisson or full
        participation), replace one client (fixed cohorts), or add/remove one example.

    Example:
        >>> from fedpriv.accounting import epsilon, poisson_events
        >>> round(epsilon(poisson_events(0.01, 1.1, 1000), 1e-5, "rdp"), 3)
        1.712
    """
    delta = _checks.delta(delta)
    accountant = _checks.accountant(accountant)
    evs = as_events(events)
    warn_if_delta_too_large(delta, _population(evs))
    return _epsilon_of_groups(group_events(evs), delta, accountant)


class EpsilonTracker:
    """Epsilon spent so far, updated one ledger record at a time during training.

    For ``"rdp"`` and ``"opacus_rdp"`` the tracker keeps the running RDP vector over the
    library's orders and a cache of per-round RDP vectors keyed by the round's accounting
    parameters, so a round like an earlier one costs one vector addition and one vectorised
    conversion (microseconds). Its values equal :func:`epsilon` of the ledger so far up to
    floating-point summation order. For ``"pld"`` it caches each accounting key's one-round
    privacy loss distribution and the composition of the finished groups, so a round costs
    one self-composition (tens of milliseconds) and gives the same value as :func:`epsilon`.
    For ``"prv"`` each :meth:`add` recomputes :func:`epsilon` on the grouped ledger so far
    (a fraction of a second per call).

    Args:
        delta: Target delta in (0, 1).
        accountant: One of :data:`ACCOUNTANTS`.

    Privacy:
        As :func:`epsilon` of the records added so far.

    Example:
        >>> from fedpriv.accounting import EpsilonTracker, poisson_events
        >>> tracker = EpsilonTracker(1e-5)
        >>> eps = [tracker.add(r) for r in poisson_events(0.01, 1.1, 1000)]
        >>> round(eps[-1], 3)
        1.712
    """

    def __init__(self, delta: float, accountant: str = "rdp"):
        self.delta = _checks.delta(delta)
        self.accountant = _checks.accountant(accountant)
        self._events: list[RoundEvent] = []
        self._groups: list[tuple[RoundEvent, int]] = []
        self._last_key: tuple[Any, ...] | None = None
        self._cache: dict[tuple[Any, ...], np.ndarray] = {}
        self._pld_cache: dict[tuple[Any, ...], Any] = {}
        self._pld_done: list[Any] = []
        self._rdp: np.ndarray | None = None
        self._infinite = False
        self._warned = False
        self._epsilon = 0.0

    @property
    def epsilon(self) -> float:
        """Epsilon after the records added so far."""
        return self._epsilon

    @property
    def rounds(self) -> int:
        """Number of records added."""
        return len(self._events)

    @property
    def events(self) -> list[RoundEvent]:
        """The records added so far."""
        return list(self._events)

    def add(self, record: EventLike) -> float:
        """Adds one round's record and returns epsilon spent so far.

        Raises:
            ConfigError: naming ``ledger[t].<field>`` for an invalid record, or if the record
                changes the unit of privacy or the neighbouring relation, or is not
                supported by this tracker's accountant.
        """
        t = len(self._events)
        if isinstance(record, RoundEvent):
            ev = record
        else:
            try:
                ev = RoundEvent.from_dict(record)
            except ConfigError as err:
                raise ConfigError(f"ledger[{t}].{err.field}", err.message) from None
        if self._events:
            check_homogeneous([self._events[0], ev])
        _check_support(self.accountant, ev.neighboring_relation, ev)
        if not self._warned and ev.population is not None:
            self._warned = warn_if_delta_too_large(self.delta, ev.population)
        self._events.append(ev)
        key = ev.accounting_key()
        if self._groups and key == self._last_key:
            self._groups[-1] = (self._groups[-1][0], self._groups[-1][1] + 1)
        else:
            self._groups.append((ev, 1))
            self._last_key = key
        if ev.noise_multiplier == 0.0:
            self._infinite = True
        if self._infinite:
            self._epsilon = math.inf
        elif self.accountant in ("rdp", "opacus_rdp"):
            vec = self._cache.get(key)
            if vec is None:
                vec = _rdp.round_rdp(ev, self.accountant)
                self._cache[key] = vec
            self._rdp = vec.copy() if self._rdp is None else self._rdp + vec
            self._epsilon = _rdp.to_epsilon(self.accountant, self._rdp, self.delta)
        elif self.accountant == "pld" and not any(g.is_distributed for g, _ in self._groups):
            self._epsilon = self._pld_epsilon()
        else:
            self._epsilon = _epsilon_of_groups(self._groups, self.delta, self.accountant)
        return self._epsilon

    def _pld_epsilon(self) -> float:
        """PLD epsilon of the groups so far, composed in order from cached parts.

        Finished groups keep their composed PLD; the last group's is rebuilt from the cached
        one-round PLD, so a round costs one self-composition and one composition instead of
        a new discretisation (the same numbers as :func:`epsilon`, composed the same way).
        """
        if not self._pld_done:
            # The accountant's starting point, the identity PLD at its discretisation.
            self._pld_done.append(pld_privacy_accountant.PLDAccountant()._pld)  # noqa: SLF001
        while len(self._pld_done) < len(self._groups):
            ev, count = self._groups[len(self._pld_done) - 1]
            part = _group_pld(ev, count, self._pld_cache)
            if part is None:
                return _epsilon_of_groups(self._groups, self.delta, self.accountant)
            done = self._pld_done[-1]
            self._pld_done.append(done if part is _NO_OP else done.compose(part))
        ev, count = self._groups[-1]
        part = _group_pld(ev, count, self._pld_cache)
        if part is None:
            return _epsilon_of_groups(self._groups, self.delta, self.accountant)
        total = self._pld_done[-1] if part is _NO_OP else self._pld_done[-1].compose(part)
        return float(total.get_epsilon_for_delta(self.delta))

    def extend(self, records: Iterable[EventLike]) -> float:
        """Adds several records; returns epsilon after the last."""
        for rec in records:
            self.add(rec)
        return self._epsilon

    def state_dict(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot (the records), for checkpoints."""
        return {
            "delta": self.delta,
            "accountant": self.accountant,
            "events": [ev.to_dict() for ev in self._events],
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> EpsilonTracker:
        """Rebuilds a tracker from :meth:`state_dict` by replaying its records."""
        tracker = cls(state["delta"], state.get("accountant", "rdp"))
        tracker.extend(state.get("events", []))
        return tracker
