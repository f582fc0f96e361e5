"""Typed configuration groups: one frozen dataclass per choice of a configuration group.

Each configuration group of ``fedpriv-train`` (``dataset``, ``model``, ``algorithm``,
``client``, ``sampling``, ``privacy``, ``secagg``, ``execution``, ...) has presets: the YAML
files of ``fedpriv/conf/<group>``. A :class:`ConfigGroup` is a frozen dataclass whose fields
are the fields of its preset. It is used two ways:

* as a *choice* (Python API): a field left at ``None`` keeps the preset's value, so each
  default lives in one place, the preset file, whether the run starts from the shell or
  from Python; :meth:`~ConfigGroup.selections` and :meth:`~ConfigGroup.values` turn it into
  what the command line would say;
* as the *resolved* group (:meth:`~ConfigGroup.from_block`): the command line's composed,
  validated block, every field set, which is what library code below ``fedpriv.cli``
  receives (:class:`fedpriv.settings.RunConfig`).

>>> from fedpriv.groups import ConfigGroup
>>> import dataclasses
>>> @dataclasses.dataclass(frozen=True)
... class Cohort(ConfigGroup):
...     group = "sampling"
...     preset = "fixed"
...     cohort_size: int | None = None
>>> Cohort(cohort_size=50).selections(), Cohort(cohort_size=50).values()
(['sampling=fixed'], {'cohort_size': 50})
>>> Cohort.from_block({"kind": "fixed"}).cohort_size  # the preset's value
20
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from fedpriv.conf import merge, preset, with_preset
from fedpriv.errors import ConfigError

__all__ = ["ConfigGroup", "group_classes", "group_keys", "merge"]

G = TypeVar("G", bound="ConfigGroup")


@dataclasses.dataclass(frozen=True)
class ConfigGroup:
    """A preset of one configuration group and the fields that replace its values.

    Subclasses set :attr:`group` and :attr:`preset` and declare the group's fields as
    dataclass fields defaulting to ``None`` (the preset's value). A field named ``options``
    (a mapping) holds further keys of the group that have no field of their own; a field
    whose value is a mapping is merged into the preset's nested block of the same name.

    Attributes:
        group: the configuration group (``fedpriv/conf/<group>``).
        preset: the preset this class stands for ("" when a field names it).
        preset_key: the block key that names the preset (``name``; ``kind`` for
            ``sampling``, ``availability`` and ``compute``; ``mode`` for ``secagg``).
    """

    group: ClassVar[str] = ""
    preset: ClassVar[str] = ""
    preset_key: ClassVar[str] = "name"

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

    @classmethod
    def from_block(cls: type[G], block: Mapping[str, Any] | None) -> G:
        """The group as a composed block describes it, every field set: keys the block
        leaves out take the values of the preset it names (or of :attr:`preset`).

        A key of the block that is neither a field nor the preset key goes to ``options``
        when the class has that field; a key that another choice of the same group has (an
        experiment preset that sets ``algorithm.mu`` for FedProx, run with
        ``algorithm=fedavg``) is not this choice's and is left out.

        Raises:
            ConfigError: a key no choice of the group has, naming ``<group>.<key>``.
        """
        given = dict(block or {})
        if cls.preset:
            given.setdefault(cls.preset_key, cls.preset)
            full = merge(preset(cls.group, cls.preset), given)
        else:
            full = with_preset(cls.group, given, cls.preset_key)
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        values: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in full.items():
            if key in names and key != "options":
                values[key] = value
            elif key == cls.preset_key and key not in names:
                continue
            elif "options" in names:
                extra[key] = value
            elif key in group_keys(cls.group):
                continue
            else:
                raise ConfigError(
                    f"{cls.group}.{key}",
                    f"is not a setting of {cls.group}: its settings are "
                    f"{sorted(group_keys(cls.group))}",
                )
        if "options" in names:
            values["options"] = extra
        return cls._construct(values)

    @classmethod
    def _construct(cls: type[G], values: dict[str, Any]) -> G:
        """``cls(**values)``; a subclass whose constructor checks combinations of fields that
        a composed block may legitimately hold (e.g. a null beside a set value) overrides
        this."""
        return cls(**values)

    def block(self) -> dict[str, Any]:
        """The group as a plain block (the preset key and every field), as it is written
        to a run's ``config.yaml``."""
        out: dict[str, Any] = {}
        if self.preset and not any(f.name == self.preset_key for f in dataclasses.fields(self)):
            out[self.preset_key] = self.preset
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "options":
                out.update(dict(value or {}))
            else:
                out[f.name] = value
        return out


def group_classes(group: str) -> list[type[ConfigGroup]]:
    """The typed choices of configuration group ``group`` (the dataclass subclasses of
    :class:`ConfigGroup` that name it), in definition order."""
    out: list[type[ConfigGroup]] = []
    todo = list(ConfigGroup.__subclasses__())
    while todo:
        cls = todo.pop(0)
        todo.extend(cls.__subclasses__())
        if cls.group == group and dataclasses.is_dataclass(cls) and cls not in out:
            out.append(cls)
    return out


def group_keys(group: str) -> set[str]:
    """Every key some choice of ``group`` has: its fields and preset key (``options``
    excluded)."""
    keys: set[str] = set()
    for cls in group_classes(group):
        keys.update(f.name for f in dataclasses.fields(cls) if f.init and f.name != "options")
        if cls.preset_key != "preset":
            keys.add(cls.preset_key)
    return keys
