"""The estimators of the empirical privacy audit, against independent sources."""

import json
import math

import numpy as np
import pytest
import scipy.integrate
import scipy.stats

from fedpriv.audit.empirical import (
    clopper_pearson_lower,
    clopper_pearson_upper,
    empirical_audit,
    empirical_warnings,
    gaussian_fit_epsilon,
    gaussian_pair_delta,
    gaussian_pair_epsilon,
    membership_lower_bound,
    threshold_epsilons,
)
from fedpriv.errors import ConfigError


def balle_wang_delta(eps, mu):
    """Analytic Gaussian mechanism (Balle & Wang 2018, Theorem 8), written out here."""
    norm = scipy.stats.norm
    return norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2)


# --- Clopper-Pearson ----------------------------------------------------------------------------


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (7, 50), (49, 50), (50, 50), (120, 400)])
@pytest.mark.parametrize("alpha", [0.025, 0.05])
def test_clopper_pearson_matches_scipy_exact_interval(k, n, alpha):
    # A two-sided exact interval at level 1 - 2 alpha has one-sided tails alpha each.
    ci = scipy.stats.binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact")
    assert float(clopper_pearson_lower(k, n, alpha)) == pytest.approx(ci.low, abs=1e-10)
    assert float(clopper_pearson_upper(k, n, alpha)) == pytest.approx(ci.high, abs=1e-10)


def test_clopper_pearson_closed_forms_and_table_value():
    # No successes: the upper bound solves (1 - p)^n = alpha ("rule of three" for n = 100).
    assert float(clopper_pearson_upper(0, 100, 0.05)) == pytest.approx(1 - 0.05 ** (1 / 100))
    assert float(clopper_pearson_lower(100, 100, 0.05)) == pytest.approx(0.05 ** (1 / 100))
    assert float(clopper_pearson_lower(0, 100, 0.05)) == 0.0
    assert float(clopper_pearson_upper(100, 100, 0.05)) == 1.0
    # Clopper & Pearson's exact 95% interval for 5 of 20: (0.0866, 0.4910).
    assert float(clopper_pearson_lower(5, 20, 0.025)) == pytest.approx(0.0866, abs=5e-5)
    assert float(clopper_pearson_upper(5, 20, 0.025)) == pytest.approx(0.4910, abs=5e-5)


def test_clopper_pearson_is_vectorised_and_monotone():
    k = np.arange(0, 31)
    low, high = clopper_pearson_lower(k, 30, 0.05), clopper_pearson_upper(k, 30, 0.05)
    assert low.shape == high.shape == (31,)
    assert np.all(np.diff(low) > 0) and np.all(np.diff(high) > 0)
    assert np.all(low <= k / 30) and np.all(high >= k / 30)


# --- the pair of Gaussians ----------------------------------------------------------------------


@pytest.mark.parametrize("mu", [0.1, 0.5, 1.0, 3.0, 8.0])
@pytest.mark.parametrize("eps", [0.0, 0.3, 1.0, 4.0])
def test_equal_variances_are_the_analytic_gaussian_mechanism(mu, eps):
    expected = balle_wang_delta(eps, mu)
    for std, shift in ((1.0, 0.0), (0.01, 2.0), (5.0, -3.0)):
        got = gaussian_pair_delta(eps, shift + mu * std, std, shift, std)
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-300)
        # Symmetric for equal variances.
        assert gaussian_pair_delta(eps, shift, std, shift + mu * std, std) == pytest.approx(
            expected, rel=1e-9, abs=1e-300
        )


@pytest.mark.parametrize("mu", [0.35, 1.0, 2.0])
@pytest.mark.parametrize("delta", [1e-3, 1e-5])
def test_equal_variance_epsilon_matches_dp_accounting(mu, delta):
    from dp_accounting.pld import privacy_loss_distribution

    pld = privacy_loss_distribution.from_gaussian_mechanism(
        1.0 / mu, sensitivity=1.0, value_discretization_interval=1e-4
    )
    expected = pld.get_epsilon_for_delta(delta)
    got = gaussian_pair_epsilon(mu, 1.0, 0.0, 1.0, delta)
    assert got == pytest.approx(expected, abs=1e-3)
    assert balle_wang_delta(got, mu) == pytest.approx(delta, rel=1e-6)


@pytest.mark.parametrize(
    "m1,s1,m0,s0,eps",
    [(0.5, 1.3, 0.0, 1.0, 0.5), (1.0, 0.7, 0.0, 1.0, 1.0), (0.2, 1.1, 0.0, 1.0, 0.2),
     (2.0, 0.5, 0.0, 1.0, 3.0), (0.0, 1.02, 0.0, 1.0, 0.01)],
)  # fmt: skip
def test_unequal_variances_match_numerical_integration(m1, s1, m0, s0, eps):
    # delta = integral of (p - e^eps q)_+ over the line, on a fine grid (independent of the
    # closed-form region the implementation uses).
    x = np.linspace(-40.0, 40.0, 800_001)
    p = scipy.stats.norm.pdf(x, m1, s1)
    q = scipy.stats.norm.pdf(x, m0, s0)
    expected = scipy.integrate.trapezoid(np.maximum(p - math.exp(eps) * q, 0.0), x)
    assert gaussian_pair_delta(eps, m1, s1, m0, s0) == pytest.approx(expected, rel=1e-5)


