"""Buffered asynchronous aggregation (FedBuff), simulated with a precomputed event schedule.

FedBuff (Nguyen et al. 2022, Algorithm 1) keeps ``M`` clients training at once
(``concurrency``). A client trains from the model version it downloaded and uploads its
update when done; the server adds ``s(tau) * update`` to a buffer, where ``tau`` is the
update's staleness (server steps since the download) and ``s(tau) = (1 + tau)^-a``
(``a = 1/2``, the paper's ``1/sqrt(1 + tau)``), and takes a server step every ``K`` arrivals
(``buffer_size``): the buffer divided by ``K`` (by the weight sum without DP, as FedAvg
does) is the pseudo-gradient of the server optimizer. Each finished client is replaced at
once, so ``M`` clients stay in flight.

The simulation has two halves:

* :func:`simulate` computes, on the host with numpy and before training, the whole event
  schedule from a seeded generator: job durations from a :class:`DelayModel` (exponential,
  log-normal or constant, a ``stragglers`` fraction of clients ``slowdown`` times slower),
  which client starts when, and for each server step the ``K`` arriving clients, the
  version each downloaded, their staleness and the simulated time. Arrivals at the same
  instant are processed first and their replacements drawn afterwards, so replacements
  download the newest version. Arrivals staler than ``max_staleness`` are dropped (their
  client returns to the idle pool); the schedule reports how many.
* :func:`make_fedbuff_step` builds one jit-compiled server step: the ``K`` arrivals are
  vmapped (in chunks, as in :func:`fedpriv.fl.round.cohort_sums`), each gathering its own
  stale parameters from a ring buffer of the last ``max_staleness + 1`` versions held in
  the state, training from them, and contributing through the run's aggregator; then the
  aggregator's finalize (noise, for DP) and the server optimizer; then the new version is
  written into the ring buffer.

Determinism: the schedule is a function of ``(seed, config)``; step ``t`` uses the same key
as synchronous round ``t`` (:meth:`fedpriv.fl.experiment.Experiment.round_key`), so a run is
reproducible and resumes exactly (the host driver, :func:`fedpriv.fl.loop.drive`,
checkpoints the whole :class:`FedBuffState`, ring buffer included), and with ``K`` = cohort
size, ``concurrency = K`` and constant delays every step has staleness 0 and is the
synchronous round on the same clients.

Privacy (with ``privacy=user_dp`` or ``user_dp_adaptive``): every arrival's update is
clipped to ``C`` by DP-FedAvg's contribution and then multiplied by ``s(tau) <= 1``, so each
contribution has norm at most ``C``; each server step adds ``N(0, (z C)^2)`` to the sum of
its ``K`` contributions and divides by ``K``, a constant. The schedule draws each new job's
client uniformly among idle clients (not in flight, not waiting in the current buffer), so a
client contributes at most once per server step. How a step is accounted
(``async.accounting``):

* ``no_amplification`` (default): each step is a Gaussian mechanism with noise multiplier
  ``z`` under add/remove of one client's data, composed over steps, with no credit for
  sampling. The ledger records ``sampling: "full"`` with the population ``N``. The schedule
  runs over the ``N`` client ids whatever their data, so removing a client's data leaves
  its slot contributing nothing (zero-out adjacency): every step's sum moves by at most
  ``C``. This holds for any schedule that does not depend on the data and in which a client
  contributes at most once per step, whatever the correlations between steps.
* ``uniform_subset``: each step is accounted as ``K`` of ``N`` clients sampled uniformly
  without replacement (``sampling: "fixed"``, replace-one adjacency, population public).
  By symmetry each step's contributors are a uniformly random ``K``-subset marginally
  (client draws are uniform, and which clients are stragglers is itself uniformly random),
  but the accounting composes steps as if their subsets were drawn independently, which
  the schedule does not do: a client in flight is likelier to arrive in the next step and
  a client that just contributed cannot contribute again in the same step. This is the
  approximation commonly made for asynchronous DP-FL; it is an assumption, not a theorem.

Both need: delays independent of the data (a delay model that used, e.g., a client's number
of examples would make who contributes depend on the data); the client choice independent
of the data and of the model; dropping of stale arrivals decided by the schedule alone; each
client at most once per server step; the schedule and its randomness kept from the
adversary only as far as the accounting mode assumes (``no_amplification`` assumes nothing).

References:
    Nguyen, Malik, Zhao, Rabbat, Malek, Huba. "Federated Learning with Buffered
    Asynchronous Aggregation." AISTATS 2022, arXiv:2106.06639 (Algorithm 1; staleness
    weight ``1/sqrt(1 + tau)``).
    Xie, Koyejo, Gupta. "Asynchronous Federated Optimization." arXiv:1903.03934, 2019
    (polynomial staleness functions ``(1 + tau)^-a``).
    McMahan, Ramage, Talwar, Zhang. "Learning Differentially Private Recurrent Language
    Models." ICLR 2018 (DP-FedAvg).
    Wang, Balle, Kasiviswanathan. "Subsampled Renyi Differential Privacy and Analytical
    Moments Accountant." AISTATS 2019 (sampling without replacement).
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedpriv.errors import ConfigError
from fedpriv.fl import edge as edge_lib
from fedpriv.fl import experiment as experiment_lib
from fedpriv.fl.aggregators import Aggregator
from fedpriv.fl.client import ClientBatch, ClientOutput
from fedpriv.fl.round import (
    RoundInputs,
    ServerState,
    chunked_sums,
    client_contribution,
    cohort_metrics,
    init_server_state,
    server_update,
    split_round_key,
)
from fedpriv.fl.sampling import host_rng
from fedpriv.privacy import release
from fedpriv.privacy.plan import PrivacyPlan, build_plan
from fedpriv.settings import Asynchronous, FixedCohort, RunConfig, SecureAggregation

PyTree = Any

#: Purpose id of the schedule's key (folded into the root seed; far from the loop's ids).
KEY_SCHEDULE = 0x5C4ED
DISTRIBUTIONS: tuple[str, ...] = ("exponential", "lognormal", "constant")
ACCOUNTING: tuple[str, ...] = ("no_amplification", "uniform_subset")


# --------------------------------------------------------------------------- delay model


@dataclasses.dataclass(frozen=True)
class DelayModel:
    """How long a client's job (download, train, upload) takes, in simulated seconds.

    A job of client ``i`` lasts ``speed[i] * d`` with ``d`` drawn afresh per job: exponential
    with mean ``mean``, log-normal with mean ``mean`` (``log d ~ N(log mean - sigma^2 / 2,
    sigma^2)``), or ``mean`` itself (constant). ``speed[i]`` is ``slowdown`` for a uniformly
    random subset of ``round(stragglers * N)`` clients and 1 otherwise.

    Privacy:
        Durations never read the data; the accounting of :mod:`fedpriv.fl.fedbuff` needs that.
    """

    distribution: str = "exponential"
    mean: float = 1.0
    sigma: float = 1.0
    stragglers: float = 0.0
    slowdown: float = 10.0

    def __post_init__(self) -> None:
        if self.distribution not in DISTRIBUTIONS:
            raise ConfigError(
                "async.delay.distribution",
                f"unknown value {self.distribution!r}; choose from {list(DISTRIBUTIONS)}",
            )
        if not self.mean > 0:
            raise ConfigError("async.delay.mean", f"must be > 0, got {self.mean}")
        if not self.sigma > 0:
            raise ConfigError("async.delay.sigma", f"must be > 0, got {self.sigma}")
        if not 0 <= self.stragglers <= 1:
            raise ConfigError("async.delay.stragglers", f"must be in [0, 1], got {self.stragglers}")
        if not self.slowdown >= 1:
            raise ConfigError("async.delay.slowdown", f"must be >= 1, got {self.slowdown}")

    def speeds(self, num_clients: int, rng: np.random.Generator) -> np.ndarray:
        """``speed[N]``: 1 for normal clients, ``slowdown`` for the stragglers."""
        speed = np.ones(num_clients)
        slow = int(round(self.stragglers * num_clients))
        speed[rng.permutation(num_clients)[:slow]] = self.slowdown
        return speed

    def draw(self, speed: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One job duration per entry of ``speed``."""
        speed = np.asarray(speed, dtype=np.float64)
        if self.distribution == "exponential":
            base = rng.exponential(self.mean, speed.shape)
        elif self.distribution == "lognormal":
            base = self.mean * np.exp(
                self.sigma * rng.standard_normal(speed.shape) - self.sigma**2 / 2
            )
        else:
            base = np.full(speed.shape, self.mean)
        return speed * base


