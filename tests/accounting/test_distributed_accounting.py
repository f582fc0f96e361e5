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
    subsampled_rdp,
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


def _library_wor_gaussian(z, population, cohort, orders):
    """dp_accounting's RDP of a fixed cohort with Gaussian noise (replace-one)."""
    import dp_accounting
    from dp_accounting.rdp import rdp_privacy_accountant

    acc = rdp_privacy_accountant.RdpAccountant(
        orders=list(orders), neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE
    )
    acc.compose(
        dp_accounting.SampledWithoutReplacementDpEvent(
            population, cohort, dp_accounting.GaussianDpEvent(z / 2)
        )
    )
    return np.array(acc._rdp, dtype=np.float64)


@pytest.mark.parametrize(
    "z,population,cohort", [(0.8, 500, 10), (1.0, 1000, 100), (4.5, 1000, 100)]
)
def test_sampling_bound_matches_dp_accounting_for_the_gaussian(z, population, cohort):
    # Above order 256 dp_accounting evaluates the same general theorem (Wang, Balle,
    # Kasiviswanathan 2019) for the Gaussian; below it a tighter Gaussian-only bound, which the
    # general bound may not undercut.
    from dp_accounting.rdp.rdp_privacy_accountant import DEFAULT_RDP_ORDERS, compute_epsilon

    orders = np.asarray(DEFAULT_RDP_ORDERS, np.float64)
    library = _library_wor_gaussian(z, population, cohort, orders)
    ours = subsampled_rdp(orders, lambda js: 2.0 * js / z**2, cohort / population)
    high = orders > 256
    np.testing.assert_allclose(ours[high], library[high], rtol=1e-9)
    assert np.all(ours >= library * (1 - 1e-9))
    assert np.all(ours <= 2.0 * np.maximum(orders, 2.0) / z**2 + 1e-12)  # never above unsampled
    eps_lib = compute_epsilon(orders, 100 * library, 1e-4)[0]
    eps_ours = compute_epsilon(orders, 100 * ours, 1e-4)[0]
    assert eps_lib * (1 - 1e-9) <= eps_ours <= 1.15 * eps_lib


def test_sampling_everyone_is_the_unsampled_mechanism():
    # gamma = 1: the mechanism's own RDP at integer orders; below 2 its value at 2; at 2.5 the
    # chord of (alpha - 1) eps(alpha) between 2 and 3: (0.6 + 1.8) / 2 / 1.5 = 0.8.
    orders = np.array([1.5, 2.0, 2.5, 7.0, 64.0])
    ours = subsampled_rdp(orders, lambda js: 0.3 * js, 1.0)
    np.testing.assert_allclose(ours, [0.6, 0.6, 0.8, 2.1, 19.2], rtol=1e-12)


@pytest.mark.parametrize("kind", ["skellam", "discrete_gaussian"])
def test_amplified_distributed_rounds_approach_the_central_fixed_cohort(kind):
    # 100 of 1,000 clients, 100 rounds at z = 4.5. With a huge scale, the distributed bound is
    # the general sampling theorem applied to the Gaussian: within 15% of dp_accounting's
    # epsilon for the central mechanism, and far below the same rounds without amplification.
    z, n, m = 4.5, 1000, 100

    def ledger(amplification, scale):
        noise = DistributedNoise(kind, z, 1.0, scale, m, 1024, 32, amplification)
        rec = dict(
            _record(kind),
            population=n,
            cohort_size=m,
            noise_multiplier=z,
            noise_std=z,
            **noise.record(),
        )
        return [rec] * 100

    gaussian = dict(
        format=1,
        round=0,
        mechanism="gaussian",
        unit="user",
        sampling="fixed",
        population=n,
        cohort_size=m,
        noise_multiplier=z,
        clip_norm=1.0,
        noise_std=z,
    )
    central = epsilon([gaussian] * 100, 1e-4, "rdp")
    amplified = epsilon(ledger("sampling", 1e6), 1e-4, "rdp")
    assert central < amplified < 1.15 * central
    assert epsilon(ledger("sampling", 50.0), 1e-4, "rdp") > amplified  # coarse scale costs
    assert epsilon(ledger("none", 1e6), 1e-4, "rdp") > 3 * amplified


def test_amplification_field_is_validated_and_optional():
    rec = _record()
    assert RoundEvent.from_dict(rec).amplification == "none"
    old = {k: v for k, v in rec.items() if k != "amplification"}  # ledgers written before it
    assert RoundEvent.from_dict(old).amplification is None
    assert "amplification" not in RoundEvent.from_dict(old).to_dict()
    assert epsilon([old] * 3, 1e-5, "rdp") == epsilon([rec] * 3, 1e-5, "rdp")
    with pytest.raises(ConfigError, match="amplification"):
        RoundEvent.from_dict(dict(rec, amplification="poisson"))
    with pytest.raises(ConfigError, match="needs fixed cohorts"):
        RoundEvent.from_dict(_record(sampling="poisson") | {"amplification": "sampling"})
    gaussian = dict(format=1, round=0, mechanism="gaussian", unit="user", sampling="full")
    gaussian["noise_multiplier"] = 1.0
    with pytest.raises(ConfigError, match="only for distributed"):
        RoundEvent.from_dict(dict(gaussian, amplification="none"))
