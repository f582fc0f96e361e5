"""Epsilon against independent sources: the libraries called directly, closed forms,
explicit neighbouring pairs, and the other library's analysis."""

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting.pld import pld_privacy_accountant, privacy_loss_distribution
from dp_accounting.rdp import rdp_privacy_accountant
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis import rdp as opacus_rdp
from scipy import integrate, optimize, stats

from fedpriv.accounting import (
    ACCOUNTANTS,
    example_dp_events,
    fixed_cohort_events,
    full_participation_events,
    poisson_events,
)
from fedpriv.accounting import epsilon as fp_epsilon
from fedpriv.errors import ConfigError

NR = dp_accounting.NeighboringRelation
pytestmark = [
    pytest.mark.filterwarnings("ignore:Optimal order is the:UserWarning"),
    # opacus's PRV evaluates log(1 - q) at q = 1 when called directly.
    pytest.mark.filterwarnings("ignore:divide by zero encountered in log:RuntimeWarning"),
]


# ------------------------------------------------------------- the libraries, called directly


def _sgm(q, z, count):
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), count
    )


def lib_rdp(event, delta, relation=NR.ADD_OR_REMOVE_ONE):
    acc = rdp_privacy_accountant.RdpAccountant(neighboring_relation=relation)
    acc.compose(event)
    return acc.get_epsilon(delta)


def lib_pld(event, delta):
    acc = pld_privacy_accountant.PLDAccountant()
    acc.compose(event)
    return acc.get_epsilon(delta)


def lib_opacus_rdp(z, q, steps, delta):
    acc = RDPAccountant()
    for _ in range(3):  # a history built step by step, as opacus itself does, then scaled
        acc.step(noise_multiplier=z, sample_rate=q)
    acc.history = [(z, q, steps)]
    return acc.get_epsilon(delta)


def lib_prv(z, q, steps, delta):
    acc = PRVAccountant()
    acc.history = [(z, q, steps)]
    return acc.get_epsilon(delta)


def gaussian_exact_epsilon(mu, delta):
    """Exact epsilon at delta of the Gaussian mechanism with sensitivity / sigma = mu.

    Balle and Wang, "Improving the Gaussian Mechanism for Differential Privacy", ICML 2018,
    Theorem 8: delta(eps) = Phi(mu/2 - eps/mu) - e^eps Phi(-mu/2 - eps/mu). T-fold
    composition of Gaussians with ratio mu_1 is one Gaussian with mu = sqrt(T) mu_1 (Dong,
    Roth, Su, "Gaussian Differential Privacy", 2019, Corollary 3.3).
    """

    def d(eps):
        return stats.norm.cdf(mu / 2 - eps / mu) - math.exp(
            eps + stats.norm.logcdf(-mu / 2 - eps / mu)
        )

    return optimize.brentq(lambda e: d(e) - delta, 0.0, 1e3, xtol=1e-12)


# ------------------------------------------------------------------ agreement with libraries

RDP_GRID = [
    (1e-3, 0.5, 10_000, 1e-5),
    (1e-3, 4.0, 10_000, 1e-6),
    (0.01, 1.0, 10_000, 1e-5),
    (0.01, 2.0, 300, 1e-6),
    (0.1, 0.7, 1000, 1e-5),
    (0.3, 4.0, 10_000, 1e-6),
    (1.0, 1.0, 50, 1e-5),
    (1.0, 4.0, 10_000, 1e-6),
]
# PLD and PRV are slower: few points, small T where q is large.
PLD_GRID = [(1e-3, 0.5, 10_000, 1e-5), (0.01, 1.0, 1000, 1e-6), (1.0, 2.0, 200, 1e-5)]
PRV_GRID = [(0.01, 1.0, 10_000, 1e-5), (0.1, 2.0, 100, 1e-6), (1.0, 4.0, 20, 1e-5)]


