"""Privacy accounting: ledger records, accountant backends, calibration.

A training run appends one :class:`RoundEvent` per round to ``ledger.jsonl``; epsilon is a
pure function of that ledger, computed on the host in float64 by maintained accountants
(dp_accounting RDP and PLD, opacus RDP and PRV).

>>> from fedpriv.accounting import calibrate_noise, epsilon, poisson_events
>>> z = calibrate_noise(2.0, 1e-5, rounds=1000, sampling_rate=0.01)
>>> epsilon(poisson_events(0.01, z, 1000), 1e-5, "rdp") <= 2.0
True
"""

import logging as _logging


class _DroppedOrderFilter(_logging.Filter):
    """Drops dp_accounting's notices that an RDP order was excluded for lack of convergence.

    Excluding an order only makes the RDP bound more conservative; the notice is printed once
    per order and evaluation, which floods the terminal during calibration.
    """

    def filter(self, record: _logging.LogRecord) -> bool:
        return "failed to converge" not in record.getMessage()


_logging.getLogger("absl").addFilter(_DroppedOrderFilter())

from fedpriv.accounting._checks import ACCOUNTANTS  # noqa: E402
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
