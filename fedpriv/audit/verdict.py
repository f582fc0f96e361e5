"""The whole audit of a run directory: accounting, consistency, empirical, and the verdict.

:func:`audit_run` reads the run's files (:func:`fedpriv.audit.read_run`), recomputes epsilon
(:mod:`fedpriv.audit.accounting`), runs the consistency checks
(:mod:`fedpriv.audit.consistency`) and, when the run inserted canaries, the empirical audit
(``fedpriv.audit.empirical``). The verdict is ``PASS`` when no check fails, ``FAIL``
otherwise, and ``NO DP`` for a run that claims no differential privacy.

Warnings come beside the verdict and never change the exit status: what the canaries could
not have refuted, an epsilon estimate above the claim (:mod:`fedpriv.audit.empirical`), and
what the run directory discloses beyond its epsilon (:mod:`fedpriv.audit.disclosure`: seeded
noise, diagnostics).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

from fedpriv.audit._files import RunFiles, read_run
from fedpriv.audit.accounting import AccountingAudit, accounting_audit
from fedpriv.audit.consistency import (
    FAIL,
    NA,
    Check,
    audited_epsilon,
    check_rounds,
    consistency_audit,
)
from fedpriv.audit.disclosure import disclosure_warnings
from fedpriv.audit.empirical import empirical_audit, empirical_warnings
from fedpriv.audit.replay import check_noise_replay

#: Format of ``audit.json``.
AUDIT_FORMAT = 1
PASSED, FAILED, NO_DP = "PASS", "FAIL", "NO DP"
#: Exit statuses of ``fedpriv-audit``: every check passed (or no DP claimed), a check failed.
EXIT_PASS, EXIT_FAIL = 0, 1


@dataclasses.dataclass(frozen=True)
class AuditReport:
    """Everything the audit found about one run.

    Attributes:
        run_dir: The run directory.
        dp_claimed: Whether the run claims differential privacy (a ledger, an epsilon in the
            summary, or a privacy setting other than ``none``).
        description: One line: what ran, as the ledger and summary state it.
        accounting: The accounting audit (None without a DP claim).
        checks: The consistency checks (empty without a DP claim).
        empirical: The empirical audit's result, or None.
        empirical_note: Why there is no empirical result.
        seconds: Time the audit took.
        warnings: Findings that do not fail the audit but qualify its verdict or the run
            directory (one sentence each; they never change the exit status).
    """

    run_dir: Path
    dp_claimed: bool
    description: str
    accounting: AccountingAudit | None
    checks: tuple[Check, ...]
    empirical: dict[str, Any] | None
    empirical_note: str
    seconds: float
    warnings: tuple[str, ...] = ()

    @property
    def failed(self) -> list[Check]:
        """The checks that failed."""
        return [c for c in self.checks if c.status == FAIL]

    @property
    def verdict(self) -> str:
        """``PASS``, ``FAIL`` or ``NO DP``."""
        if not self.dp_claimed:
            return NO_DP
        return FAILED if self.failed else PASSED

    @property
    def exit_status(self) -> int:
        """0 when nothing failed, 1 when a check failed."""
        return EXIT_FAIL if self.failed else EXIT_PASS

    @property
    def verdict_line(self) -> str:
        """The verdict in one sentence."""
        if not self.dp_claimed:
            return (
                "NO DP: no differential privacy claimed (privacy=none, no ledger); nothing to audit"
            )
        acc = self.accounting
        claim = ""
        if acc is not None and acc.claimed_epsilon is not None and acc.delta is not None:
            eps = acc.claimed_epsilon
            shown = "inf" if math.isinf(eps) else f"{eps:.4g}"
            claim = f" (epsilon {shown} at delta {acc.delta:g}, {acc.accountant}, {acc.unit}-level)"
        if self.failed:
            names = ", ".join(c.name for c in self.failed)
            return f"FAIL: the run's privacy claim{claim} is not supported: failed {names}"
        return f"PASS: the run's privacy claim{claim} is consistent with what ran{self._reach()}"

    def _reach(self) -> str:
        """The verdict's qualifier when the canaries could not have refuted the claim."""
        check = next((c for c in self.checks if c.name == "empirical"), None)
        if check is None or check.status != NA or check.evidence.get("can_refute") is not False:
            return ""
        top = check.evidence.get("refutable_epsilon")
        needed = check.evidence.get("canaries_needed")
        need = f", canaries.count={needed} could" if needed is not None else ""
        reach = f"they refute epsilon up to {top:.4g}{need}"
        return f"; the canaries could not have refuted it ({reach})"

    def to_dict(self) -> dict[str, Any]:
        """The machine-readable report (``audit.json``)."""
        return {
            "format": AUDIT_FORMAT,
            "run_dir": str(self.run_dir),
            "verdict": self.verdict,
            "verdict_line": self.verdict_line,
            "exit_status": self.exit_status,
            "dp_claimed": self.dp_claimed,
            "description": self.description,
            "accounting": self.accounting.to_dict() if self.accounting else None,
            "checks": [c.to_dict() for c in self.checks],
            "empirical": _empirical_json(self.empirical),
            "empirical_note": self.empirical_note,
            "warnings": list(self.warnings),
            "seconds": round(self.seconds, 3),
        }


