"""Calibration is one-sided: epsilon(z) <= target, epsilon(0.995 z) > target, checked with the
libraries called directly."""

import dp_accounting
import pytest
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from fedpriv.accounting import calibrate_noise
from fedpriv.errors import ConfigError

NR = dp_accounting.NeighboringRelation


def rdp_poisson(q, z, t, delta):
    acc = rdp_privacy_accountant.RdpAccountant()
    acc.compose(
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), t
        )
    )
    return acc.get_epsilon(delta)


@pytest.mark.parametrize("target", [1.0, 2.0, 4.0, 8.0])
def test_rdp_calibration_is_one_sided_and_tight(target):
    q, t, delta = 0.01, 1000, 1e-5
    z = calibrate_noise(target, delta, t, sampling="poisson", sampling_rate=q)
    assert rdp_poisson(q, z, t, delta) <= target
    assert rdp_poisson(q, 0.995 * z, t, delta) > target


def test_pld_calibration_is_one_sided():
    q, t, delta, target = 0.2, 5, 1e-5, 1.0
    z = calibrate_noise(target, delta, t, sampling_rate=q, accountant="pld")

    def pld(noise):
        acc = pld_privacy_accountant.PLDAccountant()
        acc.compose(
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(noise)), t
            )
        )
        return acc.get_epsilon(delta)

    assert pld(z) <= target < pld(0.995 * z)
    # PLD is tighter than RDP, so it needs less noise for the same target.
    assert z < calibrate_noise(target, delta, t, sampling_rate=q, accountant="rdp")


def test_fixed_cohort_calibration_uses_halved_noise_multiplier():
    n, m, t, delta, target = 1000, 100, 50, 1e-5, 4.0
    z = calibrate_noise(target, delta, t, sampling="fixed", population=n, cohort_size=m)

    def rdp(noise):
        acc = rdp_privacy_accountant.RdpAccountant(neighboring_relation=NR.REPLACE_ONE)
        acc.compose(
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.SampledWithoutReplacementDpEvent(
                    n, m, dp_accounting.GaussianDpEvent(noise / 2)
                ),
                t,
            )
        )
        return acc.get_epsilon(delta)

    assert rdp(z) <= target < rdp(0.995 * z)


def test_example_level_calibration():
    z = calibrate_noise(
        3.0, 1e-6, 20, steps=10, example_sampling_rate=0.02, unit="example", sampling="full"
    )
    assert rdp_poisson(0.02, z, 200, 1e-6) <= 3.0 < rdp_poisson(0.02, 0.995 * z, 200, 1e-6)


def test_unattainable_target_names_target_epsilon():
    with pytest.raises(ConfigError) as err:
        calibrate_noise(1e-6, 1e-5, 100, sampling_rate=0.1)
    assert err.value.field == "target_epsilon"
    assert "max_noise" in err.value.message
    with pytest.raises(ConfigError) as err:
        calibrate_noise(0.5, 1e-5, 1000, sampling_rate=0.5, max_noise=2.0)
    assert err.value.field == "target_epsilon"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"target_epsilon": 0.0}, "target_epsilon"),
        ({"target_epsilon": -1.0}, "target_epsilon"),
        ({"delta": 1.0}, "delta"),
        ({"delta": 0.0}, "delta"),
        ({"sampling_rate": 0.0}, "sampling_rate"),
        ({"sampling_rate": 1.01}, "sampling_rate"),
        ({"rounds": 0}, "rounds"),
        ({"accountant": "moments"}, "accountant"),
        ({"max_noise": -3.0}, "max_noise"),
        ({"sampling": "fixed", "population": 10, "cohort_size": 20}, "cohort_size"),
        (
            {"sampling": "fixed", "population": 10, "cohort_size": 2, "accountant": "pld"},
            "accountant",
        ),
    ],
)
def test_invalid_inputs_name_the_argument(kwargs, field):
    args = {"target_epsilon": 1.0, "delta": 1e-5, "rounds": 10, "sampling_rate": 0.1, **kwargs}
    with pytest.raises(ConfigError) as err:
        calibrate_noise(**args)
    assert err.value.field == field