@pytest.mark.parametrize(("q", "z", "t", "delta"), RDP_GRID)
def test_rdp_and_opacus_rdp_match_the_libraries(q, z, t, delta):
    events = poisson_events(q, z, t)
    assert fp_epsilon(events, delta, "rdp") == pytest.approx(
        lib_rdp(_sgm(q, z, t), delta), rel=1e-6
    )
    assert fp_epsilon(events, delta, "opacus_rdp") == pytest.approx(
        lib_opacus_rdp(z, q, t, delta), rel=1e-6
    )


@pytest.mark.parametrize(("q", "z", "t", "delta"), PLD_GRID)
def test_pld_matches_the_library_and_is_below_rdp(q, z, t, delta):
    events = poisson_events(q, z, t)
    pld = fp_epsilon(events, delta, "pld")
    assert pld == pytest.approx(lib_pld(_sgm(q, z, t), delta), rel=1e-6)
    assert pld <= lib_rdp(_sgm(q, z, t), delta) * (1 + 1e-3)


@pytest.mark.parametrize(("q", "z", "t", "delta"), PRV_GRID)
def test_prv_matches_opacus(q, z, t, delta):
    prv = fp_epsilon(poisson_events(q, z, t), delta, "prv")
    assert prv == pytest.approx(lib_prv(z, q, t, delta), rel=1e-6)


# Points where dp_accounting evaluates every one of its orders (see the next test).
CROSS_GRID = [p for p in RDP_GRID if p[0] <= 0.01 or p[0] == 1.0]


@pytest.mark.parametrize(("q", "z", "t", "delta"), CROSS_GRID)
def test_dp_accounting_rdp_against_opacus_rdp(q, z, t, delta):
    """Two RDP implementations with the same conversion; dp_accounting's orders contain
    opacus's, so it is never above, and equal when the optimal order is on both grids (up to
    the two libraries' series truncations for fractional orders, ~1e-6 relative)."""
    events = poisson_events(q, z, t)
    ours = fp_epsilon(events, delta, "rdp")
    theirs = fp_epsilon(events, delta, "opacus_rdp")
    assert ours <= theirs * (1 + 1e-5)
    acc = rdp_privacy_accountant.RdpAccountant()
    acc.compose(_sgm(q, z, t))
    _, order = acc.get_epsilon_and_optimal_order(delta)
    if order in RDPAccountant.DEFAULT_ALPHAS:
        assert ours == pytest.approx(theirs, rel=1e-5)


@pytest.mark.parametrize(
    ("q", "z", "t", "delta"), [(0.1, 0.7, 1000, 1e-5), (0.3, 4.0, 10_000, 1e-6)]
)
def test_dp_accounting_rdp_drops_small_orders_at_large_rates(q, z, t, delta):
    """At these rates dp_accounting's series for fractional orders near 1 does not converge
    and it drops those orders (logging a warning), which only loosens its bound: opacus,
    which keeps them, reports a smaller epsilon, and the tight PLD a smaller one still."""
    events = poisson_events(q, z, t)
    ours = fp_epsilon(events, delta, "rdp")
    theirs = fp_epsilon(events, delta, "opacus_rdp")
    pld = fp_epsilon(events, delta, "pld")
    assert pld < theirs < ours < 1.2 * theirs


@pytest.mark.parametrize(
    ("q", "z", "t", "delta"), [(0.01, 1.0, 1000, 1e-5), (0.05, 0.8, 200, 1e-6)]
)
def test_pld_against_prv(q, z, t, delta):
    """Two numerical composition methods (dp_accounting PLD, opacus PRV) agree to PRV's
    eps_error of 0.01 (PRV reports estimate + 0.01)."""
    events = poisson_events(q, z, t)
    pld = fp_epsilon(events, delta, "pld")
    prv = fp_epsilon(events, delta, "prv")
    assert -0.005 <= prv - pld <= 0.02


