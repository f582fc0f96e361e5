"""Client sampling for a round: fixed-size cohorts, Poisson sampling, cyclic
participation (fixed-size or Poisson within the round's group), and minimum separation
(fixed-size or Poisson among the clients that have waited long enough).

Samplers run on the host with a numpy generator derived from the round's sampling key, so
the cohort is a pure function of ``(root seed, round)``. Both return ``(ids[C], mask[C])``
padded to a static ``C`` so the jit-compiled round never recompiles.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

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


@dataclasses.dataclass(frozen=True)
class CyclicPoisson:
    """Cyclic participation with Poisson sampling inside the group: the clients split into
    ``groups`` fixed groups (client ``i`` in group ``i mod groups``), and in round ``t``
    (1-based) each client of group ``(t - 1) mod groups`` joins independently with
    probability ``rate``.

    A client takes part at most ``ceil(rounds / groups)`` times, at least ``groups`` rounds
    apart, whatever the draws (:meth:`participation`), and every round it may join is a
    Poisson draw: the sampling scheme of amplified banded matrix factorisation
    (Choquette-Choo et al. 2023, Section 4). The realised cohort is padded to a static
    capacity of the largest group's expected size plus eight standard deviations (grown,
    never truncated, when exceeded).

    Privacy:
        Accounted as ``ceil(rounds / groups)`` Poisson-subsampled releases of a client,
        add/remove one client, by mechanisms that claim it (banded strategies with at most
        ``groups`` bands). Aggregates are divided by :attr:`expected_size`, a public
        constant, never the realised count.
    """

    population: int
    groups: int
    rate: float

    kind = "cyclic_poisson"

    def __post_init__(self):
        if isinstance(self.groups, bool) or not 1 <= int(self.groups) <= self.population:
            raise ArgumentError(
                "groups",
                f"must be between 1 and the population size {self.population}, got {self.groups}",
            )
        if not 0.0 < self.rate <= 1.0:
            raise ArgumentError("rate", f"must be in (0, 1], got {self.rate}")

    @property
    def expected_size(self) -> float:
        """``rate * population / groups``: the mean over the groups of the expected cohort."""
        return self.rate * self.population / self.groups

    @property
    def capacity(self) -> int:
        largest = math.ceil(self.population / self.groups)
        std = math.sqrt(largest * self.rate * (1 - self.rate))
        return int(min(largest, math.ceil(largest * self.rate + 8 * std + 1)))

    def group_of_round(self, rnd: int) -> int:
        """The group round ``rnd`` (1-based) draws from."""
        return (int(rnd) - 1) % self.groups

    def members(self, group: int) -> np.ndarray:
        """The clients of ``group``."""
        return np.arange(group, self.population, self.groups, dtype=np.int64)

    def sample(self, key: jax.Array, rnd: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, mask)`` of round ``rnd``'s cohort, padded to :attr:`capacity`."""
        members = self.members(self.group_of_round(rnd))
        chosen = members[host_rng(key).random(len(members)) < self.rate]
        cap = max(self.capacity, len(chosen))
        ids = np.zeros(cap, dtype=np.int64)
        ids[: len(chosen)] = chosen
        return ids, np.arange(cap) < len(chosen)

    def participation(self, rounds: int) -> Participation:
        """Separation ``groups``, at most ``ceil(rounds / groups)`` rounds per client."""
        return Participation(self.groups, math.ceil(rounds / self.groups))


