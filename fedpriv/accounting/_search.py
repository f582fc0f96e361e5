"""The one-sided search behind every calibration: the smallest noise that meets a target.

It knows nothing of accountants or events, only of a function from the noise multiplier to
epsilon, so central (:mod:`fedpriv.accounting.calibration`) and distributed
(:mod:`fedpriv.accounting.distributed`) calibration share it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from fedpriv.errors import ConfigError

#: Default upper end of the noise multipliers searched.
DEFAULT_MAX_NOISE = 1000.0
#: Lower end of the noise multipliers searched.
MIN_NOISE = 1e-2
#: Relative width of the final bracket.
RTOL = 1e-4


def smallest_noise(
    epsilon_of: Callable[[float], float],
    target: float,
    *,
    max_noise: float = DEFAULT_MAX_NOISE,
    min_noise: float = MIN_NOISE,
    rtol: float = RTOL,
    context: str = "",
) -> float:
    """Smallest ``z`` in ``[min_noise, max_noise]`` with ``epsilon_of(z) <= target``.

    ``epsilon_of`` must be non-increasing in ``z``. The bracket grows by doubling or halving
    from 1, then geometric bisection keeps ``epsilon_of(lo) > target >= epsilon_of(hi)``
    until ``hi / lo <= 1 + rtol``; ``hi`` is returned, so the result always meets the target.

    Raises:
        ConfigError: naming ``target_epsilon`` when even ``max_noise`` misses the target, or
            when every noise down to ``min_noise`` meets it (calibration is meaningless).
    """
    z = min(1.0, max_noise)
    if epsilon_of(z) <= target:
        hi = z
        lo = hi / 2.0
        while epsilon_of(lo) <= target:
            hi = lo
            if hi <= min_noise:
                raise ConfigError(
                    "target_epsilon",
                    f"{target!r} is met by every noise multiplier down to {min_noise}{context}; "
                    "the plan barely touches the data, calibration is meaningless",
                )
            lo = max(hi / 2.0, min_noise / 2.0)
    else:
        lo = z
        hi = min(2.0 * lo, max_noise)
        while True:
            e_hi = epsilon_of(hi)
            if e_hi <= target:
                break
            if hi >= max_noise:
                raise ConfigError(
                    "target_epsilon",
                    f"{target!r} cannot be reached with noise_multiplier <= max_noise="
                    f"{max_noise:g}{context} (epsilon {e_hi:.4g} there); raise max_noise or "
                    "the target",
                )
            lo = hi
            hi = min(2.0 * hi, max_noise)
    while hi > lo * (1.0 + rtol):
        mid = math.sqrt(lo * hi)
        if epsilon_of(mid) <= target:
            hi = mid
        else:
            lo = mid
    return float(hi)
