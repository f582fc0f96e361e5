"""Validation of accounting inputs: every check names the field, the value and what is allowed.

All checks raise :class:`fedpriv.errors.ConfigError`. Booleans are refused where numbers are
expected (``True`` is an ``int`` to Python, never a sampling rate to a user).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

from fedpriv.errors import ConfigError

#: Names of the accountant backends, in the order tables and JSON objects list them.
ACCOUNTANTS: tuple[str, ...] = ("rdp", "pld", "prv", "opacus_rdp")


def real(field: str, value: Any) -> float:
    """Returns ``value`` as a finite float64, or raises naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(field, f"must be a number, got {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise ConfigError(field, f"must be finite, got {value!r}")
    return out


def integer(field: str, value: Any, minimum: int) -> int:
    """Returns ``value`` as an int ``>= minimum``, or raises naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ConfigError(field, f"must be an integer >= {minimum}, got {value!r}")
    out = int(value)
    if out < minimum:
        raise ConfigError(field, f"must be an integer >= {minimum}, got {out}")
    return out


def probability(field: str, value: Any) -> float:
    """A sampling probability in (0, 1]."""
    out = real(field, value)
    if not 0.0 < out <= 1.0:
        raise ConfigError(field, f"must be in (0, 1], got {value!r}")
    return out


def delta(value: Any, field: str = "delta") -> float:
    """A target delta in the open interval (0, 1)."""
    out = real(field, value)
    if not 0.0 < out < 1.0:
        raise ConfigError(field, f"must be in (0, 1), got {value!r}")
    return out


def nonnegative(field: str, value: Any) -> float:
    """A finite float ``>= 0`` (noise multipliers and standard deviations)."""
    out = real(field, value)
    if out < 0.0:
        raise ConfigError(field, f"must be >= 0, got {value!r}")
    return out


def positive(field: str, value: Any) -> float:
    """A finite float ``> 0``."""
    out = real(field, value)
    if out <= 0.0:
        raise ConfigError(field, f"must be > 0, got {value!r}")
    return out


def choice(field: str, value: Any, allowed: Sequence[str]) -> str:
    """One of ``allowed``; the error lists them."""
    if not isinstance(value, str) or value not in allowed:
        names = ", ".join(repr(a) for a in allowed)
        raise ConfigError(field, f"must be one of {names}, got {value!r}")
    return value


def accountant(value: Any, field: str = "accountant") -> str:
    """One of :data:`ACCOUNTANTS`."""
    return choice(field, value, ACCOUNTANTS)