@pytest.mark.parametrize(("z", "t", "delta"), [(1.0, 1, 1e-5), (2.0, 25, 1e-6), (4.0, 40, 1e-5)])
def test_full_participation_against_the_exact_gaussian(z, t, delta):
    exact = gaussian_exact_epsilon(math.sqrt(t) / z, delta)
    events = full_participation_events(z, t)
    pld = fp_epsilon(events, delta, "pld")
    assert exact * (1 - 1e-9) <= pld <= exact * (1 + 1e-3) + 1e-3
    assert fp_epsilon(events, delta, "rdp") >= exact
    assert fp_epsilon(events, delta, "opacus_rdp") >= exact
    prv = fp_epsilon(events, delta, "prv")
    assert exact <= prv <= exact + 0.011 + 1e-3 * exact


def test_poisson_with_rate_one_is_full_participation():
    for acc in ("rdp", "pld", "opacus_rdp"):
        a = fp_epsilon(poisson_events(1.0, 1.5, 40), 1e-5, acc)
        b = fp_epsilon(full_participation_events(1.5, 40), 1e-5, acc)
        assert a == pytest.approx(b, rel=1e-6), acc


def test_example_level_matches_the_libraries():
    z, k, qe, t, delta = 1.0, 10, 0.05, 100, 1e-6
    events = example_dp_events(z, k, qe, t, sampling="poisson", sampling_rate=0.1)
    assert fp_epsilon(events, delta, "rdp") == pytest.approx(
        lib_rdp(_sgm(qe, z, k * t), delta), rel=1e-6
    )
    assert fp_epsilon(events, delta, "opacus_rdp") == pytest.approx(
        lib_opacus_rdp(z, qe, k * t, delta), rel=1e-6
    )
    assert fp_epsilon(events, delta, "pld") == pytest.approx(
        lib_pld(_sgm(qe, z, k * t), delta), rel=1e-6
    )


def test_heterogeneous_ledger_composes_every_run():
    events = poisson_events(0.01, 1.0, 300) + poisson_events(0.02, 2.0, 200)
    direct = dp_accounting.ComposedDpEvent([_sgm(0.01, 1.0, 300), _sgm(0.02, 2.0, 200)])
    assert fp_epsilon(events, 1e-5, "rdp") == pytest.approx(lib_rdp(direct, 1e-5), rel=1e-6)
    assert fp_epsilon(events, 1e-5, "pld") == pytest.approx(lib_pld(direct, 1e-5), rel=1e-6)
    acc = RDPAccountant()
    acc.history = [(1.0, 0.01, 300), (2.0, 0.02, 200)]
    assert fp_epsilon(events, 1e-5, "opacus_rdp") == pytest.approx(acc.get_epsilon(1e-5), rel=1e-6)


# -------------------------------------------------------------- Abadi et al. 2016, section 3.1


def test_abadi_et_al_2016_moments_accountant_example():
    """q = 0.01, sigma = 4, delta = 1e-5, 10,000 steps: epsilon ~ 1.26 with the moments
    accountant, far below strong composition.

    The moments accountant (Abadi et al. 2016, Theorem 2) converts with
    eps = min_lambda (T alpha(lambda) + log(1/delta)) / lambda over integer lambda, where
    alpha(lambda) = lambda * RDP(lambda + 1) of one step (Mironov 2017, Prop. 3 in RDP terms);
    here the RDP of one step comes from opacus, independently of dp_accounting. fedpriv's
    ``rdp`` uses the tighter conversion of Canonne, Kamath, Steinke 2020 (Prop. 12), so it
    must be below that value.
    """
    q, sigma, delta, steps = 0.01, 4.0, 1e-5, 10_000
    orders = np.arange(2.0, 65.0)
    rdp = np.asarray(
        opacus_rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=list(orders))
    )
    moments_eps = float(np.min(rdp + math.log(1 / delta) / (orders - 1)))
    assert moments_eps == pytest.approx(1.26, rel=0.05)

    events = poisson_events(q, sigma, steps)
    ours = fp_epsilon(events, delta, "rdp")
    assert 0.7 * moments_eps <= ours <= moments_eps

    # Strong composition (Dwork, Rothblum, Vadhan 2010; Dwork and Roth 2014, Thm 3.20):
    # T steps of (e, d)-DP are (sqrt(2T ln(1/d')) e + T e (e^e - 1), T d + d')-DP.
    # One step: the Gaussian mechanism is (e0, d0)-DP with e0 exact (Balle and Wang 2018),
    # and Poisson subsampling gives (log(1 + q(e^e0 - 1)), q d0) (Balle, Barthe, Gaboardi
    # 2018, Theorem 9). Split delta as d' = delta / 2, T q d0 = delta / 2.
    d_prime = delta / 2
    d0 = (delta - d_prime) / (steps * q)
    e0 = gaussian_exact_epsilon(1 / sigma, d0)
    e = math.log1p(q * math.expm1(e0))
    strong = math.sqrt(2 * steps * math.log(1 / d_prime)) * e + steps * e * math.expm1(e)
    assert strong > 10 * ours


