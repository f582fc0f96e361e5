"""Consistency audit: does what ran match the assumptions its accounting rests on?

An epsilon computed from the ledger is only as good as the ledger's description of the run.
Each check below compares two or more independent records of the same fact in the run
directory (the composed configuration, ``summary.json``, ``metrics.jsonl`` written from the
round's own outputs, and ``ledger.jsonl``) and returns a :class:`Check` with a status
(``pass``, ``fail`` or ``n/a`` with the reason) and the numbers it rests on.

=====================  ===================================================================
check                  assumption (DESIGN.md section 4)
=====================  ===================================================================
``sampling``           the sampling that ran is the sampling accounted (rule 3): the kind
                       in the configuration and summary against every ledger record, the
                       rate / cohort / population, realised cohort sizes
``mechanism``          the privacy mechanism configured is the one recorded (unit of
                       privacy, and every record claimed by the configured mechanism of
                       :mod:`fedpriv.privacy.mechanisms`, with its own checks)
``noise``              noise std = noise multiplier x sensitivity (rule 2), per round, as
                       the record's mechanism computes it: ``noise_std = z C`` or, with
                       adaptive clipping, ``z_update C`` with
                       ``z_update = (z^-2 - (2 sigma_b)^-2)^-1/2`` (Andrew et al. 2021,
                       Theorem 1); distributed DP: ``z = sqrt(n sigma^2) / (s C)``; Laplace:
                       ``sqrt(2) z C``; and the round's own metrics
``denominator``        with Poisson sampling the noised sum is divided by the expected
                       cohort, never the realised count (rule 2)
``rounds``             every executed round has exactly one ledger record; rounds 1..R
``delta``              delta < 1 / population (units of privacy: clients, or examples for
                       example-level DP)
``replay``             a round run again after a resume is in the ledger again, marked
                       ``"replay": true``, and counted; the summary's counts match the file
``reported_epsilon``   the epsilon the run reported equals the recomputation
                       (:mod:`fedpriv.audit.accounting`)
``accountant_bounds``  the accountants agree within their error bounds, and with the closed
                       form where there is one
``empirical``          the empirical lower bound from canaries does not exceed the
                       analytical epsilon; ``n/a`` (inconclusive) when the canaries are too
                       few to refute it whatever ran
``noise_replay``       the last round replayed by an independent reference: the released
                       noise has the claimed distribution (:mod:`fedpriv.audit.replay`;
                       added by :func:`fedpriv.audit.audit_run`)
=====================  ===================================================================

References:
    McMahan et al., "Learning Differentially Private Recurrent Language Models", ICLR 2018
    (DP-FedAvg: dividing by the expected cohort).
    Andrew et al., "Differentially Private Learning with Adaptive Clipping", NeurIPS 2021,
    Theorem 1.
    Dwork and Roth, "The Algorithmic Foundations of Differential Privacy", 2014, section 2.3
    (delta below 1/n).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fedpriv.audit._files import RunFiles
from fedpriv.audit.accounting import (
    NOT_SUPPORTED,
    PLD_DISCRETIZATION,
    PRV_EPS_ERROR,
    AccountingAudit,
    reported_tolerance,
)
from fedpriv.audit.empirical import audit_power
from fedpriv.errors import ConfigError
from fedpriv.privacy import mechanisms

PASS, FAIL, NA = "pass", "fail", "n/a"
#: Relative tolerance between two records of one float32 quantity (clip norms, noise std).
FLOAT32_RTOL = 1e-5
#: How many offending rounds a check lists in its evidence.
MAX_LISTED = 5
#: Rounds needed before constant realised cohort sizes count as evidence against Poisson
#: sampling; with a binomial variance of at least 1 no size has probability above about 0.4,
#: so 20 equal sizes have probability below 0.4^20, about 1e-8, under Poisson sampling.
MIN_ROUNDS_FOR_VARIATION = 20


@dataclasses.dataclass(frozen=True)
class Check:
    """The outcome of one consistency check.

    Attributes:
        name: Short name, e.g. ``"denominator"``.
        title: What the check asserts, in words.
        status: ``"pass"``, ``"fail"`` or ``"n/a"``.
        detail: One line: the numbers behind the status, or why it does not apply.
        evidence: The numbers checked, for ``audit.json``.
    """

    name: str
    title: str
    status: str
    detail: str
    evidence: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "evidence": _jsonable(self.evidence),
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _close(a: float, b: float, rtol: float = FLOAT32_RTOL, atol: float = 1e-12) -> bool:
    return math.isclose(float(a), float(b), rel_tol=rtol, abs_tol=atol)


def _g(x: Any) -> str:
    return f"{x:.6g}" if isinstance(x, float) else str(x)


def _outcome(
    name: str,
    title: str,
    problems: Sequence[str],
    passed: str,
    evidence: dict[str, Any],
) -> Check:
    if problems:
        more = f" (and {len(problems) - 2} more)" if len(problems) > 2 else ""
        evidence = {**evidence, "problems": list(problems[:MAX_LISTED])}
        return Check(name, title, FAIL, "; ".join(problems[:2]) + more, evidence)
    return Check(name, title, PASS, passed, evidence)


def _last_by_round(run: RunFiles) -> dict[int, int]:
    """Round -> index of its last ledger record (the execution the metrics row describes)."""
    return {ev.round: i for i, ev in enumerate(run.events)}


def _metrics_by_round(run: RunFiles) -> dict[int, dict[str, Any]]:
    return {int(row["round"]): row for row in run.metrics or []}


# --------------------------------------------------------------------------- (a) sampling


def _gateway_level(run: RunFiles) -> bool:
    """Hierarchical aggregation with gateway-level DP: gateways are the units of privacy."""
    return run.config_get("hierarchy.dp_unit") == "gateway" and (
        run.config_get("hierarchy.name") not in (None, "none")
    )


def _fedbuff(run: RunFiles) -> bool:
    return run.config_get("async.name") == "fedbuff"


def _sampling_that_ran(run: RunFiles) -> tuple[str | None, Any, Any, Any]:
    """``(kind, rate, cohort, population)`` of the sampling that ran, from the configuration.

    FedBuff draws no cohort: its server steps are accounted as ``async.accounting`` says
    (``no_amplification``: every step a full-participation Gaussian mechanism;
    ``uniform_subset``: ``buffer_size`` of the population without replacement). With
    gateway-level DP the sampler draws gateways, so the population is the number of gateways.
    """
    pop = run.summary_get("population")
    if _fedbuff(run):
        if run.config_get("async.accounting") == "uniform_subset":
            return "fixed", None, run.config_get("async.buffer_size"), pop
        return "full", 1, None, pop
    kind = run.config_get("sampling.kind") or run.summary_get("sampling.kind")
    if _gateway_level(run):
        pop = run.config_get("hierarchy.gateways")
    return (
        kind,
        run.config_get("sampling.rate"),
        run.config_get("sampling.cohort_size"),
        pop,
    )


def check_sampling(run: RunFiles) -> Check:
    """The sampling that ran (configuration, summary) is the sampling in every ledger record.

    Privacy:
        Poisson sampling is accounted with amplification under add/remove-one; fixed-size
        cohorts without replacement under replace-one. Accounting one as the other
        misstates epsilon (DESIGN.md section 4, rule 3).
    """
    name, title = "sampling", "the sampling that ran is the sampling accounted"
    if not run.events:
        return Check(name, title, NA, "no ledger records")
    cfg_kind = run.config_get("sampling.kind")
    sum_kind = run.summary_get("sampling.kind")
    if _fedbuff(run):
        cfg_kind = sum_kind = _sampling_that_ran(run)[0]
    kinds = Counter(ev.sampling for ev in run.events)
    n = len(run.events)
    evidence: dict[str, Any] = {
        "config": cfg_kind,
        "summary": sum_kind,
        "ledger": dict(kinds),
    }
    problems = []
    if cfg_kind is not None and sum_kind is not None and cfg_kind != sum_kind:
        problems.append(f"the configuration says {cfg_kind!r} but summary.json {sum_kind!r}")
    ran = cfg_kind or sum_kind
    if len(kinds) > 1:
        problems.append(f"the ledger mixes sampling kinds {dict(kinds)}")
    _, rate, cohort, pop = _sampling_that_ran(run)
    for kind, count in kinds.items():
        full_ok = kind == "full" and (
            (ran == "poisson" and rate == 1) or (ran == "fixed" and cohort == pop)
        )
        if ran is not None and kind != ran and not full_ok:
            problems.append(f"{ran!r} sampling ran but {count} of {n} ledger records say {kind!r}")
    for kind in ("poisson", "fixed"):
        if ran == kind or (ran is None and kind in kinds):
            problems += _sampling_parameters(run, kind, evidence)
    described = ", ".join(f"{k} ({c} of {n} records)" for k, c in kinds.items())
    passed = f"ran {ran or 'unknown'}; ledger {described}"
    if "rate" in evidence:
        passed += f"; rate {_g(evidence['rate'])}"
    if "cohort_size" in evidence:
        passed += f"; cohorts of {evidence['cohort_size']} of {evidence.get('population')}"
    return _outcome(name, title, problems, passed, evidence)


def _sampling_parameters(run: RunFiles, kind: str, evidence: dict[str, Any]) -> list[str]:
    problems = []
    events = [(i, ev) for i, ev in enumerate(run.events) if ev.sampling == kind]
    _, cfg_rate, cfg_cohort, pop = _sampling_that_ran(run)
    if pop is not None:
        pop += run.summary_get("canaries", 0)  # canary clients are sampled like any other
    pops = {ev.population for _, ev in events if ev.population is not None}
    if pop is not None and pops - {pop}:
        problems.append(f"ledger population {sorted(pops)} but summary.json population {pop}")
    if kind == "poisson":
        rates = sorted({ev.sampling_rate for _, ev in events})
        evidence["rate"] = rates[0] if len(rates) == 1 else rates
        evidence["config_rate"] = cfg_rate
        if len(rates) > 1:
            problems.append(f"the ledger's sampling rate changes between rounds: {rates}")
        if cfg_rate is not None and any(not _close(r, cfg_rate, 1e-9) for r in rates):
            problems.append(f"sampling.rate {cfg_rate} ran but the ledger accounts rate {rates}")
        realised = [ev.realised_cohort for ev in run.events if ev.realised_cohort is not None]
        if realised:
            evidence["realised_cohort"] = {
                "min": min(realised),
                "max": max(realised),
                "mean": sum(realised) / len(realised),
            }
        population = max(pops) if pops else pop
        if population is not None and len(rates) == 1 and realised:
            q = rates[0]
            var = population * q * (1.0 - q)
            evidence["binomial_variance"] = var
            if len(realised) >= MIN_ROUNDS_FOR_VARIATION and var >= 1.0 and len(set(realised)) == 1:
                problems.append(
                    f"the realised cohort was {realised[0]} in all {len(realised)} rounds, but "
                    f"Poisson sampling of {population} clients at rate {q:g} varies it "
                    f"(variance {var:.3g}): fixed-size cohorts accounted as Poisson"
                )
    else:
        sizes = sorted({int(ev.cohort_size) for _, ev in events})
        evidence["cohort_size"] = sizes[0] if len(sizes) == 1 else sizes
        evidence["population"] = sorted(pops)[0] if len(pops) == 1 else sorted(pops)
        evidence["config_cohort_size"] = cfg_cohort
        if cfg_cohort is not None and sizes != [cfg_cohort]:
            problems.append(
                f"sampling.cohort_size {cfg_cohort} ran but the ledger accounts cohorts {sizes}"
            )
        for i, ev in events:
            raw = run.ledger[i].get("sampling_rate")
            if raw is not None and not _close(raw, ev.cohort_size / ev.population, 1e-6):
                problems.append(
                    f"round {ev.round}: sampling_rate {raw!r} but cohort_size / population = "
                    f"{ev.cohort_size / ev.population:.6g}"
                )
                break
        wrong = [
            ev
            for _, ev in events
            # Clients that dropped out after sampling (availability, stragglers) were sampled.
            if ev.realised_cohort is not None
            and ev.realised_cohort + (ev.dropped or 0) != int(ev.cohort_size)
        ]
        if wrong:
            ev = wrong[0]
            problems.append(
                f"{len(wrong)} rounds had a realised cohort other than the fixed size, e.g. "
                f"round {ev.round}: {ev.realised_cohort} clients (+{ev.dropped or 0} dropped), "
                f"accounted as {int(ev.cohort_size)}"
            )
    return problems


# --------------------------------------------------------------------------- mechanism


def check_mechanism(run: RunFiles) -> Check:
    """The privacy mechanism configured (unit, noise, adaptive clipping) is the one recorded."""
    name, title = "mechanism", "the configured mechanism is the recorded one"
    cfg_name = run.config_get("privacy.name")
    sum_name = run.summary_get("privacy.name")
    configured = cfg_name or sum_name
    units = Counter(ev.unit for ev in run.events)
    mechanisms_seen = Counter(ev.mechanism for ev in run.events)
    adaptive = sum(ev.count_noise_std is not None for ev in run.events)
    evidence = {
        "config": cfg_name,
        "summary": sum_name,
        "ledger_units": dict(units),
        "ledger_mechanisms": dict(mechanisms_seen),
        "adaptive_records": adaptive,
    }
    if configured is None:
        return Check(name, title, NA, "neither the configuration nor summary.json names it")
    problems = []
    if cfg_name is not None and sum_name is not None and cfg_name != sum_name:
        problems.append(f"the configuration says privacy={cfg_name} but summary.json {sum_name}")
    n = len(run.events)
    if configured == "none":
        if n:
            problems.append(f"privacy=none but the ledger holds {n} DP records")
        return _outcome(name, title, problems, "no DP configured, none recorded", evidence)
    try:
        mech = mechanisms.get(configured)
    except ConfigError:
        return Check(name, title, NA, f"unknown privacy setting {configured!r}", evidence)
    if not mech.private or mech.unit is None:
        return Check(name, title, NA, f"privacy={configured} makes no DP claim", evidence)
    if not n:
        return Check(name, title, NA, "no ledger records", evidence)
    unit = "gateway" if _gateway_level(run) else mech.unit
    if set(units) != {unit}:
        problems.append(f"privacy={configured} is {unit}-level but the ledger has units {units}")
    # The configured mechanism checks its own records; every record must be one it writes.
    problems += mech.audit(run, run.events)
    foreign = Counter(mechanisms.for_record(ev).name for ev in run.events if not mech.claims(ev))
    if foreign:
        problems.append(
            f"privacy={configured} but {sum(foreign.values())} of {n} records are written by "
            f"other mechanisms: {dict(foreign)}"
        )
    kinds = "/".join(sorted(mechanisms_seen))
    passed = f"privacy={configured}: {unit}-level {kinds} noise in all {n} records"
    if adaptive:
        passed += ", with the adaptive clip count"
    return _outcome(name, title, problems, passed, evidence)


# --------------------------------------------------------------------------- (b) noise


def check_noise(run: RunFiles) -> Check:
    """Noise std = noise multiplier x sensitivity in every round, as recorded and as run.

    Privacy:
        The accountant reads ``noise_multiplier``; the guarantee holds only if the noise
        added had std ``noise_multiplier * clip_norm`` (the add/remove sensitivity), or with
        adaptive clipping the split of Andrew et al. 2021, Theorem 1, and for distributed DP
        ``sqrt(noise_clients * local_variance) / (scale * clip_norm)``.
    """
    name, title = "noise", "noise std = noise multiplier x clip norm, every round"
    if not run.events:
        return Check(name, title, NA, "no ledger records")
    problems: list[str] = []
    checked = unverifiable = 0
    worst = 0.0
    for i, ev in enumerate(run.events):
        rec = run.ledger[i]
        noise_std = rec.get("noise_std")
        # The record's mechanism says what noise its fields imply (and checks them).
        expected, formula, found = mechanisms.for_record(ev).audit_noise(ev, rec)
        problems += found
        if expected is None:
            if not found:
                unverifiable += 1
            continue
        if noise_std is None:
            unverifiable += 1
            continue
        checked += 1
        dev = abs(noise_std - expected) / max(expected, 1e-300) if expected else abs(noise_std)
        worst = max(worst, dev)
        if dev > FLOAT32_RTOL:
            problems.append(
                f"round {ev.round}: noise_std {noise_std:.6g} but {formula} = {expected:.6g}"
            )
    metrics_checked = _noise_against_metrics(run, problems)
    problems += _noise_against_settings(run)
    evidence = {
        "records_checked": checked,
        "records_without_noise_std": unverifiable,
        "max_relative_deviation": worst,
        "metrics_rows_compared": metrics_checked,
        "tolerance": FLOAT32_RTOL,
    }
    zs = sorted({ev.noise_multiplier for ev in run.events})
    evidence["noise_multiplier"] = zs[0] if len(zs) == 1 else zs
    if not checked and not problems:
        return Check(
            name, title, NA, "no ledger record holds both noise_std and clip_norm", evidence
        )
    passed = (
        f"{checked} records: noise_std = z x clip within {worst:.1e} (relative); "
        f"z {_g(evidence['noise_multiplier'])}"
    )
    if metrics_checked:
        passed += f"; {metrics_checked} metrics rows match the ledger"
    return _outcome(name, title, problems, passed, evidence)


def _noise_against_metrics(run: RunFiles, problems: list[str]) -> int:
    """Compares the round's own reported clip and noise (metrics) with its ledger record."""
    compared = 0
    last = _last_by_round(run)
    for rnd, row in _metrics_by_round(run).items():
        i = last.get(rnd)
        if i is None:
            continue
        ev, rec = run.events[i], run.ledger[i]
        if not mechanisms.for_record(ev).server_reports_noise(ev):
            continue  # the noise is added by the clients, not reported by the server's round
        for key in ("noise_std", "clip_norm"):
            if row.get(key) is None or rec.get(key) is None:
                continue
            if not _close(row[key], rec[key]):
                problems.append(
                    f"round {rnd}: the round reported {key} {row[key]:.6g} in metrics.jsonl but "
                    f"the ledger records {rec[key]:.6g}"
                )
        compared += 1
    return compared


