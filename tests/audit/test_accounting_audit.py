"""The accounting audit: epsilon recomputed from the ledger, against the run and closed forms."""

from __future__ import annotations

import json
import math

import pytest

from fedpriv import accounting
from fedpriv.audit import (
    accounting_audit,
    analytic_gaussian_epsilon,
    audit_run,
    group_rounds,
    read_run,
)
from fedpriv.audit.accounting import (
    NOT_INDEPENDENT,
    NOT_SUPPORTED,
    PLD_DISCRETIZATION,
    PRV_EPS_ERROR,
    RECOMPUTED,
)
from tests.audit import runs


def _exact_gaussian_epsilon(z: float, delta: float) -> float:
    """Balle and Wang 2018, Theorem 8, in 60-digit arithmetic by bisection on
    ``delta(eps) = Phi(1/(2z) - eps z) - e^eps Phi(-1/(2z) - eps z)``."""
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 60
    z = mp.mpf(z)

    def delta_of(eps):
        return mp.ncdf(1 / (2 * z) - eps * z) - mp.e**eps * mp.ncdf(-1 / (2 * z) - eps * z)

    lo, hi = mp.mpf(0), mp.mpf(1)
    while delta_of(hi) > delta:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if delta_of(mid) > delta else (lo, mid)
    return float(hi)


@pytest.mark.parametrize("name", ["poisson", "fixed", "example", "adaptive", "resumed"])
def test_recomputed_epsilon_agrees_with_what_the_run_reported(honest_run, name):
    run = read_run(honest_run(name))
    acc = accounting_audit(run)
    reported = json.loads((run.path / "summary.json").read_text())["epsilon"]
    assert reported and acc.accountant == "rdp"
    for row in acc.rows:
        if row.accountant in reported:
            assert row.status == RECOMPUTED and row.agrees, row
            assert row.recomputed == pytest.approx(reported[row.accountant], rel=1e-6)
    expected = ["rdp"] if name == "fixed" else ["rdp", "pld", "prv", "opacus_rdp"]
    assert sorted(acc.recomputed()) == sorted(expected)
    if name == "fixed":  # sampling without replacement: dp_accounting's RDP only, said so
        for row in acc.rows[1:]:
            assert row.status == NOT_SUPPORTED and "without replacement" in row.note
    assert acc.records == len(run.ledger) and acc.groups == 1


def test_replayed_rounds_are_accounted(honest_run):
    run = read_run(honest_run("resumed"))
    replayed = [r for r in run.ledger if r.get("replay")]
    assert len(replayed) == 3 and len(run.ledger) == 9
    acc = accounting_audit(run)
    # Nine sampled Gaussian rounds, not six: the same library on a ledger without the replays
    # gives less.
    once = [r for r in run.ledger if not r.get("replay")]
    fewer = accounting.epsilon(once, acc.delta, "rdp")
    assert acc.row("rdp").recomputed > fewer * 1.05


def test_distributed_dp_is_recomputed_by_fedpriv_analysis_and_said_so(honest_run):
    acc = accounting_audit(read_run(honest_run("distributed")))
    rdp = acc.row("rdp")
    assert rdp.status == NOT_INDEPENDENT and rdp.agrees
    assert "fedpriv.accounting.distributed" in rdp.library
    for name in ("pld", "prv", "opacus_rdp"):
        row = acc.row(name)
        assert row.status == NOT_SUPPORTED and "no library" in row.note
    assert any("not independently" in note for note in acc.notes)


def test_distributed_epsilon_below_the_gaussian_floor_fails(honest_run, monkeypatch):
    run = read_run(honest_run("distributed"))
    acc = accounting_audit(run)
    # The floor comes from dp_accounting (fixed cohorts, sampling without replacement).
    assert acc.gaussian_floor is not None and 0 < acc.gaussian_floor < acc.row("rdp").recomputed
    checks = {c.name: c for c in audit_run(run.path).checks}
    assert checks["accountant_bounds"].status == "pass"
    assert "dp_accounting's epsilon of the Gaussian" in checks["accountant_bounds"].detail

    # A distributed analysis that understates the cost (a tenth of the RDP) and a run that
    # reported it: the floor, computed without fedpriv's analysis, catches both.
    from fedpriv.accounting import distributed

    real = distributed.round_rdp
    monkeypatch.setattr(distributed, "round_rdp", lambda ev, orders: real(ev, orders) / 10)
    check = {c.name: c for c in audit_run(run.path).checks}["accountant_bounds"]
    assert check.status == "fail"
    assert "rdp recomputed" in check.detail and "cannot beat" in check.detail


