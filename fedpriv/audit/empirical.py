"""Empirical privacy audit from canary clients: an epsilon estimate and a lower bound.

A run with ``canaries.count = k > 0`` writes ``canaries.json`` (:mod:`fedpriv.fl.canaries`):
the cosines between the final model delta and the ``k`` inserted canary directions, and
between the final model delta and ``u`` directions that were never inserted. Two numbers
come out of them:

* the **epsilon estimate** of Andrew et al. (2023, Sec. 3, Algorithm 2): fit a Gaussian to
  each sample of cosines and report the epsilon, at the run's delta, of the pair of Gaussians
  (:func:`gaussian_pair_epsilon`). It is an estimate, not a bound: for the Gaussian
  mechanism it is asymptotically exact in the model dimension, and it may lie on either side
  of the true epsilon of a finite run;
* the **epsilon lower bound** of Jagielski et al. (2020): a membership test "inserted iff
  cosine >= t" whose true and false positive rates bound epsilon from below,
  ``TPR <= e^eps FPR + delta``, with one-sided Clopper-Pearson intervals
  (:func:`membership_lower_bound`). The threshold is chosen on one half of the canaries and
  the bound is computed on the other half, so choosing the threshold does not bias it.

A lower bound above the analytical epsilon of the run's ledger means the mechanism leaks more
than it claims (for example less noise was added than was accounted).

The lower bound has a ceiling set by the number of canaries alone: even a membership test that
is right on every canary of the bounding half cannot push the Clopper-Pearson bounds past
:func:`refutable_epsilon` (about 3.69 for 300 inserted and 300 unseen canaries at confidence
0.95). A claim above that ceiling cannot be refuted by the run's canaries whatever ran;
:func:`canaries_needed` gives the number of canaries that lifts the ceiling above a claim.

References:
    Andrew, Kairouz, Oh, Oprea, McMahan, Suriyakumar. "One-shot Empirical Privacy
    Estimation for Federated Learning." ICLR 2024, arXiv:2302.03098.
    Jagielski, Ullman, Oprea. "Auditing Differentially Private Machine Learning: How Private
    is Private SGD?" NeurIPS 2020, arXiv:2006.07709.
    Balle, Wang. "Improving the Gaussian Mechanism for Differential Privacy: Analytical
    Calibration and Optimal Denoising." ICML 2018 (Theorem 8).
    Steinke. "Composition of Differential Privacy & Privacy Amplification by Subsampling."
    arXiv:2210.00597, 2022 (Prop. 7: delta(eps) as a hockey-stick divergence).
    Clopper, Pearson. "The Use of Confidence or Fiducial Limits Illustrated in the Case of
    the Binomial." Biometrika 26(4), 1934.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import scipy.optimize
import scipy.stats

from fedpriv.errors import ConfigError

#: The file :func:`empirical_audit` reads (written by :mod:`fedpriv.fl.canaries`).
CANARIES_FILE = "canaries.json"

METHOD = (
    "estimate: Gaussians fitted to inserted and unseen canary cosines with the final model "
    "delta, epsilon of the pair at delta (Andrew et al. 2023); lower bound: threshold "
    "membership test with one-sided Clopper-Pearson TPR/FPR and TNR/FNR bounds, threshold "
    "chosen on half the canaries and bounded on the other half (Jagielski et al. 2020)"
)


# --- the pair of Gaussians ----------------------------------------------------------------------


def _log_mass(lo: float, hi: float, mean: float, std: float) -> float:
    """``log Pr[lo < X < hi]`` for ``X ~ N(mean, std^2)``, accurate in the tails."""
    norm = scipy.stats.norm
    if lo == -math.inf:
        return float(norm.logcdf(hi, mean, std))
    if hi == math.inf:
        return float(norm.logsf(lo, mean, std))
    if lo >= mean:  # both in the upper tail: difference of survival functions
        a, b = norm.logsf(lo, mean, std), norm.logsf(hi, mean, std)
    else:
        a, b = norm.logcdf(hi, mean, std), norm.logcdf(lo, mean, std)
    if not b < a:
        return -math.inf
    return float(a + math.log1p(-math.exp(b - a)))


def _loss_region(
    eps: float, mean_p: float, std_p: float, mean_q: float, std_q: float
) -> list[tuple[float, float]]:
    """Intervals where the privacy loss ``log p(x) / q(x)`` exceeds ``eps``.

    ``log p/q = a x^2 + b x + c`` with ``a = 1/(2 s_q^2) - 1/(2 s_p^2)``,
    ``b = m_p / s_p^2 - m_q / s_q^2`` and
    ``c = m_q^2 / (2 s_q^2) - m_p^2 / (2 s_p^2) + log(s_q / s_p)``.
    """
    a = 0.5 / std_q**2 - 0.5 / std_p**2
    b = mean_p / std_p**2 - mean_q / std_q**2
    c = 0.5 * (mean_q / std_q) ** 2 - 0.5 * (mean_p / std_p) ** 2 + math.log(std_q / std_p)
    c -= eps
    scale = max(abs(b), 1.0 / std_p**2, 1.0 / std_q**2)
    if abs(a) <= 1e-12 * scale:  # equal variances: a half-line
        if b == 0:
            return [] if c <= 0 else [(-math.inf, math.inf)]
        x = -c / b
        return [(x, math.inf)] if b > 0 else [(-math.inf, x)]
    disc = b * b - 4 * a * c
    if disc <= 0:  # the quadratic never changes sign
        return [(-math.inf, math.inf)] if a > 0 else []
    # Roots in the numerically stable form (no cancellation between b and sqrt(disc)).
    q = -0.5 * (b + math.copysign(math.sqrt(disc), b))
    r1, r2 = sorted((q / a, c / q))
    return [(-math.inf, r1), (r2, math.inf)] if a > 0 else [(r1, r2)]


def gaussian_pair_delta(
    eps: float, mean_p: float, std_p: float, mean_q: float, std_q: float
) -> float:
    """The hockey-stick divergence ``H_{e^eps}(P || Q)`` of two Gaussians.

    ``delta(eps) = Pr_P[L > eps] - e^eps Pr_Q[L > eps]`` with ``L = log p(X) / q(X)`` the
    privacy loss (Steinke 2022, Prop. 7), ``P = N(mean_p, std_p^2)``,
    ``Q = N(mean_q, std_q^2)``. ``L`` is quadratic in ``x``, so ``{L > eps}`` is a half-line
    (equal variances), two half-lines or an interval, and both probabilities are normal
    masses, computed in log space. For equal variances this is the analytic Gaussian
    mechanism ``Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)`` with
    ``mu = |mean_p - mean_q| / std`` (Balle & Wang 2018, Theorem 8).

    Args:
        eps: epsilon >= 0.
        mean_p, std_p: the first Gaussian (std > 0).
        mean_q, std_q: the second Gaussian (std > 0).

    Returns:
        ``delta >= 0``: one direction only; a mechanism whose neighbouring outputs are ``P``
        and ``Q`` is ``(eps, delta)``-DP for the larger of the two directions.

    Privacy:
        Pure arithmetic on the fitted distributions; it reads no private data.
    """
    region = _loss_region(eps, mean_p, std_p, mean_q, std_q)
    if not region:
        return 0.0
    log_p = np.logaddexp.reduce([_log_mass(lo, hi, mean_p, std_p) for lo, hi in region])
    log_q = np.logaddexp.reduce([_log_mass(lo, hi, mean_q, std_q) for lo, hi in region])
    if log_p == -math.inf:
        return 0.0
    gap = eps + log_q - log_p
    if gap >= 0:
        return 0.0
    return float(math.exp(log_p) * -math.expm1(gap))


def gaussian_pair_epsilon(
    mean_a: float, std_a: float, mean_b: float, std_b: float, delta: float
) -> float:
    """Smallest epsilon at which the pair ``N(mean_a, std_a^2), N(mean_b, std_b^2)`` is
    ``(epsilon, delta)``-indistinguishable in both directions.

    Solves ``max(H_{e^eps}(A || B), H_{e^eps}(B || A)) = delta`` for ``eps`` by bracketing
    and Brent's method on :func:`gaussian_pair_delta` (decreasing in ``eps``). This is the
    epsilon Andrew et al. (2023, Sec. 3) assign to the Gaussians fitted to the observed and
    unobserved canary statistics; unequal variances are handled exactly, not by pooling.

    Args:
        mean_a, std_a: the first Gaussian (std > 0).
        mean_b, std_b: the second Gaussian (std > 0).
        delta: target delta in (0, 1).

    Returns:
        ``epsilon >= 0`` (``inf`` when no epsilon up to 10^4 reaches ``delta``).

    Raises:
        ValueError: a std that is not positive, or delta outside (0, 1).

    Privacy:
        Pure arithmetic on the fitted distributions; it reads no private data.
    """
    if not (std_a > 0 and std_b > 0):
        raise ValueError(f"standard deviations must be > 0, got {std_a} and {std_b}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")

    def excess(eps: float) -> float:
        worst = max(
            gaussian_pair_delta(eps, mean_a, std_a, mean_b, std_b),
            gaussian_pair_delta(eps, mean_b, std_b, mean_a, std_a),
        )
        return worst / delta - 1.0

    if excess(0.0) <= 0:
        return 0.0
    lo, hi = 0.0, 1.0
    while excess(hi) > 0:
        lo, hi = hi, 2 * hi
        if hi > 1e4:
            return math.inf
    return float(scipy.optimize.brentq(excess, lo, hi, xtol=1e-12, rtol=1e-12))


# --- binomial confidence bounds -----------------------------------------------------------------


def clopper_pearson_lower(successes: Any, trials: Any, alpha: float) -> np.ndarray:
    """One-sided Clopper-Pearson lower confidence bound on a binomial proportion.

    ``p_low = Beta.ppf(alpha; k, n - k + 1)`` (0 when ``k = 0``): ``Pr[p >= p_low] >= 1 -
    alpha`` for every true ``p`` (Clopper & Pearson 1934). Vectorised over ``successes``.

    Args:
        successes: ``k``, integers in ``[0, n]``.
        trials: ``n >= 1``.
        alpha: one minus the confidence, in (0, 1).

    Returns:
        The bounds, an array shaped like ``successes``.
    """
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        low = scipy.stats.beta.ppf(alpha, k, n - k + 1)
    return np.where(k <= 0, 0.0, low)


def clopper_pearson_upper(successes: Any, trials: Any, alpha: float) -> np.ndarray:
    """One-sided Clopper-Pearson upper confidence bound on a binomial proportion.

    ``p_high = Beta.ppf(1 - alpha; k + 1, n - k)`` (1 when ``k = n``): ``Pr[p <= p_high] >=
    1 - alpha``. With ``k = 0`` it is ``1 - alpha^(1/n)`` (Clopper & Pearson 1934).

    Args:
        successes: ``k``, integers in ``[0, n]``.
        trials: ``n >= 1``.
        alpha: one minus the confidence, in (0, 1).

    Returns:
        The bounds, an array shaped like ``successes``.
    """
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        high = scipy.stats.beta.ppf(1 - alpha, k + 1, n - k)
    return np.where(k >= n, 1.0, high)


# --- the membership test ------------------------------------------------------------------------


def threshold_epsilons(
    inserted: Any, unseen: Any, thresholds: Any, delta: float, alpha: float
) -> tuple[np.ndarray, np.ndarray]:
    """Epsilon lower bounds of the tests "inserted iff statistic >= t" at each threshold.

    For threshold ``t``: ``TPR`` is the fraction of inserted canaries with statistic
    ``>= t`` and ``FPR`` that of unseen ones. ``(eps, delta)``-DP under adding or removing
    one client implies ``TPR <= e^eps FPR + delta`` and, for the complementary event,
    ``TNR <= e^eps FNR + delta`` (Jagielski et al. 2020, Sec. 3), so with one-sided
    Clopper-Pearson bounds at ``alpha`` each

        ``eps >= log((TPR_low - delta) / FPR_high)`` and
        ``eps >= log((TNR_low - delta) / FNR_high)``.

    Args:
        inserted: statistics of the inserted canaries (at least one).
        unseen: statistics of the canaries never inserted (at least one).
        thresholds: ``t[T]``.
        delta: the delta of the claim.
        alpha: one minus the confidence of each Clopper-Pearson bound.

    Returns:
        ``(eps_positive[T], eps_negative[T])``, ``-inf`` where the bound is vacuous.

    Privacy:
        Each bound holds with probability ``>= 1 - 2 alpha`` for a fixed threshold chosen
        independently of these samples, when the statistics of different canaries are
        independent (Andrew et al. 2023 argue they nearly are in high dimension).
    """
    ins = np.sort(np.asarray(inserted, dtype=np.float64))
    uns = np.sort(np.asarray(unseen, dtype=np.float64))
    t = np.asarray(thresholds, dtype=np.float64)
    n1, n0 = len(ins), len(uns)
    tp = n1 - np.searchsorted(ins, t, side="left")
    fp = n0 - np.searchsorted(uns, t, side="left")
    tpr_low = clopper_pearson_lower(tp, n1, alpha)
    fpr_high = clopper_pearson_upper(fp, n0, alpha)
    tnr_low = clopper_pearson_lower(n0 - fp, n0, alpha)
    fnr_high = clopper_pearson_upper(n1 - tp, n1, alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        pos = np.log(np.maximum(tpr_low - delta, 0.0)) - np.log(fpr_high)
        neg = np.log(np.maximum(tnr_low - delta, 0.0)) - np.log(fnr_high)
    return np.where(np.isnan(pos), -np.inf, pos), np.where(np.isnan(neg), -np.inf, neg)


class LowerBound(NamedTuple):
    """An empirical epsilon lower bound and the test that gave it.

    Attributes:
        epsilon: the bound (>= 0; 0 when no test was informative).
        threshold: the chosen threshold (None when none was informative).
        direction: ``"positive"`` (TPR/FPR) or ``"negative"`` (TNR/FNR), or None.
    """

    epsilon: float
    threshold: float | None
    direction: str | None


def membership_lower_bound(
    inserted: Any, unseen: Any, delta: float, confidence: float = 0.95
) -> LowerBound:
    """Jagielski et al.'s epsilon lower bound, with the threshold chosen on held-out canaries.

    The canaries are split by position into two halves (even and odd indices; canaries are
    exchangeable, so this split is as good as a random one and needs no randomness). On the
    first half every observed value is a candidate threshold, in both directions of
    :func:`threshold_epsilons`; the best one is then evaluated once on the second half, with
    one-sided Clopper-Pearson bounds at ``(1 - confidence) / 2`` each, so the pair of bounds,
    and hence the epsilon bound, holds with probability ``>= confidence``. Choosing the
    threshold on the same data it is evaluated on would bias the bound upwards; the split
    costs half the sample instead of a multiple-comparison correction.

    Args:
        inserted: statistics (cosines) of the inserted canaries.
        unseen: statistics of the canaries never inserted.
        delta: the delta of the claim being audited.
        confidence: confidence level in (0, 1).

    Returns:
        A :class:`LowerBound`; epsilon 0 when fewer than two canaries of either kind exist.

    Raises:
        ValueError: delta or confidence outside (0, 1).

    Privacy:
        A mechanism that is ``(eps, delta)``-DP has ``eps >=`` this bound with probability
        ``>= confidence``, when canaries' statistics are independent (Andrew et al. 2023,
        Sec. 3; exact for the Gaussian mechanism as the dimension grows). The relation is the
        run's own: adding or removing one client under Poisson sampling; replacing one under
        fixed cohorts, where an unseen direction stands for the canary that replaced it. A
        bound above the claimed epsilon refutes the claim.
    """
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    ins = np.asarray(inserted, dtype=np.float64)
    uns = np.asarray(unseen, dtype=np.float64)
    if len(ins) < 2 or len(uns) < 2:
        return LowerBound(0.0, None, None)
    alpha = (1.0 - confidence) / 2.0
    sel_ins, sel_uns = ins[0::2], uns[0::2]
    candidates = np.unique(np.concatenate([sel_ins, sel_uns]))
    pos, neg = threshold_epsilons(sel_ins, sel_uns, candidates, delta, alpha)
    best_pos, best_neg = int(np.argmax(pos)), int(np.argmax(neg))
    if max(pos[best_pos], neg[best_neg]) == -np.inf:
        return LowerBound(0.0, None, None)
    if pos[best_pos] >= neg[best_neg]:
        threshold, direction = float(candidates[best_pos]), "positive"
    else:
        threshold, direction = float(candidates[best_neg]), "negative"
    pos, neg = threshold_epsilons(ins[1::2], uns[1::2], [threshold], delta, alpha)
    value = float(pos[0] if direction == "positive" else neg[0])
    return LowerBound(max(value, 0.0), threshold, direction)


# --- what the lower bound can refute ------------------------------------------------------------

#: :func:`canaries_needed` reports claims that need more canaries than this as out of reach
#: (None); the Clopper-Pearson bounds of such counts are also beyond float64 resolution.
MAX_CANARIES = 10**9


def bounding_counts(num_inserted: int, num_unseen: int) -> tuple[int, int]:
    """How many inserted and unseen canaries :func:`membership_lower_bound` bounds on.

    The bound is computed on the odd positions, ``n // 2`` of ``n`` canaries of each kind;
    ``(0, 0)`` when fewer than two canaries of either kind exist (no bound is computed).
    """
    if num_inserted < 2 or num_unseen < 2:
        return 0, 0
    return num_inserted // 2, num_unseen // 2


def refutable_epsilon(
    num_inserted: int, num_unseen: int, delta: float, confidence: float = 0.95
) -> float:
    """The largest epsilon :func:`membership_lower_bound` can return for these canary counts.

    On the bounding half (``n_1 = num_inserted // 2`` inserted, ``n_0 = num_unseen // 2``
    unseen canaries) the bound of :func:`threshold_epsilons` grows with the true positives
    and falls with the false positives, so it is largest when the test is right on every
    canary: ``TP = n_1, FP = 0`` (or ``TN = n_0, FN = 0``). There the one-sided
    Clopper-Pearson bounds at ``alpha = (1 - confidence) / 2`` are closed forms
    (Clopper & Pearson 1934), ``TPR_low = alpha^(1/n_1)`` and ``FPR_high = 1 - alpha^(1/n_0)``,
    so

        ``eps_max = max(log((alpha^(1/n_1) - delta) / (1 - alpha^(1/n_0))),
        log((alpha^(1/n_0) - delta) / (1 - alpha^(1/n_1))), 0)``.

    With ``n_1 = n_0 = 150`` (300 canaries of each kind), ``delta = 1e-4`` and confidence 0.95
    this is ``log(0.9757 / 0.0243) = 3.69``. A claim ``eps >= eps_max`` cannot be refuted by
    these canaries whatever the run did: the audit's empirical check then says nothing.

    Args:
        num_inserted: inserted canaries (the run's ``canaries.count``).
        num_unseen: canaries never inserted (``canaries.unseen``).
        delta: the delta of the claim, in (0, 1).
        confidence: the confidence of the bound, in (0, 1).

    Returns:
        ``eps_max >= 0``; 0 when fewer than two canaries of either kind exist.

    Raises:
        ValueError: delta or confidence outside (0, 1), or a negative count.

    Privacy:
        Arithmetic on public counts; it reads no private data.
    """
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if num_inserted < 0 or num_unseen < 0:
        raise ValueError(f"canary counts must be >= 0, got {num_inserted} and {num_unseen}")
    n1, n0 = bounding_counts(int(num_inserted), int(num_unseen))
    if n1 == 0:
        return 0.0
    alpha = (1.0 - confidence) / 2.0
    # The same bound functions as threshold_epsilons, at a perfect test.
    tpr_low = float(clopper_pearson_lower(n1, n1, alpha))
    fpr_high = float(clopper_pearson_upper(0, n0, alpha))
    tnr_low = float(clopper_pearson_lower(n0, n0, alpha))
    fnr_high = float(clopper_pearson_upper(0, n1, alpha))
    best = 0.0
    for low, high in ((tpr_low, fpr_high), (tnr_low, fnr_high)):
        if low > delta:
            best = max(best, math.log(low - delta) - math.log(high))
    return best


def canaries_needed(epsilon: float, delta: float, confidence: float = 0.95) -> int | None:
    """The fewest canaries whose lower bound can exceed ``epsilon``.

    The count ``k`` is the run's ``canaries.count`` with ``canaries.unseen`` left at its
    default (as many unseen as inserted): the smallest ``k`` with
    ``refutable_epsilon(k, k, delta, confidence) > epsilon``. With ``m = k // 2`` canaries of
    each kind in the bounding half and ``y = alpha^(1/m)`` (``alpha = (1 - confidence) / 2``)
    the condition ``(y - delta) / (1 - y) > e^eps`` reads ``y > Y = (e^eps + delta) /
    (e^eps + 1)``, that is ``m > log(alpha) / log(Y)``; the count is ``2 m`` for the smallest
    such ``m`` (an odd count bounds on as many canaries as the even count below it). It grows
    like ``2 log(1 / alpha) e^eps``: each unit of epsilon multiplies it by about ``e``.

    Args:
        epsilon: the claim, >= 0 (``inf``: no count suffices).
        delta: the delta of the claim, in (0, 1).
        confidence: the confidence of the bound, in (0, 1).

    Returns:
        The count, or None when it is infinite or above :data:`MAX_CANARIES`.

    Raises:
        ValueError: a negative or NaN epsilon, delta or confidence outside (0, 1).

    Privacy:
        Arithmetic on public parameters; it reads no private data.
    """
    if math.isnan(epsilon) or epsilon < 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if math.isinf(epsilon):
        return None
    alpha = (1.0 - confidence) / 2.0
    # log Y = log(1 - (1 - delta) / (e^eps + 1)), without overflowing e^eps.
    log_y = math.log1p(-(1.0 - delta) * math.exp(-epsilon) / (1.0 + math.exp(-epsilon)))
    m = math.floor(math.log(alpha) / log_y) + 1
    if m > MAX_CANARIES // 2:
        return None

    def enough(half: int) -> bool:
        return half >= 1 and refutable_epsilon(2 * half, 2 * half, delta, confidence) > epsilon

    # The closed form can be off by one where rounding meets the boundary.
    m = max(m, 1)
    while enough(m - 1):
        m -= 1
    while not enough(m):
        m += 1
    count = 2 * m
    return count if count <= MAX_CANARIES else None


class Power(NamedTuple):
    """What the canaries of a run can refute.

    Attributes:
        refutable_epsilon: :func:`refutable_epsilon` of the run's counts.
        bounding_inserted: inserted canaries in the bounding half.
        bounding_unseen: unseen canaries in the bounding half.
        epsilon: the epsilon tested (None when none was given).
        can_refute: whether ``epsilon < refutable_epsilon`` (None without an epsilon).
        canaries_needed: :func:`canaries_needed` of ``epsilon`` (None without an epsilon,
            for an infinite one, or beyond :data:`MAX_CANARIES`).
    """

    refutable_epsilon: float
    bounding_inserted: int
    bounding_unseen: int
    epsilon: float | None
    can_refute: bool | None
    canaries_needed: int | None


def audit_power(
    num_inserted: int,
    num_unseen: int,
    delta: float,
    confidence: float = 0.95,
    epsilon: float | None = None,
) -> Power:
    """:func:`refutable_epsilon` of a run's canaries and, given a claim, whether they reach it.

    Args:
        num_inserted: inserted canaries.
        num_unseen: canaries never inserted.
        delta: the delta of the claim, in (0, 1).
        confidence: the confidence of the bound, in (0, 1).
        epsilon: the epsilon to test, or None.

    Returns:
        A :class:`Power`.

    Privacy:
        Arithmetic on public counts; it reads no private data.
    """
    top = refutable_epsilon(num_inserted, num_unseen, delta, confidence)
    n1, n0 = bounding_counts(num_inserted, num_unseen)
    if epsilon is None:
        return Power(top, n1, n0, None, None, None)
    eps = float(epsilon)
    needed = None if math.isnan(eps) or eps < 0 else canaries_needed(eps, delta, confidence)
    return Power(top, n1, n0, eps, bool(eps < top), needed)


def empirical_warnings(result: dict[str, Any], claimed_epsilon: float | None) -> list[str]:
    """Warnings about an :func:`empirical_audit` result against the run's claimed epsilon.

    * The canaries cannot refute the epsilon tested (``can_refute`` false): the empirical
      check is inconclusive, and the warning says how many canaries would do.
    * The epsilon estimate exceeds the claim. The estimate is not a bound: for a finite run it
      falls on either side of the true epsilon with a spread that shrinks only as the canary
      count grows (Andrew et al. 2023, Sec. 4), so it cannot fail a claim with a stated error
      probability; but it is what a run with less noise than its ledger states looks like.

    Args:
        result: the empirical audit (:func:`empirical_audit`, given the epsilon to test).
        claimed_epsilon: the run's claimed epsilon, or None.

    Returns:
        The warnings, each one sentence.
    """
    out = []
    if result.get("can_refute") is False:
        out.append(power_sentence(result))
    estimate = result.get("epsilon_estimate")
    if (
        estimate is not None
        and claimed_epsilon is not None
        and math.isfinite(claimed_epsilon)
        and estimate > claimed_epsilon
    ):
        out.append(
            f"the empirical epsilon estimate {_fmt(estimate)} exceeds the claimed epsilon "
            f"{_fmt(claimed_epsilon)}: the estimate is not a bound, so this fails nothing, but "
            "it is what a run with less noise than its ledger states looks like; rerun with "
            "more canaries for a lower bound that can decide"
        )
    return out


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if math.isinf(x):
        return "inf"
    return f"{x:.4g}"


def power_sentence(result: dict[str, Any]) -> str:
    """One sentence: what the canaries of an :func:`empirical_audit` result can refute."""
    top = result.get("refutable_epsilon")
    conf = result.get("confidence")
    ins, uns = result.get("num_inserted"), result.get("num_unseen")
    head = (
        f"this audit can refute claims up to epsilon {_fmt(top)} at confidence {conf:g} "
        f"({ins} inserted and {uns} unseen canaries, bounded on {result.get('bounding_inserted')}"
        f" + {result.get('bounding_unseen')})"
    )
    eps = result.get("epsilon_tested")
    if eps is None or result.get("can_refute") is None:
        return head
    needed = result.get("canaries_needed")
    need = (
        f"refuting {_fmt(eps)} needs canaries.count={needed}"
        if needed is not None
        else f"no feasible canary count refutes {_fmt(eps)}"
    )
    if result["can_refute"]:
        return f"{head}; the tightest analytical epsilon {_fmt(eps)} is within reach ({need})"
    return (
        f"{head}; the tightest analytical epsilon {_fmt(eps)} is above it, so these canaries "
        f"could not have refuted it whatever ran; {need}"
    )


# --- the estimate -------------------------------------------------------------------------------


def gaussian_fit_epsilon(inserted: Any, unseen: Any, delta: float) -> float | None:
    """Andrew et al. (2023)'s epsilon estimate from two samples of canary statistics.

    Fits ``N(m_1, s_1^2)`` to the inserted canaries' statistics and ``N(m_0, s_0^2)`` to the
    unseen ones (sample mean and unbiased standard deviation) and returns
    :func:`gaussian_pair_epsilon` of the two at ``delta``.

    Returns:
        The estimate, or None with fewer than two statistics of either kind or a zero spread.

    Privacy:
        An estimate of the final model's epsilon, not a bound: it may fall on either side of
        the true value (Andrew et al. 2023, Sec. 3-4).
    """
    ins = np.asarray(inserted, dtype=np.float64)
    uns = np.asarray(unseen, dtype=np.float64)
    if len(ins) < 2 or len(uns) < 2:
        return None
    s1, s0 = float(np.std(ins, ddof=1)), float(np.std(uns, ddof=1))
    if not (s1 > 0 and s0 > 0):
        return None
    return gaussian_pair_epsilon(float(np.mean(ins)), s1, float(np.mean(uns)), s0, delta)


# --- the run directory --------------------------------------------------------------------------


def _cosines(record: dict, key: str, expected: Any, path: Path) -> list[float]:
    values = record.get(key)
    if not isinstance(values, list):
        raise ConfigError(str(path), f"{key!r} must be a list of numbers")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(str(path), f"{key!r} holds {v!r}; cosines must be finite numbers")
        if abs(v) > 1 + 1e-6:
            raise ConfigError(str(path), f"{key!r} holds {v!r}; cosines lie in [-1, 1]")
        out.append(float(v))
    if isinstance(expected, int) and len(out) != expected:
        raise ConfigError(str(path), f"{key!r} has {len(out)} values but the file says {expected}")
    return out


def read_canaries(run_dir: Path) -> dict | None:
    """Reads and checks ``canaries.json`` of a run directory (None when there is none).

    Raises:
        ConfigError: naming the file, when it is not valid JSON, has another format, or its
            lists do not match its counts.
    """
    path = Path(run_dir) / CANARIES_FILE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(str(path), f"cannot be read ({err})") from None
    except json.JSONDecodeError as err:
        raise ConfigError(str(path), f"is not valid JSON ({err.msg}); cut short?") from None
    if not isinstance(record, dict):
        raise ConfigError(str(path), "must hold a JSON object")
    if record.get("format") != 1:
        raise ConfigError(str(path), f"has format {record.get('format')!r}; expected 1")
    counts = {}
    for key in ("count", "unseen"):
        value = record.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(str(path), f"{key!r} must be an integer >= 0, got {value!r}")
        counts[key] = value
    record["inserted_cosines"] = _cosines(record, "inserted_cosines", counts["count"], path)
    record["unseen_cosines"] = _cosines(record, "unseen_cosines", counts["unseen"], path)
    return record


def empirical_audit(
    run_dir: Path, delta: float, confidence: float = 0.95, epsilon: float | None = None
) -> dict | None:
    """The empirical privacy audit of a run directory with canaries.

    Args:
        run_dir: the run directory.
        delta: the delta of the run's claim (``summary.json``'s ``delta``).
        confidence: confidence level of the lower bound.
        epsilon: the analytical epsilon the lower bound is tested against, or None.

    Returns:
        None when the run has no ``canaries.json``; otherwise a dict with
        ``epsilon_estimate`` (:func:`gaussian_fit_epsilon`, None when it cannot be fitted),
        ``epsilon_lower_bound`` (:func:`membership_lower_bound`), ``confidence``, ``delta``,
        ``method``, ``inserted_cosines``, ``unseen_cosines``, ``num_inserted``,
        ``num_unseen``, and what the canaries can refute (:func:`audit_power`):
        ``refutable_epsilon``, ``bounding_inserted``, ``bounding_unseen``, and with an
        ``epsilon`` also ``epsilon_tested``, ``can_refute`` and ``canaries_needed``.

    Raises:
        ConfigError: a bad or cut-short ``canaries.json`` (naming it), or delta or
            confidence outside (0, 1).

    Privacy:
        Audits the final model of a run at the unit DP-FedAvg accounts for (one client; the
        neighbouring relation of the run's sampling, see :func:`membership_lower_bound`). The
        lower bound refutes an epsilon claim it exceeds (with probability ``>= confidence``
        of being right); the estimate does not bound anything.
    """
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < delta < 1:
        raise ConfigError("delta", f"must be in (0, 1), got {delta!r}")
    if not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise ConfigError("confidence", f"must be in (0, 1), got {confidence!r}")
    record = read_canaries(Path(run_dir))
    if record is None:
        return None
    ins, uns = record["inserted_cosines"], record["unseen_cosines"]
    bound = membership_lower_bound(ins, uns, float(delta), float(confidence))
    power = audit_power(len(ins), len(uns), float(delta), float(confidence), epsilon)
    tested = {}
    if epsilon is not None:
        tested = {
            "epsilon_tested": power.epsilon,
            "can_refute": power.can_refute,
            "canaries_needed": power.canaries_needed,
        }
    return {
        "epsilon_estimate": gaussian_fit_epsilon(ins, uns, float(delta)),
        "epsilon_lower_bound": bound.epsilon,
        "confidence": float(confidence),
        "delta": float(delta),
        "method": METHOD,
        "inserted_cosines": ins,
        "unseen_cosines": uns,
        "num_inserted": len(ins),
        "num_unseen": len(uns),
        "refutable_epsilon": power.refutable_epsilon,
        "bounding_inserted": power.bounding_inserted,
        "bounding_unseen": power.bounding_unseen,
        **tested,
    }
