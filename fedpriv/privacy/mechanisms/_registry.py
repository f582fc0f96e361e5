"""The registry: config names -> mechanism objects, and ledger records -> their mechanism."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from typing import TYPE_CHECKING

from fedpriv.accounting.events import register_ledger_kind
from fedpriv.errors import ConfigError

if TYPE_CHECKING:
    from fedpriv.accounting.events import RoundEvent
    from fedpriv.privacy.mechanisms.base import Mechanism

_MECHANISMS: dict[str, Mechanism] = {}


def register(mechanism: Mechanism) -> Mechanism:
    """Adds ``mechanism`` under its ``name`` and returns it; a mechanism that writes ledger
    records is also registered as their kind (:func:`fedpriv.accounting.events.ledger_kind`),
    so the ledger reader and the accountants read them through it.

    Raises:
        ValueError: the name is empty or already taken by another mechanism.
    """
    name = mechanism.name
    if not name:
        raise ValueError("a mechanism needs a name")
    known = _MECHANISMS.get(name)
    if known is not None and type(known) is not type(mechanism):
        raise ValueError(f"mechanism name {name!r} is already registered by {type(known)}")
    _MECHANISMS[name] = mechanism
    if mechanism.ledger_names():
        register_ledger_kind(mechanism)
    return mechanism


def get(name: str) -> Mechanism:
    """The mechanism registered as ``name`` (``privacy.name``).

    Raises:
        ConfigError: naming ``privacy.name`` for an unknown name, with the known ones.
    """
    try:
        return _MECHANISMS[name]
    except (KeyError, TypeError):
        raise ConfigError(
            "privacy.name", f"unknown mechanism {name!r}; choose from {names()}"
        ) from None


def names() -> list[str]:
    """The registered names, sorted."""
    return sorted(_MECHANISMS)


def mechanisms() -> list[Mechanism]:
    """The registered mechanisms, in registration order."""
    return list(_MECHANISMS.values())


def ledger_mechanisms() -> tuple[str, ...]:
    """The values of a ledger record's ``mechanism`` field that some mechanism writes."""
    out = dict.fromkeys(name for m in _MECHANISMS.values() for name in m.ledger_names())
    return tuple(out)


def for_record(event: RoundEvent) -> Mechanism:
    """The mechanism that wrote a ledger record (the first that claims it).

    Raises:
        ConfigError: naming ``mechanism`` when no registered mechanism claims the record.
    """
    for mech in _MECHANISMS.values():
        if mech.claims(event):
            return mech
    raise ConfigError(
        "mechanism",
        f"no registered mechanism writes records with mechanism={event.mechanism!r}, "
        f"unit={event.unit!r}; known: {list(ledger_mechanisms())}",
    )


def discover(package: str, path: Iterable[str]) -> None:
    """Imports every public module of ``package`` (each registers its mechanism), so adding
    a mechanism is adding a module."""
    for info in sorted(pkgutil.iter_modules(list(path)), key=lambda m: m.name):
        if not info.name.startswith("_") and info.name != "base":
            importlib.import_module(f"{package}.{info.name}")
