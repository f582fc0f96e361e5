"""EpsilonTracker: round-by-round epsilon equals epsilon() of the ledger so far."""

import math

import numpy as np
import pytest
from dp_accounting.rdp import rdp_privacy_accountant

from fedpriv.accounting import (
    DeltaWarning,
    EpsilonTracker,
    epsilon,
    example_dp_events,
    fixed_cohort_events,
    full_participation_events,
    poisson_events,
)
from fedpriv.accounting._rdp import _dp_accounting_epsilon
from fedpriv.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the:UserWarning")


def _ledger():
    # Noise, rate and both change mid-run, then return to the first setting.
    return (
        poisson_events(0.02, 1.0, 4)
        + poisson_events(0.02, 1.5, 3)
        + poisson_events(0.05, 0.9, 3)
        + poisson_events(0.02, 1.0, 3)
    )


@pytest.mark.parametrize("accountant", ["rdp", "opacus_rdp"])
def test_tracker_equals_epsilon_of_every_prefix(accountant):
    events = _ledger()
    tracker = EpsilonTracker(1e-5, accountant)
    values = [tracker.add(ev.to_dict()) for ev in events]
    for t, value in enumerate(values, start=1):
        assert value == pytest.approx(epsilon(events[:t], 1e-5, accountant), rel=1e-9), t
    assert all(b >= a for a, b in zip(values[:-1], values[1:], strict=True))
    assert tracker.rounds == len(events) and tracker.epsilon == values[-1]


def _amplified_banded_records(rounds, groups):
    # Banded MF amplified by cyclic Poisson sampling: one Poisson-sampled release on each
    # round of group 0, nothing released by the other rounds (increment 0).
    return [
        {
            "format": 1,
            "round": t,
            "mechanism": "gaussian_mf",
            "unit": "user",
            "sampling": "cyclic_poisson",
            "sampling_rate": 0.1,
            "population": 1000,
            "cohort_size": 10.0,
            "noise_multiplier": 0.85,
            "clip_norm": 1.0,
            "noise_std": 0.85,
            "steps": 1,
            "strategy": "banded",
            "strategy_digest": "a45f3fce935a61a6",
            "min_separation": groups,
            "max_participations": -(-rounds // groups),
            "run_sensitivity": 1.0,
            "sensitivity_increment": 1.0 if (t - 1) % groups == 0 else 0.0,
        }
        for t in range(1, rounds + 1)
    ]


@pytest.mark.parametrize("kind", ["poisson", "full", "amplified"])
def test_pld_tracker_equals_epsilon_of_every_prefix(kind):
    # The tracker reuses one-round PLDs and finished groups; a setting seen before (the
    # last group) must reuse the cache and still give dp_accounting's number exactly.
    if kind == "poisson":
        events = (
            poisson_events(0.05, 2.0, 2) + poisson_events(0.05, 3.0, 2) + poisson_events(0.05, 2.0, 2)
        )
    elif kind == "full":
        events = full_participation_events(3.0, 2) + full_participation_events(4.0, 2)
    else:
        events = _amplified_banded_records(7, 3)
    tracker = EpsilonTracker(1e-6, "pld")
    values = [tracker.add(ev) for ev in events]
    for t, value in enumerate(values, start=1):
        assert value == epsilon(events[:t], 1e-6, "pld")
    assert all(b >= a for a, b in zip(values[:-1], values[1:], strict=True))


def test_fixed_cohort_and_example_level_trackers():
    events = fixed_cohort_events(200, 20, 1.5, 4)
    tracker = EpsilonTracker(1e-5)
    values = [tracker.add(ev) for ev in events]
    for t, value in enumerate(values, start=1):
        assert value == pytest.approx(epsilon(events[:t], 1e-5, "rdp"), rel=1e-9)
    events = example_dp_events(1.0, 5, 0.02, 6)
    tracker = EpsilonTracker(1e-6, "rdp")
    assert tracker.extend(events) == pytest.approx(epsilon(events, 1e-6, "rdp"), rel=1e-9)


def test_vectorised_conversion_matches_dp_accounting():
    orders = np.asarray(rdp_privacy_accountant.DEFAULT_RDP_ORDERS, dtype=float)
    rng = np.random.default_rng(0)
    for scale in (1e-6, 1e-3, 0.1, 1.0, 30.0):
        rdp = scale * orders * rng.uniform(0.5, 1.5)
        rdp[:3] = np.inf  # dropped orders
        for delta in (1e-5, 1e-8):
            expected, _ = rdp_privacy_accountant.compute_epsilon(orders, rdp, delta)
            assert _dp_accounting_epsilon(orders, rdp, delta) == pytest.approx(expected, rel=1e-12)


def test_tracker_refuses_changes_of_relation_and_unsupported_accountants():
    tracker = EpsilonTracker(1e-5)
    tracker.add(poisson_events(0.1, 1.0, 1)[0])
    with pytest.raises(ConfigError, match="replace-one"):
        tracker.add(fixed_cohort_events(10, 1, 1.0, 1)[0])
    with pytest.raises(ConfigError) as err:
        EpsilonTracker(1e-5, "pld").add(fixed_cohort_events(10, 1, 1.0, 1)[0])
    assert err.value.field == "accountant"
    with pytest.raises(ConfigError) as err:
        EpsilonTracker(1e-5).add({**poisson_events(0.1, 1.0, 1)[0].to_dict(), "sampling_rate": 2.0})
    assert err.value.field == "ledger[0].sampling_rate"
    with pytest.raises(ConfigError, match="delta"):
        EpsilonTracker(1.5)
    with pytest.raises(ConfigError, match="accountant"):
        EpsilonTracker(1e-5, "gdp")


def test_tracker_no_noise_state_and_warning():
    tracker = EpsilonTracker(1e-5)
    tracker.add(poisson_events(0.1, 1.0, 1)[0])
    assert math.isinf(tracker.add(poisson_events(0.1, 0.0, 1)[0]))
    assert math.isinf(tracker.add(poisson_events(0.1, 1.0, 1)[0]))
    events = poisson_events(0.1, 1.0, 5, population=10)
    with pytest.warns(DeltaWarning):
        EpsilonTracker(0.2).add(events[0])
    tracker = EpsilonTracker(1e-3)
    tracker.extend(events)
    again = EpsilonTracker.from_state_dict(tracker.state_dict())
    assert again.epsilon == tracker.epsilon and again.rounds == 5
