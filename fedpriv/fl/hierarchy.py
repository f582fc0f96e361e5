"""Hierarchical aggregation: clients under gateways, gateways under the server.

Edge deployments aggregate in two tiers: clients report to a gateway (an edge gateway, a
region, a site), each gateway aggregates its clients, and the server aggregates gateways.
Here the ``N`` clients are assigned to ``G`` gateways by a public rule
(:func:`assign_gateways`): ``modulo`` puts client ``i`` under gateway ``i % G``; ``blocks``
puts contiguous id ranges under one gateway, ``floor(i * G / N)``. Either way every gateway
has ``floor(N / G)`` or ``ceil(N / G)`` clients.

Inside the jit-compiled round (:func:`gateway_sums`) the cohort's clients run vmapped in
chunks, exactly as in :func:`fedpriv.fl.round.cohort_sums`; each chunk's contributions are
reduced per gateway with ``segment_sum`` into accumulators ``gateway_total[G, ...]``, so the
round holds ``G`` partial sums (memory ``G`` times the model) and never loops over clients
in Python. :func:`hierarchical_aggregator` then reduces the gateway sums at the server.

Two units of privacy (``hierarchy.dp_unit``):

* ``client``: every client's update is clipped (the plan's aggregator, e.g. DP-FedAvg),
  gateways sum their clients' clipped updates, the server sums the gateway sums and adds
  ``N(0, (z C)^2)``. The released sum is the flat round's sum (up to float summation order),
  so the accounting is the flat user-level accounting, unchanged.
* ``gateway``: each gateway averages its clients' updates (FedAvg's weighting inside the
  gateway) and the gateway's mean update is clipped to ``C`` as one unit; the server sums
  the clipped gateway updates, adds ``N(0, (z C)^2)`` and divides by the expected number of
  gateways. Gateways, not clients, are sampled: the sampler draws gateways (Poisson with
  ``sampling.rate`` per gateway, or ``sampling.cohort_size`` gateways without replacement)
  and every client of a drawn gateway takes part (:class:`GatewaySampler`). The ledger
  records ``unit: "gateway"`` with the gateway population ``G``, accounted like user-level
  DP with gateways in place of users. The guarantee covers one gateway's whole data, hence
  any one client in it; with few gateways, the default delta (below ``1/G``) is large, so
  set ``privacy.delta``. A gateway's clip is applied to its complete sum: with the cohort
  sharded over devices, the per-gateway sums are reduced across devices first (inside
  :func:`hierarchical_aggregator`'s finalize), so a gateway is clipped once.

A client-level run protects each client (the flat guarantee); a gateway as a whole is then
protected only through group privacy over its clients.

Secure aggregation belongs inside each gateway: the gateway learns only the sum of its
clients' masked inputs. With ``dp_unit=client`` the fast path of secure aggregation runs
unchanged (per-gateway modular sums add up to the flat modular sum exactly); with
``dp_unit=gateway`` the gateway must clip its clients' sum in the clear, which the fast path
does not model, so that combination is refused, as is the protocol path.

References:
    McMahan, Ramage, Talwar, Zhang. "Learning Differentially Private Recurrent Language
    Models." ICLR 2018 (DP-FedAvg; the unit of privacy is whatever one clipped
    contribution stands for).
    Liu, Hu, Lim, et al. "Client-Edge-Cloud Hierarchical Federated Learning." ICC 2020
    (hierarchical FedAvg through edge servers).
    Bonawitz et al. "Practical Secure Aggregation for Privacy-Preserving Machine Learning."
    CCS 2017.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fedpriv.errors import ConfigError
from fedpriv.fl.aggregators import Aggregator, weighted_mean
from fedpriv.fl.round import RoundInputs, client_contribution
from fedpriv.settings import FixedCohort, Poisson
from fedpriv.settings import Hierarchy as HierarchySettings

PyTree = Any

#: ``hierarchy.name`` values.
NAMES: tuple[str, ...] = ("none", "gateways")
#: ``hierarchy.assign`` values: how client ids map to gateways.
ASSIGNMENTS: tuple[str, ...] = ("modulo", "blocks")
#: ``hierarchy.dp_unit`` values: the unit of privacy of a hierarchical run.
DP_UNITS: tuple[str, ...] = ("client", "gateway")
#: Stat key of the per-gateway client counts (summed like any stat, popped by finalize).
CLIENTS_STAT = "gateway_clients"


def assign_gateways(num_clients: int, num_gateways: int, assign: str = "modulo") -> np.ndarray:
    """The gateway of every client, ``gateway_of[N]`` (int32), by a public rule.

    Args:
        num_clients: N.
        num_gateways: G, with ``1 <= G <= N``.
        assign: ``"modulo"`` (``i % G``) or ``"blocks"`` (``floor(i * G / N)``, contiguous).

    Raises:
        ConfigError: G outside ``[1, N]`` or an unknown rule, naming the field.
    """
    if isinstance(num_gateways, bool) or not isinstance(num_gateways, (int, np.integer)):
        raise ConfigError("hierarchy.gateways", f"must be an integer, got {num_gateways!r}")
    if not 1 <= num_gateways <= num_clients:
        raise ConfigError(
            "hierarchy.gateways",
            f"must be in [1, {num_clients}] (the number of clients), got {num_gateways}",
        )
    ids = np.arange(num_clients, dtype=np.int64)
    if assign == "modulo":
        out = ids % num_gateways
    elif assign == "blocks":
        out = ids * num_gateways // num_clients
    else:
        raise ConfigError(
            "hierarchy.assign", f"unknown value {assign!r}; choose from {list(ASSIGNMENTS)}"
        )
    return out.astype(np.int32)


@dataclasses.dataclass(frozen=True, eq=False)
class GatewaySampler:
    """Samples gateways with ``inner`` and takes every client of each drawn gateway.

    ``kind``, ``rate``, ``population`` and ``expected_size`` are the gateway sampler's: they
    describe what the privacy plan accounts (gateways). ``capacity`` counts client slots:
    the clients of the ``inner.capacity`` largest gateways. A larger realised cohort (Poisson)
    is never truncated: the slots grow, which costs one recompilation.

    Attributes:
        inner: a client sampler over ``G`` "clients" (:mod:`fedpriv.fl.sampling`), here
            gateways.
        gateway_of: ``gateway_of[N]``, the gateway of every client.

    Privacy:
        Which gateways take part depends only on the sampling key; all clients of a drawn
        gateway take part, so the inclusion of a gateway's data is the inclusion of the
        gateway: Poisson sampling of gateways (add/remove one gateway) or sampling without
        replacement of gateways (replace one gateway), as ``inner`` says.
    """

    inner: Any
    gateway_of: np.ndarray

    def __post_init__(self) -> None:
        sizes = np.bincount(self.gateway_of, minlength=self.inner.population)
        order = np.argsort(self.gateway_of, kind="stable")
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        object.__setattr__(self, "_sizes", sizes)
        object.__setattr__(self, "_order", order)
        object.__setattr__(self, "_starts", starts)

    @property
    def kind(self) -> str:
        return self.inner.kind

    @property
    def rate(self) -> float:
        return self.inner.rate

    @property
    def population(self) -> int:
        return self.inner.population

    @property
    def expected_size(self) -> float:
        return self.inner.expected_size

    @property
    def capacity(self) -> int:
        largest = np.sort(self._sizes)[::-1]
        return int(np.sum(largest[: self.inner.capacity]))

    def clients_of(self, gateways: np.ndarray) -> np.ndarray:
        """All clients of ``gateways[k]``, gateway by gateway (vectorised, no loop)."""
        gateways = np.asarray(gateways, dtype=np.int64)
        sizes = self._sizes[gateways]
        first = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        pos = np.repeat(self._starts[gateways] - first, sizes) + np.arange(int(sizes.sum()))
        return self._order[pos].astype(np.int64)

    def participation(self, rounds: int) -> Any:
        """The gateways' participation pattern (the inner sampler's)."""
        return self.inner.participation(rounds)

    def sample(self, key: jax.Array, rnd: int = 1) -> tuple[np.ndarray, np.ndarray]:
        gw_ids, gw_mask = self.inner.sample(key, rnd)
        ids = self.clients_of(gw_ids[gw_mask])
        cap = max(self.capacity, len(ids))
        out = np.zeros(cap, dtype=np.int64)
        out[: len(ids)] = ids
        return out, np.arange(cap) < len(ids)


def gateway_sums(
    client_update: Callable,
    aggregator: Aggregator,
    gateway_of: jax.Array,
    num_gateways: int,
    params: PyTree,
    agg_state: PyTree,
    inputs: RoundInputs,
    client_key: jax.Array,
    chunk_size: int,
) -> tuple[tuple[PyTree, jax.Array, dict], dict[str, jax.Array]]:
    """Runs the cohort's clients and sums their contributions per gateway.

    Clients run ``chunk_size`` at a time under ``vmap`` inside a ``lax.scan`` over chunks,
    as in :func:`fedpriv.fl.round.cohort_sums`; client ``i`` uses
    ``fold_in(client_key, client_ids[i])`` and contributes ``aggregator.contribution`` of its
    update. Each chunk's contributions, weights and stats are reduced with ``segment_sum``
    by ``gateway_ids[chunk] = gateway_of[client_ids]`` into the scan's accumulators.

    Args:
        client_update: ``client_update(params, ClientBatch, key) -> ClientOutput``.
        aggregator: the per-client aggregator (its ``contribution`` runs per client).
        gateway_of: ``gateway_of[N]`` (int32), the gateway of every client.
        num_gateways: G.
        params: the global parameters.
        agg_state: the aggregator state the contributions read (e.g. the clip norm).
        inputs: the cohort, ``C`` slots, a multiple of ``chunk_size``.
        client_key: the round's client key.
        chunk_size: clients per vmapped chunk.

    Returns:
        ``((gateway_total[G, ...], gateway_weight[G], gateway_stats), per_client)`` where
        ``gateway_stats`` maps each stat to ``[G]`` and holds ``gateway_clients[G]``, the
        number of real clients of each gateway in the cohort; ``per_client`` holds
        ``loss[C]``, ``steps[C]`` and ``finite[C]``.

    Privacy:
        Only reorganises sums: each client's contribution is what ``aggregator`` makes of
        it (clipped, for DP-FedAvg), and it lands in exactly one gateway's sum.
    """
    num_slots = inputs.count.shape[0]
    if num_slots % chunk_size:
        raise ValueError(f"cohort slots {num_slots} not a multiple of chunk_size {chunk_size}")
    chunks = jax.tree.map(
        lambda a: a.reshape((num_slots // chunk_size, chunk_size) + a.shape[1:]), inputs
    )
    table = jnp.asarray(gateway_of, jnp.int32)

    def one_client(inp: RoundInputs):
        return client_contribution(client_update, aggregator, params, agg_state, inp, client_key)

    def run_chunk(acc, chunk: RoundInputs):
        contrib, weight, stats, per_client = jax.vmap(one_client)(chunk)
        # Padding slots (id -1, mask 0) contribute zeros; any gateway will do for them.
        gateway_ids = table[jnp.maximum(chunk.client_ids, 0)]

        def seg(v):
            return jax.ops.segment_sum(v, gateway_ids, num_segments=num_gateways)

        stats = {**stats, CLIENTS_STAT: chunk.client_mask}
        total, total_w, total_stats = acc
        total = jax.tree.map(lambda a, c: a + seg(c), total, contrib)
        total_stats = {k: total_stats[k] + seg(v) for k, v in stats.items()}
        return (total, total_w + seg(weight), total_stats), per_client

    first = jax.tree.map(lambda a: a[0, 0], chunks)
    contrib_shape, weight_shape, stats_shape, _ = jax.eval_shape(one_client, first)

    def zeros(s):
        return jnp.zeros((num_gateways,) + s.shape, s.dtype)

    acc0 = (
        jax.tree.map(zeros, contrib_shape),
        jnp.zeros((num_gateways,), jnp.float32),
        {
            **{k: zeros(v) for k, v in stats_shape.items()},
            CLIENTS_STAT: jnp.zeros((num_gateways,), jnp.float32),
        },
    )
    sums, per_client = jax.lax.scan(run_chunk, acc0, chunks)
    per_client = jax.tree.map(lambda a: a.reshape((num_slots,) + a.shape[2:]), per_client)
    return sums, per_client


def _gateway_metrics(clients: jax.Array) -> dict[str, jax.Array]:
    active = clients > 0
    n = jnp.sum(active)
    big = jnp.asarray(jnp.inf, clients.dtype)
    smallest = jnp.min(jnp.where(active, clients, big))
    return {
        "gateways": n,
        "gateway_clients_min": jnp.where(n > 0, smallest, 0.0),
        "gateway_clients_max": jnp.max(jnp.where(active, clients, 0.0)),
    }


def hierarchical_aggregator(
    client_agg: Aggregator, gateway_agg: Aggregator | None = None
) -> Aggregator:
    """The server side of a hierarchical round, reading the sums of :func:`gateway_sums`.

    ``contribution`` is ``client_agg``'s (what each client sends its gateway). ``finalize``
    receives ``gateway_total[G, ...]``, ``gateway_weight[G]`` and per-gateway stats:

    * without ``gateway_agg`` (unit ``client``): it sums over gateways and hands the totals
      to ``client_agg.finalize`` (which adds the noise, for DP-FedAvg);
    * with ``gateway_agg`` (unit ``gateway``): each gateway's mean update
      ``gateway_total[g] / gateway_weight[g]`` becomes one contribution of ``gateway_agg``
      (DP-FedAvg: clipped to ``C``), for gateways with at least one client in the cohort;
      those are summed and ``gateway_agg.finalize`` adds noise and divides by the expected
      number of gateways.

    Metrics add ``gateways`` (gateways with clients in the cohort) and
    ``gateway_clients_min`` / ``gateway_clients_max`` (clients per such gateway).

    Args:
        client_agg: per-client aggregator; with ``gateway_agg`` it should be
            :func:`~fedpriv.fl.aggregators.weighted_mean` (the gateway's own averaging).
        gateway_agg: per-gateway aggregator for gateway-level DP, or None.

    Privacy:
        Unit ``client``: as ``client_agg`` (each client clipped; the released noised sum is
        the flat round's). Unit ``gateway`` with ``gateway_agg = dp_fedavg(C, z, m)``: a
        gateway's mean depends only on its clients' data and is clipped to ``C``, so adding
        or removing one gateway with all its clients moves the sum by at most ``C`` and the
        noise ``N(0, (z C)^2)`` makes each round a Gaussian mechanism with multiplier ``z``
        for that unit; amplification comes from sampling gateways (:class:`GatewaySampler`).
    """
    outer = gateway_agg if gateway_agg is not None else client_agg

    def init():
        return outer.init()

    def finalize(total, total_weight, stats, state, key):
        stats = dict(stats)
        clients = stats.pop(CLIENTS_STAT)
        metrics = _gateway_metrics(clients)
        if gateway_agg is None:
            summed = jax.tree.map(lambda t: jnp.sum(t, axis=0), total)
            flat_stats = {k: jnp.sum(v, axis=0) for k, v in stats.items()}
            mean, state, inner = client_agg.finalize(
                summed, jnp.sum(total_weight), flat_stats, state, key
            )
            return mean, state, {**inner, **metrics}
        denom = jnp.maximum(total_weight, 1e-12)
        gateway_means = jax.tree.map(
            lambda t: t / denom.reshape((-1,) + (1,) * (t.ndim - 1)).astype(t.dtype), total
        )
        active = (clients > 0).astype(jnp.float32)
        contrib, weight, gw_stats = jax.vmap(gateway_agg.contribution, in_axes=(0, 0, 0, None))(
            gateway_means, total_weight, active, state
        )
        summed = jax.tree.map(lambda c: jnp.sum(c, axis=0), contrib)
        gw_stats = {k: jnp.sum(v, axis=0) for k, v in gw_stats.items()}
        mean, state, inner = gateway_agg.finalize(summed, jnp.sum(weight), gw_stats, state, key)
        return mean, state, {**inner, **metrics}

    return Aggregator(init, client_agg.contribution, finalize)


@dataclasses.dataclass(frozen=True, eq=False)
class Hierarchy:
    """A run's gateways and its unit of privacy.

    Attributes:
        gateway_of: ``gateway_of[N]``, the gateway of every client.
        num_gateways: G.
        dp_unit: ``"client"`` or ``"gateway"``.
        assign: the assignment rule (informational).
    """

    gateway_of: np.ndarray
    num_gateways: int
    dp_unit: str = "client"
    assign: str = "modulo"

    def wrap_sampler(self, sampler: Any, sampling: Poisson | FixedCohort) -> Any:
        """The sampler that runs: ``sampler`` itself for unit ``client``; for unit
        ``gateway``, a :class:`GatewaySampler` over the ``G`` gateways built from the same
        ``sampling`` settings (``rate`` per gateway, or ``cohort_size`` gateways).

        Raises:
            ConfigError: a cohort of more gateways than there are.
        """
        if self.dp_unit == "client":
            return sampler
        size = getattr(sampling, "cohort_size", None)
        if size is not None and int(size) > self.num_gateways:
            raise ConfigError(
                "sampling.cohort_size",
                f"with hierarchy.dp_unit=gateway the cohort counts gateways: must be in "
                f"[1, {self.num_gateways}] (hierarchy.gateways), got {size}",
            )
        inner = sampling.sampler(self.num_gateways)
        return GatewaySampler(inner, self.gateway_of)

    def plan(self, plan: Any) -> Any:
        """The privacy plan with this hierarchy's unit (``gateway``; unchanged for
        ``client``). The plan was built from :meth:`wrap_sampler`'s sampler, so its
        population, rate and expected cohort already count gateways.

        Raises:
            ConfigError: unit ``gateway`` with a plan that is not user-level DP-FedAvg on
                plain sums (no DP, example-level DP, secure aggregation).

        Privacy:
            The noise calibration does not depend on the unit's name: a gateway-level round
            is accounted exactly as a user-level round over a population of ``G``.
        """
        if self.dp_unit == "client":
            return plan
        if plan.unit != "user" or plan.secagg is not None or not plan.mechanism.gaussian_fedavg:
            raise ConfigError(
                "hierarchy.dp_unit",
                "gateway-level DP needs user-level DP-FedAvg without secure aggregation "
                "(privacy=user_dp or user_dp_adaptive, secagg=none)",
            )
        return dataclasses.replace(plan, unit="gateway")

    def round_parts(
        self,
        aggregator: Aggregator,
        client_update: Callable,
        weighting: str,
        chunk_size: int,
    ) -> tuple[Aggregator, Callable]:
        """``(aggregator, local_sums)`` for :func:`fedpriv.fl.round.make_round`.

        Args:
            aggregator: ``plan.aggregator(...)`` of the plan after :meth:`plan`: per
                client for unit ``client``, per gateway for unit ``gateway``.
            client_update: the plan's client update.
            weighting: FedAvg weighting inside a gateway (unit ``gateway``).
            chunk_size: clients per vmapped chunk.
        """
        if self.dp_unit == "gateway":
            client_agg = weighted_mean(weighting)
            agg = hierarchical_aggregator(client_agg, aggregator)
        else:
            client_agg, agg = aggregator, hierarchical_aggregator(aggregator)
        table = jnp.asarray(self.gateway_of, jnp.int32)

        def local_sums(params, agg_state, inputs, client_key):
            return gateway_sums(
                client_update,
                client_agg,
                table,
                self.num_gateways,
                params,
                agg_state,
                inputs,
                client_key,
                chunk_size,
            )

        return agg, local_sums


def from_settings(settings: HierarchySettings, num_clients: int) -> Hierarchy | None:
    """The hierarchy of the ``hierarchy`` group (None for ``name: none``).

    Raises:
        ConfigError: a bad field, naming it and what is allowed.
    """
    name = settings.name or "none"
    if name not in NAMES:
        raise ConfigError("hierarchy.name", f"unknown value {name!r}; choose from {list(NAMES)}")
    if name == "none":
        return None
    unit = settings.dp_unit or "client"
    if unit not in DP_UNITS:
        raise ConfigError(
            "hierarchy.dp_unit", f"unknown value {unit!r}; choose from {list(DP_UNITS)}"
        )
    assign = settings.assign or "modulo"
    gateways = settings.gateways
    return Hierarchy(assign_gateways(num_clients, gateways, assign), int(gateways), unit, assign)


__all__ = [
    "ASSIGNMENTS",
    "DP_UNITS",
    "GatewaySampler",
    "Hierarchy",
    "assign_gateways",
    "from_settings",
    "gateway_sums",
    "hierarchical_aggregator",
]
