"""Strong composition and the moments accountant (Abadi et al. 2016, Figure 2's analyses),
checked against dp_accounting's independent implementations and closed forms."""

import math

import pytest
from dp_accounting.pld import accountant as pld_accountant
from dp_accounting.pld import common, privacy_loss_mechanism

from fedpriv.accounting import epsilon, poisson_events
from fedpriv.accounting.composition import (
    advanced_composition,
    gaussian_delta,
    gaussian_epsilon,
    moments_accountant_epsilon,
    poisson_amplification,
    strong_composition_epsilon,
)
from fedpriv.errors import ConfigError


@pytest.mark.parametrize("sigma", [0.5, 1.0, 4.0])
@pytest.mark.parametrize("eps", [0.0, 0.5, 2.0, 6.0])
def test_gaussian_delta_equals_dp_accountings_gaussian_privacy_loss(sigma, eps):
    loss = privacy_loss_mechanism.GaussianPrivacyLoss(sigma, 1.0, pessimistic_estimate=False)
    expected = loss.get_delta_for_epsilon(eps)
    assert gaussian_delta(sigma, eps) == pytest.approx(expected, rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("delta", [1e-3, 1e-5, 1e-9])
def test_gaussian_epsilon_inverts_gaussian_delta(delta):
    eps = gaussian_epsilon(4.0, delta)
    assert gaussian_delta(4.0, eps) == pytest.approx(delta, rel=1e-6)
    # Tighter than the classical calibration sigma = sqrt(2 ln(1.25/delta)) / eps.
    assert eps < math.sqrt(2 * math.log(1.25 / delta)) / 4.0


def test_poisson_amplification_closed_form():
    assert poisson_amplification(1.0, 1e-6, 1.0) == pytest.approx((1.0, 1e-6))
    eps, delta = poisson_amplification(1.0, 1e-6, 0.01)
    assert eps == pytest.approx(math.log(1 + 0.01 * (math.e - 1))) and delta == 1e-8


@pytest.mark.parametrize("k, eps, delta", [(10, 0.1, 0.0), (30, 0.05, 1e-7), (50, 0.2, 0.0)])
def test_advanced_composition_bounds_the_optimal_composition(k, eps, delta):
    total_delta = 1e-5
    drv, d = advanced_composition(eps, delta, k, total_delta - k * delta)
    assert d == pytest.approx(total_delta)
    assert drv == pytest.approx(
        math.sqrt(2 * k * math.log(1 / (total_delta - k * delta))) * eps + k * eps * math.expm1(eps)
    )
    # Kairouz, Oh, Viswanath 2015 (Theorem 3.3) is the exact optimum: DRV is never below it.
    optimal = pld_accountant.advanced_composition(
        common.DifferentialPrivacyParameters(eps, delta), k, total_delta
    )
    assert optimal is not None and drv >= optimal - 1e-12


def test_strong_composition_spends_exactly_delta_and_bounds_pld_from_above():
    res = strong_composition_epsilon(0.01, 4.0, 1_000, 1e-5)
    assert res.delta == pytest.approx(1e-5, rel=1e-9)
    assert res.step_delta == pytest.approx(0.01 * res.gaussian_delta)
    assert res.gaussian_delta == pytest.approx(gaussian_delta(4.0, res.gaussian_epsilon), rel=1e-6)
    assert res.epsilon > epsilon(poisson_events(0.01, 4.0, 1_000), 1e-5, "pld")
    # The optimised split is no worse than an even one.
    even = advanced_composition(
        *poisson_amplification(gaussian_epsilon(4.0, 0.5e-5 / 10.0), 0.5e-5 / 10.0, 0.01),
        1_000,
        0.5e-5,
    )[0]
    assert res.epsilon <= even + 1e-9


def test_moments_accountant_closed_form_without_sampling():
    # q = 1: RDP of the Gaussian is alpha / (2 sigma^2) per step (Mironov 2017, Prop. 7).
    sigma, steps, delta = 10.0, 20, 1e-5
    expected = min(
        steps * a / (2 * sigma**2) + math.log(1 / delta) / (a - 1) for a in range(2, 257)
    )
    assert moments_accountant_epsilon(1.0, sigma, steps, delta) == pytest.approx(expected, rel=1e-9)


def test_moments_accountant_reproduces_abadi_et_al_and_is_looser_than_rdp():
    ma = moments_accountant_epsilon(0.01, 4.0, 10_000, 1e-5)
    assert ma == pytest.approx(1.26, rel=0.05)  # Abadi et al. 2016, Section 3.1
    assert ma >= epsilon(poisson_events(0.01, 4.0, 10_000), 1e-5, "rdp")


@pytest.mark.parametrize(
    "args, field",
    [
        ((0.0, 4.0, 10, 1e-5), "sampling_rate"),
        ((0.01, -1.0, 10, 1e-5), "noise_multiplier"),
        ((0.01, 4.0, 0, 1e-5), "steps"),
        ((0.01, 4.0, 10, 1.5), "delta"),
    ],
)
def test_bad_arguments_raise_config_error(args, field):
    for fn in (strong_composition_epsilon, moments_accountant_epsilon):
        with pytest.raises(ConfigError) as err:
            fn(*args)
        assert err.value.field == field
