"""Audits of a run's privacy claim, from its run directory alone.

``fedpriv-audit RUN_DIR`` recomputes epsilon from the run's ledger with independent
accountants (:func:`accounting_audit`), checks that what ran matches what was accounted
(:func:`consistency_audit`), replays the last round with an independent reference and tests
the released noise (:func:`check_noise_replay`) and, for runs with canaries, compares an
empirical lower bound with the analytical epsilon and states what the canaries can refute
(:func:`refutable_epsilon`, :func:`canaries_needed`). :func:`audit_run` does all of it and
returns an :class:`AuditReport`.

>>> from fedpriv.audit import analytic_gaussian_epsilon
>>> round(analytic_gaussian_epsilon(2.0, 1e-5), 3)
1.993
"""

from fedpriv.audit._files import RunFiles, read_run
from fedpriv.audit.accounting import (
    ACCOUNTANTS,
    AccountantRow,
    AccountingAudit,
    accounting_audit,
    analytic_gaussian_epsilon,
    group_rounds,
    recompute,
)
from fedpriv.audit.consistency import Check, consistency_audit
from fedpriv.audit.empirical import canaries_needed, empirical_audit, refutable_epsilon
from fedpriv.audit.replay import check_noise_replay, residual_tests
from fedpriv.audit.verdict import AuditReport, audit_run

__all__ = [
    "ACCOUNTANTS",
    "AccountantRow",
    "AccountingAudit",
    "AuditReport",
    "Check",
    "RunFiles",
    "accounting_audit",
    "analytic_gaussian_epsilon",
    "audit_run",
    "canaries_needed",
    "check_noise_replay",
    "consistency_audit",
    "empirical_audit",
    "group_rounds",
    "read_run",
    "recompute",
    "refutable_epsilon",
    "residual_tests",
]
