"""Dropping a library's known, harmless log records for the length of one call.

fedpriv sets no level, handler or filter on loggers it does not own: the process's logging
configuration belongs to whoever runs it. Where a library floods the log with notices that
carry no information for the caller, the records are dropped by a filter attached to the
library's logger only while fedpriv's call into the library runs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator


class _Drop(logging.Filter):
    def __init__(self, drop: Callable[[logging.LogRecord], bool]):
        super().__init__()
        self._drop = drop

    def filter(self, record: logging.LogRecord) -> bool:
        return not self._drop(record)


@contextlib.contextmanager
def dropping(logger: str, drop: Callable[[logging.LogRecord], bool]) -> Iterator[None]:
    """Drops the records of logger ``logger`` for which ``drop`` is true, inside the block.

    A fresh filter is attached on entry and removed on exit, so nested or concurrent blocks
    do not remove each other's filters, and the logger is left exactly as it was.

    Args:
        logger: name of the logger the library logs to directly (filters of a logger apply
            to its own records, not to those of its children).
        drop: predicate on a record; true drops it.
    """
    target = logging.getLogger(logger)
    quiet = _Drop(drop)
    target.addFilter(quiet)
    try:
        yield
    finally:
        target.removeFilter(quiet)


def dropped_rdp_order(record: logging.LogRecord) -> bool:
    """dp_accounting's notice (through absl) that it excluded an RDP order that did not converge.

    Excluding an order only makes the RDP bound more conservative; the notice comes once per
    order and evaluation, thousands of times during a calibration.
    """
    return "failed to converge" in record.getMessage()


def quiet_rdp_orders() -> contextlib.AbstractContextManager[None]:
    """Drops :func:`dropped_rdp_order` records of the ``absl`` logger inside the block."""
    return dropping("absl", dropped_rdp_order)


def below_warning(record: logging.LogRecord) -> bool:
    """A record below ``WARNING`` (progress notices such as orbax-checkpoint's)."""
    return record.levelno < logging.WARNING


def quiet_orbax() -> contextlib.AbstractContextManager[None]:
    """Drops the ``absl`` logger's records below WARNING inside the block.

    orbax-checkpoint logs every step of every read and write through absl at INFO (dozens of
    lines per checkpoint); absl records do not say which library sent them, so the block
    should hold only orbax calls.
    """
    return dropping("absl", below_warning)
