"""Checks on everything a run reads or writes besides configuration values.

:mod:`fedpriv.config` checks configuration values; this module checks the files and
directories they point at: data files, the output directory, and, when a run is resumed, its
checkpoint, ledger and metrics. Every check raises :class:`~fedpriv.errors.ConfigError`
naming the field or file, the value and what is allowed; ``fedpriv-train`` runs the cheap
ones before Hydra creates the run directory, so bad input leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from fedpriv.errors import ConfigError
from fedpriv.fl import checkpoint
from fedpriv.fl.edge import read_trace

#: Configuration keys that may differ when a run is resumed: they do not change what the
#: finished rounds computed. Everything else must equal the configuration of the checkpoint.
RESUMABLE_CHANGES = ("rounds", "eval_every", "progress", "resume", "checkpoint", "execution")


# --- output directory -------------------------------------------------------------------------


def check_output_dir(path: str | os.PathLike, field: str = "hydra.run.dir") -> None:
    """Checks that ``path`` is, or can be created as, a writable directory.

    Nothing is left behind: writability is probed with a temporary directory that is removed.

    Raises:
        ConfigError: ``path`` is a file, lies under a file, or cannot be written.
    """
    path = Path(path).absolute()
    if path.exists() and not path.is_dir():
        raise ConfigError(field, f"{path} is a file, not a directory; choose a directory")
    probe = path
    while not probe.exists():
        parent = probe.parent
        if parent == probe:
            break
        probe = parent
    if not probe.is_dir():
        raise ConfigError(field, f"{path} cannot be created: {probe} is a file, not a directory")
    try:
        tmp = tempfile.mkdtemp(prefix=".fedpriv-write-test-", dir=probe)
        os.rmdir(tmp)
    except OSError as err:
        what = "is not writable" if probe == path else f"cannot be created in {probe}"
        raise ConfigError(field, f"{path} {what} ({err.strerror or err})") from None


# --- data files ---------------------------------------------------------------------------------


def npz_headers(path: str | os.PathLike, field: str = "dataset.path") -> dict[str, tuple]:
    """Shapes and dtypes of the arrays in a ``.npz`` file, read from headers only.

    Returns:
        ``{name: (shape, dtype)}``.

    Raises:
        ConfigError: the file is missing, a directory, not a readable ``.npz`` archive, or
            holds an array of objects (which would need pickle).
    """
    if path is None or str(path).strip() == "":
        raise ConfigError(field, "is required: the path of a .npz file with arrays x and y")
    p = Path(path)
    if not p.exists():
        raise ConfigError(field, f"{p} does not exist; give the path of a .npz file")
    if p.is_dir():
        raise ConfigError(field, f"{p} is a directory; give the path of a .npz file")
    out: dict[str, tuple] = {}
    try:
        with zipfile.ZipFile(p) as zf:
            for name in zf.namelist():
                if not name.endswith(".npy"):
                    continue
                with zf.open(name) as f:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                    else:
                        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                out[name[: -len(".npy")]] = (tuple(shape), np.dtype(dtype))
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise ConfigError(
            field, f"{p} is not a readable .npz archive ({type(err).__name__}: {err})"
        ) from None
    for name, (_, dtype) in out.items():
        if dtype.hasobject:
            raise ConfigError(
                field, f"{p}: array {name!r} holds Python objects; it must hold numbers"
            )
    return out


def check_npz_layout(
    headers: Mapping[str, tuple], path: str | os.PathLike, model: str | None = None
) -> None:
    """Checks the arrays of a data file: names, shapes and dtypes (see the ``npz`` loader).

    Raises:
        ConfigError: naming ``dataset.path`` and the array that is wrong.
    """
    field = "dataset.path"
    for name in ("x", "y"):
        if name not in headers:
            raise ConfigError(
                field,
                f"{path} has no array {name!r}; it needs x[N, ...] and y[N] "
                f"(found {sorted(headers) or 'none'})",
            )
    (x_shape, x_dtype), (y_shape, y_dtype) = headers["x"], headers["y"]
    if len(x_shape) < 2:
        raise ConfigError(field, f"{path}: x must have shape [N, features...], got shape {x_shape}")
    if len(y_shape) != 1:
        raise ConfigError(field, f"{path}: y must have shape [N], got shape {y_shape}")
    if x_shape[0] != y_shape[0]:
        raise ConfigError(
            field, f"{path}: x has {x_shape[0]} rows but y has {y_shape[0]}; they must match"
        )
    if x_dtype.kind not in "fiub":
        raise ConfigError(field, f"{path}: x must hold numbers, got dtype {x_dtype}")
    if y_dtype.kind not in "iu":
        raise ConfigError(field, f"{path}: y must hold integer labels, got dtype {y_dtype}")
    if model == "cnn" and len(x_shape) != 4:
        raise ConfigError(
            field,
            f"{path}: model cnn needs images x[N, H, W, C], got shape {x_shape}; "
            "use model=mlp or model=logreg for flat features",
        )
    if "user_ids" in headers:
        shape, dtype = headers["user_ids"]
        if shape != (x_shape[0],) or dtype.kind not in "iu":
            raise ConfigError(
                field,
                f"{path}: user_ids must be integers of shape ({x_shape[0]},), got "
                f"{dtype} of shape {shape}",
            )
    if ("x_test" in headers) != ("y_test" in headers):
        raise ConfigError(field, f"{path}: give both x_test and y_test, or neither")
    if "x_test" in headers:
        (tx, tx_dtype), (ty, ty_dtype) = headers["x_test"], headers["y_test"]
        if tuple(tx[1:]) != tuple(x_shape[1:]) or len(tx) != len(x_shape):
            raise ConfigError(
                field,
                f"{path}: x_test examples have shape {tuple(tx[1:])} but x examples "
                f"have {tuple(x_shape[1:])}",
            )
        bad_kind = ty_dtype.kind not in "iu" or tx_dtype.kind not in "fiub"
        if len(ty) != 1 or ty[0] != tx[0] or bad_kind:
            raise ConfigError(
                field,
                f"{path}: y_test must be integer labels of shape ({tx[0]},), got "
                f"{ty_dtype} of shape {ty}",
            )


def check_data_files(cfg: Mapping[str, Any]) -> None:
    """Checks the data files a configuration names (headers only, no data is loaded) and the
    availability trace (``availability=trace``, read whole: it is small)."""
    dataset = cfg.get("dataset") or {}
    if dataset.get("name") == "npz":
        path = dataset.get("path")
        check_npz_layout(npz_headers(path), path, (cfg.get("model") or {}).get("name"))
    availability = cfg.get("availability") or {}
    if availability.get("kind") == "trace":
        read_trace(availability.get("path"))


# --- resuming -----------------------------------------------------------------------------------


def read_jsonl(path: Path, lines: int | None = None) -> list[dict[str, Any]]:
    """Reads the first ``lines`` records (all when None) of a JSON-lines file.

    Raises:
        ConfigError: naming the file and line that is not a JSON object, or when the file
            has fewer than ``lines`` records.
    """
    if not path.exists():
        records: list[dict[str, Any]] = []
    elif not path.is_file():
        raise ConfigError(str(path), "is not a regular file")
    else:
        records = []
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(str(path), f"cannot be read ({err})") from None
        for i, line in enumerate(text.splitlines(keepends=True), 1):
            if lines is not None and len(records) == lines:
                break
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise ConfigError(str(path), f"line {i} is not valid JSON ({err.msg})") from None
            if not isinstance(rec, dict):
                raise ConfigError(str(path), f"line {i} is not a JSON object")
            if not line.endswith("\n") and lines is None:
                raise ConfigError(str(path), f"line {i} is cut short (no newline)")
            records.append(rec)
    if lines is not None and len(records) < lines:
        raise ConfigError(
            str(path),
            f"has {len(records)} records but the checkpoint was written after {lines}; the "
            "file was shortened or replaced, so the run cannot be resumed",
        )
    return records


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose values differ, ignoring :data:`RESUMABLE_CHANGES`."""
    out: list[str] = []

    def walk(a: Any, b: Any, prefix: str) -> None:
        if prefix.split(".")[0] in RESUMABLE_CHANGES:
            return
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            for k in sorted(set(a) | set(b), key=str):
                walk(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
        elif a != b:
            out.append(prefix)

    walk(saved, current, "")
    return out


def _lookup(cfg: Mapping[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def check_resume(run_dir: str | os.PathLike, cfg: Mapping[str, Any]) -> None:
    """Checks that the run in ``run_dir`` can be resumed with configuration ``cfg``.

    Reads the newest checkpoint's metadata (or, without one, the configuration Hydra saved
    for the run) and compares it with ``cfg``; checks the ledger and metrics files are files.
    Arrays are checked when they are restored (:class:`~fedpriv.fl.checkpoint.Checkpointer`).

    Raises:
        ConfigError: naming the file or the configuration key that does not fit.
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return
    found = checkpoint.latest_meta(run_dir)
    saved, source = None, None
    if found is not None:
        saved, source = found[1]["config"], found[0] / checkpoint.META_FILE
    elif (run_dir / ".hydra" / "config.yaml").is_file():
        source = run_dir / ".hydra" / "config.yaml"
        try:
            saved = OmegaConf.to_container(OmegaConf.load(source), resolve=True)
        except Exception as err:  # noqa: BLE001 - any parse failure is a bad file
            raise ConfigError(str(source), f"cannot be read ({type(err).__name__})") from None
    if saved is not None:
        if "canaries" not in saved:  # made before canary clients existed: it had none
            saved = {**saved, "canaries": {"count": 0, "unseen": None}}
        for group in ("availability", "compute"):  # made before these groups existed
            if group not in saved:
                saved = {**saved, group: {"kind": "none"}}
        for group in ("hierarchy", "async"):  # made before these groups: flat, synchronous
            if group not in saved:
                saved = {**saved, group: {"name": "none"}}
        diffs = config_differences(saved, cfg)
        if diffs:
            key = diffs[0]
            raise ConfigError(
                key,
                f"the run in {run_dir} was made with {key}={_lookup(saved, key)!r} ({source}), "
                f"got {_lookup(cfg, key)!r}; a resumed run must use the same value",
            )
    for name in ("ledger.jsonl", "metrics.jsonl"):
        p = run_dir / name
        if p.exists() and not p.is_file():
            raise ConfigError(str(p), "is not a regular file")