def _noise_against_settings(run: RunFiles) -> list[str]:
    """The ledger's multiplier, clip and count noise against the configured settings."""
    problems = []
    events = run.events
    plan_z = run.summary_get("privacy.noise_multiplier")
    if plan_z is not None:
        bad = [ev for ev in events if not _close(ev.noise_multiplier, plan_z, 1e-6)]
        if bad:
            problems.append(
                f"{len(bad)} records have noise_multiplier {bad[0].noise_multiplier:.6g} but "
                f"summary.json's privacy plan used {plan_z:.6g}"
            )
    cfg_z = run.config_get("privacy.noise_multiplier")
    gaussian = [ev for ev in events if not ev.is_distributed]
    if cfg_z is not None and run.config_get("privacy.target_epsilon") is None and gaussian:
        bad = [ev for ev in gaussian if not _close(ev.noise_multiplier, cfg_z, 1e-6)]
        if bad:
            problems.append(
                f"privacy.noise_multiplier={cfg_z} was configured but {len(bad)} records "
                f"account {bad[0].noise_multiplier:.6g}"
            )
    cfg_clip = run.config_get("privacy.clip_norm")
    adaptive = any(ev.count_noise_std is not None for ev in events)
    if cfg_clip is not None and events and events[0].clip_norm is not None:
        if adaptive:
            first = min(events, key=lambda ev: ev.round)
            if first.clip_norm is not None and not _close(first.clip_norm, cfg_clip):
                problems.append(
                    f"privacy.clip_norm={cfg_clip} (the initial adaptive clip) but round "
                    f"{first.round} clipped at {first.clip_norm:.6g}"
                )
        else:
            bad = [ev for ev in gaussian if ev.clip_norm is not None]
            bad = [ev for ev in bad if not _close(ev.clip_norm, cfg_clip)]
            if bad:
                problems.append(
                    f"privacy.clip_norm={cfg_clip} but {len(bad)} records clip at "
                    f"{bad[0].clip_norm:.6g}"
                )
    sigma_b = run.summary_get("privacy.adaptive.count_noise_std")
    if sigma_b is not None:
        bad = [
            ev
            for ev in events
            if ev.count_noise_std is not None and not _close(ev.count_noise_std, sigma_b, 1e-6)
        ]
        if bad:
            problems.append(
                f"{len(bad)} records have count_noise_std {bad[0].count_noise_std:.6g} but the "
                f"privacy plan used {sigma_b:.6g}"
            )
    return problems