# --------------------------------------------------------------------------- the schedule


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Who arrives at each server step, from which version, and when.

    Attributes:
        client_ids: ``client_ids[T, K]``, the clients whose updates step ``t`` aggregates
            (distinct within a step), in arrival order.
        versions: ``versions[T, K]``, the model version each downloaded (server steps done
            at its download).
        staleness: ``staleness[T, K] = t - versions`` (steps counted from 0), at most
            ``max_staleness``.
        arrival_time: ``arrival_time[T, K]``, simulated arrival times.
        step_time: ``step_time[T]``, the simulated time of each server step.
        dropped: ``dropped[T]``, arrivals discarded as too stale since the previous step.
        max_staleness: the ring buffer's depth minus one.
    """

    client_ids: np.ndarray
    versions: np.ndarray
    staleness: np.ndarray
    arrival_time: np.ndarray
    step_time: np.ndarray
    dropped: np.ndarray
    max_staleness: int

    @property
    def steps(self) -> int:
        return int(self.client_ids.shape[0])

    def histogram(self, t: int) -> list[int]:
        """Arrivals of step ``t`` per staleness ``0 .. max_staleness``."""
        return np.bincount(self.staleness[t], minlength=self.max_staleness + 1).tolist()


class _IdlePool:
    """Clients not in flight and not in the buffer; uniform draws in O(1) (swap-remove)."""

    def __init__(self, num_clients: int):
        self.ids = np.arange(num_clients, dtype=np.int64)
        self.pos = np.arange(num_clients, dtype=np.int64)
        self.size = num_clients

    def draw(self, rng: np.random.Generator) -> int:
        j = int(rng.integers(self.size))
        cid = int(self.ids[j])
        last = int(self.ids[self.size - 1])
        self.ids[j], self.pos[last] = last, j
        self.ids[self.size - 1], self.pos[cid] = cid, self.size - 1
        self.size -= 1
        return cid

    def put(self, cid: int) -> None:
        j = int(self.pos[cid])
        other = int(self.ids[self.size])
        self.ids[j], self.pos[other] = other, j
        self.ids[self.size], self.pos[cid] = cid, self.size
        self.size += 1


def simulate(
    num_clients: int,
    steps: int,
    buffer_size: int,
    concurrency: int,
    max_staleness: int,
    delay: DelayModel,
    rng: np.random.Generator,
    speed: np.ndarray | None = None,
) -> Schedule:
    """Simulates FedBuff's arrivals for ``steps`` server steps (host, numpy, seeded).

    At time 0, ``concurrency`` clients are drawn uniformly without replacement and download
    version 0. Events are processed in time order; all arrivals at one instant are handled
    first (in the order their jobs started), each joining the buffer (or dropped when its
    staleness exceeds ``max_staleness``), a server step happening whenever the buffer holds
    ``buffer_size`` updates; then a replacement is started for each arrival, drawn uniformly
    among idle clients (neither in flight nor waiting in the buffer), downloading the
    current version. Buffered clients return to the idle pool at the server step.

    Args:
        num_clients: N.
        steps: T, server steps to simulate.
        buffer_size: K.
        concurrency: M, clients in flight; ``M + K - 1 <= N``.
        max_staleness: arrivals staler than this are dropped.
        delay: the job-duration model.
        rng: the schedule's generator (e.g. :func:`fedpriv.fl.sampling.host_rng`).
        speed: ``speed[N]`` per-client slowdowns; None draws them with ``delay.speeds``.

    Returns:
        The :class:`Schedule`.

    Raises:
        ConfigError: sizes that cannot work, naming the field.

    Privacy:
        Nothing here reads the data: the contributors of every step are a function of the
        generator alone, and no client appears twice in one step.
    """
    if concurrency + buffer_size - 1 > num_clients:
        raise ConfigError(
            "async.concurrency",
            f"must be in [1, {num_clients - buffer_size + 1}] (clients - buffer_size + 1: "
            f"clients in flight and clients in the buffer are not drawn again), got {concurrency}",
        )
    if speed is None:
        speed = delay.speeds(num_clients, rng)
    pool = _IdlePool(num_clients)
    heap: list[tuple[float, int, int, int]] = []  # (finish time, job number, client, version)
    jobs = 0

    def start(now: float, version: int) -> None:
        nonlocal jobs
        cid = pool.draw(rng)
        finish = now + float(delay.draw(speed[cid : cid + 1], rng)[0])
        heapq.heappush(heap, (finish, jobs, cid, version))
        jobs += 1

    for _ in range(concurrency):
        start(0.0, 0)
    k = buffer_size
    ids = np.zeros((steps, k), np.int64)
    vers = np.zeros((steps, k), np.int64)
    times = np.zeros((steps, k))
    step_time = np.zeros(steps)
    dropped = np.zeros(steps, np.int64)
    version, filled, dropped_now = 0, 0, 0
    while version < steps:
        now = heap[0][0]
        arrivals = []
        while heap and heap[0][0] == now:
            arrivals.append(heapq.heappop(heap))
        for _, _, cid, downloaded in arrivals:
            if version >= steps:
                break
            if version - downloaded > max_staleness:
                dropped_now += 1
                pool.put(cid)
                continue
            ids[version, filled], vers[version, filled] = cid, downloaded
            times[version, filled] = now
            filled += 1
            if filled == k:
                step_time[version], dropped[version] = now, dropped_now
                for c in ids[version]:
                    pool.put(int(c))
                version, filled, dropped_now = version + 1, 0, 0
        if version >= steps:
            break
        for _ in arrivals:
            start(now, version)
    staleness = np.arange(steps)[:, None] - vers
    return Schedule(ids, vers, staleness, times, step_time, dropped, int(max_staleness))


def sync_round_times(
    delay: DelayModel, speed: np.ndarray, cohorts: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Simulated duration of synchronous rounds: the slowest job of each cohort.

    Args:
        delay: the job-duration model.
        speed: ``speed[N]`` per-client slowdowns (as in the asynchronous run).
        cohorts: ``cohorts[R, C]`` client ids of each round.
        rng: generator for the job durations.

    Returns:
        ``round_time[R]``.
    """
    cohorts = np.asarray(cohorts)
    return delay.draw(speed[cohorts], rng).max(axis=1)


