"""Devices as they are at the edge: availability, dropout and heterogeneous compute.

Real federated populations are not a pool of always-on, equally fast devices. This module
models three departures from the synchronous round, each per client and per round and each
computed vectorised inside the jit-compiled round (no Python per client per round):

* **availability** (the ``availability`` config group): a sampled client may fail to report.
  ``bernoulli``: independently with probability ``dropout``. ``diurnal``: client ``i`` has a
  phase ``phi_i`` (its time zone, drawn from its id and the seed) and is available at round
  start time ``t`` with probability
  ``low + (high - low) (1 + cos(2 pi (t / period - phi_i))) / 2`` (Bonawitz et al. 2019,
  Sec. 2: devices check in when idle, charging and on an unmetered network, mostly at night).
  ``trace``: a CSV of ``(client, available_from, available_to)`` intervals in simulated time;
  a client is available in a round if one of its intervals covers the round's start
  (arrays prepared once on the host, looked up inside the round).
* **heterogeneous compute** (the ``compute`` group): each client runs only a fraction of its
  local steps, masked inside the local scan (:func:`fedpriv.fl.client.step_budget_mask`).
  ``uniform``: the fraction is uniform on ``[low_fraction, 1]``. ``stragglers``: a client is a
  straggler with probability ``fraction`` and then runs ``steps_fraction`` of its steps
  (uniform on ``(0, 1)`` when null). With ``drop: true`` stragglers are dropped instead,
  as FedAvg does in Li et al. 2020; with ``drop: false`` their partial work is kept, as in
  FedProx.
* **FedNova** (``algorithm=fednova``): each client's update is normalised by its number of
  local steps and the aggregate rescaled by ``tau_eff`` (:meth:`EdgeSpec.rescale`).

FedNova under user-level DP: the aggregator clips the *normalised* update ``d_i =
update_i / ||a_i||_1`` (so a client's sensitivity is the clip norm ``C`` however many steps
it took, and a straggler's few steps are not out-weighed by clipping), sums, adds
``N(0, (z C)^2)`` and divides by the expected cohort; the server then multiplies by a public
``tau_eff`` (``algorithm.tau_eff``, default the scan length ``E ceil(n_cap / B)``), which is
post-processing. ``C`` bounds a per-step update, so it should be about ``1 / tau`` of the
clip norm that suits FedAvg's whole-round updates; the noise on the server update is
``tau_eff z C / m``, the same signal-to-noise ratio as FedAvg with clip ``tau_eff C``.

The availability and straggler-drop masks are applied by :meth:`EdgeSpec.select` to the
cohort before local training: a dropped client's mask and example count become 0, so it
contributes nothing and its data is never read into an update.

Privacy:
    Sampling runs exactly as configured and is accounted as configured; dropout acts after
    sampling and only removes contributions. Removing a contribution never increases the
    sensitivity of the noised sum to one client (coupling the dropout coins of neighbouring
    cohorts, each pair of outcomes differs by at most one clipped contribution), and the
    aggregator still divides by the expected cohort, a constant, never by the survivors.
    A client's inclusion probability becomes ``q * p_i <= q`` (``p_i``: its probability of
    being available); the accountant uses ``q``, so diurnal and trace availability are
    accounted conservatively, with no amplification claimed for unavailability. The realised
    participation is a diagnostic of the metrics (``sampled``, ``dropped``, ``participated``),
    not part of the ledger; it never enters the accounting.

References:
    Bonawitz et al. "Towards Federated Learning at Scale: System Design." MLSys 2019.
    Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith. "Federated Optimization in Heterogeneous
    Networks." MLSys 2020 (FedProx; stragglers dropped by FedAvg, kept by FedProx).
    Wang, Liu, Liang, Joshi, Poor. "Tackling the Objective Inconsistency Problem in
    Heterogeneous Federated Optimization." NeurIPS 2020 (FedNova).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedpriv.errors import ConfigError
from fedpriv.fl.client import fednova_norm
from fedpriv.settings import RunConfig

PyTree = Any

#: Purpose id folded into the round key for the availability and straggler draws; the round's
#: own split into client and noise keys is untouched, so runs without these models keep their
#: random streams.
EDGE_PURPOSE = 0x65646765  # "edge"
#: Purpose id folded into the seed's key for the diurnal phases (fixed for the whole run).
PHASE_PURPOSE = 0x70686173  # "phas"

AVAILABILITY_KINDS = ("none", "bernoulli", "diurnal", "trace")
COMPUTE_KINDS = ("none", "uniform", "stragglers")
#: The CSV header of an availability trace (optional in the file).
TRACE_COLUMNS = ("client", "available_from", "available_to")

AvailableFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def client_uniforms(key: jax.Array, client_ids: jax.Array) -> jax.Array:
    """``u[C]``, one uniform per client from ``fold_in(key, client_id)``, so a client's draw
    does not depend on its slot in the cohort."""
    return jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i)))(client_ids)


# --------------------------------------------------------------------------- availability


def bernoulli(dropout: float) -> AvailableFn:
    """Each sampled client independently fails to report with probability ``dropout``.

    Returns:
        ``available(client_ids[C], t, key) -> bool[C]``; ``dropout = 0`` keeps everyone.
    """
    dropout = float(dropout)

    def available(client_ids, t, key):
        del t
        return client_uniforms(key, client_ids) >= dropout

    return available


def diurnal_probability(
    t: jax.Array, phase: jax.Array, low: float, high: float, period: float
) -> jax.Array:
    """``low + (high - low) (1 + cos(2 pi (t / period - phase))) / 2``: the probability that a
    client with ``phase`` (in periods) is available at time ``t``; ``high`` at ``t / period =
    phase`` (mod 1), ``low`` half a period later."""
    wave = (1.0 + jnp.cos(2.0 * jnp.pi * (t / period - phase))) / 2.0
    return low + (high - low) * wave


def diurnal(low: float, high: float, period: float, phase_key: jax.Array) -> AvailableFn:
    """Day-night availability: client ``i`` has phase ``phi_i ~ U[0, 1)`` drawn from
    ``fold_in(phase_key, i)`` (its time zone) and is available at round start ``t`` with
    :func:`diurnal_probability`, independently across rounds."""
    low, high, period = float(low), float(high), float(period)

    def available(client_ids, t, key):
        phase = client_uniforms(phase_key, client_ids)
        p = diurnal_probability(t, phase, low, high, period)
        return client_uniforms(key, client_ids) < p

    return available


@dataclasses.dataclass(frozen=True)
class Trace:
    """Availability intervals: client ``client[K]`` is available on
    ``[available_from[K], available_to[K])``, in simulated time units."""

    client: np.ndarray
    available_from: np.ndarray
    available_to: np.ndarray

    @property
    def num_clients(self) -> int:
        return int(self.client.max()) + 1 if len(self.client) else 0


def read_trace(path: str | os.PathLike, field: str = "availability.path") -> Trace:
    """Reads an availability trace: CSV rows ``client,available_from,available_to`` (a header
    row with these names is optional).

    Raises:
        ConfigError: naming ``field``: the file is missing or unreadable, a row does not have
            three fields, a client id is not an integer >= 0, a time is not finite, or an
            interval is empty (``available_from >= available_to``).
    """
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise ConfigError(field, f"is required for availability=trace (a CSV file), got {path!r}")
    if not os.path.isfile(path):
        raise ConfigError(field, f"{path} is not a file (a CSV of {', '.join(TRACE_COLUMNS)})")
    clients, starts, ends = [], [], []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ConfigError(field, f"{path} cannot be read ({err})") from None
    for line, row in enumerate(rows, 1):
        row = [c.strip() for c in row]
        if not row or not any(row) or row[0].startswith("#"):
            continue
        if line == 1 and tuple(c.lower() for c in row) == TRACE_COLUMNS:
            continue
        where = f"{path} line {line}"
        if len(row) != 3:
            raise ConfigError(
                field, f"{where}: expected 3 fields ({', '.join(TRACE_COLUMNS)}), got {len(row)}"
            )
        try:
            cid = int(row[0])
        except ValueError:
            raise ConfigError(
                field, f"{where}: client must be an integer >= 0, got {row[0]!r}"
            ) from None
        try:
            lo, hi = float(row[1]), float(row[2])
        except ValueError:
            raise ConfigError(field, f"{where}: times must be numbers, got {row[1:]!r}") from None
        if cid < 0:
            raise ConfigError(field, f"{where}: client must be an integer >= 0, got {cid}")
        if not (math.isfinite(lo) and math.isfinite(hi)) or not lo < hi:
            raise ConfigError(
                field,
                f"{where}: need finite available_from < available_to, got [{lo:g}, {hi:g})",
            )
        clients.append(cid)
        starts.append(lo)
        ends.append(hi)
    if not clients:
        raise ConfigError(field, f"{path} holds no availability intervals")
    return Trace(
        np.asarray(clients, np.int32),
        np.asarray(starts, np.float64),
        np.asarray(ends, np.float64),
    )


def trace(table: Trace, population: int) -> AvailableFn:
    """Trace availability: a client is available in a round if one of its intervals
    ``[available_from, available_to)`` covers the round's start time ``t``. Clients without
    intervals are never available.

    The intervals are arrays prepared once on the host (``[K]`` each); inside the round every
    interval is tested against ``t`` and reduced per client with a segment maximum, an
    ``O(K + N)`` computation independent of the cohort's Python structure.

    Raises:
        ConfigError: a client id of the trace outside the population ``[0, population)``.
    """
    if table.num_clients > population:
        raise ConfigError(
            "availability.path",
            f"the trace names client {table.num_clients - 1} but the population has "
            f"{population} clients (ids 0 to {population - 1})",
        )
    owner = jnp.asarray(table.client, jnp.int32)
    start = jnp.asarray(table.available_from, jnp.float32)
    end = jnp.asarray(table.available_to, jnp.float32)

    def available(client_ids, t, key):
        del key
        covered = ((start <= t) & (t < end)).astype(jnp.int32)
        per_client = jax.ops.segment_max(covered, owner, num_segments=population) > 0
        return per_client[jnp.clip(client_ids, 0, population - 1)]

    return available


# --------------------------------------------------------------------------- compute


def uniform_work(low_fraction: float) -> Callable[[jax.Array], jax.Array]:
    """Work fraction ``f ~ U[low_fraction, 1]`` per client and round (``low_fraction = 1``:
    every client does all its local steps)."""
    low = float(low_fraction)

    def fraction(key):
        return low + (1.0 - low) * jax.random.uniform(key)

    return fraction


def straggler_work(
    fraction: float, steps_fraction: float | None = None
) -> Callable[[jax.Array], jax.Array]:
    """A client is a straggler with probability ``fraction``; a straggler does
    ``steps_fraction`` of its local steps (uniform on ``(0, 1)`` when None, as the stragglers
    of Li et al. 2020 run a random number of epochs below E), everyone else all of them."""
    p = float(fraction)

    def work(key):
        k_straggler, k_work = jax.random.split(key)
        straggler = jax.random.uniform(k_straggler) < p
        partial = (
            jax.random.uniform(k_work) if steps_fraction is None else jnp.float32(steps_fraction)
        )
        return jnp.where(straggler, partial, 1.0)

    return work


# --------------------------------------------------------------------------- the round stage


class EdgeSpec(NamedTuple):
    """What the round does for edge devices (see the module docstring).

    Attributes:
        available: ``available(client_ids[C], t, key) -> bool[C]`` or None (always).
        round_duration: simulated time per round; round ``r`` (1-based) starts at
            ``t = (r - 1) * round_duration``.
        drop_stragglers: probability that a sampled client is a straggler and is dropped
            (``compute.drop: true``); 0: none dropped.
        normalize: FedNova's ``||a||_1`` as a function of the local steps, or None.
        tau_eff: FedNova's ``tau_eff`` as a public constant, or None for the data-dependent
            ``sum_i p_i ||a_i||_1`` (not allowed under user-level DP).
        weighting: ``count`` or ``uniform``: the ``p_i`` of ``tau_eff`` (the aggregator's).
    """

    available: AvailableFn | None = None
    round_duration: float = 1.0
    drop_stragglers: float = 0.0
    normalize: Callable[[jax.Array], jax.Array] | None = None
    tau_eff: float | None = None
    weighting: str = "count"

    @property
    def selects(self) -> bool:
        """Whether :meth:`select` can drop anyone."""
        return self.available is not None or self.drop_stragglers > 0

    def select(self, inputs: Any, round_index: jax.Array, key: jax.Array) -> tuple[Any, dict]:
        """Drops the sampled clients that are unavailable (or stragglers to drop) this round.

        Args:
            inputs: the cohort (:class:`~fedpriv.fl.round.RoundInputs`), ``client_mask[C]``,
                ``client_ids[C]``, ``count[C]``.
            round_index: rounds completed before this one (int scalar).
            key: the round key (folded with :data:`EDGE_PURPOSE` here).

        Returns:
            ``(inputs, metrics)``: the cohort with ``client_mask`` and ``count`` zeroed for
            dropped clients, and ``sampled``, ``dropped``, ``participated`` (counts).

        Privacy:
            Applied after sampling, removing contributions only; see the module docstring.
        """
        edge_key = jax.random.fold_in(key, EDGE_PURPOSE)
        sampled = inputs.client_mask > 0
        keep = jnp.ones(sampled.shape, bool)
        if self.available is not None:
            t = jnp.asarray(round_index, jnp.float32) * jnp.float32(self.round_duration)
            keep = keep & self.available(inputs.client_ids, t, jax.random.fold_in(edge_key, 0))
        if self.drop_stragglers > 0:
            u = client_uniforms(jax.random.fold_in(edge_key, 1), inputs.client_ids)
            keep = keep & (u >= self.drop_stragglers)
        kept = sampled & keep
        inputs = inputs._replace(
            client_mask=jnp.where(kept, inputs.client_mask, 0).astype(inputs.client_mask.dtype),
            count=jnp.where(kept, inputs.count, 0).astype(inputs.count.dtype),
        )
        metrics = {
            "sampled": jnp.sum(sampled),
            "dropped": jnp.sum(sampled & ~keep),
            "participated": jnp.sum(kept),
        }
        return inputs, metrics

    def rescale(
        self, mean_update: PyTree, per_client: Mapping[str, jax.Array], inputs: Any
    ) -> tuple[PyTree, dict]:
        """FedNova's server step: ``tau_eff * sum_i p_i d_i`` from the aggregate of the
        normalised updates ``d_i`` (Wang et al. 2020, eq. 6 / Algorithm 1).

        ``tau_eff`` is the public constant when set, else ``sum_i p_i ||a_i||_1`` over the
        clients that contributed, with ``p_i`` the aggregator's weights (example counts or 1).
        Without FedNova the update passes unchanged.

        Privacy:
            Under user-level DP ``tau_eff`` must be a public constant (the loop enforces it):
            rescaling the noised mean by a constant is post-processing. The data-dependent
            ``sum_i p_i ||a_i||_1`` reveals the clients' step counts and is for runs without
            DP only.
        """
        if self.normalize is None:
            return mean_update, {}
        if self.tau_eff is not None:
            tau = jnp.float32(self.tau_eff)
        else:
            took_part = (inputs.client_mask > 0) & per_client["finite"]
            w = took_part.astype(jnp.float32)
            if self.weighting == "count":
                w = w * inputs.count.astype(jnp.float32)
            a = self.normalize(per_client["steps"])
            tau = jnp.sum(w * a) / jnp.maximum(jnp.sum(w), 1e-12)
        return jax.tree.map(lambda u: u * tau, mean_update), {"tau_eff": tau}


# --------------------------------------------------------------------------- configuration


def local_options(run: RunConfig) -> dict[str, Any]:
    """Keyword options of :func:`fedpriv.fl.client.make_client_update` for this run:
    the algorithm's (``proximal_mu`` for FedProx), ``work_fraction`` (heterogeneous compute,
    unless stragglers are dropped) and ``normalize`` (FedNova). Empty for a plain FedAvg
    run."""
    algorithm, compute, client = run.algorithm, run.compute, run.client
    out: dict[str, Any] = dict(algorithm.local_options())
    if compute.kind == "uniform":
        out["work_fraction"] = uniform_work(float(compute.low_fraction))
    elif compute.kind == "stragglers" and not compute.drops_stragglers:
        steps_fraction = compute.steps_fraction
        out["work_fraction"] = straggler_work(
            float(compute.fraction or 0.0),
            None if steps_fraction is None else float(steps_fraction),
        )
    if algorithm.normalizes:
        out["normalize"] = fednova_norm(float(client.momentum or 0.0))
    return out


def build_edge(
    run: RunConfig,
    *,
    population: int,
    seed_key: jax.Array,
    user_dp: bool,
    local_steps: int | None,
) -> EdgeSpec | None:
    """The round's :class:`EdgeSpec` from the run's ``availability``, ``compute``,
    ``algorithm`` and ``client`` groups (None when the round is the plain synchronous one).

    Args:
        run: the run.
        population: number of clients N (trace ids must lie in ``[0, N)``).
        seed_key: a key derived from the run's seed (for the diurnal phases).
        user_dp: whether the run has user- or example-level DP (FedNova's ``tau_eff`` must
            then be public).
        local_steps: the most local steps a client takes, when that is public: DP-SGD's
            fixed steps under example-level DP, else ``E * ceil(client.max_examples / B)``
            when the cap is declared (None otherwise): FedNova's default public ``tau_eff``
            under DP.

    Raises:
        ConfigError: a trace that does not fit the population; FedNova under user-level DP
            with neither ``algorithm.tau_eff`` nor ``client.max_examples``.

    Privacy:
        See the module docstring; under user-level DP FedNova's ``tau_eff`` rescales the
        released aggregate, so it is ``algorithm.tau_eff`` or ``local_steps``, constants of
        the configuration: never the scan length of the largest client, which removing
        that client changes.
    """
    av, compute, algorithm, client = run.availability, run.compute, run.algorithm, run.client
    available = None
    duration = float(av.round_duration or 1.0)
    if av.kind == "bernoulli":
        available = bernoulli(float(av.dropout or 0.0))
    elif av.kind == "diurnal":
        available = diurnal(
            float(av.low),
            float(av.high),
            float(av.period),
            jax.random.fold_in(seed_key, PHASE_PURPOSE),
        )
    elif av.kind == "trace":
        available = trace(read_trace(av.path), population)
    drop = float(compute.fraction or 0.0) if compute.drops_stragglers else 0.0
    normalize = None
    tau_eff = None
    if algorithm.normalizes:
        normalize = fednova_norm(float(client.momentum or 0.0))
        tau_eff = getattr(algorithm, "tau_eff", None)
        if tau_eff is None and user_dp:
            if local_steps is None:
                raise ConfigError(
                    "algorithm.tau_eff",
                    "FedNova under user-level DP rescales the noised aggregate by tau_eff, "
                    "which must be public: set algorithm.tau_eff, or client.max_examples "
                    "(tau_eff is then client.epochs * ceil(client.max_examples / "
                    "client.batch_size))",
                )
            tau_eff = float(local_steps)
        tau_eff = None if tau_eff is None else float(tau_eff)
    if available is None and drop == 0.0 and normalize is None:
        return None
    return EdgeSpec(
        available=available,
        round_duration=duration,
        drop_stragglers=drop,
        normalize=normalize,
        tau_eff=tau_eff,
        weighting=str(algorithm.weighting or "count"),
    )
