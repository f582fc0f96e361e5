"""Checkpoints of a training run: server state plus the positions of the run's logs.

A checkpoint lives in ``run_dir/checkpoints/<round>/`` and is written with orbax-checkpoint:

* ``state/``: every array of the :class:`~fedpriv.fl.round.ServerState` (model parameters,
  server optimizer state, aggregator state such as the adaptive clip norm, round counter),
  stored flat under names derived from their pytree paths, e.g.
  ``params.params.Dense_0.kernel``.
* ``meta/metadata``: JSON with the round, the number of lines of ``metrics.jsonl`` and
  ``ledger.jsonl`` at that round, the epsilon tracker's records, the configuration, the shape
  and dtype of every array, and the last evaluation.

No random state is stored: every key is ``fold_in(fold_in(key(seed), purpose), round)``
(:class:`~fedpriv.fl.experiment.Experiment`), so the seed in the configuration and the round number
determine the rest of the run.

Orbax writes each checkpoint into a temporary directory and renames it when complete, so a
crash during a write leaves the previous checkpoint intact; the last ``keep`` checkpoints are
kept. Everything read back is checked (names, shapes and dtypes against the state the
configuration builds); a problem raises :class:`~fedpriv.errors.ConfigError` naming the file.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from fedpriv._logs import quiet_orbax
from fedpriv.errors import ConfigError

CHECKPOINT_DIR = "checkpoints"
FINAL_PARAMS_FILE = "final_params.npz"
CHECKPOINT_FORMAT = 1
META_FILE = os.path.join("meta", "metadata")

PyTree = Any


def leaf_name(path: tuple[Any, ...]) -> str:
    """A readable name for a pytree path: ``params.params.Dense_0.kernel``."""
    parts = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
        else:
            parts.append(str(entry))
    name = ".".join(parts)
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "leaf"


def flatten(tree: PyTree) -> dict[str, Any]:
    """``{name: leaf}`` for every leaf of ``tree``, in pytree order.

    Raises:
        ValueError: two leaves map to the same name.
    """
    out: dict[str, Any] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = leaf_name(path)
        if name in out:
            raise ValueError(f"two state leaves share the checkpoint name {name!r}")
        out[name] = leaf
    return out


def describe(tree: PyTree) -> dict[str, list]:
    """``{name: [shape, dtype]}`` of every leaf, as stored in the checkpoint metadata."""
    return {
        k: [list(np.shape(v)), str(np.asarray(v).dtype if not hasattr(v, "dtype") else v.dtype)]
        for k, v in flatten(tree).items()
    }


def step_dirs(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Completed checkpoints ``[(round, dir)]`` in ``run_dir``, oldest first.

    Orbax's temporary directories (a write in progress or cut short) are not listed.

    Raises:
        ConfigError: ``checkpoints`` exists but is not a directory.
    """
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.exists():
        return []
    if not root.is_dir():
        raise ConfigError(str(root), "is not a directory; checkpoints cannot be read or written")
    steps = [(int(p.name), p) for p in root.iterdir() if p.is_dir() and p.name.isdigit()]
    return sorted(steps)


def read_meta(step_dir: Path) -> dict[str, Any]:
    """Reads and checks the JSON metadata of one checkpoint (no arrays are loaded).

    Raises:
        ConfigError: naming the metadata file when it is missing, not JSON, or incomplete.
    """
    path = step_dir / META_FILE
    if not path.is_file():
        raise ConfigError(
            str(path), f"is missing; {step_dir} is not a complete checkpoint{_older(step_dir)}"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(
            str(path), f"is not valid JSON ({_one_line(err)}){_older(step_dir)}"
        ) from None
    if not isinstance(meta, dict):
        raise ConfigError(str(path), "must hold a JSON object")
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(
            str(path),
            f"has checkpoint format {meta.get('format')!r}; this version reads {CHECKPOINT_FORMAT}",
        )
    for key, kind in (
        ("round", int),
        ("metrics_lines", int),
        ("ledger_lines", int),
        ("config", dict),
        ("leaves", dict),
    ):
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise ConfigError(str(path), f"field {key!r} is missing or not {kind.__name__}")
    if meta["round"] != int(step_dir.name):
        raise ConfigError(
            str(path), f"says round {meta['round']} but lies in checkpoint {step_dir.name}"
        )
    if min(meta["round"], meta["metrics_lines"], meta["ledger_lines"]) < 0:
        raise ConfigError(str(path), "round and line counts must be >= 0")
    return meta


def latest_meta(run_dir: str | os.PathLike) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint's directory and metadata, or None when there is none."""
    steps = step_dirs(run_dir)
    if not steps:
        return None
    step_dir = steps[-1][1]
    return step_dir, read_meta(step_dir)


def _older(step_dir: Path) -> str:
    older = [p for _, p in step_dirs(step_dir.parent.parent) if int(p.name) < int(step_dir.name)]
    if older:
        return f"; delete {step_dir} to resume from {older[-1]}"
    return f"; delete {step_dir} to start again from round 0"


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    first = text[0] if text else ""
    first = f"{type(err).__name__}: {first}" if first else type(err).__name__
    return first[:200]


class Checkpointer:
    """Saves and restores a run's checkpoints in ``run_dir/checkpoints``.

    Args:
        run_dir: the run directory.
        keep: how many of the newest checkpoints to keep (>= 1).
    """

    def __init__(self, run_dir: str | os.PathLike, keep: int = 2):
        self.run_dir = Path(run_dir)
        self.root = self.run_dir / CHECKPOINT_DIR
        self.keep = int(keep)
        self._manager = None

    def _get_manager(self):
        # Called inside quiet_orbax(): orbax logs every read and write through absl at INFO.
        if self._manager is None:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=self.keep,
                enable_async_checkpointing=False,
                create=True,
                cleanup_tmp_directories=True,
            )
            self._manager = ocp.CheckpointManager(
                self.root.resolve(), options=options, item_names=("state", "meta")
            )
        return self._manager

    def latest_step(self) -> int | None:
        steps = step_dirs(self.run_dir)
        return steps[-1][0] if steps else None

    def save(self, step: int, state: PyTree, meta: Mapping[str, Any]) -> Path:
        """Writes checkpoint ``step`` (atomically) and drops the ones beyond ``keep``."""
        arrays = flatten(state)
        meta = {
            "format": CHECKPOINT_FORMAT,
            "round": int(step),
            **dict(meta),
            "leaves": describe(state),
        }
        with quiet_orbax():
            manager = self._get_manager()
            manager.save(
                int(step),
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)
                ),
                force=True,
            )
            manager.wait_until_finished()
        return self.root / str(int(step))

    def restore(self, template: PyTree) -> tuple[PyTree, dict[str, Any]] | None:
        """Restores the newest checkpoint into the structure of ``template``.

        Args:
            template: a state built from the same configuration; gives the tree structure,
                the expected shape and dtype of every array, and their device placement.

        Returns:
            ``(state, meta)``, or None when the run has no checkpoint.

        Raises:
            ConfigError: naming the checkpoint file or directory that is missing, unreadable,
                or does not fit ``template``.
        """
        found = latest_meta(self.run_dir)
        if found is None:
            return None
        step_dir, meta = found
        return _read_state(step_dir, meta, template), meta

    def close(self) -> None:
        if self._manager is not None:
            with quiet_orbax():
                self._manager.close()
            self._manager = None