# --------------------------------------------------------------------------- the server step


class FedBuffState(NamedTuple):
    """The server state plus the ring buffer of recent parameter versions.

    Attributes:
        server: the :class:`~fedpriv.fl.round.ServerState`; ``server.round`` is the current
            version ``v`` (server steps done).
        ring: ``ring[S + 1, ...]`` per parameter leaf; version ``u`` lives in slot
            ``u % (S + 1)``, so versions ``v - S .. v`` are all present.
    """

    server: ServerState
    ring: PyTree


class StepInputs(NamedTuple):
    """One server step's arrivals, padded to ``C`` slots.

    Attributes:
        clients: the arrivals' data (:class:`~fedpriv.fl.round.RoundInputs`, ``C`` slots).
        slot: ``slot[C]``, ring-buffer slot of each arrival's downloaded version.
        staleness: ``staleness[C]`` (float32; 0 for padding).
    """

    clients: RoundInputs
    slot: jax.Array
    staleness: jax.Array


def init_fedbuff_state(server: ServerState, max_staleness: int) -> FedBuffState:
    """Wraps a fresh server state: every ring slot holds the initial parameters."""
    ring = jax.tree.map(
        lambda p: jnp.broadcast_to(p, (max_staleness + 1,) + p.shape).copy(), server.params
    )
    return FedBuffState(server, ring)


