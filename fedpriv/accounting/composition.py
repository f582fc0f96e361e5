"""DP-SGD's epsilon by the analyses that came before RDP and PLD accounting.

Abadi et al. 2016 (Figure 2, Section 3.1) compare their moments accountant with the strong
composition theorem for Poisson-subsampled Gaussian steps (sampling rate q, noise multiplier
sigma, T steps). Both analyses live here, so the figure can set them beside the maintained
accountants (dp_accounting RDP and PLD, :func:`fedpriv.accounting.epsilon`):

* **Strong composition** (:func:`strong_composition_epsilon`): one step of DP-SGD is the
  Gaussian mechanism, with its exact (epsilon, delta) profile (the analytic Gaussian of Balle
  and Wang 2018, Theorem 8; tested against dp_accounting's), amplified by Poisson
  subsampling (Li, Qardaji, Su 2012; Balle, Barthe, Gaboardi 2018, Theorem 8), then composed
  over T steps with the advanced composition theorem of Dwork, Rothblum, Vadhan 2010
  (Theorem III.3). The total delta is split between the steps and the theorem's slack and the
  split is optimised, so the bound is the best this chain of theorems gives.
* **Moments accountant** (:func:`moments_accountant_epsilon`): the log moments of the
  privacy loss at integer orders (Abadi et al. 2016, Section 3.2; the log moment at lambda
  is lambda times the Renyi divergence of order lambda + 1 of the subsampled Gaussian,
  computed by dp_accounting as in Mironov, Talwar, Zhang 2019), converted with the paper's
  tail bound (Theorem 2), not the tighter conversion dp_accounting's ``RdpAccountant`` uses.

Neither is a maintained library function: dp_accounting's optimal composition (Kairouz, Oh,
Viswanath 2015) is exact but sums O(T^2) binomial terms, out of reach at T = 10,000.

>>> from fedpriv.accounting.composition import moments_accountant_epsilon
>>> round(moments_accountant_epsilon(0.01, 4.0, 10_000, 1e-5), 2)   # Abadi et al.: 1.26
1.26
"""

from __future__ import annotations

import dataclasses
import math

import dp_accounting
import numpy as np
from dp_accounting.rdp import rdp_privacy_accountant
from scipy import optimize, special

from fedpriv.errors import ConfigError

#: Orders of the moments accountant: lambda + 1 for lambda = 1..255 (Abadi et al. use
#: lambda <= 32 in practice; more orders only tighten the minimum).
MOMENT_ORDERS: tuple[int, ...] = tuple(range(2, 257))


@dataclasses.dataclass(frozen=True)
class StrongComposition:
    """The strong composition bound and how its delta was spent.

    Attributes:
        epsilon: total epsilon after ``steps`` steps.
        delta: total delta, ``steps * step_delta + slack_delta``.
        step_epsilon: epsilon of one subsampled step, ``log(1 + q (e^eps_g - 1))``.
        step_delta: delta of one subsampled step, ``q * gaussian_delta``.
        gaussian_epsilon: epsilon of the Gaussian mechanism before subsampling.
        gaussian_delta: delta of the Gaussian mechanism before subsampling.
        slack_delta: the delta' of the advanced composition theorem.
    """

    epsilon: float
    delta: float
    step_epsilon: float
    step_delta: float
    gaussian_epsilon: float
    gaussian_delta: float
    slack_delta: float


def _check(sampling_rate: float, noise_multiplier: float, steps: int, delta: float) -> None:
    if not 0.0 < sampling_rate <= 1.0:
        raise ConfigError("sampling_rate", f"must be in (0, 1], got {sampling_rate!r}")
    if not noise_multiplier > 0.0 or not math.isfinite(noise_multiplier):
        raise ConfigError("noise_multiplier", f"must be > 0 and finite, got {noise_multiplier!r}")
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ConfigError("steps", f"must be an integer >= 1, got {steps!r}")
    if not 0.0 < delta < 1.0:
        raise ConfigError("delta", f"must be in (0, 1), got {delta!r}")


