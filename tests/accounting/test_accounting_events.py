"""Ledger records: validation, JSON round trip, grouping, mapping to dp_accounting events."""

import json
import warnings

import dp_accounting
import numpy as np
import pytest

from fedpriv.accounting import (
    DeltaWarning,
    RoundEvent,
    as_events,
    default_delta,
    example_dp_events,
    fixed_cohort_events,
    full_participation_events,
    group_events,
    neighboring_relation,
    plan_events,
    poisson_events,
    supported_accountants,
    to_dp_event,
    warn_if_delta_too_large,
)
from fedpriv.errors import ConfigError

RECORD = {
    "format": 1,
    "round": 7,
    "mechanism": "gaussian",
    "unit": "user",
    "sampling": "poisson",
    "sampling_rate": 0.01,
    "population": 1000,
    "cohort_size": 10,
    "noise_multiplier": 1.1,
    "clip_norm": 1.0,
    "noise_std": 1.1,
    "steps": 1,
    "example_sampling_rate": None,
    "realised_cohort": 9,
}


def test_record_round_trips_through_json():
    ev = RoundEvent.from_dict(json.loads(json.dumps(RECORD)))
    assert ev.to_dict() == RECORD
    assert RoundEvent.from_dict(ev.to_dict()) == ev


def test_realised_cohort_does_not_change_accounting():
    a = RoundEvent.from_dict(RECORD)
    b = RoundEvent.from_dict({**RECORD, "realised_cohort": 17})
    assert a.accounting_key() == b.accounting_key()
    assert a.dp_event() == b.dp_event()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"sampling_rate": 0.0}, "sampling_rate"),
        ({"sampling_rate": 1.5}, "sampling_rate"),
        ({"sampling_rate": None}, "sampling_rate"),
        ({"noise_multiplier": -0.1}, "noise_multiplier"),
        ({"noise_multiplier": float("nan")}, "noise_multiplier"),
        ({"noise_multiplier": True}, "noise_multiplier"),
        ({"noise_std": 2.0}, "noise_std"),  # != noise_multiplier * clip_norm
        ({"unit": "group"}, "unit"),
        ({"sampling": "shuffle"}, "sampling"),
        ({"mechanism": "exponential"}, "mechanism"),
        ({"format": 2}, "format"),
        ({"steps": 3}, "steps"),  # unit=user runs one aggregation per round
        ({"example_sampling_rate": 0.1}, "example_sampling_rate"),
        ({"seed": 3}, "seed"),  # unknown to format 1
    ],
)
def test_invalid_record_names_the_field(change, field):
    rec = {**RECORD, **change}
    if change.get("sampling_rate", 0) is None:
        del rec["sampling_rate"]
    with pytest.raises(ConfigError) as err:
        as_events([RECORD, rec])
    assert err.value.field == f"ledger[1].{field}"


def test_adaptive_clipping_record():
    """Andrew et al. 2021, Thm 1: update noise z_u and count noise sigma_b together are one
    Gaussian with z = (z_u^-2 + (2 sigma_b)^-2)^-1/2; the record's noise_std is z_u * C."""
    z, sigma_b, clip = 1.0, 2.5, 0.7
    z_update = (z**-2 - (2 * sigma_b) ** -2) ** -0.5
    rec = {
        **RECORD,
        "noise_multiplier": z,
        "clip_norm": clip,
        "noise_std": float(np.float32(z_update * clip)),
        "count_noise_std": sigma_b,
    }
    ev = RoundEvent.from_dict(rec)
    assert ev.to_dict() == rec
    assert (
        ev.dp_event()
        == RoundEvent.from_dict(
            {**RECORD, "noise_multiplier": z, "clip_norm": None, "noise_std": None}
        ).dp_event()
    )
    with pytest.raises(ConfigError, match="noise_std"):
        RoundEvent.from_dict({**rec, "noise_std": z * clip})  # the un-split noise
    with pytest.raises(ConfigError, match="count_noise_std"):
        RoundEvent.from_dict({**rec, "count_noise_std": 0.4})  # 2 sigma_b < z


def test_missing_required_field():
    rec = dict(RECORD)
    del rec["noise_multiplier"]
    with pytest.raises(ConfigError, match="noise_multiplier"):
        as_events([rec])


def test_fixed_cohort_record_checks():
    rec = {**RECORD, "sampling": "fixed", "sampling_rate": 0.01, "cohort_size": 10}
    ev = RoundEvent.from_dict(rec)
    assert ev.neighboring_relation == "replace-one"
    with pytest.raises(ConfigError, match="cohort_size"):
        RoundEvent.from_dict({**rec, "cohort_size": 1001})
    with pytest.raises(ConfigError, match="sampling_rate"):
        RoundEvent.from_dict({**rec, "sampling_rate": 0.02})  # != m / n
    with pytest.raises(ConfigError, match="population"):
        RoundEvent.from_dict({**rec, "population": None})


