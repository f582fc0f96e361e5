"""Hydra configuration groups for fedpriv-train (also reachable as conf/ at the top level).

Each group's presets are the one place its defaults live: the command line composes them,
and library functions that receive a partial block fill it from the preset of the same name
(:func:`preset`), so a default never differs between the shell and Python.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from fedpriv.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent


@functools.cache
def _preset(group: str, name: str) -> dict[str, Any] | None:
    path = CONF_DIR / group / f"{name}.yaml"
    if not path.is_file():
        return None
    node = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    node.pop("defaults", None)
    return node


def presets(group: str) -> list[str]:
    """The preset names of ``group`` (its YAML files)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def preset(group: str, name: str) -> dict[str, Any]:
    """The values of preset ``name`` of config group ``group`` (a new dict).

    Raises:
        ConfigError: naming ``group``, when it has no such preset.
    """
    found = _preset(group, name)
    if found is None:
        raise ConfigError(group, f"unknown preset {name!r}; choose from {presets(group)}")
    return _copy(found)


def with_preset(group: str, block: Mapping[str, Any], key: str = "name") -> dict[str, Any]:
    """``block`` over the values of the preset its ``key`` (``name``, or ``kind``/``mode``
    in the groups that name a preset so) names (``block`` as it is when there is no such
    preset): the keys a caller leaves out take the preset's defaults."""
    base = _preset(group, str(block.get(key)))
    if base is None:
        return dict(block)
    return merge(base, block)


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` merged in, nested mappings key by key (a new dict)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _copy(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {k: _copy(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_copy(v) for v in node]
    return node