def test_pair_epsilon_is_symmetric_monotone_and_meets_delta():
    delta = 1e-5
    eps = gaussian_pair_epsilon(0.3, 1.2, 0.0, 1.0, delta)
    assert eps == pytest.approx(gaussian_pair_epsilon(0.0, 1.0, 0.3, 1.2, delta), rel=1e-9)
    worst = max(
        gaussian_pair_delta(eps, 0.3, 1.2, 0.0, 1.0), gaussian_pair_delta(eps, 0.0, 1.0, 0.3, 1.2)
    )
    assert worst == pytest.approx(delta, rel=1e-6)
    # Unequal variances leak more than equal ones with the same means.
    assert eps > gaussian_pair_epsilon(0.3, 1.0, 0.0, 1.0, delta)
    gaps = [gaussian_pair_epsilon(m, 1.0, 0.0, 1.0, delta) for m in (0.1, 0.5, 1.0, 2.0, 4.0)]
    assert all(a < b for a, b in zip(gaps, gaps[1:]))
    assert gaussian_pair_epsilon(0.0, 1.0, 0.0, 1.0, delta) == 0.0


def test_pair_epsilon_rejects_bad_input():
    with pytest.raises(ValueError, match="standard deviations"):
        gaussian_pair_epsilon(0.0, 0.0, 1.0, 1.0, 1e-5)
    with pytest.raises(ValueError, match="delta"):
        gaussian_pair_epsilon(0.0, 1.0, 1.0, 1.0, 1.0)


# --- the lower bound ----------------------------------------------------------------------------