def test_mapping_to_dp_accounting_events():
    z = 1.3
    (p,) = poisson_events(0.02, z, 1)
    assert p.dp_event() == dp_accounting.PoissonSampledDpEvent(
        0.02, dp_accounting.GaussianDpEvent(z)
    )
    (f,) = fixed_cohort_events(500, 25, z, 1)
    assert f.dp_event() == dp_accounting.SampledWithoutReplacementDpEvent(
        500, 25, dp_accounting.GaussianDpEvent(z / 2)
    )
    (g,) = full_participation_events(z, 1)
    assert g.dp_event() == dp_accounting.GaussianDpEvent(z)
    (e,) = example_dp_events(z, 5, 0.03, 1)
    assert e.dp_event() == dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.03, dp_accounting.GaussianDpEvent(z)), 5
    )
    assert e.opacus_steps() == (z, 0.03, 5)
    assert g.opacus_steps() == (z, 1.0, 1)
    with pytest.raises(ConfigError, match="rdp"):
        f.opacus_steps()


def test_grouping_is_by_consecutive_accounting_parameters():
    evs = poisson_events(0.01, 1.0, 3) + poisson_events(0.01, 2.0, 2) + poisson_events(0.01, 1.0, 4)
    groups = group_events(evs)
    assert [(g.noise_multiplier, c) for g, c in groups] == [(1.0, 3), (2.0, 2), (1.0, 4)]
    event = to_dp_event(poisson_events(0.01, 1.0, 10_000))
    assert event == dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.01, dp_accounting.GaussianDpEvent(1.0)), 10_000
    )


def test_plan_builders_write_consistent_records():
    evs = poisson_events(0.01, 1.1, 5, population=1000, clip_norm=2.0)
    assert [e.round for e in evs] == list(range(5))
    assert all(e.noise_std == pytest.approx(2.2) for e in evs)
    assert evs[0].cohort_size == pytest.approx(10.0)
    fixed = fixed_cohort_events(1000, 10, 1.1, 2)
    assert fixed[0].sampling_rate == pytest.approx(0.01)
    with pytest.raises(ConfigError) as err:
        plan_events(1.0, 0, sampling_rate=0.1)
    assert err.value.field == "rounds"
    with pytest.raises(ConfigError) as err:
        plan_events(1.0, 3, sampling="fixed", population=10, cohort_size=11)
    assert err.value.field == "cohort_size"


def test_ledgers_mixing_units_or_relations_are_refused():
    with pytest.raises(ConfigError, match="replace-one"):
        as_events(poisson_events(0.1, 1.0, 2) + fixed_cohort_events(10, 1, 1.0, 2))
    with pytest.raises(ConfigError, match="unit"):
        as_events(poisson_events(0.1, 1.0, 2) + example_dp_events(1.0, 2, 0.1, 2))


def test_supported_accountants_and_relation():
    assert supported_accountants(poisson_events(0.1, 1.0, 2)) == ["rdp", "pld", "prv", "opacus_rdp"]
    assert supported_accountants(example_dp_events(1.0, 2, 0.1, 2)) == [
        "rdp",
        "pld",
        "prv",
        "opacus_rdp",
    ]
    assert supported_accountants(fixed_cohort_events(10, 2, 1.0, 2)) == ["rdp"]
    assert neighboring_relation(fixed_cohort_events(10, 2, 1.0, 2)) == (
        dp_accounting.NeighboringRelation.REPLACE_ONE
    )
    assert neighboring_relation(poisson_events(0.1, 1.0, 2)) == (
        dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
    )


@pytest.mark.parametrize(
    ("population", "expected"),
    [
        (1, 1e-1),
        (9, 1e-2),
        (10, 1e-2),
        (11, 1e-3),
        (999, 1e-4),
        (1000, 1e-4),
        (1001, 1e-5),
        (3400, 1e-5),
        (10**6, 1e-7),
    ],
)
def test_default_delta(population, expected):
    d = default_delta(population)
    assert d == pytest.approx(expected, rel=1e-12)
    assert d <= 1 / (10 * population)  # at least a factor 10 below 1/N
    assert 10 * d > 1 / (10 * population)  # the largest power of ten that is


def test_default_delta_rejects_bad_population():
    with pytest.raises(ConfigError, match="population"):
        default_delta(0)


def test_delta_warning():
    with pytest.warns(DeltaWarning, match="1/100"):
        assert warn_if_delta_too_large(0.01, 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not warn_if_delta_too_large(1e-3, 100)
        assert not warn_if_delta_too_large(0.5, None)
