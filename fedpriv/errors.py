"""Error types and the command-line convention for bad input.

Every check on user input (configuration values, data files, checkpoints) raises
:class:`ConfigError`, naming the field, the value it got and what is allowed. Command-line
entry points wrap their body in :func:`exit_on_config_error`, which turns such an error
into one line on stderr and exit status 2, with no traceback.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

#: Exit status for bad input, as for argparse usage errors.
EXIT_BAD_INPUT = 2


class ConfigError(ValueError):
    """Bad user input: a configuration value, a data file, a checkpoint.

    Args:
        field: The configuration key or file the problem is in, e.g. ``privacy.clip_norm``.
        message: What is wrong and what is allowed, e.g. ``"must be > 0, got -1.0"``.
    """

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class ArgumentError(ValueError):
    """A library function's argument outside what it accepts, naming the argument.

    Args:
        argument: the parameter's name, e.g. ``rate``.
        message: what is wrong and what is allowed, e.g. ``"must be in (0, 1], got 1.5"``.

    Example:
        >>> str(ArgumentError("rate", "must be in (0, 1], got 1.5"))
        'rate must be in (0, 1], got 1.5'
    """

    def __init__(self, argument: str, message: str):
        self.argument = argument
        self.message = message
        super().__init__(f"{argument} {message}")


@contextlib.contextmanager
def config_fields(fields: Mapping[str, str]) -> Iterator[None]:
    """Inside the block, an :class:`ArgumentError` naming an argument of ``fields`` becomes
    a :class:`ConfigError` naming the configuration path it was read from.

    Example:
        >>> with config_fields({"rate": "sampling.rate"}):
        ...     raise ArgumentError("rate", "must be in (0, 1], got 1.5")
        Traceback (most recent call last):
        ...
        fedpriv.errors.ConfigError: sampling.rate: must be in (0, 1], got 1.5
    """
    try:
        yield
    except ArgumentError as err:
        if err.argument not in fields:
            raise
        raise ConfigError(fields[err.argument], err.message) from None


def check_range(
    field: str,
    value: float,
    raw: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """The one range check of configuration numbers: ``value`` (read from ``raw``) must lie
    in the interval ``low``..``high``, open at an end where stated; NaN never does.

    Raises:
        ConfigError: naming ``field``, stating the allowed interval and what it got.

    Example:
        >>> check_range("client.lr", 0.1, "0.1", low=0, low_open=True)
        >>> check_range("client.lr", -1.0, -1, low=0, low_open=True)
        Traceback (most recent call last):
        ...
        fedpriv.errors.ConfigError: client.lr: must be in (0, inf], got -1
    """
    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"
    allowed = f"{lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}"
    bad_low = low is not None and (value <= low if low_open else value < low)
    bad_high = high is not None and (value >= high if high_open else value > high)
    if bad_low or bad_high or value != value:
        raise ConfigError(field, f"must be in {allowed}, got {raw!r}")


def fail(message: str) -> None:
    """Prints ``fedpriv: error: <message>`` to stderr and exits with status 2."""
    print(f"fedpriv: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_BAD_INPUT)


def exit_on_config_error(fn: F) -> F:
    """Decorator for entry points: a :class:`ConfigError` becomes one line and exit 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as err:
            fail(str(err))

    return wrapper  # type: ignore[return-value]
