"""Typed choices of the configuration groups, for building runs from Python.

Each configuration group of ``fedpriv-train`` (``dataset``, ``model``, ``algorithm``,
``client``, ``sampling``, ``privacy``) has presets: the YAML files of ``fedpriv/conf/<group>``.
A :class:`ConfigGroup` is a frozen dataclass that selects one preset and sets some of its
fields; a field left at ``None`` keeps the preset's value, so each default lives in one
place, the preset file, whether the run starts from the shell or from Python.
:func:`fedpriv.simulate` composes the presets these objects select and validates the result
once, as the command line does.

>>> from fedpriv.groups import ConfigGroup
>>> import dataclasses
>>> @dataclasses.dataclass(frozen=True)
... class Cohort(ConfigGroup):
...     group = "sampling"
...     preset = "fixed"
...     cohort_size: int | None = None
>>> Cohort(cohort_size=50).selections(), Cohort(cohort_size=50).values()
(['sampling=fixed'], {'cohort_size': 50})
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

__all__ = ["ConfigGroup", "merge"]


@dataclasses.dataclass(frozen=True)
class ConfigGroup:
    """A preset of one configuration group and the fields that replace its values.

    Subclasses set :attr:`group` and :attr:`preset` and declare the group's fields as
    dataclass fields defaulting to ``None`` (the preset's value). A field named ``options``
    (a mapping) holds further keys of the group that have no field of their own; a field
    whose value is a mapping is merged into the preset's nested block of the same name.
    """

    group: ClassVar[str] = ""
    preset: ClassVar[str] = ""

    def selections(self) -> list[str]:
        """The Hydra overrides that select the preset (``["<group>=<preset>"]``; a choice
        that needs a preset of another group as well adds it)."""
        return [f"{self.group}={self.preset}"]

    def values(self) -> dict[str, Any]:
        """The fields that are set (not ``None``), as the group's nested keys."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if f.name == "options":
                out = merge(out, dict(value))
            elif isinstance(value, Mapping):
                out[f.name] = dict(value)
            else:
                out[f.name] = value
        return out


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` merged in, nested mappings key by key (a new dict)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out
