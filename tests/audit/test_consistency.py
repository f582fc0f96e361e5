"""The consistency audit: honest runs pass every check; each broken assumption fails its check."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import yaml

from fedpriv.audit import audit_run
from tests.audit import runs
from tests.audit.conftest import POISSON, Z


def _checks(run_dir: Path) -> dict:
    return {c.name: c for c in audit_run(run_dir).checks}


def _failed(run_dir: Path) -> set[str]:
    return {c.name for c in audit_run(run_dir).failed}


@pytest.mark.parametrize(
    "name", ["poisson", "fixed", "example", "adaptive", "resumed", "distributed"]
)
def test_honest_runs_pass_every_check(honest_run, name):
    report = audit_run(honest_run(name))
    assert report.verdict == "PASS" and report.exit_status == 0, [
        (c.name, c.detail) for c in report.failed
    ]
    checks = {c.name: c for c in report.checks}
    for always in ("sampling", "mechanism", "noise", "rounds", "delta", "replay"):
        assert checks[always].status == "pass", checks[always]
    assert checks["reported_epsilon"].status == "pass"
    if name == "example":
        assert checks["denominator"].status == "n/a" and "DP-SGD" in checks["denominator"].detail
    else:
        assert checks["denominator"].status == "pass"
    if name == "resumed":
        assert checks["replay"].evidence["replayed_records"] == 3
    assert checks["empirical"].status == "n/a"


@pytest.mark.parametrize(
    "overrides, unit, sampling",
    [
        (
            (
                "hierarchy=gateways",
                "hierarchy.gateways=10",
                "hierarchy.dp_unit=gateway",
                "sampling=poisson",
                "sampling.rate=0.5",
                "privacy.delta=1e-3",
            ),
            "gateway",
            "poisson",
        ),
        (("async=fedbuff", "async.concurrency=6", "async.buffer_size=4"), "user", "full"),
        (
            (
                "async=fedbuff",
                "async.concurrency=6",
                "async.buffer_size=4",
                "async.accounting=uniform_subset",
            ),
            "user",
            "fixed",
        ),
        (("availability=bernoulli", "availability.dropout=0.3", "rounds=6"), "user", "fixed"),
    ],
    ids=["gateway_level", "fedbuff", "fedbuff_uniform_subset", "fixed_cohort_dropout"],
)
def test_gateway_level_fedbuff_and_dropout_runs_are_audited_against_what_ran(
    tmp_path, overrides, unit, sampling
):
    run = runs.train(
        tmp_path / "run",
        "privacy=user_dp",
        "privacy.noise_multiplier=1.0",
        "privacy.target_epsilon=null",
        "rounds=4",
        *overrides,
    )
    report = audit_run(run)
    assert report.verdict == "PASS", [(c.name, c.detail) for c in report.failed]
    records = runs.lines(run / "ledger.jsonl")
    assert {r["unit"] for r in records} == {unit}
    assert {r["sampling"] for r in records} == {sampling}
    # Accounting gateways with the client population would overstate the sampling rate's
    # amplification: the audit reads the unit's own population.
    if unit == "gateway":
        for rec in records:
            rec["population"] = 20
        runs.write_lines(run / "ledger.jsonl", records)
        assert "sampling" in {c.name for c in audit_run(run).failed}


def test_dividing_by_the_realised_cohort_fails_the_denominator_check(tmp_path, monkeypatch):
    from fedpriv.privacy import aggregators
    from fedpriv.privacy.mechanisms import user_dp

    monkeypatch.setattr(user_dp, "dp_fedavg", runs.realised_count_aggregator(aggregators.dp_fedavg))
    run_dir = runs.train(tmp_path / "bug", "privacy=user_dp", *Z, *POISSON, "rounds=4")
    report = audit_run(run_dir)
    assert report.verdict == "FAIL" and report.exit_status == 1
    assert {c.name for c in report.failed} == {"denominator"}
    check = next(c for c in report.checks if c.name == "denominator")
    assert "realised count" in check.detail
    assert check.evidence["divided_by_realised_count"] >= 1
    assert "denominator" in report.verdict_line


def test_missing_ledger_rounds_fail_the_rounds_check(honest_run, tmp_path):
    run_dir = runs.copy_run(honest_run("poisson"), tmp_path / "r")
    ledger = runs.lines(run_dir / "ledger.jsonl")
    runs.write_lines(run_dir / "ledger.jsonl", [r for r in ledger if r["round"] != 2])
    checks = _checks(run_dir)
    assert checks["rounds"].status == "fail"
    assert "no ledger record: 2" in checks["rounds"].detail
    assert checks["rounds"].evidence["missing"] == [2]
    # The summary's count and epsilon no longer match the file either.
    assert checks["replay"].status == "fail" and checks["reported_epsilon"].status == "fail"


def test_noise_std_inconsistent_with_multiplier_and_clip_fails_the_noise_check(
    honest_run, tmp_path
):
    run_dir = runs.copy_run(honest_run("poisson"), tmp_path / "r")
    ledger = runs.lines(run_dir / "ledger.jsonl")
    ledger[1]["noise_std"] = ledger[1]["noise_std"] / 2
    runs.write_lines(run_dir / "ledger.jsonl", ledger)
    checks = _checks(run_dir)
    assert checks["noise"].status == "fail"
    assert "round 2: noise_std 0.5" in checks["noise"].detail
    assert {n for n, c in checks.items() if c.status == "fail"} == {"noise"}


def test_edited_summary_epsilon_fails_the_reported_epsilon_check(honest_run, tmp_path):
    run_dir = runs.copy_run(honest_run("poisson"), tmp_path / "r")
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["epsilon"]["rdp"] *= 0.5
    (run_dir / "summary.json").write_text(json.dumps(summary))
    checks = _checks(run_dir)
    assert checks["reported_epsilon"].status == "fail"
    assert checks["reported_epsilon"].detail.startswith("rdp: reported")
    assert {n for n, c in checks.items() if c.status == "fail"} == {"reported_epsilon"}


def test_a_second_record_without_replay_mark_fails_the_replay_check(honest_run, tmp_path):
    run_dir = runs.copy_run(honest_run("resumed"), tmp_path / "r")
    ledger = runs.lines(run_dir / "ledger.jsonl")
    marked = next(i for i, r in enumerate(ledger) if r.get("replay"))
    del ledger[marked]["replay"]
    runs.write_lines(run_dir / "ledger.jsonl", ledger)
    checks = _checks(run_dir)
    assert checks["replay"].status == "fail"
    assert "appears again without a replay mark" in checks["replay"].detail
    assert checks["rounds"].status == "fail"  # two records for one round


def test_summary_ledger_events_must_match_the_file(honest_run, tmp_path):
    run_dir = runs.copy_run(honest_run("resumed"), tmp_path / "r")
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["ledger_events"] -= 3
    summary["replayed_rounds"] = 0
    (run_dir / "summary.json").write_text(json.dumps(summary))
    check = _checks(run_dir)["replay"]
    assert check.status == "fail"
    assert "summary.json says 0 replayed rounds, the ledger marks 3" in check.detail


def _set_config(run_dir, group: str, key: str, value) -> None:
    """Edits ``group.key`` in a copied run's composed configuration."""
    cfg_path = run_dir / ".hydra" / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg[group][key] = value
    cfg_path.write_text(yaml.safe_dump(cfg))


