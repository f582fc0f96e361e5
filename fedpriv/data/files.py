"""Data sets read from files.

``dataset=npz`` reads a NumPy ``.npz`` archive given by ``dataset.path``:

* ``x[N, ...]``: features (numbers; images as ``[N, H, W, C]`` for the CNN);
* ``y[N]``: integer labels in ``[0, num_classes)``;
* optional ``user_ids[N]``: the client of each example (for ``partition.kind=natural``);
* optional ``x_test``, ``y_test``: a held-out set (otherwise a stratified ``test_fraction`` of
  ``(x, y)`` is held out).

Every array is checked before use (:mod:`fedpriv.validation`); a bad file stops the run with
one line naming ``dataset.path``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedpriv import validation
from fedpriv.data.datasets import (
    FederatedData,
    _number,
    partition_population,
    register,
    required,
    train_test_split,
)
from fedpriv.errors import ConfigError


@register("npz")
def load_npz(cfg: Mapping[str, Any], rng: np.random.Generator) -> FederatedData:
    """Loads a federated population from the ``.npz`` file at ``cfg["path"]``.

    Raises:
        ConfigError: naming ``dataset.path`` (file missing or unreadable, wrong arrays,
            shapes, dtypes, labels or non-finite features) or ``dataset.num_clients``.
    """
    path = cfg.get("path")
    validation.check_npz_layout(validation.npz_headers(path), path)
    field = "dataset.path"
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as err:
        raise ConfigError(field, f"{path} cannot be read ({type(err).__name__}: {err})") from None
    x = arrays["x"].astype(np.float32)
    y = arrays["y"].astype(np.int64)
    has_test = "x_test" in arrays
    labels = np.concatenate([y, arrays["y_test"].astype(np.int64)]) if has_test else y
    if len(y) == 0:
        raise ConfigError(field, f"{path}: x and y hold no examples")
    if labels.min() < 0:
        raise ConfigError(field, f"{path}: labels must be >= 0, found {int(labels.min())}")
    num_classes = cfg.get("num_classes")
    num_classes = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    if labels.max() >= num_classes:
        raise ConfigError(
            field,
            f"{path}: labels must be in [0, {num_classes - 1}] (dataset.num_classes="
            f"{num_classes}), found {int(labels.max())}",
        )
    for name in ("x", "x_test"):
        if name in arrays and not np.all(np.isfinite(arrays[name])):
            bad = int(np.size(arrays[name]) - np.count_nonzero(np.isfinite(arrays[name])))
            raise ConfigError(field, f"{path}: {name} holds {bad} non-finite values (NaN or inf)")
    kind = required(required(cfg, "partition"), "kind", "dataset.partition")
    num_clients = int(required(cfg, "num_clients"))
    user_ids = arrays.get("user_ids")
    if has_test:
        x_tr, y_tr = x, y
        x_te, y_te = arrays["x_test"].astype(np.float32), arrays["y_test"].astype(np.int64)
    else:
        fraction = _number(cfg.get("test_fraction", 0.2), "dataset.test_fraction")
        idx_tr, y_tr, idx_te, y_te = train_test_split(np.arange(len(y)), y, fraction, rng)
        x_tr, x_te = x[idx_tr], x[idx_te]
        if user_ids is not None:
            user_ids = user_ids[idx_tr]
    if kind != "natural" and len(y_tr) < num_clients:
        raise ConfigError(
            "dataset.num_clients",
            f"{num_clients} clients need at least {num_clients} training examples; {path} "
            f"has {len(y_tr)}",
        )
    if kind == "natural" and user_ids is not None:
        _, user_ids = np.unique(user_ids, return_inverse=True)
    store = partition_population(
        x_tr, y_tr.astype(np.int32), cfg, num_classes, rng, "npz", user_ids=user_ids
    )
    return FederatedData(store, x_te, y_te.astype(np.int32))
