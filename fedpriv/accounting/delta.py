"""Choosing delta relative to the population, and warning when it is too large.

A mechanism that publishes one random record of a population of ``N`` is
``(0, 1/N)``-DP, so ``delta >= 1/N`` permits a guarantee that is meaningless in practice;
delta should be well below ``1/N`` (Dwork and Roth, "The Algorithmic Foundations of
Differential Privacy", 2014, section 2.3).
"""

from __future__ import annotations

import warnings

from fedpriv.accounting import _checks


class DeltaWarning(UserWarning):
    """A delta that is not below ``1 / population``."""


def default_delta(population: int) -> float:
    """The largest power of ten that is at most ``1 / (10 * population)``.

    The factor 10 keeps the delta at least an order of magnitude below ``1 / population``,
    so that ``population * delta <= 0.1`` (the expected number of people for whom the
    failure probability delta could be spent, were it spent independently, stays below
    0.1). Examples: 1000 clients -> ``1e-4``; 3400 -> ``1e-5``; 10^6 -> ``1e-7``.

    Args:
        population: Number of units of privacy (clients for user-level, examples for
            example-level privacy), ``>= 1``.

    Returns:
        ``10 ** -k`` with ``k`` the smallest integer such that ``10 ** k >= 10 * population``.

    Raises:
        ConfigError: naming ``population`` if it is not a positive integer.
    """
    n = _checks.integer("population", population, 1)
    # Smallest k with 10**k >= 10 n, in exact integer arithmetic.
    k = len(str(10 * n - 1))
    return float(10.0**-k)


def warn_if_delta_too_large(delta: float, population: int | None, stacklevel: int = 2) -> bool:
    """Warns with :class:`DeltaWarning` when ``delta >= 1 / population``.

    Args:
        delta: The target delta.
        population: Number of units of privacy, or None (no check).
        stacklevel: Passed to :func:`warnings.warn`.

    Returns:
        True if it warned.
    """
    if population is None or population <= 0:
        return False
    if delta * population >= 1.0:
        warnings.warn(
            f"delta={delta!r} is not below 1/population = 1/{population}; a mechanism that "
            f"publishes one random record is (0, {1 / population:.3g})-DP. Use "
            f"delta <= {default_delta(population):g} (default_delta).",
            DeltaWarning,
            stacklevel=stacklevel + 1,
        )
        return True
    return False
