"""RDP of the Skellam and distributed discrete Gaussian mechanisms, their ledger records and
their use by epsilon, the tracker and calibration."""

import math

import numpy as np
import pytest

from fedpriv.accounting import EpsilonTracker, RoundEvent, epsilon, supported_accountants
from fedpriv.accounting.distributed import (
    calibrate,
    ddg_tau,
    discrete_gaussian_sum_rdp,
    skellam_rdp,
)
from fedpriv.errors import ConfigError
from fedpriv.privacy.distributed import DistributedNoise

ORDERS = np.array([1.5, 2.0, 4.0, 16.0, 64.0])


def test_skellam_closed_form():
    # alpha=2, D2=10, D1=30, mu=100: 2*100/200 + min((3*100 + 180)/(4e4), 90/200) = 1.012
    assert skellam_rdp(np.array([2.0]), 10.0, 30.0, 100.0)[0] == pytest.approx(1.012, rel=1e-12)
    # Non-integer orders use the next integer (RDP is non-decreasing in the order).
    assert skellam_rdp(np.array([1.5]), 10.0, 30.0, 100.0)[0] == pytest.approx(1.012)


def test_single_discrete_gaussian_is_the_gaussian_rdp():
    # n = 1: tau = 0 and the bound is alpha D2^2 / (2 sigma^2) (Canonne et al. 2020, Thm. 4).
    assert ddg_tau(3.0, 1) == 0.0
    rdp = discrete_gaussian_sum_rdp(ORDERS, 5.0, 25.0, 9.0, 1, 100)
    np.testing.assert_allclose(rdp, ORDERS * 25.0 / 18.0, rtol=1e-12)


def test_tau_closed_form():
    sigma = 0.3
    expected = 10 * math.exp(-2 * math.pi**2 * sigma**2 / 2)
    assert ddg_tau(sigma, 2) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("z", [0.7, 1.0, 2.5])
def test_bounds_approach_the_central_gaussian_as_the_scale_grows(z):
    gaussian = ORDERS / (2 * z**2)
    gaps = []
    for scale in (1e2, 1e3, 1e5):
        d, n = 1024, 10
        d2 = scale + math.sqrt(d)
        d1 = min(d2**2, math.sqrt(d) * d2)
        mu = (z * d2) ** 2
        sk = skellam_rdp(np.ceil(ORDERS), d2, d1, mu)
        dg = discrete_gaussian_sum_rdp(ORDERS, d2, d1, mu / n, n, d)
        assert np.all(sk >= np.ceil(ORDERS) / (2 * z**2) - 1e-12)  # never below the limit
        assert np.all(dg >= gaussian - 1e-12)
        gaps.append(float(np.max(sk - np.ceil(ORDERS) / (2 * z**2))))
        if scale == 1e5:
            np.testing.assert_allclose(dg, gaussian, rtol=1e-6)
            np.testing.assert_allclose(sk, np.ceil(ORDERS) / (2 * z**2), rtol=1e-6)
    assert gaps[0] > gaps[1] > gaps[2]


def _record(kind="skellam", sampling="fixed", z=1.0, rnd=0):
    noise = DistributedNoise(kind, z, 1.0, 200.0, 10, 1024, 20)
    return {
        "format": 1,
        "round": rnd,
        "unit": "user",
        "sampling": sampling,
        "population": 100,
        "cohort_size": 10,
        "sampling_rate": 0.1 if sampling == "poisson" else None,
        "noise_multiplier": z,
        "clip_norm": 1.0,
        "noise_std": z,
        **noise.record(),
    }


@pytest.mark.parametrize("kind", ["skellam", "discrete_gaussian"])
def test_ledger_epsilon_tracker_and_unsupported_accountants(kind):
    ledger = [_record(kind, rnd=r) for r in range(5)]
    eps = epsilon(ledger, 1e-5, "rdp")
    tracker = EpsilonTracker(1e-5, "rdp")
    assert tracker.extend(ledger) == pytest.approx(eps, rel=1e-9)
    assert supported_accountants(ledger) == ["rdp"]
    for acc in ("pld", "prv", "opacus_rdp"):
        with pytest.raises(ConfigError, match="supported by rdp"):
            epsilon(ledger, 1e-5, acc)
        with pytest.raises(ConfigError, match="supported by rdp"):
            EpsilonTracker(1e-5, acc).add(ledger[0])
    assert RoundEvent.from_dict(ledger[0]).to_dict()["mechanism"] == kind


def test_replace_one_costs_more_than_add_remove():
    fixed = epsilon([_record(sampling="fixed")] * 3, 1e-5, "rdp")
    poisson = epsilon([_record(sampling="poisson")] * 3, 1e-5, "rdp")
    assert fixed > poisson


def test_inconsistent_record_is_rejected():
    bad = dict(_record(), noise_multiplier=2.0, noise_std=2.0)
    with pytest.raises(ConfigError, match="noise_multiplier"):
        RoundEvent.from_dict(bad)
    missing = _record()
    del missing["l2_sensitivity"]
    with pytest.raises(ConfigError, match="l2_sensitivity"):
        RoundEvent.from_dict(missing)


def test_calibration_is_one_sided():
    def eps_of(z):
        noise = DistributedNoise("skellam", z, 1.0, 300.0, 10, 1024, 20)
        return epsilon([_record_from(noise)] * 20, 1e-5, "rdp")

    def _record_from(noise):
        return dict(
            _record(),
            noise_multiplier=noise.noise_multiplier,
            noise_std=noise.noise_multiplier,
            **noise.record(),
        )

    z = calibrate(8.0, 1e-5, eps_of)
    assert eps_of(z) <= 8.0 < eps_of(z / (1 + 2e-4))
