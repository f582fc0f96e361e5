"""Privacy mechanisms, one object in one module each, and the registry that names them.

>>> from fedpriv.privacy import mechanisms
>>> {"none", "user_dp", "user_dp_adaptive", "example_dp"} <= set(mechanisms.names())
True
>>> mechanisms.get("user_dp").unit
'user'

A mechanism object is also the typed ``privacy`` setting of a run from Python
(:func:`fedpriv.simulate`; the classes are collected in :mod:`fedpriv.mechanisms`).

Every public module of this package is imported when the package is, and registers its
mechanism (:func:`register`); :func:`get` finds one by its ``privacy.name`` and
:func:`for_record` the one that wrote a ledger record. See :mod:`.base` for what a mechanism
provides.
"""

from fedpriv.privacy.mechanisms._registry import (
    discover,
    for_record,
    get,
    ledger_mechanisms,
    mechanisms,
    names,
    register,
)
from fedpriv.privacy.mechanisms.base import (
    ADD_OR_REMOVE_ONE,
    REPLACE_ONE,
    DpMechanism,
    DpSettings,
    Mechanism,
    PrivacyPlan,
    amplify,
    relation_of,
    resolve_delta,
)

discover(__name__, __path__)

__all__ = [
    "ADD_OR_REMOVE_ONE",
    "REPLACE_ONE",
    "DpMechanism",
    "DpSettings",
    "Mechanism",
    "PrivacyPlan",
    "amplify",
    "for_record",
    "get",
    "ledger_mechanisms",
    "mechanisms",
    "names",
    "register",
    "relation_of",
    "resolve_delta",
]
