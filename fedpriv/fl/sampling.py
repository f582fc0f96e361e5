"""Client sampling for a round: fixed-size cohorts and Poisson sampling.

Samplers run on the host with a numpy generator derived from the round's sampling key, so
the cohort is a pure function of ``(root seed, round)``. Both return ``(ids[C], mask[C])``
padded to a static ``C`` so the jit-compiled round never recompiles.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import numpy as np

from fedpriv.errors import ArgumentError


def host_rng(key: jax.Array) -> np.random.Generator:
    """A numpy generator seeded from a JAX key (simulation-grade randomness)."""
    data = np.asarray(jax.random.key_data(key)).astype(np.uint64).ravel()
    return np.random.default_rng(data)


class Participation(NamedTuple):
    """Which rounds one client can take part in under a sampler: at least
    ``min_separation`` rounds apart (1: consecutive rounds allowed), at most
    ``max_participations`` times in the run. Matrix-mechanism sensitivity is computed for
    exactly this pattern (:mod:`fedpriv.privacy.mechanisms.dp_ftrl`)."""

    min_separation: int
    max_participations: int


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

    def sample(self, key: jax.Array, rnd: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, mask)`` of a cohort (``rnd``, the 1-based round, is not used)."""
        del rnd
        ids = host_rng(key).choice(self.population, self.cohort_size, replace=False)
        return np.sort(ids).astype(np.int64), np.ones(self.cohort_size, dtype=bool)

    def participation(self, rounds: int) -> Participation:
        """Any client may take part in any round: separation 1, up to ``rounds`` times."""
        return Participation(1, rounds)


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

    def participation(self, rounds: int) -> Participation:
        """Any client may take part in any round: separation 1, up to ``rounds`` times."""
        return Participation(1, rounds)

    def sample(self, key: jax.Array, rnd: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, mask)`` padded to :attr:`capacity` (``rnd`` is not used)."""
        del rnd
        chosen = np.flatnonzero(host_rng(key).random(self.population) < self.rate)
        cap = max(self.capacity, len(chosen))
        ids = np.zeros(cap, dtype=np.int64)
        ids[: len(chosen)] = chosen
        mask = np.arange(cap) < len(chosen)
        return ids, mask


@dataclasses.dataclass(frozen=True)
class CyclicCohorts:
    """(k, b)-participation: the clients split into ``groups`` fixed groups by a public
    rule (client ``i`` in group ``i mod groups``); round ``t`` (1-based) draws
    ``cohort_size`` clients of group ``(t - 1) mod groups`` uniformly without replacement.

    A client is therefore eligible only every ``groups``-th round: it takes part at most
    ``ceil(rounds / groups)`` times, at least ``groups`` rounds apart, whatever the draws
    (:meth:`participation`). This is the participation schema of DP-FTRL and banded matrix
    factorisation without amplification (Kairouz et al. 2021; Choquette-Choo et al. 2023).

    Privacy:
        No amplification by sampling is claimed: the mechanism's sensitivity covers every
        cohort a round can draw from its group.
    """

    population: int
    groups: int
    cohort_size: int

    kind = "cyclic"

    def __post_init__(self):
        if isinstance(self.groups, bool) or not 1 <= int(self.groups) <= self.population:
            raise ArgumentError(
                "groups",
                f"must be between 1 and the population size {self.population}, got {self.groups}",
            )
        smallest = self.population // self.groups
        if not 1 <= self.cohort_size <= smallest:
            raise ArgumentError(
                "cohort_size",
                f"must be between 1 and the smallest group's size {smallest} (population "
                f"{self.population} in {self.groups} groups), got {self.cohort_size}",
            )

    @property
    def capacity(self) -> int:
        return self.cohort_size

    @property
    def expected_size(self) -> float:
        return float(self.cohort_size)

    @property
    def rate(self) -> float:
        return self.cohort_size / self.population

    def group_of_round(self, rnd: int) -> int:
        """The group round ``rnd`` (1-based) draws from."""
        return (int(rnd) - 1) % self.groups

    def members(self, group: int) -> np.ndarray:
        """The clients of ``group``."""
        return np.arange(group, self.population, self.groups, dtype=np.int64)

    def sample(self, key: jax.Array, rnd: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, mask)`` of round ``rnd``'s cohort, drawn from its group."""
        members = self.members(self.group_of_round(rnd))
        ids = host_rng(key).choice(members, self.cohort_size, replace=False)
        return np.sort(ids).astype(np.int64), np.ones(self.cohort_size, dtype=bool)

    def participation(self, rounds: int) -> Participation:
        """Separation ``groups``, at most ``ceil(rounds / groups)`` rounds per client."""
        return Participation(self.groups, math.ceil(rounds / self.groups))


#: Where the arguments of :func:`build_sampler` come from in a run's configuration.
SAMPLING_FIELDS = {
    "kind": "sampling.kind",
    "cohort_size": "sampling.cohort_size",
    "rate": "sampling.rate",
    "groups": "sampling.groups",
}


def build_sampler(
    kind: str,
    population: int,
    cohort_size: int | None,
    rate: float | None,
    groups: int | None = None,
):
    """Builds the sampler named ``kind`` (``fixed``, ``poisson`` or ``cyclic``).

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
    if kind == "cyclic":
        if groups is None:
            raise ArgumentError("groups", "is required for cyclic participation")
        if cohort_size is None:
            raise ArgumentError("cohort_size", "is required for cyclic participation")
        return CyclicCohorts(population, int(groups), int(cohort_size))
    raise ArgumentError("kind", f"unknown sampling {kind!r}; choose 'fixed', 'poisson' or 'cyclic'")