def staleness_weight(staleness: jax.Array, exponent: float = 0.5) -> jax.Array:
    """``s(tau) = (1 + tau)^-exponent`` (Nguyen et al. 2022: exponent 1/2); ``s(0) = 1``.

    Privacy:
        ``0 < s(tau) <= 1`` for ``tau >= 0``: weighting a clipped update never raises its
        norm above the clip.
    """
    return jnp.power(1.0 + staleness.astype(jnp.float32), -exponent)


def buffered_sums(
    client_update: Callable[[PyTree, ClientBatch, jax.Array], ClientOutput],
    aggregator: Aggregator,
    ring: PyTree,
    agg_state: PyTree,
    inputs: StepInputs,
    client_key: jax.Array,
    chunk_size: int,
    staleness_exponent: float,
) -> tuple[tuple[PyTree, jax.Array, dict], dict[str, jax.Array]]:
    """Trains every arrival from its own stale parameters and sums the weighted contributions.

    Arrival ``i`` gathers ``ring[slot[i]]``, trains with ``fold_in(client_key, client_id)``
    and contributes ``s(staleness[i]) * contribution_i`` (its weight is not scaled). Chunks
    of ``chunk_size`` arrivals run under ``vmap`` inside ``lax.scan``, as in
    :func:`fedpriv.fl.round.cohort_sums`.

    Returns:
        ``((total, total_weight, stats), per_client)`` as :func:`~fedpriv.fl.round.cohort_sums`.

    Privacy:
        With DP-FedAvg each contribution is clipped to ``C`` before the weight ``s <= 1``
        multiplies it, so the sum's add/remove-one sensitivity stays ``C``.
    """

    def one_arrival(inp: StepInputs):
        params = jax.tree.map(lambda r: r[inp.slot], ring)
        contrib, weight, stats, per_client = client_contribution(
            client_update, aggregator, params, agg_state, inp.clients, client_key
        )
        w = staleness_weight(inp.staleness, staleness_exponent)
        contrib = jax.tree.map(lambda c: c * w.astype(c.dtype), contrib)
        return contrib, weight, stats, per_client

    return chunked_sums(one_arrival, inputs, chunk_size, "arrival")