def test_sampling_that_ran_differs_from_the_ledger(honest_run, tmp_path):
    run_dir = runs.copy_run(honest_run("poisson"), tmp_path / "r")
    _set_config(run_dir, "sampling", "kind", "fixed")
    check = _checks(run_dir)["sampling"]
    assert check.status == "fail"
    assert "'fixed' sampling ran but 3 of 3 ledger records say 'poisson'" in check.detail


def test_amplification_the_configuration_turned_off_fails_the_mechanism_check(honest_run, tmp_path):
    run_dir = runs.copy_run(honest_run("distributed"), tmp_path / "r")
    assert all(r["amplification"] == "sampling" for r in runs.lines(run_dir / "ledger.jsonl"))
    _set_config(run_dir, "privacy", "amplification", "none")
    check = _checks(run_dir)["mechanism"]
    assert check.status == "fail"
    assert "privacy.amplification=none but 3 of 3 records" in check.detail


def test_constant_realised_cohorts_under_poisson_accounting_fail(tmp_path):
    records = runs.poisson_records(30, q=0.05, population=200)
    for rec in records:
        rec["realised_cohort"] = 10
    check = _checks(runs.synthetic_run(tmp_path / "r", records, delta=1e-4))["sampling"]
    assert check.status == "fail" and "fixed-size cohorts accounted as Poisson" in check.detail


def test_run_without_a_denominator_metric_is_not_applicable(honest_run, tmp_path):
    run_dir = runs.copy_run(honest_run("poisson"), tmp_path / "r")
    rows = runs.lines(run_dir / "metrics.jsonl")
    for row in rows:
        del row["denominator"]
    runs.write_lines(run_dir / "metrics.jsonl", rows)
    check = _checks(run_dir)["denominator"]
    assert check.status == "n/a" and "before the aggregator reported" in check.detail


@pytest.mark.parametrize("unit", ["user", "example"])
def test_delta_not_below_one_over_population_fails(tmp_path, unit):
    if unit == "user":
        records = runs.poisson_records(3, q=0.1, population=100)
        extra, delta = {}, 0.02
    else:  # the units are the 1438 training examples, so delta 1e-3 is too large
        records = _example_records()
        extra, delta = {"data": {"train_examples": 1438}}, 1e-3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the library warns about the user-level delta too
        run_dir = runs.synthetic_run(tmp_path / "r", records, delta=delta, summary_extra=extra)
    check = _checks(run_dir)["delta"]
    assert check.status == "fail" and "is not below 1/population" in check.detail


def _example_records():
    from fedpriv import accounting

    events = accounting.plan_events(
        1.0,
        3,
        sampling="fixed",
        population=20,
        cohort_size=5,
        steps=14,
        example_sampling_rate=0.074,
        unit="example",
        clip_norm=1.0,
        first_round=1,
    )
    return [{**ev.to_dict(), "realised_cohort": 5} for ev in events]
