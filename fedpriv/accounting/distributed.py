"""RDP of distributed DP on secure aggregation: the Skellam and distributed discrete Gaussian
mechanisms, which no maintained accounting library implements (DESIGN.md section 4, rule 7).

Notation, all in integer units (after the scale ``s``): ``n`` clients each add noise of
variance (Skellam) or parameter (discrete Gaussian) ``sigma^2``, so the sum carries
``mu = n sigma^2``; ``Delta_2`` and ``Delta_1`` are the L2 and L1 sensitivities of the sum of
quantised updates; ``d`` is the dimension.

Skellam (Agarwal, Kairouz, Liu 2021, Theorem 3.5; Corollary 3.6 for the sum of the clients'
``Sk(0, sigma^2)``, which is exactly ``Sk(0, mu)``), for integer ``alpha > 1``::

    eps(alpha) <= alpha Delta_2^2 / (2 mu)
                  + min( ((2 alpha - 1) Delta_2^2 + 6 Delta_1) / (4 mu^2),  3 Delta_1 / (2 mu) )

Sum of ``n`` discrete Gaussians ``N_Z(0, sigma^2)`` (Kairouz, Liu, Steinke 2021, Theorem 1 and
Proposition 14), with ``l_2 = Delta_2 / (sqrt(n) sigma)``, ``l_1 = Delta_1 / (sqrt(n) sigma)`` and
``tau = 10 sum_{k=1}^{n-1} exp(-2 pi^2 sigma^2 k / (k + 1))``, for every ``alpha > 1``::

    eps(alpha) <= min( alpha l_2^2 / 2 + tau d,
                       alpha (l_2^2 + 2 l_1 tau + tau^2 d) / 2,
                       alpha (l_2 + sqrt(d) tau)^2 / 2 )

Both tend to the Gaussian mechanism's ``alpha / (2 z^2)`` (Mironov 2017, Proposition 7) as the
scale grows with ``z = sqrt(mu) / Delta_2`` fixed. Rounds compose by adding RDP; conversion to
``(epsilon, delta)`` is the same as dp_accounting's (Canonne, Kamath, Steinke 2020,
Proposition 12).

Neighbouring relation: under add/remove-one-client (``sampling`` of ``"poisson"`` or
``"full"``) one client changes the sum by at most ``Delta``; under replace-one (``"fixed"``
cohorts) by ``2 Delta`` (triangle inequality), and the bounds are evaluated at the doubled
sensitivities. The noise is that of ``noise_clients`` clients, the fewest whose noise is in
every released sum.

Amplification by sampling: a record with ``amplification: "sampling"`` (fixed cohorts of ``m``
of ``n`` clients drawn uniformly without replacement, the cohort not revealed) is accounted by
the general bound for sampling without replacement (Wang, Balle, Kasiviswanathan 2019,
Theorem 9), for integer ``alpha >= 2`` and ``gamma = m / n``::

    eps'(alpha) <= 1/(alpha-1) log( 1 + gamma^2 C(alpha,2) min(4 (e^eps(2) - 1), 2 e^eps(2))
                                    + sum_{j=3}^{alpha} 2 gamma^j C(alpha,j) e^{(j-1) eps(j)} )

with ``eps(j)`` the replace-one RDP of the mechanism above (``eps(inf) = inf`` for both
mechanisms, so the theorem's ``min(2, (e^eps(inf) - 1)^j)`` is 2), and never more than the
unamplified ``eps(alpha)``. A non-integer order is bounded by interpolating ``(alpha - 1)
eps'(alpha)`` between the integers around it (convex in ``alpha``). Records
without the field (or ``"none"``) are accounted without amplification, as if every client
took part in every round (conservative). For the Gaussian the same theorem is what
dp_accounting uses above order 256; below it the library has a tighter Gaussian-only bound
(Theorem 27), so at equal noise the amplified distributed bound is slightly above central DP's.

References:
    Agarwal, Kairouz, Liu. "The Skellam Mechanism for Differentially Private Federated
    Learning." NeurIPS 2021, arXiv:2110.04995.
    Kairouz, Liu, Steinke. "The Distributed Discrete Gaussian Mechanism for Federated Learning
    with Secure Aggregation." ICML 2021, arXiv:2102.06387.
    Mironov. "Renyi Differential Privacy." CSF 2017.
    Wang, Balle, Kasiviswanathan. "Subsampled Renyi Differential Privacy and Analytical
    Moments Accountant." AISTATS 2019, arXiv:1808.00087.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy.special import gammaln, logsumexp

from fedpriv.accounting._search import smallest_noise
from fedpriv.accounting.events import REPLACE_ONE
from fedpriv.errors import ConfigError

DISTRIBUTED_MECHANISMS: tuple[str, ...] = ("skellam", "discrete_gaussian")


def skellam_rdp(
    orders: np.ndarray, l2_sensitivity: float, l1_sensitivity: float, variance: float
) -> np.ndarray:
    """RDP of the Skellam mechanism ``Sk(0, mu)`` (Agarwal et al. 2021, Theorem 3.5).

    The theorem holds for integer orders; a non-integer ``alpha`` is bounded by the RDP at
    ``ceil(alpha)`` (RDP is non-decreasing in the order; van Erven and Harremoes 2014).

    Args:
        orders: RDP orders ``alpha > 1``.
        l2_sensitivity: ``Delta_2`` in integer units.
        l1_sensitivity: ``Delta_1`` in integer units.
        variance: ``mu``, the variance of the summed Skellam noise per coordinate.

    Returns:
        float64 RDP values, one per order.

    Privacy:
        ``(alpha, eps(alpha))``-RDP of releasing ``x + Sk(0, mu)^d`` for integer vectors with
        ``||x - x'||_2 <= Delta_2`` and ``||x - x'||_1 <= Delta_1``.
    """
    a = np.maximum(np.ceil(np.asarray(orders, np.float64)), 2.0)
    d2sq, d1, mu = float(l2_sensitivity) ** 2, float(l1_sensitivity), float(variance)
    if mu <= 0:
        return np.full(a.shape, np.inf)
    main = a * d2sq / (2.0 * mu)
    extra = np.minimum(((2.0 * a - 1.0) * d2sq + 6.0 * d1) / (4.0 * mu**2), 3.0 * d1 / (2.0 * mu))
    return main + extra


def ddg_tau(local_sigma: float, clients: int) -> float:
    """``tau = 10 sum_{k=1}^{n-1} exp(-2 pi^2 sigma^2 k / (k + 1))`` (Kairouz et al. 2021,
    Theorem 1): how far the sum of ``n`` discrete Gaussians is from one discrete Gaussian."""
    k = np.arange(1, int(clients), dtype=np.float64)
    return float(10.0 * np.sum(np.exp(-2.0 * math.pi**2 * local_sigma**2 * k / (k + 1.0))))


def discrete_gaussian_sum_rdp(
    orders: np.ndarray,
    l2_sensitivity: float,
    l1_sensitivity: float,
    local_variance: float,
    clients: int,
    dimension: int,
) -> np.ndarray:
    """RDP of the sum of ``n`` clients' discrete Gaussian noise (Kairouz et al. 2021, Prop. 14).

    Args:
        orders: RDP orders ``alpha > 1``.
        l2_sensitivity: ``Delta_2`` in integer units.
        l1_sensitivity: ``Delta_1`` in integer units.
        local_variance: ``sigma^2``, each client's discrete Gaussian parameter.
        clients: ``n``.
        dimension: ``d``.

    Returns:
        float64 RDP values, one per order (see the module docstring for the formula).

    Privacy:
        ``(alpha, eps(alpha))``-RDP of releasing ``x + sum_i N_Z(0, sigma^2)^d`` for integer
        vectors with ``||x - x'||_2 <= Delta_2`` and ``||x - x'||_1 <= Delta_1``.
    """
    a = np.asarray(orders, np.float64)
    if local_variance <= 0:
        return np.full(a.shape, np.inf)
    sigma = math.sqrt(local_variance)
    root = math.sqrt(clients) * sigma
    l2, l1 = l2_sensitivity / root, l1_sensitivity / root
    tau = ddg_tau(sigma, clients)
    t1 = a / 2.0 * l2**2 + tau * dimension
    t2 = a / 2.0 * (l2**2 + 2.0 * l1 * tau + tau**2 * dimension)
    t3 = a / 2.0 * (l2 + math.sqrt(dimension) * tau) ** 2
    return np.minimum(np.minimum(t1, t2), t3)


def subsampled_rdp(orders: np.ndarray, base_rdp: Callable[[np.ndarray], np.ndarray], gamma: float):
    """RDP of a mechanism run on a uniformly drawn subset (without replacement) of a fraction
    ``gamma`` of the data (Wang, Balle, Kasiviswanathan 2019, Theorem 9; see the module
    docstring), for a mechanism with unbounded ``eps(inf)``.

    Args:
        orders: RDP orders ``alpha > 1`` (integer orders exactly; others by convexity).
        base_rdp: maps an array of integer orders ``2, 3, ...`` to the mechanism's replace-one
            RDP at those orders.
        gamma: sampling fraction ``m / n`` in (0, 1].

    Returns:
        float64 RDP values, one per order, never above ``base_rdp`` at the same order.

    Privacy:
        ``(alpha, eps'(alpha))``-RDP under replace-one adjacency of the subsampled mechanism.
    """
    a = np.asarray(orders, np.float64)
    top = max(int(np.ceil(a.max())), 2)
    js = np.arange(2, top + 1)
    eps = np.asarray(base_rdp(js.astype(np.float64)), np.float64)  # eps[j - 2] = eps(j)
    if 0.0 < gamma < 1.0:
        e2 = eps[0]
        # log min(4 (e^e2 - 1), 2 e^e2), stable for small and large e2.
        log_second = min(
            math.log(4.0) + e2 + math.log(-math.expm1(-e2)) if e2 > 0 else -np.inf,
            math.log(2.0) + e2,
        )
        # All orders at once: row alpha, column j (terms with j > alpha are left out).
        alpha = js[:, None].astype(np.float64)
        j = js[None, :].astype(np.float64)
        inside = j <= alpha
        log_comb = (
            gammaln(alpha + 1.0) - gammaln(j + 1.0) - gammaln(np.maximum(alpha - j, 0.0) + 1.0)
        )
        rest = np.where(js == 2, log_second, math.log(2.0) + (js - 1) * eps)[None, :]
        terms = np.where(inside, j * math.log(gamma) + log_comb + rest, -np.inf)
        terms = np.concatenate([terms, np.zeros((len(js), 1))], axis=1)  # the leading 1
        log_moment = logsumexp(terms, axis=1)
        eps = np.minimum(log_moment / (js - 1.0), eps)
    # Integer orders read off directly; an order between two integers uses the convexity of
    # (alpha - 1) eps(alpha) in alpha (a log moment generating function), as dp_accounting
    # does for its Gaussian bound; orders below 2 use eps(2) (RDP is non-decreasing).
    lo = np.clip(np.floor(a), 2, top).astype(np.int64)
    hi = np.clip(np.ceil(a), 2, top).astype(np.int64)
    t = np.where(hi > lo, a - lo, 0.0)
    moment = (1.0 - t) * (lo - 1.0) * eps[lo - 2] + t * (hi - 1.0) * eps[hi - 2]
    return np.where(a < 2.0, eps[0], moment / np.maximum(a - 1.0, 1.0))


def _mechanism_rdp(event, orders: np.ndarray, factor: float) -> np.ndarray:
    l2 = factor * event.l2_sensitivity
    l1 = factor * event.l1_sensitivity
    n = int(event.noise_clients)
    if event.mechanism == "skellam":
        return skellam_rdp(orders, l2, l1, n * event.local_variance)
    if event.mechanism == "discrete_gaussian":
        return discrete_gaussian_sum_rdp(orders, l2, l1, event.local_variance, n, event.dimension)
    raise ConfigError("mechanism", f"{event.mechanism!r} is not a distributed mechanism")


def round_rdp(event, orders: np.ndarray) -> np.ndarray:
    """The RDP vector of one distributed-DP round (a :class:`~fedpriv.accounting.RoundEvent`).

    Privacy:
        See the module docstring: sensitivities doubled under replace-one adjacency (fixed
        cohorts); amplification by sampling without replacement only for records marked
        ``amplification: "sampling"`` (fixed cohorts smaller than the population).
    """
    if event.noise_multiplier == 0.0:
        return np.full(np.shape(orders), np.inf)
    factor = 2.0 if event.neighboring_relation == REPLACE_ONE else 1.0
    if event.amplification == "sampling":
        gamma = float(event.cohort_size) / float(event.population)
        return subsampled_rdp(orders, lambda js: _mechanism_rdp(event, js, factor), gamma)
    return _mechanism_rdp(event, orders, factor)


def calibrate(
    target_epsilon: float,
    delta: float,
    epsilon_of: Callable[[float], float],
    max_noise: float = 1000.0,
    min_noise: float = 1e-2,
    rtol: float = 1e-4,
) -> float:
    """Smallest noise multiplier ``z`` with ``epsilon_of(z) <= target_epsilon`` (one-sided).

    ``epsilon_of`` builds the whole plan's ledger for ``z`` (the scale and sensitivities may
    depend on ``z``) and returns its epsilon; it must be non-increasing in ``z``. Bisection in
    ``log z`` keeps ``epsilon_of(lo) > target >= epsilon_of(hi)`` and returns ``hi``.

    Raises:
        ConfigError: naming ``target_epsilon`` when it cannot be met below ``max_noise``.
    """
    del delta  # part of epsilon_of; kept for the calibrate_noise-like signature
    return smallest_noise(
        epsilon_of,
        target_epsilon,
        max_noise=max_noise,
        min_noise=min_noise,
        rtol=rtol,
        context=" for this distributed mechanism (quantisation inflates the sensitivity)",
    )
