"""Per-client statistics of a federated population (``fedpriv-data describe``, summaries)."""

from __future__ import annotations

from typing import Any

import numpy as np


def population_stats(data: Any) -> dict[str, Any]:
    """Client count, examples per client and label skew of a :class:`FederatedData`."""
    train = data.train
    sizes = train.client_sizes
    k, c = train.num_clients, train.num_classes
    owner = np.repeat(np.arange(k), sizes)
    counts = np.zeros((k, c), dtype=np.int64)
    np.add.at(counts, (owner, train.y), 1)
    nonempty = sizes > 0
    dist = counts[nonempty] / sizes[nonempty, None]
    overall = counts.sum(0) / max(1, counts.sum())
    tv = 0.5 * np.abs(dist - overall[None, :]).sum(1)
    return {
        "name": train.name,
        "clients": int(k),
        "train_examples": int(len(train.y)),
        "test_examples": int(len(data.test_y)),
        "example_shape": list(train.example_shape),
        "num_classes": int(c),
        "examples_per_client": {
            "min": int(sizes.min()) if k else 0,
            "median": float(np.median(sizes)) if k else 0.0,
            "p90": float(np.percentile(sizes, 90)) if k else 0.0,
            "max": int(sizes.max()) if k else 0,
        },
        "mean_classes_per_client": float((counts[nonempty] > 0).sum(1).mean()) if k else 0.0,
        "mean_tv_distance": float(tv.mean()) if len(tv) else 0.0,
    }