def _gaussian_mechanism_samples(mu, n, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(mu, 1.0, n), rng.normal(0.0, 1.0, n)


@pytest.mark.parametrize("mu", [0.5, 1.0, 2.0, 4.0, 6.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lower_bound_is_below_the_true_epsilon(mu, seed):
    delta = 1e-5
    inserted, unseen = _gaussian_mechanism_samples(mu, 1000, seed)
    true_eps = gaussian_pair_epsilon(mu, 1.0, 0.0, 1.0, delta)
    bound = membership_lower_bound(inserted, unseen, delta, 0.95)
    assert 0.0 <= bound.epsilon < true_eps
    if mu >= 4.0:  # a large gap is detected
        assert bound.epsilon > 2.0 and bound.direction in ("positive", "negative")


def test_lower_bound_without_signal_is_small_and_without_data_is_zero():
    rng = np.random.default_rng(3)
    bound = membership_lower_bound(rng.normal(size=500), rng.normal(size=500), 1e-5)
    assert bound.epsilon < 0.5
    assert membership_lower_bound([0.1], [0.0, 0.2], 1e-5).epsilon == 0.0


def test_threshold_epsilons_both_directions():
    inserted = np.array([1.0, 2.0, 3.0, 4.0])
    unseen = np.array([-4.0, -3.0, -2.0, -1.0])
    pos, neg = threshold_epsilons(inserted, unseen, [0.0, 10.0], 1e-3, 0.05)
    # Perfect separation at 0: TPR = TNR = 1 with n = 4.
    tpr_low = 0.05 ** (1 / 4)
    fpr_high = 1 - 0.05 ** (1 / 4)
    assert pos[0] == pytest.approx(math.log((tpr_low - 1e-3) / fpr_high))
    assert neg[0] == pytest.approx(math.log((tpr_low - 1e-3) / fpr_high))
    assert pos[1] == -np.inf  # no inserted canary above 10: vacuous


def test_estimate_tracks_the_gaussian_mechanism():
    delta = 1e-4
    for mu in (1.0, 3.0):
        inserted, unseen = _gaussian_mechanism_samples(mu, 20_000, 5)
        true_eps = gaussian_pair_epsilon(mu, 1.0, 0.0, 1.0, delta)
        assert gaussian_fit_epsilon(inserted, unseen, delta) == pytest.approx(true_eps, rel=0.15)
    assert gaussian_fit_epsilon([0.1], [0.0, 0.1], delta) is None


# --- the run directory --------------------------------------------------------------------------


def _write(run_dir, inserted, unseen, **extra):
    record = {
        "format": 1,
        "count": len(inserted),
        "unseen": len(unseen),
        "dimension": 1000,
        "observation": "final_delta",
        "inserted_cosines": list(map(float, inserted)),
        "unseen_cosines": list(map(float, unseen)),
        "participations": [1] * len(inserted),
        **extra,
    }
    (run_dir / "canaries.json").write_text(json.dumps(record))
    return record


def test_empirical_audit_reads_the_run_directory(tmp_path):
    assert empirical_audit(tmp_path, 1e-5) is None
    inserted, unseen = _gaussian_mechanism_samples(5.0, 400, 7)
    _write(tmp_path, inserted / 100, unseen / 100)
    out = empirical_audit(tmp_path, 1e-5, confidence=0.9)
    assert {
        "epsilon_estimate",
        "epsilon_lower_bound",
        "confidence",
        "method",
        "inserted_cosines",
        "unseen_cosines",
        "num_inserted",
        "num_unseen",
    } <= set(out)
    assert out["num_inserted"] == out["num_unseen"] == 400 and out["confidence"] == 0.9
    true_eps = gaussian_pair_epsilon(5.0, 1.0, 0.0, 1.0, 1e-5)
    assert 1.0 < out["epsilon_lower_bound"] < true_eps
    assert out["epsilon_estimate"] == pytest.approx(true_eps, rel=0.5)
    json.dumps(out)  # plain JSON types


def test_empirical_audit_states_what_it_can_refute(tmp_path):
    # The audit guide's run (docs/guides/audit.md): 300 inserted and 300 unseen canaries at
    # delta 1e-4; the bound is computed on 150 + 150 of them, so it cannot pass
    # ln(0.9757 / 0.0243) = 3.69.
    inserted, unseen = _gaussian_mechanism_samples(1.4, 300, 8)
    _write(tmp_path, inserted / 100, unseen / 100)
    plain = empirical_audit(tmp_path, 1e-4)
    assert plain["bounding_inserted"] == plain["bounding_unseen"] == 150
    assert plain["refutable_epsilon"] == pytest.approx(math.log(0.9757 / 0.0243), abs=5e-3)
    assert plain["epsilon_lower_bound"] <= plain["refutable_epsilon"]
    assert "can_refute" not in plain and "canaries_needed" not in plain
    within = empirical_audit(tmp_path, 1e-4, epsilon=2.79)
    assert within["epsilon_tested"] == 2.79 and within["can_refute"] is True
    assert within["canaries_needed"] <= 300
    above = empirical_audit(tmp_path, 1e-4, epsilon=5.8)
    assert above["can_refute"] is False and above["canaries_needed"] > 300
    assert empirical_audit(tmp_path, 1e-4, epsilon=math.inf)["canaries_needed"] is None
    json.dumps(above)


def test_empirical_warnings_name_the_reach_and_an_estimate_above_the_claim(tmp_path):
    # A Gaussian mechanism with mu = 1.4 (epsilon about 5.7 at delta 1e-4), audited against
    # a claim of 2.79: the estimate sees it, the lower bound of 300 canaries does not.
    inserted, unseen = _gaussian_mechanism_samples(1.4, 300, 8)
    _write(tmp_path, inserted / 100, unseen / 100)
    result = empirical_audit(tmp_path, 1e-4, epsilon=2.79)
    assert result["epsilon_lower_bound"] < 2.79 < result["epsilon_estimate"]
    (warning,) = empirical_warnings(result, 2.79)
    assert warning.startswith("the empirical epsilon estimate") and "not a bound" in warning
    above = empirical_audit(tmp_path, 1e-4, epsilon=20.0)
    warnings = empirical_warnings(above, 20.0)
    assert len(warnings) == 1 and "could not have refuted it" in warnings[0]
    assert "no feasible canary count" in warnings[0]
    assert empirical_warnings(result, None) == []


@pytest.mark.parametrize(
    "text,fragment",
    [
        ('{"format": 1, "count": 2, "unseen": 2, "inserted_cosines": [0.1, 0.2', "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"format": 7}', "format"),
        ('{"format": 1, "count": -1, "unseen": 0}', "'count'"),
        (
            '{"format": 1, "count": 3, "unseen": 1, "inserted_cosines": [0.1, 0.2],'
            ' "unseen_cosines": [0.0]}',
            "has 2 values",
        ),
        (
            '{"format": 1, "count": 1, "unseen": 1, "inserted_cosines": ["a"],'
            ' "unseen_cosines": [0.0]}',
            "finite numbers",
        ),
        (
            '{"format": 1, "count": 1, "unseen": 1, "inserted_cosines": [3.0],'
            ' "unseen_cosines": [0.0]}',
            "[-1, 1]",
        ),
    ],
)
def test_bad_canaries_file_names_the_file(tmp_path, text, fragment):
    (tmp_path / "canaries.json").write_text(text)
    with pytest.raises(ConfigError) as err:
        empirical_audit(tmp_path, 1e-5)
    assert err.value.field.endswith("canaries.json") and fragment in err.value.message


def test_bad_delta_or_confidence(tmp_path):
    with pytest.raises(ConfigError, match="delta"):
        empirical_audit(tmp_path, 0.0)
    with pytest.raises(ConfigError, match="confidence"):
        empirical_audit(tmp_path, 1e-5, confidence=1.0)