def make_fedbuff_step(
    client_update: Callable[[PyTree, ClientBatch, jax.Array], ClientOutput],
    aggregator: Aggregator,
    server_opt: optax.GradientTransformation,
    chunk_size: int,
    max_staleness: int,
    staleness_exponent: float = 0.5,
) -> Callable[[FedBuffState, StepInputs, jax.Array], tuple[FedBuffState, dict[str, jax.Array]]]:
    """Builds ``step_fn(state, inputs, key) -> (new_state, metrics)`` (not yet jitted).

    One FedBuff server step: :func:`buffered_sums` over the arrivals, the aggregator's
    finalize (DP-FedAvg: Gaussian noise on the sum, division by the constant ``K``), the
    server optimizer on ``-mean_update``, and the new parameters written to ring slot
    ``(v + 1) % (S + 1)``. ``key`` is split like a synchronous round's
    (:func:`fedpriv.fl.round.make_round`) into client and aggregation keys.

    Metrics: those of a synchronous round plus ``staleness_mean``, ``staleness_max`` and
    ``staleness_weight_mean`` over the real arrivals.

    Privacy:
        As the aggregator's finalize, applied to contributions of norm ``<= C`` (see
        :func:`buffered_sums`); one server step is one release.
    """
    depth = max_staleness + 1

    def step_fn(state: FedBuffState, inputs: StepInputs, key: jax.Array):
        server = state.server
        client_key, agg_key, _ = split_round_key(key)
        (total, total_w, stats), per_client = buffered_sums(
            client_update,
            aggregator,
            state.ring,
            server.agg_state,
            inputs,
            client_key,
            chunk_size,
            staleness_exponent,
        )
        new_server, mean_update, agg_metrics = server_update(
            server, aggregator, server_opt, (total, total_w, stats), agg_key
        )
        slot = new_server.round % depth
        ring = jax.tree.map(lambda r, p: r.at[slot].set(p), state.ring, new_server.params)
        real = inputs.clients.client_mask > 0
        n_real = jnp.sum(real)
        tau = jnp.where(real, inputs.staleness, 0.0)
        weights = jnp.where(real, staleness_weight(inputs.staleness, staleness_exponent), 0.0)
        metrics = {
            **cohort_metrics(per_client, real),
            "update_norm": optax.tree.norm(mean_update),
            "staleness_mean": jnp.sum(tau) / jnp.maximum(n_real, 1),
            "staleness_max": jnp.max(tau),
            "staleness_weight_mean": jnp.sum(weights) / jnp.maximum(n_real, 1),
            **agg_metrics,
        }
        return FedBuffState(new_server, ring), metrics

    return step_fn