def gaussian_delta(noise_multiplier: float, epsilon: float) -> float:
    """Delta of the Gaussian mechanism with L2 sensitivity 1 and noise std ``noise_multiplier``
    at ``epsilon``: its exact privacy profile (Balle and Wang 2018, Theorem 8),
    ``Phi(1/(2 sigma) - eps sigma) - e^eps Phi(-1/(2 sigma) - eps sigma)``, evaluated in log
    space so that it stays accurate far in the tail.

    References:
        Balle, Wang, "Improving the Gaussian Mechanism for Differential Privacy: Analytical
        Calibration and Optimal Denoising", ICML 2018, Theorem 8.
    """
    s = float(noise_multiplier)
    log_a = special.log_ndtr(0.5 / s - epsilon * s)
    log_b = epsilon + special.log_ndtr(-0.5 / s - epsilon * s)
    return float(-math.exp(log_a) * math.expm1(min(log_b - log_a, 0.0)))


def gaussian_epsilon(noise_multiplier: float, delta: float) -> float:
    """Smallest epsilon with ``gaussian_delta(noise_multiplier, epsilon) <= delta``.

    Raises:
        ConfigError: ``delta`` outside (0, 1) or a noise multiplier that is not positive.
    """
    _check(1.0, noise_multiplier, 1, delta)
    if gaussian_delta(noise_multiplier, 0.0) <= delta:
        return 0.0
    hi = 1.0
    while gaussian_delta(noise_multiplier, hi) > delta:
        hi *= 2.0
    return float(
        optimize.brentq(
            lambda e: gaussian_delta(noise_multiplier, e) - delta, 0.0, hi, xtol=1e-12, rtol=1e-12
        )
    )


def poisson_amplification(
    epsilon: float, delta: float, sampling_rate: float
) -> tuple[float, float]:
    """(epsilon, delta) of an (epsilon, delta)-DP mechanism run on a Poisson sample.

    ``(log(1 + q (e^epsilon - 1)), q delta)`` under add/remove-one adjacency.

    References:
        Li, Qardaji, Su, "On Sampling, Anonymization, and Differential Privacy", ASIACCS 2012;
        Balle, Barthe, Gaboardi, "Privacy Amplification by Subsampling: Tight Analyses via
        Couplings and Divergences", NeurIPS 2018, Theorem 8.
    """
    return math.log1p(sampling_rate * math.expm1(epsilon)), sampling_rate * delta


def advanced_composition(
    epsilon: float, delta: float, steps: int, slack_delta: float
) -> tuple[float, float]:
    """Dwork-Rothblum-Vadhan advanced composition of ``steps`` (epsilon, delta)-DP mechanisms.

    ``(sqrt(2 k ln(1/delta')) epsilon + k epsilon (e^epsilon - 1), k delta + delta')``.

    References:
        Dwork, Rothblum, Vadhan, "Boosting and Differential Privacy", FOCS 2010,
        Theorem III.3; Dwork, Roth, "The Algorithmic Foundations of Differential Privacy",
        2014, Theorem 3.20.
    """
    if not 0.0 < slack_delta < 1.0:
        raise ConfigError("slack_delta", f"must be in (0, 1), got {slack_delta!r}")
    k = steps
    total = math.sqrt(2.0 * k * math.log(1.0 / slack_delta)) * epsilon + k * epsilon * math.expm1(
        epsilon
    )
    return total, k * delta + slack_delta