@dataclasses.dataclass(frozen=True)
class MinSeparation:
    """b-min-separation: a client that took part in round ``s`` is eligible again from round
    ``s + separation`` on; round ``t`` draws among the eligible clients ``cohort_size`` of
    them uniformly without replacement, or each with probability ``poisson_rate``.

    A client therefore takes part at least ``separation`` rounds apart and at most
    ``ceil(rounds / separation)`` times (:meth:`participation`), the b-min-separation
    participation of Choquette-Choo et al. 2023, without fixing which rounds a client may
    take. Who is eligible depends on every earlier draw, so round ``t``'s cohort is a function
    of the sampling keys of rounds ``1..t``: :meth:`bind` gives the sampler the run's key
    schedule, and a draw out of order (a resumed run, the audit) replays the earlier rounds
    on the host. Fixed-size cohorts need ``cohort_size * separation <= population`` (then
    at least ``cohort_size`` clients are always eligible). The Poisson variant's realised
    cohort is padded to the population's expected size plus eight standard deviations.

    Privacy:
        No amplification by sampling is claimed: the mechanism's sensitivity covers every
        pattern the separation allows. Aggregates are divided by :attr:`expected_size`, a
        public constant: ``cohort_size``, or for Poisson the stationary expected cohort
        ``rate * N / (1 + rate (separation - 1))`` (a client waits a geometric number of
        eligible rounds, then ``separation - 1`` ineligible ones).
    """

    population: int
    separation: int
    cohort_size: int | None = None
    poisson_rate: float | None = None
    keys: Callable[[int], Any] | None = dataclasses.field(default=None, compare=False, repr=False)
    _draws: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    kind = "min_separation"

    def __post_init__(self):
        b = self.separation
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise ArgumentError("separation", f"must be an integer >= 1, got {b!r}")
        if (self.cohort_size is None) == (self.poisson_rate is None):
            raise ArgumentError(
                "cohort_size", "set exactly one of cohort_size (fixed-size) and rate (Poisson)"
            )
        if self.cohort_size is not None and not 1 <= self.cohort_size * b <= self.population:
            raise ArgumentError(
                "cohort_size",
                f"must be between 1 and population / separation = {self.population // b} "
                f"(so that enough clients are always eligible), got {self.cohort_size}",
            )
        if self.poisson_rate is not None and not 0.0 < self.poisson_rate <= 1.0:
            raise ArgumentError("rate", f"must be in (0, 1], got {self.poisson_rate}")

    def bind(self, keys: Callable[[int], Any]) -> MinSeparation:
        """This sampler with the run's sampling keys (``keys(t)``: round ``t``'s key)."""
        return dataclasses.replace(self, keys=keys, _draws={})

    @property
    def rate(self) -> float:
        """The Poisson rate, or ``cohort_size / population``."""
        if self.poisson_rate is not None:
            return float(self.poisson_rate)
        return self.cohort_size / self.population

    @property
    def expected_size(self) -> float:
        if self.cohort_size is not None:
            return float(self.cohort_size)
        q = float(self.poisson_rate)
        return q * self.population / (1 + q * (self.separation - 1))

    @property
    def capacity(self) -> int:
        if self.cohort_size is not None:
            return int(self.cohort_size)
        q, n = float(self.poisson_rate), self.population
        return int(min(n, math.ceil(n * q + 8 * math.sqrt(n * q * (1 - q)) + 1)))

    def participation(self, rounds: int) -> Participation:
        """Separation ``separation``, at most ``ceil(rounds / separation)`` rounds."""
        return Participation(self.separation, math.ceil(rounds / self.separation))

    def _draw(self, key: Any, rnd: int) -> tuple[np.ndarray, np.ndarray]:
        last = self._draws["last"]
        eligible = np.flatnonzero(last <= rnd - self.separation)
        rng = host_rng(key)
        if self.cohort_size is not None:
            chosen = np.sort(rng.choice(eligible, self.cohort_size, replace=False))
        else:
            chosen = eligible[rng.random(len(eligible)) < self.poisson_rate]
        last[chosen] = rnd
        cap = max(self.capacity, len(chosen))
        ids = np.zeros(cap, dtype=np.int64)
        ids[: len(chosen)] = chosen
        out = (ids, np.arange(cap) < len(chosen))
        self._draws.update(round=rnd, cohort=out)
        return out

    def sample(self, key: Any, rnd: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, mask)`` of round ``rnd``'s cohort, ``key`` being round ``rnd``'s sampling
        key. Rounds drawn in order cost one draw each; any other round replays rounds
        ``1..rnd-1`` with the bound keys.

        Raises:
            ValueError: a round out of order on a sampler without keys (:meth:`bind`).
        """
        rnd = int(rnd)
        done = self._draws.get("round", 0)
        if done == rnd:
            ids, mask = self._draws["cohort"]
            return ids.copy(), mask.copy()
        if done != rnd - 1:
            if self.keys is None:
                raise ValueError(
                    f"round {rnd} after round {done}: min-separation sampling needs the "
                    "sampling keys of the rounds before (MinSeparation.bind)"
                )
            self._draws.clear()
        if not self._draws:
            self._draws["last"] = np.full(self.population, -(10**9), dtype=np.int64)
            self._draws["round"] = 0
        for r in range(self._draws["round"] + 1, rnd):
            self._draw(self.keys(r), r)
        ids, mask = self._draw(key, rnd)
        return ids.copy(), mask.copy()


#: Where the arguments of :func:`build_sampler` come from in a run's configuration.
SAMPLING_FIELDS = {
    "kind": "sampling.kind",
    "cohort_size": "sampling.cohort_size",
    "rate": "sampling.rate",
    "groups": "sampling.groups",
    "separation": "sampling.separation",
}


def build_sampler(
    kind: str,
    population: int,
    cohort_size: int | None,
    rate: float | None,
    groups: int | None = None,
    separation: int | None = None,
):
    """Builds the sampler named ``kind`` (``fixed``, ``poisson``, ``cyclic``,
    ``cyclic_poisson`` or ``min_separation``).

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
    if kind == "cyclic_poisson":
        if groups is None:
            raise ArgumentError("groups", "is required for cyclic participation")
        if rate is None:
            raise ArgumentError("rate", "is required for cyclic Poisson sampling")
        return CyclicPoisson(population, int(groups), float(rate))
    if kind == "min_separation":
        if separation is None:
            raise ArgumentError("separation", "is required for min-separation sampling")
        return MinSeparation(
            population,
            separation,
            None if cohort_size is None else int(cohort_size),
            None if rate is None else float(rate),
        )
    raise ArgumentError(
        "kind",
        f"unknown sampling {kind!r}; choose 'fixed', 'poisson', 'cyclic', 'cyclic_poisson' "
        "or 'min_separation'",
    )