# ------------------------------------------------------------------------- fixed-size cohorts


def _wor(n, m, sigma, t):
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.SampledWithoutReplacementDpEvent(n, m, dp_accounting.GaussianDpEvent(sigma)),
        t,
    )


def test_fixed_cohort_matches_the_library_with_halved_noise_multiplier():
    n, m, z, t, delta = 1000, 50, 1.2, 500, 1e-6
    ours = fp_epsilon(fixed_cohort_events(n, m, z, t), delta, "rdp")
    assert ours == pytest.approx(lib_rdp(_wor(n, m, z / 2, t), delta, NR.REPLACE_ONE), rel=1e-6)


@pytest.mark.parametrize(("n", "z", "t"), [(10, 2.0, 10), (7, 3.0, 30), (100, 1.0, 1)])
def test_whole_population_cohort_is_a_gaussian_with_sensitivity_2c(n, z, t):
    """m = n: every client every round. Replacing one client's update (norm <= C) by another
    moves the sum by up to 2C, so T rounds are one Gaussian mechanism with
    mu = 2C sqrt(T) / (zC) (Balle and Wang 2018, exact). The RDP bound must be at least that,
    equal to RDP of GaussianDpEvent(z/2) composed T times, and the un-halved reading must
    fall below the exact value (so this test can tell the two apart)."""
    delta = 1e-5
    exact = gaussian_exact_epsilon(2 * math.sqrt(t) / z, delta)
    ours = fp_epsilon(fixed_cohort_events(n, n, z, t), delta, "rdp")
    assert ours >= exact
    gauss_half = dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z / 2), t)
    assert ours == pytest.approx(lib_rdp(gauss_half, delta), rel=1e-9)
    # dp_accounting's own PLD for the Gaussian under replace-one (shift +-1, i.e. 2C).
    pld = pld_privacy_accountant.PLDAccountant(neighboring_relation=NR.REPLACE_ONE)
    pld.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), t))
    assert pld.get_epsilon(delta) == pytest.approx(exact, rel=1e-3, abs=1e-3)
    unhalved = lib_rdp(_wor(n, n, z, t), delta, NR.REPLACE_ONE)
    assert unhalved < exact


def _pair_epsilon(q, z, delta):
    """Exact epsilon of one round for an explicit replace-one pair: the differing client
    contributes +C in D and -C in D' (C = 1), all others 0. A fixed cohort holds it with
    probability q = m/n, so the outputs are P = (1-q) N(0, z^2) + q N(1, z^2) and
    Q = (1-q) N(0, z^2) + q N(-1, z^2); delta(eps) = int max(0, p - e^eps q) dx. Any
    neighbouring pair lower-bounds the mechanism's epsilon."""

    def p(x):
        return (1 - q) * stats.norm.pdf(x, 0, z) + q * stats.norm.pdf(x, 1, z)

    def r(x):
        return (1 - q) * stats.norm.pdf(x, 0, z) + q * stats.norm.pdf(x, -1, z)

    def hockey(eps):
        return integrate.quad(
            lambda x: max(0.0, p(x) - math.exp(eps) * r(x)),
            -40 * z,
            40 * z,
            points=[0.0],
            limit=400,
        )[0]

    return optimize.brentq(lambda e: hockey(e) - delta, 0.0, 60.0, xtol=1e-10)


