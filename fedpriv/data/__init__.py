"""Federated data: population store, partitioners and data set loaders."""

from fedpriv.data import files, partition
from fedpriv.data import formats as _formats  # noqa: F401  (registers the file-format loaders)
from fedpriv.data import synthetic as _synthetic  # noqa: F401  (registers "synthetic")
from fedpriv.data import tff_h5 as _tff_h5  # noqa: F401  (registers "emnist_tff")
from fedpriv.data.datasets import FederatedData, available, load, register
from fedpriv.data.store import CohortBatch, PopulationStore

__all__ = [
    "CohortBatch",
    "FederatedData",
    "PopulationStore",
    "available",
    "files",
    "load",
    "partition",
    "register",
]