def _empirical_json(result: dict[str, Any] | None) -> dict[str, Any] | None:
    if result is None:
        return None
    out = {}
    for k, v in result.items():
        if hasattr(v, "tolist"):
            v = v.tolist()
        if isinstance(v, float) and not math.isfinite(v):
            v = None if math.isnan(v) else ("inf" if v > 0 else "-inf")
        out[k] = v
    return out


def dp_claimed(run: RunFiles) -> bool:
    """Whether the run claims differential privacy."""
    name = run.config_get("privacy.name") or run.summary_get("privacy.name")
    return (
        run.ledger is not None
        or run.summary_get("epsilon") is not None
        or (name is not None and name != "none")
    )


def describe(run: RunFiles, acc: AccountingAudit | None) -> str:
    """One line: unit, sampling, noise, rounds, delta and the run's accountant."""
    events = run.events
    parts = []
    if events:
        ev = events[0]
        parts.append(f"{ev.unit}-level DP")
        if ev.sampling == "poisson":
            parts.append(f"Poisson client sampling q={ev.sampling_rate:g}")
        elif ev.sampling == "fixed":
            parts.append(f"fixed cohorts of {int(ev.cohort_size)} of {ev.population} clients")
        elif ev.sampling == "cyclic":
            parts.append(
                f"cyclic cohorts of {int(ev.cohort_size)} of {ev.population} clients, a client "
                f"every {ev.min_separation} rounds"
            )
        elif ev.sampling == "min_separation":
            parts.append(
                f"min-separation sampling, a client at least {ev.min_separation} rounds apart, "
                f"expected cohort {ev.cohort_size:g} of {ev.population} clients"
            )
        elif ev.sampling == "cyclic_poisson":
            parts.append(
                f"cyclic Poisson sampling q={ev.sampling_rate:g} in {ev.min_separation} groups "
                f"of {ev.population} clients"
            )
        else:
            parts.append("full participation")
        if ev.unit == "example":
            parts.append(
                f"DP-SGD {ev.steps} steps/round at example rate {ev.example_sampling_rate:g}"
            )
        zs = sorted({e.noise_multiplier for e in events})
        z = f"{zs[0]:g}" if len(zs) == 1 else f"{zs[0]:g}..{zs[-1]:g}"
        noise = "/".join(sorted({e.mechanism for e in events}))
        adaptive = any(e.count_noise_std is not None for e in events)
        parts.append(f"{noise} noise z={z}" + (" with adaptive clipping" if adaptive else ""))
    rounds = len(run.metrics) if run.metrics is not None else run.summary_get("rounds")
    if rounds is not None:
        parts.append(f"{rounds} rounds")
    parts.append(f"{len(events)} ledger records")
    if acc is not None and acc.delta is not None:
        parts.append(f"delta {acc.delta:g} ({acc.delta_source})")
    if acc is not None and acc.accountant:
        parts.append(f"the run's accountant: {acc.accountant}")
    return "; ".join(parts)


def empirical_result(
    run_dir: Path, delta: float | None, confidence: float, epsilon: float | None = None
) -> tuple[dict[str, Any] | None, str]:
    """The empirical audit's result, or None and the reason there is none.

    ``epsilon`` is the analytical epsilon the lower bound is tested against
    (:func:`fedpriv.audit.consistency.audited_epsilon`); with it the result says whether the
    canaries can refute it and how many would.
    """
    if delta is None:
        return None, "the run's delta is unknown"
    result = empirical_audit(Path(run_dir), delta, confidence, epsilon)
    if result is None:
        return None, "no canaries in this run (no canaries.json)"
    return dict(result), ""


def run_warnings(
    run: RunFiles, acc: AccountingAudit | None, empirical: dict[str, Any] | None
) -> list[str]:
    """The warnings of a run with a DP claim: the empirical audit's, then the disclosure ones."""
    out = []
    if empirical is not None:
        out += empirical_warnings(empirical, acc.claimed_epsilon if acc is not None else None)
    return out + disclosure_warnings(run)


def audit_run(run_dir: str | Path, confidence: float = 0.95) -> AuditReport:
    """Audits a run directory's privacy claim from its files alone.

    Args:
        run_dir: The run directory.
        confidence: Confidence level of the empirical lower bound (runs with canaries).

    Returns:
        The report; :attr:`AuditReport.exit_status` is 1 if a check failed. Its
        :attr:`AuditReport.warnings` (:func:`run_warnings`) never change the exit status.

    Raises:
        ConfigError: a file of the run directory is missing, unreadable or malformed.
    """
    start = time.perf_counter()
    run = read_run(run_dir)
    if not dp_claimed(run):
        return AuditReport(
            run.path,
            False,
            describe(run, None),
            None,
            (),
            None,
            "no differential privacy claimed",
            time.perf_counter() - start,
        )
    acc = accounting_audit(run)
    empirical, note = empirical_result(run.path, acc.delta, confidence, audited_epsilon(acc))
    if run.ledger is None:
        checks = [check_rounds(run, dp_claimed=True)]
    else:
        checks = [*consistency_audit(run, acc, empirical, note), check_noise_replay(run)]
    return AuditReport(
        run.path,
        True,
        describe(run, acc),
        acc,
        tuple(checks),
        empirical,
        note,
        time.perf_counter() - start,
        warnings=tuple(run_warnings(run, acc, empirical)),
    )