# --------------------------------------------------------------------------- configuration


def _default(value: Any, default: Any) -> Any:
    return default if value is None else value


@dataclasses.dataclass(frozen=True)
class FedBuffConfig:
    """The ``async`` group for ``name: fedbuff``.

    Attributes:
        buffer_size: K, arrivals per server step.
        concurrency: M, clients in flight.
        max_staleness: S; the ring buffer holds ``S + 1`` versions.
        staleness_exponent: ``a`` of ``s(tau) = (1 + tau)^-a``.
        delay: the job-duration model.
        accounting: ``no_amplification`` or ``uniform_subset`` (module docstring).
    """

    buffer_size: int
    concurrency: int
    max_staleness: int
    staleness_exponent: float = 0.5
    delay: DelayModel = DelayModel()
    accounting: str = "no_amplification"

    @classmethod
    def from_settings(cls, settings: Asynchronous) -> FedBuffConfig:
        """Reads the ``async`` group.

        Raises:
            ConfigError: a bad field, naming it.
        """
        delay = dict(settings.delay or {})
        accounting = settings.accounting or "no_amplification"
        if accounting not in ACCOUNTING:
            raise ConfigError(
                "async.accounting", f"unknown value {accounting!r}; choose from {list(ACCOUNTING)}"
            )
        for field, low in (("buffer_size", 1), ("concurrency", 1), ("max_staleness", 0)):
            value = getattr(settings, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"async.{field}", f"must be an integer >= {low}, got {value!r}")
        exponent = float(_default(settings.staleness_exponent, 0.5))
        if not exponent >= 0:
            raise ConfigError("async.staleness_exponent", f"must be >= 0, got {exponent}")
        return cls(
            int(settings.buffer_size),
            int(settings.concurrency),
            int(settings.max_staleness),
            exponent,
            DelayModel(
                str(_default(delay.get("distribution"), "exponential")),
                float(_default(delay.get("mean"), 1.0)),
                float(delay.get("sigma") or 1.0),
                float(delay.get("stragglers") or 0.0),
                float(delay.get("slowdown") or 1.0),
            ),
            str(accounting),
        )


@dataclasses.dataclass(frozen=True)
class BufferSampling:
    """What the privacy plan accounts for a FedBuff step (it stands in for a sampler).

    ``kind="fixed"``: ``K`` of ``N`` without replacement (``uniform_subset``);
    ``kind="full"``: no credit for sampling (``no_amplification``). ``expected_size`` is
    ``K`` either way: DP-FedAvg divides each step's noised sum by ``K``.
    """

    kind: str
    population: int
    cohort: int

    @property
    def rate(self) -> float:
        return self.cohort / self.population if self.kind == "fixed" else 1.0

    @property
    def expected_size(self) -> float:
        return float(self.cohort)

    @property
    def capacity(self) -> int:
        return self.cohort


