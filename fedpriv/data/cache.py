"""A cache of loaded populations as memory-mapped arrays.

Loading a large data set (parsing files, generating Synthetic data, partitioning) can take
longer than training, and its arrays may not fit in memory. With ``dataset.cache_dir`` set,
the first run writes the loaded :class:`~fedpriv.data.datasets.FederatedData` as ``.npy``
files under a directory named by a hash of the ``dataset`` config and the data seed; later
runs open them memory-mapped (``numpy.load(mmap_mode="r")``), so only the rows a round
gathers are read from disk. Files are written to a temporary directory and renamed, so an
interrupted build never leaves a partial cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedpriv.data.datasets import FederatedData
from fedpriv.data.store import PopulationStore
from fedpriv.errors import ConfigError

_ARRAYS = ("x", "y", "offsets", "test_x", "test_y")


def cache_key(dataset_cfg: Mapping[str, Any], seed: int) -> str:
    """A stable name for a loaded population: its config (without the cache dir) and seed."""
    cfg = {k: v for k, v in dict(dataset_cfg).items() if k != "cache_dir"}
    blob = json.dumps({"dataset": cfg, "seed": int(seed), "format": 1}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_cached(
    cache_dir: str | os.PathLike, key: str, build: Callable[[], FederatedData]
) -> FederatedData:
    """Returns the cached population ``key`` memory-mapped, building and writing it first if
    the cache does not hold it.

    Raises:
        ConfigError: naming ``dataset.cache_dir`` when it cannot be written or a cached file
            is unreadable.
    """
    root = Path(cache_dir)
    target = root / key
    if not target.exists():
        data = build()
        try:
            root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
        except OSError as err:
            raise ConfigError(
                "dataset.cache_dir", f"{root}: cannot write ({err.strerror})"
            ) from None
        arrays = {
            "x": data.train.x,
            "y": data.train.y,
            "offsets": data.train.offsets,
            "test_x": data.test_x,
            "test_y": data.test_y,
        }
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(arr))
        meta = {"num_classes": data.train.num_classes, "name": data.train.name}
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            os.rename(tmp, target)
        except OSError:  # another process built it first; use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    try:
        meta = json.loads((target / "meta.json").read_text())
        arr = {n: np.load(target / f"{n}.npy", mmap_mode="r") for n in _ARRAYS}
    except (OSError, ValueError) as err:
        raise ConfigError(
            "dataset.cache_dir", f"{target}: unreadable cached population ({err}); delete it"
        ) from None
    store = PopulationStore(
        arr["x"], arr["y"], np.asarray(arr["offsets"]), int(meta["num_classes"]), str(meta["name"])
    )
    return FederatedData(store, np.asarray(arr["test_x"]), np.asarray(arr["test_y"]))