# --------------------------------------------------------------------------- (c) denominator


def check_denominator(run: RunFiles) -> Check:
    """The noised sum was divided by the expected cohort, the ledger's ``cohort_size``.

    Privacy:
        With Poisson sampling the realised cohort size is itself private: dividing by it
        releases a function of it that the accountant does not cover. DP-FedAvg divides by
        the expected cohort ``q N``, a constant (McMahan et al. 2018; DESIGN.md section 4,
        rule 2). With fixed cohorts the two coincide.
    """
    name, title = "denominator", "the noised sum is divided by the expected cohort"
    if not run.events:
        return Check(name, title, NA, "no ledger records")
    if all(ev.unit == "example" for ev in run.events):
        return Check(
            name,
            title,
            NA,
            "example-level DP: noise is added inside each client (DP-SGD), so the server's "
            "average of the private updates is post-processing",
        )
    if run.metrics is None:
        return Check(name, title, NA, "no metrics.jsonl")
    rows = [row for row in run.metrics if row.get("denominator") is not None]
    if not rows:
        return Check(
            name,
            title,
            NA,
            "metrics.jsonl records no 'denominator' (a run made before the aggregator "
            "reported what it divided by)",
        )
    last = _last_by_round(run)
    problems: list[str] = []
    mismatched: list[dict[str, Any]] = []
    compared = 0
    for row in rows:
        i = last.get(int(row["round"]))
        if i is None:
            continue
        ev = run.events[i]
        if ev.cohort_size is None:
            continue
        compared += 1
        expected = float(ev.cohort_size)
        if not _close(row["denominator"], expected):
            mismatched.append(
                {
                    "round": ev.round,
                    "denominator": row["denominator"],
                    "cohort_size": expected,
                    "realised_cohort": ev.realised_cohort,
                }
            )
    if mismatched:
        m = mismatched[0]
        realised = [
            x
            for x in mismatched
            if x["realised_cohort"] is not None and _close(x["denominator"], x["realised_cohort"])
        ]
        why = " (the realised cohort: divided by the realised count)" if realised else ""
        problems.append(
            f"{len(mismatched)} of {compared} rounds divided by something other than the "
            f"ledger's expected cohort, e.g. round {m['round']}: divided by "
            f"{m['denominator']:.6g}{why}, expected cohort {m['cohort_size']:.6g}"
        )
    poisson = [
        ev
        for ev in run.events
        if ev.sampling in ("poisson", "cyclic_poisson") and ev.unit != "example"
    ]
    for ev in poisson:
        if ev.population is not None and ev.cohort_size is not None:
            # cyclic Poisson: the rate applies within one of min_separation groups
            groups = ev.min_separation if ev.sampling == "cyclic_poisson" else 1
            qn = ev.sampling_rate * ev.population / groups
            if not _close(ev.cohort_size, qn, 1e-6):
                formula = "sampling_rate x population" + (" / groups" if groups != 1 else "")
                problems.append(
                    f"round {ev.round}: ledger cohort_size {ev.cohort_size:.6g} is not the "
                    f"expected cohort {formula} = {qn:.6g}"
                )
                break
    evidence = {
        "rows_compared": compared,
        "rows_without_denominator": len(run.metrics) - len(rows),
        "mismatches": mismatched[:MAX_LISTED],
        "mismatch_count": len(mismatched),
        "divided_by_realised_count": sum(
            1
            for x in mismatched
            if x["realised_cohort"] is not None and _close(x["denominator"], x["realised_cohort"])
        ),
    }
    if not compared and not problems:
        return Check(name, title, NA, "no metrics row matches a ledger record", evidence)
    denominators = sorted({float(r["denominator"]) for r in rows})
    shown = _g(denominators[0]) if len(denominators) == 1 else f"{len(denominators)} values"
    passed = f"{compared} rounds divided by {shown} = the ledger's expected cohort"
    return _outcome(name, title, problems, passed, evidence)


