"""FedProx's Synthetic(alpha, beta) federated data (Li et al. 2020, Sec. 5.1).

Device ``k`` has a softmax-regression model ``y = argmax(softmax(W_k x + b_k))`` with
``x in R^60`` and 10 classes, where (as in the authors' generator, ``generate_niid``)

* ``u_k ~ N(0, alpha^2)``; ``W_k[i, j] ~ N(u_k, 1)``, ``b_k[j] ~ N(u_k, 1)``
  (``alpha`` controls how much local models differ);
* ``B_k ~ N(0, beta^2)``; ``v_k[j] ~ N(B_k, 1)``; ``x ~ N(v_k, Sigma)`` with diagonal
  ``Sigma_jj = j^-1.2`` (``beta`` controls how much local data differ);
* the number of examples of device ``k`` is ``floor(LogNormal(4, 2)) + 50``.

(The paper writes ``N(0, alpha)``; the reference code draws with standard deviation
``alpha``, which is what is done here.) Nothing is downloaded, so runs with 10,000+ devices
need no files. ``dataset.max_size`` optionally caps device sizes (the log-normal tail reaches
tens of thousands of examples); the cap is off by default, matching the definition.

Reference:
    Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith. "Federated Optimization in Heterogeneous
    Networks." MLSys 2020.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedpriv.data.datasets import FederatedData, register
from fedpriv.data.store import PopulationStore
from fedpriv.errors import ConfigError

DIM, CLASSES = 60, 10


def device_sizes(num_devices: int, rng: np.random.Generator) -> np.ndarray:
    """``floor(LogNormal(mean=4, sigma=2)) + 50`` examples per device."""
    return rng.lognormal(4.0, 2.0, num_devices).astype(np.int64) + 50


def covariance_diagonal(dim: int = DIM) -> np.ndarray:
    """``Sigma_jj = j^-1.2`` for ``j = 1..dim``."""
    return np.arange(1, dim + 1, dtype=np.float64) ** -1.2


def generate(
    num_devices: int,
    alpha: float,
    beta: float,
    rng: np.random.Generator,
    max_size: int | None = None,
    iid: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Generates Synthetic(alpha, beta).

    Args:
        num_devices: number of devices K.
        alpha, beta: heterogeneity of the local models and of the local data (>= 0).
        rng: explicit generator.
        max_size: optional cap on examples per device.
        iid: Synthetic-IID of the paper: one shared model ``W ~ N(0, 1)``, ``b ~ N(0, 1)``
            and ``x ~ N(0, Sigma)`` on every device.

    Returns:
        ``(x[N, 60] float32, y[N] int32, device_of[N], params)`` with ``params`` holding the
        per-device ``u``, ``B``, ``v[K, 60]`` drawn (for tests and analysis).
    """
    if num_devices < 1:
        raise ConfigError("dataset.num_clients", f"must be >= 1, got {num_devices}")
    for name, value in (("alpha", alpha), ("beta", beta)):
        if not value >= 0:
            raise ConfigError(f"dataset.{name}", f"must be >= 0, got {value}")
    sizes = device_sizes(num_devices, rng)
    if max_size is not None:
        sizes = np.minimum(sizes, int(max_size))
    sigma = np.sqrt(covariance_diagonal())
    if iid:
        u = np.zeros(num_devices)
        b_shift = np.zeros(num_devices)
        v = np.zeros((num_devices, DIM))
        w_shared = rng.normal(0.0, 1.0, (DIM, CLASSES))
        b_shared = rng.normal(0.0, 1.0, CLASSES)
    else:
        u = rng.normal(0.0, alpha, num_devices)
        b_shift = rng.normal(0.0, beta, num_devices)
        v = rng.normal(b_shift[:, None], 1.0, (num_devices, DIM))
    device_of = np.repeat(np.arange(num_devices), sizes)
    x = (v[device_of] + rng.standard_normal((len(device_of), DIM)) * sigma).astype(np.float32)
    y = np.empty(len(device_of), dtype=np.int32)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    for k in range(num_devices):
        if iid:
            w, b = w_shared, b_shared
        else:
            w = rng.normal(u[k], 1.0, (DIM, CLASSES))
            b = rng.normal(u[k], 1.0, CLASSES)
        lo, hi = offsets[k], offsets[k + 1]
        y[lo:hi] = np.argmax(x[lo:hi] @ w + b, axis=1)  # argmax of softmax = argmax of logits
    return x, y, device_of, {"u": u, "B": b_shift, "v": v, "sizes": sizes}


@register("synthetic")
def load_synthetic(cfg: Mapping[str, Any], rng: np.random.Generator) -> FederatedData:
    """Synthetic(alpha, beta) with natural clients (one per device).

    Config keys: ``num_clients``, ``alpha``, ``beta``, ``iid``, ``max_size`` and
    ``test_fraction`` (that share of every device's examples forms the test set, as the
    authors' 90/10 split per device).
    """
    num = int(cfg.get("num_clients", 30))
    alpha = float(cfg.get("alpha", 1.0))
    beta = float(cfg.get("beta", 1.0))
    max_size = cfg.get("max_size")
    x, y, device_of, _ = generate(num, alpha, beta, rng, max_size, bool(cfg.get("iid", False)))
    frac = float(cfg.get("test_fraction", 0.1))
    if not 0.0 < frac < 1.0:
        raise ConfigError("dataset.test_fraction", f"must be in (0, 1), got {frac}")
    sizes = np.bincount(device_of, minlength=num)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    n_test = np.floor(sizes * frac).astype(np.int64)
    position = np.arange(len(device_of)) - offsets[device_of]
    is_test = position < n_test[device_of]
    store = PopulationStore.from_assignment(
        x[~is_test], y[~is_test], device_of[~is_test], CLASSES, f"synthetic({alpha},{beta})"
    )
    return FederatedData(store, x[is_test], y[is_test])
