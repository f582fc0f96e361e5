"""Federated EMNIST in TensorFlow Federated's HDF5 format (``emnist_tff``).

TFF publishes EMNIST-62 split by writer as ``fed_emnist_train.h5`` and ``fed_emnist_test.h5``
(``fed_emnist_digitsonly_*.h5`` for the 10-digit variant). Each file holds a group
``examples/<client id>/`` with datasets ``pixels`` (``[n, 28, 28]`` float32 in [0, 1]) and
``label`` (``[n]`` integers). Clients are the writers of the train file (sorted by id, as the
file lists them); the test set is every example of the test file. Reading needs ``h5py``
(``pip install fedpriv[tff]``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedpriv.data.datasets import FederatedData, register
from fedpriv.data.store import PopulationStore
from fedpriv.errors import ConfigError


def read_tff_h5(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reads one TFF EMNIST file into ``(x[N, 28, 28, 1], y[N], client_of[N])``.

    Raises:
        ConfigError: naming the file when it is missing, not HDF5, truncated, or holds arrays
            of the wrong shape or labels out of range.
    """
    try:
        import h5py
    except ImportError:
        raise ConfigError(
            "dataset.name", "emnist_tff reads HDF5 files and needs h5py: pip install h5py"
        ) from None
    if not path.is_file():
        raise ConfigError("dataset.root", f"{path} is missing (TFF's {path.name})")
    xs, ys, owners = [], [], []
    try:
        with h5py.File(path, "r") as f:
            if "examples" not in f:
                raise ConfigError(str(path), "has no 'examples' group; not a TFF EMNIST file")
            for k, client in enumerate(sorted(f["examples"])):
                group = f["examples"][client]
                pixels = np.asarray(group["pixels"], dtype=np.float32)
                label = np.asarray(group["label"]).astype(np.int64).reshape(-1)
                if pixels.ndim != 3 or pixels.shape[1:] != (28, 28) or len(pixels) != len(label):
                    raise ConfigError(
                        str(path),
                        f"client {client}: pixels {pixels.shape} and label {label.shape} do not "
                        "form [n, 28, 28] images with n labels",
                    )
                if len(label) and (label.min() < 0 or label.max() >= num_classes):
                    raise ConfigError(
                        str(path), f"client {client}: labels outside [0, {num_classes - 1}]"
                    )
                xs.append(pixels[..., None])
                ys.append(label.astype(np.int32))
                owners.append(np.full(len(label), k, dtype=np.int64))
    except ConfigError:
        raise
    except (OSError, KeyError, ValueError) as err:
        raise ConfigError(str(path), f"unreadable HDF5 file ({err})") from None
    if not xs or not sum(len(y) for y in ys):
        raise ConfigError(str(path), "holds no examples")
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(owners)


@register("emnist_tff")
def load_emnist_tff(cfg: Mapping[str, Any], rng: np.random.Generator) -> FederatedData:
    """EMNIST by writer from TFF's HDF5 files in ``dataset.root`` (62 classes, or 10 with
    ``dataset.only_digits: true``)."""
    del rng
    root = cfg.get("root")
    if not root:
        raise ConfigError("dataset.root", "is required for emnist_tff (the directory of the .h5)")
    digits = bool(cfg.get("only_digits", False))
    stem = "fed_emnist_digitsonly" if digits else "fed_emnist"
    classes = 10 if digits else 62
    x, y, owner = read_tff_h5(Path(root) / f"{stem}_train.h5", classes)
    tx, ty, _ = read_tff_h5(Path(root) / f"{stem}_test.h5", classes)
    # Writers with no training examples leave gaps in the ids; renumber them densely.
    _, owner = np.unique(owner, return_inverse=True)
    store = PopulationStore.from_assignment(x, y, owner, classes, "emnist_tff")
    return FederatedData(store, tx, ty)