def restore_step(
    run_dir: str | os.PathLike, step: int, template: PyTree
) -> tuple[PyTree, dict[str, Any]]:
    """Reads checkpoint ``step`` of ``run_dir`` into the structure of ``template``; writes
    nothing (no checkpoint manager is opened, so no directory is created or cleaned up).

    Args:
        run_dir: the run directory.
        step: the round of the checkpoint (``run_dir/checkpoints/<step>/``).
        template: a tree whose leaf names (:func:`leaf_name` of their paths), shapes and
            dtypes are those of the stored state; any pytree with the same names will do,
            e.g. a dict with the fields of :class:`~fedpriv.fl.round.ServerState` as keys.

    Returns:
        ``(state, meta)``.

    Raises:
        ConfigError: naming the checkpoint file or directory that is missing, unreadable,
            or does not fit ``template``.
    """
    step_dir = Path(run_dir) / CHECKPOINT_DIR / str(int(step))
    if not step_dir.is_dir():
        raise ConfigError(str(step_dir), "is missing; the run kept no checkpoint of that round")
    meta = read_meta(step_dir)
    return _read_state(step_dir, meta, template), meta


def _read_state(step_dir: Path, meta: Mapping[str, Any], template: PyTree) -> PyTree:
    """The arrays of checkpoint ``step_dir`` (metadata ``meta``) in ``template``'s structure."""
    expected = describe(template)
    state_dir = step_dir / "state"
    if meta["leaves"] != expected:
        raise ConfigError(str(state_dir), _mismatch(meta["leaves"], expected))
    if not state_dir.is_dir():
        raise ConfigError(str(state_dir), f"is missing{_older(step_dir)}")
    try:
        with quiet_orbax(), warnings.catch_warnings():  # arrays placed like ``template`` below
            warnings.simplefilter("ignore")
            restored = ocp.PyTreeCheckpointer().restore(state_dir.resolve())
    except Exception as err:  # noqa: BLE001 - any read failure is a bad checkpoint
        raise ConfigError(
            str(state_dir), f"cannot be read ({_one_line(err)}){_older(step_dir)}"
        ) from None
    if not isinstance(restored, Mapping):
        raise ConfigError(str(state_dir), "does not hold a flat mapping of arrays")
    got = {k: [list(np.shape(v)), str(np.asarray(v).dtype)] for k, v in dict(restored).items()}
    if got != expected:
        raise ConfigError(str(state_dir), _mismatch(got, expected))
    leaves, treedef = jax.tree.flatten(template)
    names = list(flatten(template))
    values = []
    for name, like in zip(names, leaves):
        value = np.asarray(restored[name])
        sharding = getattr(like, "sharding", None)
        values.append(jax.device_put(value, sharding) if sharding is not None else value)
    return jax.tree.unflatten(treedef, values)


def _mismatch(got: Mapping[str, list], expected: Mapping[str, list]) -> str:
    missing = [k for k in expected if k not in got]
    if missing:
        return (
            f"has no array {missing[0]!r} that this configuration needs; it was written for "
            "a different model, optimizer or privacy setting"
        )
    extra = [k for k in got if k not in expected]
    if extra:
        return f"holds array {extra[0]!r} that this configuration does not use"
    for k, (shape, dtype) in expected.items():
        if got[k][0] != shape:
            return (
                f"array {k!r} has shape {tuple(got[k][0])} but this configuration needs "
                f"{tuple(shape)}"
            )
        if got[k][1] != dtype:
            return f"array {k!r} has dtype {got[k][1]} but this configuration needs {dtype}"
    return "does not match the state this configuration builds"


def save_final_params(run_dir: str | os.PathLike, params: PyTree) -> Path:
    """Writes ``final_params.npz`` (one array per parameter, by name) atomically."""
    path = Path(run_dir) / FINAL_PARAMS_FILE
    tmp = path.with_name(path.name + ".tmp")
    arrays = {k: np.asarray(v) for k, v in flatten(params).items()}
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_final_params(run_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads ``final_params.npz`` back as ``{name: array}``."""
    with np.load(Path(run_dir) / FINAL_PARAMS_FILE, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