@pytest.mark.parametrize(("n", "m", "z"), [(10, 5, 2.0), (10, 9, 2.0), (100, 30, 1.0)])
def test_fixed_cohort_one_round_is_above_an_explicit_neighbouring_pair(n, m, z):
    delta = 1e-5
    lower = _pair_epsilon(m / n, z, delta)
    ours = fp_epsilon(fixed_cohort_events(n, m, z, 1), delta, "rdp")
    assert ours >= lower
    if (n, m) != (100, 30):
        # The un-halved reading claims less than this pair already leaks.
        assert lib_rdp(_wor(n, m, z, 1), delta, NR.REPLACE_ONE) < lower


def test_fixed_cohort_many_rounds_is_above_an_explicit_neighbouring_pair():
    """T rounds of the pair above (fresh cohorts: independent rounds); its PLD with
    optimistic rounding lower-bounds the pair's own epsilon."""
    n, m, z, t, delta = 10, 5, 2.0, 10, 1e-5
    pair = privacy_loss_distribution.from_gaussian_mechanism(
        z,
        sampling_prob=m / n,
        pessimistic_estimate=False,
        use_connect_dots=False,
        neighboring_relation=NR.REPLACE_ONE,
    ).self_compose(t)
    lower = pair.get_epsilon_for_delta(delta)
    assert fp_epsilon(fixed_cohort_events(n, m, z, t), delta, "rdp") >= lower
    assert lib_rdp(_wor(n, m, z, t), delta, NR.REPLACE_ONE) < lower  # un-halved reading


@pytest.mark.parametrize("accountant", ["pld", "prv", "opacus_rdp"])
def test_fixed_cohort_refused_by_other_accountants(accountant):
    with pytest.raises(ConfigError) as err:
        fp_epsilon(fixed_cohort_events(100, 10, 1.0, 5), 1e-5, accountant)
    assert err.value.field == "accountant"
    assert "rdp" in err.value.message


# --------------------------------------------------------------------------- edge cases, input


def test_no_noise_is_infinite_and_empty_ledger_is_zero():
    for acc in ACCOUNTANTS:
        assert fp_epsilon(poisson_events(0.1, 0.0, 3), 1e-5, acc) == math.inf
        assert fp_epsilon([], 1e-5, acc) == 0.0
    assert fp_epsilon(fixed_cohort_events(10, 2, 0.0, 3), 1e-5, "rdp") == math.inf


def test_more_noise_less_epsilon_more_rounds_more_epsilon():
    for acc in ("rdp", "opacus_rdp", "pld"):
        a = fp_epsilon(poisson_events(0.01, 2.0, 100), 1e-5, acc)
        b = fp_epsilon(poisson_events(0.01, 2.4, 100), 1e-5, acc)
        c = fp_epsilon(poisson_events(0.01, 2.0, 200), 1e-5, acc)
        assert b < a < c


@pytest.mark.parametrize("delta", [0.0, 1.0, -1e-5, 2.0, float("nan")])
def test_bad_delta(delta):
    with pytest.raises(ConfigError) as err:
        fp_epsilon(poisson_events(0.1, 1.0, 3), delta, "rdp")
    assert err.value.field == "delta"


def test_unknown_accountant_lists_the_names():
    with pytest.raises(ConfigError) as err:
        fp_epsilon(poisson_events(0.1, 1.0, 3), 1e-5, "moments")
    assert err.value.field == "accountant"
    for name in ACCOUNTANTS:
        assert name in err.value.message


def test_dict_records_and_delta_warning():
    records = [ev.to_dict() for ev in poisson_events(0.1, 1.0, 5, population=50)]
    assert fp_epsilon(records, 1e-5, "rdp") == fp_epsilon(poisson_events(0.1, 1.0, 5), 1e-5, "rdp")
    with pytest.warns(UserWarning, match="1/population"):
        fp_epsilon(records, 0.05, "rdp")