def strong_composition_epsilon(
    sampling_rate: float, noise_multiplier: float, steps: int, delta: float
) -> StrongComposition:
    """Epsilon of ``steps`` Poisson-subsampled Gaussian steps by strong composition.

    The chain: Gaussian mechanism (exact profile, :func:`gaussian_epsilon`) -> amplification
    by Poisson subsampling (:func:`poisson_amplification`) -> advanced composition
    (:func:`advanced_composition`). The total ``delta`` is split as
    ``delta = steps * q * delta_g + delta'`` with ``delta' = f delta``; the fraction ``f``
    is chosen to minimise the total epsilon (a grid of 81 values of ``f`` between 1e-6 and
    1 - 1e-6, evenly spaced in logit, refined by bounded Brent minimisation).

    Args:
        sampling_rate: Poisson sampling rate q in (0, 1].
        noise_multiplier: sigma, the noise std relative to the L2 sensitivity.
        steps: number of steps T.
        delta: total delta in (0, 1).

    Returns:
        A :class:`StrongComposition` whose ``epsilon`` holds at ``delta``.

    Raises:
        ConfigError: an argument out of range.

    Privacy:
        (epsilon, delta)-DP under add/remove-one-example adjacency for T adaptive steps of
        the Poisson-subsampled Gaussian mechanism (Abadi et al. 2016, Algorithm 1).

    References:
        Abadi et al., "Deep Learning with Differential Privacy", CCS 2016, Section 3.1 and
        Figure 2 (epsilon about 9.34 at q = 0.01, sigma = 4, delta = 1e-5, T = 10,000, with
        their per-step bound and split of delta, which the paper does not state).
    """
    _check(sampling_rate, noise_multiplier, steps, delta)

    def parts(f: float) -> StrongComposition:
        slack = f * delta
        g_delta = (1.0 - f) * delta / (steps * sampling_rate)
        g_eps = gaussian_epsilon(noise_multiplier, min(g_delta, 1.0 - 1e-12))
        s_eps, s_delta = poisson_amplification(g_eps, g_delta, sampling_rate)
        total, total_delta = advanced_composition(s_eps, s_delta, steps, slack)
        return StrongComposition(total, total_delta, s_eps, s_delta, g_eps, g_delta, slack)

    def logit_inv(x: float) -> float:
        return 1.0 / (1.0 + math.exp(-x))

    grid = np.linspace(math.log(1e-6 / (1 - 1e-6)), math.log((1 - 1e-6) / 1e-6), 81)
    values = [parts(logit_inv(x)).epsilon for x in grid]
    i = int(np.argmin(values))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    res = optimize.minimize_scalar(
        lambda x: parts(logit_inv(x)).epsilon,
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 1e-6},
    )
    best = parts(logit_inv(float(res.x)))
    return best if best.epsilon <= values[i] else parts(logit_inv(grid[i]))


def moments_accountant_epsilon(
    sampling_rate: float,
    noise_multiplier: float,
    steps: int,
    delta: float,
    orders: tuple[int, ...] = MOMENT_ORDERS,
) -> float:
    """Epsilon by the moments accountant of Abadi et al. 2016.

    The log moment of one step at ``lambda`` is ``alpha(lambda) = lambda * RDP(lambda + 1)``
    (the Renyi divergence of the Poisson-subsampled Gaussian, computed exactly at integer
    orders by dp_accounting); over T steps they add (Theorem 2, composability), and the
    tail bound (Theorem 2) gives
    ``epsilon = min_lambda (T alpha(lambda) + log(1/delta)) / lambda``.

    Args:
        sampling_rate: Poisson sampling rate q in (0, 1].
        noise_multiplier: sigma.
        steps: number of steps T.
        delta: delta in (0, 1).
        orders: the Renyi orders ``lambda + 1`` to minimise over (integers >= 2).

    Returns:
        Epsilon at ``delta``.

    Raises:
        ConfigError: an argument out of range.

    Privacy:
        (epsilon, delta)-DP under add/remove-one-example adjacency (Abadi et al. 2016,
        Theorem 1's setting).

    References:
        Abadi et al., "Deep Learning with Differential Privacy", CCS 2016, Section 3.2;
        Mironov, Talwar, Zhang, "Renyi Differential Privacy of the Sampled Gaussian
        Mechanism", 2019.
    """
    _check(sampling_rate, noise_multiplier, steps, delta)
    if not orders or any(int(a) != a or a < 2 for a in orders):
        raise ConfigError("orders", "must be integers >= 2")
    acc = rdp_privacy_accountant.RdpAccountant(orders=[float(a) for a in orders])
    acc.compose(
        dp_accounting.PoissonSampledDpEvent(
            sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier)
        ),
        int(steps),
    )
    # The accountant keeps the composed RDP vector in ``_rdp``; it has no public getter.
    rdp = np.asarray(acc._rdp, dtype=np.float64)
    lam = np.asarray(orders, dtype=np.float64) - 1.0
    return float(np.min((lam * rdp + math.log(1.0 / delta)) / lam))
