"""The population store: every client's examples on the host, gathered per round.

Examples live in flat host arrays ``x[N_total, ...]``, ``y[N_total]`` ordered by client, with
``offsets[K + 1]`` so that client ``k`` owns rows ``offsets[k]:offsets[k + 1]``. A round gathers
its cohort into a padded, statically shaped :class:`CohortBatch` that jit compiles once.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from fedpriv.errors import ConfigError


class CohortBatch(NamedTuple):
    """One round's cohort, padded to static shapes.

    Attributes:
        x: ``x[C, n_cap, ...]`` examples; rows past ``count[c]`` are zero padding.
        y: ``y[C, n_cap]`` integer labels; padding rows are 0.
        count: ``count[C]`` number of real examples of each client (0 for padded clients).
        client_mask: ``client_mask[C]`` 1.0 for a real client, 0.0 for a padded slot.
        client_ids: ``client_ids[C]`` population index of each client, -1 for padding.
    """

    x: np.ndarray
    y: np.ndarray
    count: np.ndarray
    client_mask: np.ndarray
    client_ids: np.ndarray


@dataclasses.dataclass(frozen=True)
class PopulationStore:
    """All clients' examples as flat host arrays plus per-client offsets.

    Attributes:
        x: ``x[N_total, ...]`` features, client-major order.
        y: ``y[N_total]`` integer labels.
        offsets: ``offsets[K + 1]`` row offsets; client ``k`` owns ``offsets[k]:offsets[k+1]``.
        num_classes: number of label classes.
        name: data set name, for logs and summaries.
    """

    x: np.ndarray
    y: np.ndarray
    offsets: np.ndarray
    num_classes: int
    name: str = "data"

    def __post_init__(self) -> None:
        if self.offsets.ndim != 1 or self.offsets[0] != 0 or self.offsets[-1] != len(self.x):
            raise ConfigError("dataset", "client offsets must start at 0 and end at len(x)")
        if len(self.x) != len(self.y):
            raise ConfigError("dataset", f"x has {len(self.x)} rows but y has {len(self.y)}")
        if np.any(np.diff(self.offsets) < 0):
            raise ConfigError("dataset", "client offsets must be non-decreasing")

    @classmethod
    def from_assignment(
        cls, x: np.ndarray, y: np.ndarray, client_of: np.ndarray, num_classes: int, name: str
    ) -> PopulationStore:
        """Builds a store from a client id per example (ids ``0..K-1``; examples reordered)."""
        client_of = np.asarray(client_of)
        num_clients = int(client_of.max()) + 1 if len(client_of) else 0
        order = np.argsort(client_of, kind="stable")
        counts = np.bincount(client_of, minlength=num_clients)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(x[order], y[order].astype(np.int32), offsets, num_classes, name)

    @property
    def num_clients(self) -> int:
        return len(self.offsets) - 1

    @property
    def client_sizes(self) -> np.ndarray:
        """``sizes[K]``: examples per client."""
        return np.diff(self.offsets)

    @property
    def example_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def client_data(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Client ``k``'s examples ``(x[n_k, ...], y[n_k])`` (views, no copy)."""
        lo, hi = self.offsets[k], self.offsets[k + 1]
        return self.x[lo:hi], self.y[lo:hi]

    def gather(self, client_ids: np.ndarray, client_mask: np.ndarray, n_cap: int) -> CohortBatch:
        """Gathers a cohort into a padded :class:`CohortBatch`.

        Args:
            client_ids: ``ids[C]`` population indices; entries where ``client_mask`` is 0 are
                ignored (any value).
            client_mask: ``mask[C]`` which slots hold a real client.
            n_cap: examples per client slot. A client with more examples keeps its first
                ``n_cap`` (the planner sets ``n_cap`` to the largest client by default).

        Returns:
            The cohort batch; one vectorised numpy gather, no Python loop over clients.
        """
        client_ids = np.asarray(client_ids, dtype=np.int64)
        mask = np.asarray(client_mask).astype(bool)
        safe_ids = np.where(mask, client_ids, 0)
        start = self.offsets[safe_ids]
        count = np.where(mask, np.minimum(self.offsets[safe_ids + 1] - start, n_cap), 0)
        col = np.arange(n_cap)
        valid = col[None, :] < count[:, None]
        rows = np.where(valid, start[:, None] + col[None, :], 0)
        x = self.x[rows]
        x[~valid] = 0
        y = np.where(valid, self.y[rows], 0).astype(np.int32)
        return CohortBatch(
            x=x,
            y=y,
            count=count.astype(np.int32),
            client_mask=mask.astype(np.float32),
            client_ids=np.where(mask, client_ids, -1).astype(np.int32),
        )