# --------------------------------------------------------------------------- (d) rounds


def _gaps(rounds: Iterable[int], expected: range) -> tuple[list[int], list[int]]:
    have = set(rounds)
    return sorted(set(expected) - have), sorted(have - set(expected))


def _ranges(values: Sequence[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3, 7"``."""
    parts, start, prev = [], None, None
    for v in values:
        if start is None:
            start = prev = v
        elif v == prev + 1:
            prev = v
        else:
            parts.append(f"{start}-{prev}" if prev != start else f"{start}")
            start = prev = v
    if start is not None:
        parts.append(f"{start}-{prev}" if prev != start else f"{start}")
    return ", ".join(parts)


def check_rounds(run: RunFiles, dp_claimed: bool = True) -> Check:
    """Every executed round has exactly one (non-replay) ledger record; rounds 1..R.

    Privacy:
        A round missing from the ledger is a round whose privacy cost is not counted.
    """
    name, title = "rounds", "every executed round has exactly one ledger record"
    metric_rounds = [int(row["round"]) for row in run.metrics or []]
    summary_rounds = run.summary_get("rounds")
    evidence: dict[str, Any] = {
        "metrics_rows": len(metric_rounds),
        "summary_rounds": summary_rounds,
        "ledger_records": len(run.events),
    }
    problems = []
    if run.ledger is None:
        executed = summary_rounds if summary_rounds is not None else len(metric_rounds)
        if dp_claimed and executed:
            return Check(
                name,
                title,
                FAIL,
                f"the run claims DP and executed {executed} rounds, but there is no ledger.jsonl",
                evidence,
            )
        return Check(name, title, NA, "no ledger.jsonl and no executed rounds", evidence)
    originals = [ev.round for ev in run.events if not ev.replay]
    evidence["ledger_rounds"] = _ranges(sorted(set(originals)))
    if run.metrics is not None:
        R = len(metric_rounds)
        if metric_rounds != list(range(1, R + 1)):
            missing, extra = _gaps(metric_rounds, range(1, R + 1))
            dup = sorted(r for r, c in Counter(metric_rounds).items() if c > 1)
            how = [
                f"{what} {_ranges(v)}"
                for what, v in (("missing", missing), ("duplicated", dup), ("unexpected", extra))
                if v
            ]
            problems.append(
                f"metrics.jsonl rounds are not 1..{R} in order ({'; '.join(how) or 'reordered'})"
            )
        if summary_rounds is not None and summary_rounds != R:
            problems.append(f"summary.json says {summary_rounds} rounds, metrics.jsonl has {R}")
    else:
        R = summary_rounds if summary_rounds is not None else max(originals, default=0)
    evidence["executed_rounds"] = R
    missing, extra = _gaps(originals, range(1, R + 1))
    dup = sorted(r for r, c in Counter(originals).items() if c > 1)
    trailing = [r for r in extra if r > R]
    if missing:
        problems.append(
            f"{len(missing)} executed rounds have no ledger record: {_ranges(missing)} (their "
            "privacy cost is not counted)"
        )
    note = ""
    if extra:
        if (
            run.summary is None
            and extra == trailing
            and trailing == list(range(R + 1, R + 1 + len(trailing)))
        ):
            note = (
                f"; the ledger holds rounds {_ranges(trailing)} past the last metrics row (the "
                "run stopped mid-round; they are accounted)"
            )
        else:
            problems.append(f"ledger records for rounds that never ran: {_ranges(extra)}")
    if dup:
        problems.append(f"rounds with more than one record without a replay mark: {_ranges(dup)}")
    if originals != sorted(originals):
        problems.append("the ledger's rounds are out of order")
    evidence.update(missing=missing[:50], extra=extra[:50], duplicated=dup[:50])
    passed = f"rounds 1..{R}: one ledger record each" + note
    return _outcome(name, title, problems, passed, evidence)


# --------------------------------------------------------------------------- (e) delta


def check_delta(run: RunFiles, delta: float | None, delta_source: str = "") -> Check:
    """delta < 1 / population, with the population of units of privacy.

    Privacy:
        A mechanism that publishes one random record of ``N`` is ``(0, 1/N)``-DP; a delta
        of ``1/N`` or more allows such a failure (Dwork and Roth 2014, section 2.3). The
        units are clients for user-level DP and examples for example-level DP.
    """
    name, title = "delta", "delta < 1 / population"
    if delta is None:
        return Check(name, title, NA, "the run's delta is unknown")
    if not run.events:
        return Check(name, title, NA, "no ledger records")
    unit = run.events[0].unit
    evidence: dict[str, Any] = {"delta": delta, "delta_source": delta_source, "unit": unit}
    if unit == "example":
        pop = run.summary_get("diagnostics.data.train_examples") or run.summary_get(
            "data.train_examples"
        )
        what = "training examples, example-level DP"
        if pop is None:
            return Check(
                name, title, NA, "example-level DP and summary.json has no train_examples", evidence
            )
    else:
        pops = {ev.population for ev in run.events if ev.population is not None}
        pop = max(pops) if pops else run.summary_get("population")
        what = "gateways, gateway-level DP" if unit == "gateway" else "clients, user-level DP"
        if pop is None:
            return Check(name, title, NA, "no population in the ledger or summary.json", evidence)
    evidence["population"] = pop
    evidence["bound"] = 1.0 / pop
    problems = []
    if delta * pop >= 1.0:
        problems.append(
            f"delta {delta:g} is not below 1/population = 1/{pop} ({what}); such a delta "
            "permits publishing a random record"
        )
    passed = f"delta {delta:g} < 1/{pop} = {1.0 / pop:.3g} ({what})"
    return _outcome(name, title, problems, passed, evidence)


# --------------------------------------------------------------------------- (f) replay


def check_replay(run: RunFiles) -> Check:
    """Rounds run again after a resume are in the ledger again, marked, and counted.

    Privacy:
        A round executed twice released two noised aggregates; both are accounted. A second
        record without the replay mark, or a summary whose counts do not match the file,
        means the bookkeeping of a resumed run cannot be trusted.
    """
    name, title = "replay", "re-executed rounds are recorded, marked and counted"
    if run.ledger is None:
        return Check(name, title, NA, "no ledger.jsonl")
    seen: set[int] = set()
    problems = []
    replays = []
    for ev in run.events:
        if ev.replay:
            replays.append(ev.round)
            if ev.round not in seen:
                problems.append(f"round {ev.round} is marked replay but never ran before it")
        elif ev.round in seen:
            problems.append(f"round {ev.round} appears again without a replay mark")
        seen.add(ev.round)
    n = len(run.events)
    summary_replayed = run.summary_get("replayed_rounds")
    summary_events = run.summary_get("ledger_events")
    if summary_replayed is not None and summary_replayed != len(replays):
        problems.append(
            f"summary.json says {summary_replayed} replayed rounds, the ledger marks {len(replays)}"
        )
    if summary_events is not None and summary_events != n:
        problems.append(f"summary.json says {summary_events} ledger events, ledger.jsonl has {n}")
    replayed_set = set(replays)
    marked_rows = [int(r["round"]) for r in run.metrics or [] if r.get("replay")]
    stray = [r for r in marked_rows if r not in replayed_set]
    if stray:
        problems.append(
            f"metrics.jsonl marks rounds {_ranges(sorted(stray))} as replayed but the ledger "
            "has no replay record for them"
        )
    evidence = {
        "ledger_records": n,
        "replayed_records": len(replays),
        "replayed_rounds": _ranges(sorted(replayed_set)),
        "summary_replayed_rounds": summary_replayed,
        "summary_ledger_events": summary_events,
        "resumed_from": run.summary_get("resumed_from"),
        "records_accounted": n,
    }
    if replays:
        passed = (
            f"{len(replays)} replayed records (rounds {_ranges(sorted(replayed_set))}), "
            f"all {n} records accounted"
        )
    else:
        passed = f"no replayed rounds; {n} records accounted"
    if summary_events is not None:
        passed += "; summary counts match"
    return _outcome(name, title, problems, passed, evidence)


# --------------------------------------------------------------------------- (g) epsilon


def check_reported_epsilon(run: RunFiles, acc: AccountingAudit) -> Check:
    """The epsilon the run reported equals the audit's recomputation from the ledger.

    The summary's per-accountant values, its ``epsilon_spent`` and the last ``epsilon`` in
    ``metrics.jsonl`` are compared with the recomputed value of the same accountant, within
    :func:`fedpriv.audit.accounting.reported_tolerance`.
    """
    name, title = "reported_epsilon", "the reported epsilon equals the recomputation"
    if not run.events:
        return Check(name, title, NA, "no ledger records")
    problems = []
    compared = []
    for row in acc.rows:
        if row.reported is None:
            continue
        if row.recomputed is None:
            if row.status == NOT_SUPPORTED:
                problems.append(
                    f"summary.json reports {row.accountant} epsilon {_g(row.reported)}, an "
                    f"accountant that cannot analyse this ledger ({row.note})"
                )
            continue
        compared.append(row.accountant)
        if not row.agrees:
            problems.append(
                f"{row.accountant}: reported {_g(row.reported)} but recomputed "
                f"{_g(row.recomputed)} (difference {_g(row.difference)}, tolerance "
                f"{_g(row.tolerance)})"
            )
    main = acc.accountant
    main_row = acc.row(main) if main else None
    recomputed_main = main_row.recomputed if main_row else None
    spent = run.summary_get("epsilon_spent")
    evidence: dict[str, Any] = {
        "accountant": main,
        "compared": compared,
        "epsilon_spent": spent,
        "recomputed": recomputed_main,
    }
    if run.summary is not None and run.summary_get("epsilon") is None:
        problems.append("summary.json reports no epsilon for a run with a ledger")
    if spent is not None and recomputed_main is not None:
        tol = reported_tolerance(recomputed_main)
        if not _agrees(spent, recomputed_main, tol):
            problems.append(
                f"summary.json epsilon_spent {_g(spent)} but {main} recomputed "
                f"{_g(recomputed_main)}"
            )
        compared.append("epsilon_spent")
    rows = [r for r in run.metrics or [] if r.get("epsilon") is not None]
    if rows and recomputed_main is not None:
        last = float(rows[-1]["epsilon"])
        evidence["metrics_last_epsilon"] = last
        if not _agrees(last, recomputed_main, reported_tolerance(recomputed_main)):
            problems.append(
                f"metrics.jsonl ends at epsilon {_g(last)} (round {rows[-1]['round']}) but "
                f"{main} recomputed {_g(recomputed_main)}"
            )
        compared.append("metrics.jsonl")
        eps = [float(r["epsilon"]) for r in rows]
        if any(b < a * (1 - 1e-9) for a, b in zip(eps, eps[1:])):
            problems.append("metrics.jsonl epsilon decreases between rounds")
    if not compared and not problems:
        return Check(name, title, NA, "the run reported no epsilon to compare", evidence)
    passed = f"{', '.join(compared)} agree with the recomputation"
    if recomputed_main is not None:
        passed += f" ({main} {_g(recomputed_main)} at delta {acc.delta:g})"
    return _outcome(name, title, problems, passed, evidence)


def _agrees(a: float, b: float, tol: float) -> bool:
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= tol


# --------------------------------------------------------------------------- bounds


def check_accountant_bounds(acc: AccountingAudit) -> Check:
    """The accountants agree within their error bounds (and with the exact value, if known).

    Bounds (see :mod:`fedpriv.audit.accounting`): with ``k`` composed mechanisms,
    ``pld <= min(rdp, opacus_rdp) + k h``; ``prv <= min(rdp, opacus_rdp) + 2 eps_error``;
    ``|pld - prv| <= k h + 2 eps_error``; with a closed form ``eps*``: RDP values ``>= eps*``,
    ``eps* <= pld <= eps* + k h`` and ``eps* - eps_error <= prv <= eps* + 2 eps_error``. Each
    bound is widened by a relative ``1e-3`` for floating point.
    """
    name, title = "accountant_bounds", "the accountants agree within their error bounds"
    values = {
        r.accountant: r.recomputed
        for r in acc.rows
        if r.recomputed is not None and math.isfinite(r.recomputed) and r.status == "recomputed"
    }
    exact = acc.exact
    k = acc.compositions
    pld_err = k * PLD_DISCRETIZATION
    prv_err = 2.0 * PRV_EPS_ERROR
    evidence: dict[str, Any] = {
        "recomputed": values,
        "exact": exact,
        "compositions": k,
        "pld_error_bound": pld_err,
        "prv_error_bound": prv_err,
    }
    if exact is not None and not math.isfinite(exact):
        exact = None

    def slack(x: float) -> float:
        return 1e-3 * abs(x) + 1e-9

    floor = acc.gaussian_floor
    if floor is not None:
        evidence["gaussian_floor"] = floor
        claims = {
            f"{r.accountant} {kind}": value
            for r in acc.rows
            for kind, value in (("recomputed", r.recomputed), ("reported", r.reported))
            if value is not None
        }
        below = [f"{k} {_g(v)}" for k, v in claims.items() if v < floor - slack(floor)]
        if below:
            return Check(
                name,
                title,
                FAIL,
                f"{', '.join(below)} below {_g(floor)}, dp_accounting's epsilon of the Gaussian "
                "mechanism with the same noise and sampling, which a distributed mechanism "
                "cannot beat",
                evidence,
            )
        if len(values) < 2:
            shown = ", ".join(f"{k} {_g(v)}" for k, v in claims.items())
            return Check(
                name,
                title,
                PASS,
                f"{shown}; not below {_g(floor)}, dp_accounting's epsilon of the Gaussian "
                "mechanism with the same noise and sampling",
                evidence,
            )
    if len(values) < 2 and exact is None:
        return Check(name, title, NA, "fewer than two accountants analyse this ledger", evidence)
    problems = []

    rdps = [values[n] for n in ("rdp", "opacus_rdp") if n in values]
    rdp_min = min(rdps) if rdps else None
    if rdp_min is not None:
        if "pld" in values and values["pld"] > rdp_min + pld_err + slack(rdp_min):
            problems.append(
                f"pld {_g(values['pld'])} exceeds the RDP bound {_g(rdp_min)} by more than its "
                f"discretisation error {_g(pld_err)}"
            )
        if "prv" in values and values["prv"] > rdp_min + prv_err + slack(rdp_min):
            problems.append(
                f"prv {_g(values['prv'])} exceeds the RDP bound {_g(rdp_min)} by more than "
                f"2 eps_error = {_g(prv_err)}"
            )
    if "pld" in values and "prv" in values:
        gap = abs(values["pld"] - values["prv"])
        if gap > pld_err + prv_err + slack(max(values["pld"], values["prv"])):
            problems.append(
                f"pld {_g(values['pld'])} and prv {_g(values['prv'])} differ by {_g(gap)}, more "
                f"than their errors {_g(pld_err + prv_err)}"
            )
    if exact is not None:
        for n in ("rdp", "opacus_rdp"):
            if n in values and values[n] < exact - slack(exact):
                problems.append(
                    f"{n} {_g(values[n])} is below the exact epsilon {_g(exact)} (Balle and "
                    "Wang 2018), so it is not an upper bound"
                )
        if "pld" in values and not (
            exact - slack(exact) <= values["pld"] <= exact + pld_err + slack(exact)
        ):
            problems.append(
                f"pld {_g(values['pld'])} is outside [exact, exact + {_g(pld_err)}] with exact "
                f"epsilon {_g(exact)}"
            )
        if "prv" in values and not (
            exact - PRV_EPS_ERROR - slack(exact) <= values["prv"] <= exact + prv_err + slack(exact)
        ):
            problems.append(
                f"prv {_g(values['prv'])} is outside [exact - eps_error, exact + 2 eps_error] "
                f"with exact epsilon {_g(exact)}"
            )
    shown = ", ".join(f"{n} {_g(v)}" for n, v in values.items())
    passed = shown
    if exact is not None:
        passed += f"; exact {_g(exact)} (closed form)"
    passed += f"; PLD error <= {_g(pld_err)}, PRV error <= {_g(prv_err)}"
    return _outcome(name, title, problems, passed, evidence)


# --------------------------------------------------------------------------- empirical


def audited_epsilon(acc: AccountingAudit | None) -> float | None:
    """The epsilon the empirical lower bound is tested against: the smaller of the claim and
    every finite recomputation (the tightest valid analysis of what the ledger records).

    None without a claimed epsilon.
    """
    if acc is None or acc.claimed_epsilon is None:
        return None
    finite = [v for v in acc.recomputed().values() if math.isfinite(v)]
    return min([float(acc.claimed_epsilon), *finite])


def check_empirical(
    empirical: Mapping[str, Any] | None, acc: AccountingAudit | None, reason: str = ""
) -> Check:
    """The empirical lower bound on epsilon (canaries) does not exceed the analytical epsilon.

    The check can only fail when the canaries could refute the epsilon tested
    (:func:`audited_epsilon`): the lower bound never exceeds
    :func:`fedpriv.audit.empirical.refutable_epsilon` of the run's canary counts, whatever
    ran. When the tested epsilon is at or above that ceiling the status is ``n/a``
    (inconclusive), not ``pass``: a pass is evidence only if a failure was possible, and an
    ``n/a`` keeps the verdict resting on the checks that could have failed. The detail says
    how far the canaries reach and how many a claim needs
    (:func:`fedpriv.audit.empirical.canaries_needed`); the verdict line repeats it.

    Privacy:
        A lower bound above a proven upper bound means the analysis does not describe the
        mechanism that ran (a bug in clipping, noise or accounting).
    """
    name, title = "empirical", "the empirical lower bound <= the analytical epsilon"
    if empirical is None:
        return Check(name, title, NA, reason or "no canaries in this run")
    lower = float(empirical["epsilon_lower_bound"])
    claimed = acc.claimed_epsilon if acc is not None else None
    finite = [v for v in (acc.recomputed().values() if acc else ()) if math.isfinite(v)]
    tested = audited_epsilon(acc)
    power = audit_power(
        int(empirical["num_inserted"]),
        int(empirical["num_unseen"]),
        float(empirical["delta"]),
        float(empirical["confidence"]),
        tested,
    )
    evidence = {
        "epsilon_lower_bound": lower,
        "epsilon_estimate": empirical.get("epsilon_estimate"),
        "confidence": empirical.get("confidence"),
        "method": empirical.get("method"),
        "analytical_epsilon": claimed,
        "smallest_recomputed_epsilon": min(finite) if finite else None,
        "refutable_epsilon": power.refutable_epsilon,
        "epsilon_tested": tested,
        "can_refute": power.can_refute,
        "canaries_needed": power.canaries_needed,
    }
    if claimed is None:
        return Check(name, title, NA, "no analytical epsilon to compare", evidence)
    reach = (
        f"these {empirical['num_inserted']} + {empirical['num_unseen']} canaries can refute "
        f"epsilon up to {_g(power.refutable_epsilon)} at confidence {_g(empirical['confidence'])}"
    )
    if power.canaries_needed is not None:
        need = f"refuting {_g(tested)} needs canaries.count={power.canaries_needed}"
    else:
        need = f"no feasible canary count refutes {_g(tested)}"
    if not power.can_refute:
        detail = (
            f"inconclusive: {reach}, and the tightest analytical epsilon {_g(tested)} is above "
            f"it, so no outcome could have failed this check (lower bound {_g(lower)}, estimate "
            f"{_g(empirical.get('epsilon_estimate'))}); {need}"
        )
        return Check(name, title, NA, detail, evidence)
    problems = []
    if lower > claimed * (1 + 1e-9):
        problems.append(
            f"the empirical lower bound {_g(lower)} exceeds the analytical epsilon {_g(claimed)}"
        )
    elif finite and lower > min(finite) * (1 + 1e-9):
        problems.append(
            f"the empirical lower bound {_g(lower)} exceeds the recomputed epsilon "
            f"{_g(min(finite))}"
        )
    passed = f"lower bound {_g(lower)} <= analytical epsilon {_g(claimed)}; {reach}"
    return _outcome(name, title, problems, passed, evidence)


def consistency_audit(
    run: RunFiles,
    acc: AccountingAudit,
    empirical: Mapping[str, Any] | None = None,
    empirical_reason: str = "",
) -> list[Check]:
    """Every consistency check of a run with a DP claim, in the order of the module table.

    Args:
        run: The run's files.
        acc: Its accounting audit (:func:`fedpriv.audit.accounting_audit`).
        empirical: The empirical audit's result, or None.
        empirical_reason: Why there is no empirical result (shown as the check's n/a reason).

    Returns:
        The checks.
    """
    return [
        check_sampling(run),
        check_mechanism(run),
        check_noise(run),
        check_denominator(run),
        check_rounds(run),
        check_delta(run, acc.delta, acc.delta_source),
        check_replay(run),
        check_reported_epsilon(run, acc),
        check_accountant_bounds(acc),
        check_empirical(empirical, acc, empirical_reason),
    ]