@pytest.mark.parametrize("z,rounds,delta", [(2.0, 1, 1e-5), (0.8, 1, 1e-6), (5.0, 10, 1e-5)])
def test_full_participation_gaussian_against_the_closed_form(tmp_path, z, rounds, delta):
    records = [
        ev.to_dict()
        for ev in accounting.full_participation_events(z, rounds, population=1000, clip_norm=1.0)
    ]
    for i, rec in enumerate(records):
        rec["round"] = i + 1
    run = read_run(runs.synthetic_run(tmp_path / "r", records, delta=delta))
    acc = accounting_audit(run)
    exact = _exact_gaussian_epsilon(z / math.sqrt(rounds), delta)
    assert acc.exact == pytest.approx(exact, rel=1e-9)
    assert analytic_gaussian_epsilon(z / math.sqrt(rounds), delta) == pytest.approx(exact, 1e-9)
    eps = acc.recomputed()
    k = rounds  # composed mechanisms
    assert exact * (1 - 1e-9) <= eps["pld"] <= exact + k * PLD_DISCRETIZATION
    assert abs(eps["prv"] - exact) <= 2 * PRV_EPS_ERROR
    assert eps["rdp"] >= exact and eps["opacus_rdp"] >= exact
    checks = {c.name: c for c in audit_run(run.path).checks}
    assert checks["accountant_bounds"].status == "pass"
    assert "exact" in checks["accountant_bounds"].detail


def test_thousand_round_ledger_is_one_composition_and_passes(tmp_path):
    records = runs.poisson_records(1000)
    run_dir = runs.synthetic_run(tmp_path / "r", records, delta=1e-5)
    run = read_run(run_dir)
    assert len(group_rounds(run.events)) == 1
    report = audit_run(run_dir)
    assert report.verdict == "PASS", [c for c in report.checks if c.status == "fail"]
    acc = report.accounting
    assert acc.records == 1000 and acc.groups == 1 and acc.compositions == 1000
    assert acc.row("rdp").recomputed == pytest.approx(1.7117701662, rel=1e-6)


def test_changing_parameters_make_groups_and_match_the_library(tmp_path):
    first = runs.poisson_records(30, q=0.02, z=1.0)
    second = runs.poisson_records(20, q=0.05, z=1.5)
    for i, rec in enumerate(second):
        rec["round"] = 31 + i
    records = first + second
    run = read_run(runs.synthetic_run(tmp_path / "r", records, delta=1e-5))
    acc = accounting_audit(run)
    assert acc.groups == 2
    for name in ("rdp", "pld", "prv", "opacus_rdp"):
        assert acc.row(name).recomputed == pytest.approx(
            accounting.epsilon(records, 1e-5, name), rel=1e-9
        )


def test_rounds_without_noise_have_no_finite_guarantee(tmp_path):
    records = runs.poisson_records(3, z=0.0)
    run = read_run(runs.synthetic_run(tmp_path / "r", records, delta=1e-5))
    acc = accounting_audit(run)
    assert all(math.isinf(v) for v in acc.recomputed().values())
    assert all(row.agrees for row in acc.rows)


def test_a_ledger_mixing_relations_is_not_recomputed_and_fails_sampling(tmp_path):
    poisson = runs.poisson_records(2)
    fixed = [ev.to_dict() for ev in accounting.fixed_cohort_events(1000, 10, 1.1, 1, clip_norm=1.0)]
    fixed[0]["round"] = 3
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    runs.write_lines(run_dir / "ledger.jsonl", poisson + fixed)
    runs.write_lines(run_dir / "metrics.jsonl", [{"round": r} for r in (1, 2, 3)])
    report = audit_run(run_dir)
    assert all(row.status == NOT_SUPPORTED for row in report.accounting.rows)
    assert all("mixes" in row.note for row in report.accounting.rows)
    failed = {c.name for c in report.failed}
    assert "sampling" in failed and report.exit_status == 1
