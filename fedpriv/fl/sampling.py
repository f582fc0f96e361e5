"""Client sampling for a round: fixed-size cohorts and Poisson sampling.

Samplers run on the host with a numpy generator derived from the round's sampling key, so
the cohort is a pure function of ``(root seed, round)``. Both return ``(ids[C], mask[C])``
padded to a static ``C`` so the jit-compiled round never recompiles.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np

from fedpriv.errors import ArgumentError


def host_rng(key: jax.Array) -> np.random.Generator:
    """A numpy generator seeded from a JAX key (simulation-grade randomness)."""
    data = np.asarray(jax.random.key_data(key)).astype(np.uint64).ravel()
    return np.random.default_rng(data)


@dataclasses.dataclass(frozen=True)
class FixedCohort:
    """A cohort of exactly ``cohort_size`` distinct clients, uniformly without replacement.

    Privacy:
        The accounting of this sampling is "sampling without replacement" with the
        replace-one-client neighbouring relation (the population size is public).
    """

    population: int
    cohort_size: int

    def __post_init__(self):
        if not 1 <= self.cohort_size <= self.population:
            raise ArgumentError(
                "cohort_size",
                f"must be between 1 and the population size {self.population}, "
                f"got {self.cohort_size}",
            )

    kind = "fixed"

    @property
    def capacity(self) -> int:
        return self.cohort_size

    @property
    def expected_size(self) -> float:
        return float(self.cohort_size)

    @property
    def rate(self) -> float:
        return self.cohort_size / self.population

    def sample(self, key: jax.Array) -> tuple[np.ndarray, np.ndarray]:
        ids = host_rng(key).choice(self.population, self.cohort_size, replace=False)
        return np.sort(ids).astype(np.int64), np.ones(self.cohort_size, dtype=bool)


@dataclasses.dataclass(frozen=True)
class PoissonCohort:
    """Each client joins independently with probability ``rate``.

    The realised cohort size varies; it is padded to a static capacity of the expected size
    plus eight standard deviations (exceeded with probability far below 1e-12). A larger
    realised cohort is never truncated: the capacity grows, which costs one recompilation.

    Privacy:
        Accounted as Poisson subsampling with the add/remove-one-client relation. Aggregates
        must be divided by :attr:`expected_size`, never the realised count.
    """

    population: int
    rate: float

    def __post_init__(self):
        if not 0.0 < self.rate <= 1.0:
            raise ArgumentError("rate", f"must be in (0, 1], got {self.rate}")

    kind = "poisson"

    @property
    def expected_size(self) -> float:
        return self.population * self.rate

    @property
    def capacity(self) -> int:
        mean = self.expected_size
        std = math.sqrt(self.population * self.rate * (1 - self.rate))
        return int(min(self.population, math.ceil(mean + 8 * std + 1)))

    def sample(self, key: jax.Array) -> tuple[np.ndarray, np.ndarray]:
        chosen = np.flatnonzero(host_rng(key).random(self.population) < self.rate)
        cap = max(self.capacity, len(chosen))
        ids = np.zeros(cap, dtype=np.int64)
        ids[: len(chosen)] = chosen
        mask = np.arange(cap) < len(chosen)
        return ids, mask


#: Where the arguments of :func:`build_sampler` come from in a run's configuration.
SAMPLING_FIELDS = {
    "kind": "sampling.kind",
    "cohort_size": "sampling.cohort_size",
    "rate": "sampling.rate",
}


def build_sampler(kind: str, population: int, cohort_size: int | None, rate: float | None):
    """Builds the sampler named ``kind`` (``fixed`` or ``poisson``).

    Raises:
        ArgumentError: naming ``kind``, ``cohort_size`` or ``rate`` (a run's builder maps
            them onto :data:`SAMPLING_FIELDS`).
    """
    if kind == "fixed":
        if cohort_size is None:
            raise ArgumentError("cohort_size", "is required for fixed-size cohorts")
        return FixedCohort(population, int(cohort_size))
    if kind == "poisson":
        if rate is None:
            raise ArgumentError("rate", "is required for Poisson sampling")
        return PoissonCohort(population, float(rate))
    raise ArgumentError("kind", f"unknown sampling {kind!r}; choose 'fixed' or 'poisson'")
