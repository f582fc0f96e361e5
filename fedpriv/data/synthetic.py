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

from fedpriv.data.datasets import FederatedData, register, required
from fedpriv.data.store import PopulationStore
from fedpriv.errors import ConfigError

DIM, CLASSES = 60, 10


def device_sizes(num_devices: int, rng: np.random.Generator) -> np.ndarray:
    """``floor(LogNormal(mean=4, sigma=2)) + 50`` examples per device."""
    return rng.lognormal(4.0, 2.0, num_devices).astype(np.int64) + 50


def covariance_diagonal(dim: int = DIM) -> np.ndarray:
    """``Sigma_jj = j^-1.2`` for ``j = 1..dim``."""
    return np.arange(1, dim + 1, dtype=np.float64) ** -1.2


def _device_parameters(
    num_devices: int,
    alpha: float,
    beta: float,
    rng: np.random.Generator,
    max_size: int | None,
    iid: bool,
) -> dict[str, np.ndarray]:
    if num_devices < 1:
        raise ConfigError("dataset.num_clients", f"must be >= 1, got {num_devices}")
    for name, value in (("alpha", alpha), ("beta", beta)):
        if not value >= 0:
            raise ConfigError(f"dataset.{name}", f"must be >= 0, got {value}")
    sizes = device_sizes(num_devices, rng)
    if max_size is not None:
        sizes = np.minimum(sizes, int(max_size))
    if iid:
        return {
            "u": np.zeros(num_devices),
            "B": np.zeros(num_devices),
            "v": np.zeros((num_devices, DIM)),
            "sizes": sizes,
        }
    u = rng.normal(0.0, alpha, num_devices)
    b_shift = rng.normal(0.0, beta, num_devices)
    v = rng.normal(b_shift[:, None], 1.0, (num_devices, DIM))
    return {"u": u, "B": b_shift, "v": v, "sizes": sizes}


def _devices(params: dict[str, np.ndarray], rng: np.random.Generator, iid: bool):
    """Yields ``(k, x_k float32[n_k, 60], y_k int32[n_k])`` device by device, so memory
    holds one device's temporaries at a time."""
    sigma = np.sqrt(covariance_diagonal()).astype(np.float32)
    if iid:
        w_shared = rng.normal(0.0, 1.0, (DIM, CLASSES))
        b_shared = rng.normal(0.0, 1.0, CLASSES)
    for k, n in enumerate(params["sizes"]):
        if iid:
            w, b = w_shared, b_shared
        else:
            w = rng.normal(params["u"][k], 1.0, (DIM, CLASSES))
            b = rng.normal(params["u"][k], 1.0, CLASSES)
        x = rng.standard_normal((int(n), DIM), dtype=np.float32) * sigma
        x += params["v"][k].astype(np.float32)
        y = np.argmax(x @ w + b, axis=1).astype(np.int32)  # argmax softmax = argmax logits
        yield k, x, y


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
        ``(x[N, 60] float32, y[N] int32, device_of[N], params)``, device-major, with
        ``params`` holding the per-device ``u``, ``B``, ``v[K, 60]`` and ``sizes`` drawn.
    """
    params = _device_parameters(num_devices, alpha, beta, rng, max_size, iid)
    sizes = params["sizes"]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    x = np.empty((offsets[-1], DIM), np.float32)
    y = np.empty(offsets[-1], np.int32)
    for k, xk, yk in _devices(params, rng, iid):
        x[offsets[k] : offsets[k + 1]] = xk
        y[offsets[k] : offsets[k + 1]] = yk
    return x, y, np.repeat(np.arange(num_devices), sizes), params


@register("synthetic")
def load_synthetic(cfg: Mapping[str, Any], rng: np.random.Generator) -> FederatedData:
    """Synthetic(alpha, beta) with natural clients (one per device).

    Config keys: ``num_clients``, ``alpha``, ``beta``, ``iid``, ``max_size`` and
    ``test_fraction`` (that share of every device's examples forms the test set, as the
    authors' 90/10 split per device).
    """
    num = int(required(cfg, "num_clients"))
    alpha = float(required(cfg, "alpha"))
    beta = float(required(cfg, "beta"))
    max_size = cfg.get("max_size")
    frac = float(required(cfg, "test_fraction"))
    if not 0.0 < frac < 1.0:
        raise ConfigError("dataset.test_fraction", f"must be in (0, 1), got {frac}")
    iid = bool(required(cfg, "iid"))
    params = _device_parameters(num, alpha, beta, rng, max_size, iid)
    sizes = params["sizes"]
    n_test = np.floor(sizes * frac).astype(np.int64)
    train_off = np.concatenate([[0], np.cumsum(sizes - n_test)])
    test_off = np.concatenate([[0], np.cumsum(n_test)])
    # Train and test rows are written in place, device by device: no full-size temporaries.
    x_tr = np.empty((train_off[-1], DIM), np.float32)
    y_tr = np.empty(train_off[-1], np.int32)
    x_te = np.empty((test_off[-1], DIM), np.float32)
    y_te = np.empty(test_off[-1], np.int32)
    for k, xk, yk in _devices(params, rng, iid):
        t = n_test[k]
        x_te[test_off[k] : test_off[k + 1]], y_te[test_off[k] : test_off[k + 1]] = xk[:t], yk[:t]
        x_tr[train_off[k] : train_off[k + 1]], y_tr[train_off[k] : train_off[k + 1]] = (
            xk[t:],
            yk[t:],
        )
    store = PopulationStore(
        x_tr, y_tr, train_off.astype(np.int64), CLASSES, f"synthetic({alpha},{beta})"
    )
    return FederatedData(store, x_te, y_te)
