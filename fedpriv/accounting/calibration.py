"""Noise calibration: the smallest noise multiplier whose epsilon meets a target.

Calibration is one-sided: the returned noise multiplier itself satisfies the target under the
chosen accountant; anything more than a relative ``1e-4`` smaller does not (bisection keeps a
bracket ``lo < z <= hi`` with ``epsilon(lo) > target >= epsilon(hi)`` and returns ``hi``).
Epsilon decreases in the noise multiplier for every mechanism here, so the bracket is
well defined.
"""

from __future__ import annotations

import dataclasses

from fedpriv.accounting import _checks
from fedpriv.accounting._search import DEFAULT_MAX_NOISE, MIN_NOISE, RTOL, smallest_noise
from fedpriv.accounting.accountants import _check_support, _epsilon_of_groups
from fedpriv.accounting.delta import warn_if_delta_too_large
from fedpriv.accounting.events import plan_events
from fedpriv.errors import ConfigError

__all__ = ["DEFAULT_MAX_NOISE", "MIN_NOISE", "RTOL", "calibrate_noise", "smallest_noise"]


def calibrate_noise(
    target_epsilon: float,
    delta: float,
    rounds: int,
    sampling: str = "poisson",
    sampling_rate: float | None = None,
    population: int | None = None,
    cohort_size: int | None = None,
    steps: int = 1,
    example_sampling_rate: float | None = None,
    unit: str = "user",
    accountant: str = "rdp",
    max_noise: float = DEFAULT_MAX_NOISE,
) -> float:
    """Smallest noise multiplier ``z`` with ``epsilon(plan(z), delta) <= target_epsilon``.

    The plan is ``rounds`` identical rounds as built by
    :func:`fedpriv.accounting.plan_events`. The search brackets ``z`` by doubling or halving
    from 1 within ``[MIN_NOISE, max_noise]``, then bisects geometrically in float64 until
    the bracket's relative width is below ``RTOL``.

    Args:
        target_epsilon: Target epsilon, ``> 0``.
        delta: Target delta in (0, 1).
        rounds: Number of rounds ``T >= 1``.
        sampling: ``"poisson"``, ``"fixed"`` or ``"full"``.
        sampling_rate: Poisson client sampling probability in (0, 1].
        population: Number of clients (required for ``"fixed"``).
        cohort_size: Cohort size (required for ``"fixed"``).
        steps: Local DP-SGD steps per round (``unit="example"``).
        example_sampling_rate: Poisson example sampling rate (``unit="example"``).
        unit: ``"user"`` or ``"example"``.
        accountant: One of ``"rdp"``, ``"pld"``, ``"prv"``, ``"opacus_rdp"``.
        max_noise: Largest noise multiplier considered.

    Returns:
        The noise multiplier (float).

    Raises:
        ConfigError: naming ``target_epsilon`` if the target cannot be met with
            ``noise_multiplier <= max_noise`` (or is met by every noise multiplier down to
            ``MIN_NOISE``, where calibration is meaningless); naming the argument for any
            other invalid input.

    Privacy:
        The plan run with the returned noise multiplier is
        ``(target_epsilon, delta)``-DP under the chosen accountant, for the unit and
        neighbouring relation of :meth:`fedpriv.accounting.RoundEvent.dp_event`.

    Example:
        >>> from fedpriv.accounting import calibrate_noise
        >>> z = calibrate_noise(2.0, 1e-5, 1000, sampling_rate=0.01)
        >>> round(z, 3)
        1.022
    """
    target = _checks.positive("target_epsilon", target_epsilon)
    delta = _checks.delta(delta)
    accountant = _checks.accountant(accountant)
    max_noise = _checks.positive("max_noise", max_noise)
    if max_noise < MIN_NOISE:
        raise ConfigError("max_noise", f"must be >= {MIN_NOISE}, got {max_noise!r}")
    rounds = _checks.integer("rounds", rounds, 1)
    template = plan_events(
        1.0,
        1,
        sampling=sampling,
        sampling_rate=sampling_rate,
        population=population,
        cohort_size=cohort_size,
        steps=steps,
        example_sampling_rate=example_sampling_rate,
        unit=unit,
    )[0]
    _check_support(accountant, template.neighboring_relation)
    warn_if_delta_too_large(delta, template.population)

    def eps(z: float) -> float:
        event = dataclasses.replace(template, noise_multiplier=z)
        return _epsilon_of_groups([(event, rounds)], delta, accountant)

    return smallest_noise(eps, target, max_noise=max_noise, context=f" under {accountant!r}")