def schedule_rng(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """``(speed_rng, job_rng)``: generators of the stragglers and of the schedule, from the
    run's seed and :data:`KEY_SCHEDULE` (simulation-grade)."""
    key = experiment_lib.purpose_key(int(seed), KEY_SCHEDULE)
    return host_rng(jax.random.fold_in(key, 0)), host_rng(jax.random.fold_in(key, 1))


@dataclasses.dataclass
class FedBuffExperiment:
    """A FedBuff run, built from a configuration: the steps the host driver runs
    (:class:`fedpriv.fl.loop.Steps`); step ``t`` is server step ``t`` (1-based).

    Attributes:
        base: the synchronous :class:`~fedpriv.fl.experiment.Experiment` the data, model,
            cohort padding, keys and evaluation come from (its own round and sampler are not
            used).
        config: the ``async`` settings.
        schedule: the event schedule of every server step.
        speed: ``speed[N]``, the per-client slowdowns the schedule used.
        privacy: the privacy plan (accounts one event per server step).
        step_fn: the jit-compiled server step.
        state: the current :class:`FedBuffState`.
        slots: padded arrival slots per step.
    """

    base: experiment_lib.Experiment
    config: FedBuffConfig
    schedule: Schedule
    speed: np.ndarray
    privacy: PrivacyPlan
    step_fn: Callable
    state: FedBuffState
    slots: int

    label = "fedbuff"
    unit = "step"

    def inputs(self, t: int) -> StepInputs:
        """Gathers server step ``t``'s arrivals (1-based), padded, and starts the transfer."""
        i = t - 1
        k = self.config.buffer_size
        pad = self.slots - k
        ids = np.concatenate([self.schedule.client_ids[i], np.zeros(pad, np.int64)])
        mask = np.arange(self.slots) < k
        clients = RoundInputs(*self.base.data.train.gather(ids, mask, self.base.n_cap))
        depth = self.config.max_staleness + 1
        slot = np.concatenate([self.schedule.versions[i] % depth, np.zeros(pad, np.int64)])
        tau = np.concatenate([self.schedule.staleness[i], np.zeros(pad, np.int64)])
        return jax.device_put(StepInputs(clients, slot.astype(np.int32), tau.astype(np.float32)))

    def key(self, t: int) -> jax.Array:
        """The key of server step ``t`` (1-based): synchronous round ``t``'s key."""
        return self.base.round_key(t)

    def step(self, state: FedBuffState, inputs: StepInputs, key: jax.Array):
        """One server step: ``(state, metrics)`` of the jit-compiled step."""
        return self.step_fn(state, inputs, key)

    def host_fields(self, t: int) -> dict[str, Any]:
        """Step ``t``'s simulated time, arrivals (dropped ones included), stale drops and
        staleness histogram, from the schedule."""
        dropped = int(self.schedule.dropped[t - 1])
        return {
            "sim_time": float(self.schedule.step_time[t - 1]),
            "arrivals": self.config.buffer_size + dropped,
            "dropped_stale": dropped,
            "staleness_hist": self.schedule.histogram(t - 1),
        }

    def ledger_record(self, t: int, record: Mapping[str, Any]) -> dict | None:
        """The DP event of server step ``t`` (1-based) as it ran (None without DP).

        The plan's record, with the sampling of :class:`BufferSampling`: for
        ``no_amplification`` the record is ``sampling: "full"`` over the population ``N``
        (``cohort_size`` left out: ``K`` contributors per step, by the configuration).

        Privacy:
            See the module docstring for what each accounting mode assumes.
        """
        event = self.privacy.ledger_record(t, record)
        if event is not None and self.privacy.sampling == "full":
            event["cohort_size"] = None
        return event

    @staticmethod
    def params(state: FedBuffState) -> PyTree:
        return state.server.params

    @staticmethod
    def completed(state: FedBuffState) -> int:
        """Server steps completed by ``state``."""
        return int(np.asarray(state.server.round))

    def evaluate(self, params: PyTree) -> dict[str, float]:
        return self.base.evaluate(params)

    def summary_fields(self, done: int) -> dict[str, Any]:
        """Population, the accounted sampling, the ``async`` block (settings, simulated
        time, staleness, stale drops over the ``done`` steps) and the execution plan."""
        sched = self.schedule
        return {
            "population": self.base.data.train.num_clients,
            "sampling": {"kind": self.privacy.sampling, "expected_cohort": self.config.buffer_size},
            "async": {
                "name": "fedbuff",
                **{k: v for k, v in dataclasses.asdict(self.config).items() if k != "delay"},
                "delay": dataclasses.asdict(self.config.delay),
                "sim_time": float(sched.step_time[done - 1]) if done else 0.0,
                "staleness_mean": float(sched.staleness[:done].mean()) if done else 0.0,
                "staleness_max": int(sched.staleness[:done].max()) if done else 0,
                "dropped_stale": int(sched.dropped[:done].sum()),
            },
            "execution": dataclasses.asdict(self.base.plan),
        }

    def finish(self, run_dir: Path, state: FedBuffState, done: int) -> None:
        """Nothing beyond the driver's files."""


def build(run: RunConfig) -> FedBuffExperiment:
    """Builds a FedBuff run: data and model (through :func:`fedpriv.fl.experiment.build`), the
    schedule, the privacy plan of one server step, and the jitted step.

    ``sampling`` settings are not used: the schedule decides who takes part. Runs on one
    device.

    Raises:
        ConfigError: any value that cannot work with the loaded data.
    """
    fb = FedBuffConfig.from_settings(run.asynchronous)
    sync_run = run.replace(
        sampling=FixedCohort(cohort_size=fb.buffer_size),
        privacy={"name": "none"},
        secagg=SecureAggregation(mode="none"),
        execution=dataclasses.replace(run.execution, devices=1),
        asynchronous=Asynchronous(name="none"),
    )
    base = experiment_lib.build(sync_run)
    n = base.data.train.num_clients
    if fb.concurrency + fb.buffer_size - 1 > n:
        raise ConfigError(
            "async.concurrency",
            f"must be in [1, {n - fb.buffer_size + 1}] (clients - async.buffer_size + 1), "
            f"got {fb.concurrency}",
        )
    steps = run.rounds
    speed_rng, job_rng = schedule_rng(run.seed)
    speed = fb.delay.speeds(n, speed_rng)
    schedule = simulate(
        n, steps, fb.buffer_size, fb.concurrency, fb.max_staleness, fb.delay, job_rng, speed
    )
    kind = "fixed" if fb.accounting == "uniform_subset" else "full"
    params = base.initial_params
    privacy = build_plan(
        run.privacy,
        BufferSampling(kind, n, fb.buffer_size),
        run.client,
        steps,
        num_params=sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params)),
    )
    client_update = privacy.client_update(
        base.model.apply,
        experiment_lib.client_optimizer(run.client),
        int(run.client.epochs),
        int(run.client.batch_size),
        base.n_cap,
        # FedProx's proximal term (from the downloaded model)
        **edge_lib.local_options(run),
    )
    if release.noise_source(run.privacy) == "secure" and privacy.is_private:
        # Step keys come from the base experiment: give it the noise root and the plan.
        base = dataclasses.replace(base, privacy=privacy, noise_root=release.secure_root_key())
    server_opt = run.algorithm.server_optimizer()
    aggregator = privacy.aggregator(run.algorithm.weighting or "count")
    chunk = base.plan.chunk_size
    slots = max(base.plan.slots, math.ceil(fb.buffer_size / chunk) * chunk)
    step_fn = jax.jit(
        make_fedbuff_step(
            client_update, aggregator, server_opt, chunk, fb.max_staleness, fb.staleness_exponent
        )
    )
    state = init_fedbuff_state(init_server_state(params, server_opt, aggregator), fb.max_staleness)
    return FedBuffExperiment(base, fb, schedule, speed, privacy, step_fn, state, slots)


__all__ = [
    "ACCOUNTING",
    "BufferSampling",
    "DelayModel",
    "FedBuffConfig",
    "FedBuffExperiment",
    "FedBuffState",
    "Schedule",
    "StepInputs",
    "build",
    "buffered_sums",
    "init_fedbuff_state",
    "make_fedbuff_step",
    "simulate",
    "staleness_weight",
    "sync_round_times",
]
