"""Privacy accounting: ledger records, accountant backends, calibration.

A training run appends one :class:`RoundEvent` per round to ``ledger.jsonl``; epsilon is a
pure function of that ledger, computed on the host in float64 by maintained accountants
(dp_accounting RDP and PLD, opacus RDP and PRV).

>>> from fedpriv.accounting import calibrate_noise, epsilon, poisson_events
>>> z = calibrate_noise(2.0, 1e-5, rounds=1000, sampling_rate=0.01)
>>> epsilon(poisson_events(0.01, z, 1000), 1e-5, "rdp") <= 2.0
True
"""

from fedpriv.accounting._checks import ACCOUNTANTS
from fedpriv.accounting.accountants import (
    REPLACE_ONE_ACCOUNTANTS,
    EpsilonTracker,
    epsilon,
    supported_accountants,
)
from fedpriv.accounting.calibration import DEFAULT_MAX_NOISE, calibrate_noise
from fedpriv.accounting.delta import DeltaWarning, default_delta, warn_if_delta_too_large
from fedpriv.accounting.events import (
    LEDGER_FORMAT,
    RoundEvent,
    as_events,
    example_dp_events,
    fixed_cohort_events,
    full_participation_events,
    group_events,
    neighboring_relation,
    plan_events,
    poisson_events,
    to_dp_event,
)

__all__ = [
    "ACCOUNTANTS",
    "DEFAULT_MAX_NOISE",
    "LEDGER_FORMAT",
    "REPLACE_ONE_ACCOUNTANTS",
    "DeltaWarning",
    "EpsilonTracker",
    "RoundEvent",
    "as_events",
    "calibrate_noise",
    "default_delta",
    "epsilon",
    "example_dp_events",
    "fixed_cohort_events",
    "full_participation_events",
    "group_events",
    "neighboring_relation",
    "plan_events",
    "poisson_events",
    "supported_accountants",
    "to_dp_event",
    "warn_if_delta_too_large",
]
