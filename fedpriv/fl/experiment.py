"""A synchronous federated experiment built from a configuration: data, model, sampler,
privacy plan and the jit-compiled round, as the steps the host driver runs
(:class:`fedpriv.fl.loop.Steps`).

The experiment does only what must happen outside jit between rounds: cohort sampling and
gathering the cohort batch from the population store (transferred asynchronously, so it
overlaps the running round), and evaluation.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from fedpriv import data as data_lib
from fedpriv import models
from fedpriv.data import cache
from fedpriv.data.stats import population_stats
from fedpriv.errors import ConfigError, config_fields
from fedpriv.fl import edge as edge_lib
from fedpriv.fl import hierarchy, lowrank, planner
from fedpriv.fl.canaries import CanarySpec, participations, write_canaries_file
from fedpriv.fl.client import make_client_optimizer, num_local_steps
from fedpriv.fl.round import RoundInputs, ServerState, init_server_state, make_round
from fedpriv.privacy import release
from fedpriv.privacy.plan import PrivacyPlan, build_plan
from fedpriv.privacy.secagg.host_round import make_protocol_round
from fedpriv.settings import Faults, LocalTraining, RunConfig

# Purposes of the keys split from the root seed (DESIGN.md, rule 5).
KEY_DATA, KEY_INIT, KEY_SAMPLING, KEY_ROUND = 0, 1, 2, 3
KEY_SECAGG, KEY_CANARY = 4, 5


def purpose_key(seed: int, purpose: int) -> jax.Array:
    """The root key of ``seed`` folded with a purpose id."""
    return jax.random.fold_in(jax.random.key(seed), purpose)


def data_rng(seed: int) -> np.random.Generator:
    """The generator that partitions and shuffles the data of a run with ``seed``."""
    key = np.asarray(jax.random.key_data(purpose_key(seed, KEY_DATA))).astype(np.uint64)
    return np.random.default_rng(key)


@dataclasses.dataclass
class Experiment:
    """Everything built from a configuration, ready to run rounds.

    Attributes:
        cfg: the run's configuration.
        data: population and test set.
        model: the flax module.
        sampler: the client sampler.
        plan: the execution plan (chunking).
        n_cap: example slots per client.
        round_fn: the jit-compiled round.
        state: current server state.
        privacy: the privacy plan that builds the mechanism and writes the ledger.
        mesh: the device mesh (None: one device).
        canaries: the canary clients (None: none); the sampler's population includes them.
        initial_params: the parameters before round 1.
        noise_root: with ``privacy.noise_source=secure``, the root of the noise keys, drawn
            from the operating system's CSPRNG and kept in memory only (None: seeded).
        apply_fn: the jit-compiled ``model.apply`` used for evaluation.
    """

    label = "fedpriv"
    unit = "round"

    cfg: RunConfig
    data: data_lib.FederatedData
    model: Any
    sampler: Any
    plan: planner.ExecutionPlan
    n_cap: int
    round_fn: Callable[[ServerState, RoundInputs, jax.Array], tuple[ServerState, dict]]
    state: ServerState
    privacy: PrivacyPlan
    mesh: jax.sharding.Mesh | None = None
    canaries: CanarySpec | None = None
    initial_params: Any = None
    noise_root: jax.Array | None = None
    apply_fn: Callable | None = None

    def __post_init__(self) -> None:
        if self.apply_fn is None:
            self.apply_fn = jax.jit(self.model.apply)

    def sampling_key(self, rnd: int) -> jax.Array:
        return jax.random.fold_in(purpose_key(self.cfg.seed, KEY_SAMPLING), rnd)

    def round_key(self, rnd: int) -> jax.Array:
        """The key of round ``rnd``: from the seed, or with a secure noise source a stack of
        ``(client key, noise key, round key)`` (:func:`fedpriv.fl.round.split_round_key`)
        whose noise key comes from :attr:`noise_root`. Example-level DP draws its noise and
        example sampling inside the clients, and secure aggregation each client's noise
        (distributed DP) and quantisation rounding from the client key, so there the client
        key is secure as well."""
        key = jax.random.fold_in(purpose_key(self.cfg.seed, KEY_ROUND), rnd)
        if self.noise_root is None:
            return key
        noise = jax.random.fold_in(self.noise_root, rnd)
        client_key = jax.random.split(key)[0]
        if self.privacy.unit == "example" or self.privacy.secagg is not None:
            client_key = jax.random.fold_in(noise, 1)
        return jnp.stack([client_key, jax.random.fold_in(noise, 0), key])

    def cohort(self, rnd: int) -> RoundInputs:
        """Samples and gathers round ``rnd``'s cohort, padded to the plan's slots, and starts
        its transfer to the device(s) (asynchronous: it overlaps the running round)."""
        ids, mask = self.sampler.sample(self.sampling_key(rnd), rnd)
        multiple = self.plan.slot_multiple
        slots = max(self.plan.slots, math.ceil(len(ids) / multiple) * multiple)
        pad = slots - len(ids)
        ids = np.concatenate([ids, np.zeros(pad, ids.dtype)])
        mask = np.concatenate([mask, np.zeros(pad, bool)])
        if self.canaries is None:
            batch = RoundInputs(*self.data.train.gather(ids, mask, self.n_cap))
        else:
            # Canary slots hold no data (count 0); the round plants their updates.
            canary = mask & (ids >= self.canaries.first_id)
            batch = RoundInputs(*self.data.train.gather(ids, mask & ~canary, self.n_cap))
            batch = batch._replace(
                client_mask=mask.astype(np.float32),
                client_ids=np.where(mask, ids, -1).astype(np.int32),
            )
        if self.mesh is None:
            return jax.device_put(batch)
        return jax.device_put(batch, NamedSharding(self.mesh, PartitionSpec("clients")))

    def evaluate(self, params: Any) -> dict[str, float]:
        """Test loss and accuracy; with ``eval_train: true`` also the global model's loss and
        accuracy on the whole training population (``global_train_loss``,
        ``global_train_accuracy``: the federated objective ``sum_k p_k F_k(w)`` that Li et
        al. 2020 plot as "training loss")."""
        out = evaluate(self.apply_fn, params, self.data.test_x, self.data.test_y)
        if self.cfg.eval_train:
            train = evaluate(self.apply_fn, params, self.data.train.x, self.data.train.y)
            out.update(
                global_train_loss=train["test_loss"], global_train_accuracy=train["test_accuracy"]
            )
        return out

    # The steps the host driver runs (fedpriv.fl.loop.Steps): step t is round t (1-based).

    def inputs(self, t: int) -> RoundInputs:
        """Round ``t``'s cohort (:meth:`cohort`)."""
        return self.cohort(t)

    def key(self, t: int) -> jax.Array:
        """Round ``t``'s key (:meth:`round_key`)."""
        return self.round_key(t)

    def step(self, state: ServerState, inputs: RoundInputs, key: jax.Array):
        """One round: ``(state, metrics)`` of the jit-compiled round."""
        return self.round_fn(state, inputs, key)

    def host_fields(self, t: int) -> dict[str, Any]:
        """Fields of round ``t``'s metrics line known on the host (none)."""
        return {}

    def ledger_record(self, t: int, record: Mapping[str, Any]) -> dict | None:
        """Round ``t``'s DP event as it ran (None without DP)."""
        return self.privacy.ledger_record(t, record)

    @staticmethod
    def params(state: ServerState) -> Any:
        return state.params

    @staticmethod
    def completed(state: ServerState) -> int:
        """Rounds completed by ``state``."""
        return int(np.asarray(state.round))

    def summary_fields(self, done: int) -> dict[str, Any]:
        """The experiment's part of ``summary.json`` after ``done`` rounds."""
        out = {
            "population": self.data.train.num_clients,
            "data": population_stats(self.data),
            "sampling": {"kind": self.sampler.kind, "expected_cohort": self.sampler.expected_size},
            "execution": dataclasses.asdict(self.plan),
        }
        if self.canaries is not None:
            out["canaries"] = self.canaries.count
        return out

    def finish(self, run_dir: Path, state: ServerState, done: int) -> None:
        """Writes ``canaries.json`` when the run has canary clients."""
        if self.canaries is not None:
            write_canaries_file(
                run_dir,
                self.canaries,
                self.initial_params,
                state.params,
                participations(self.sampler, self.sampling_key, done, self.canaries),
            )


def build(run: RunConfig) -> Experiment:
    """Builds data, model, sampler, aggregator and the jitted round of a run.

    Raises:
        ConfigError: on any value that cannot work with the loaded data.
    """
    seed = run.seed
    rng = data_rng(seed)
    cache_dir = run.dataset.get("cache_dir")
    if cache_dir:
        key = cache.cache_key(run.dataset, seed)
        data = cache.load_cached(cache_dir, key, lambda: data_lib.load(run.dataset, rng))
    else:
        data = data_lib.load(run.dataset, rng)
    data = inject_faults(data, run.faults)
    model = models.build(run.model.name, data.num_classes, **dict(run.model.options or {}))
    params = model.init(purpose_key(seed, KEY_INIT), jnp.zeros((1,) + data.example_shape))

    client = run.client
    sizes = data.train.client_sizes
    max_examples = client.max_examples
    n_cap = int(sizes.max() if max_examples is None else min(sizes.max(), max_examples))
    num_canaries, num_unseen = run.canaries.count, run.canaries.unseen
    sampler = run.sampling.sampler(data.train.num_clients + num_canaries)
    if hasattr(sampler, "bind"):  # a sampler whose draws depend on the earlier rounds'
        root = purpose_key(seed, KEY_SAMPLING)
        sampler = sampler.bind(lambda rnd: jax.random.fold_in(root, rnd))
    hier = hierarchy.from_settings(run.hierarchy, data.train.num_clients)
    if hier is not None:  # with dp_unit=gateway the sampler draws gateways
        sampler = hier.wrap_sampler(sampler, run.sampling)
    client_opt = client_optimizer(client)
    num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    privacy = build_plan(
        run.privacy,
        sampler,
        client,
        run.rounds,
        secagg=run.secagg,
        num_params=num_params,
    )
    if hier is not None:
        privacy = hier.plan(privacy)
    client_update = privacy.client_update(
        model.apply,
        client_opt,
        int(client.epochs),
        int(client.batch_size),
        n_cap,
        **edge_lib.local_options(run),
    )
    edge = edge_lib.build_edge(
        run,
        population=data.train.num_clients,
        seed_key=purpose_key(seed, edge_lib.EDGE_PURPOSE),
        user_dp=privacy.unit in ("user", "gateway", "example"),
        local_steps=_public_local_steps(privacy, client),
    )
    alg = run.algorithm
    server_opt = alg.server_optimizer()
    noise_root = None
    if release.noise_source(run.privacy) == "secure" and privacy.is_private:
        noise_root = release.secure_root_key()
    # The secure-aggregation key (masks, rotation) is in the server state and so in every
    # checkpoint: it stays seeded; the noise comes from the client keys (round_key).
    aggregator = privacy.aggregator(
        alg.weighting or "count", key=purpose_key(seed, KEY_SECAGG), params=params
    )
    example_bytes = int(np.prod(data.example_shape)) * data.train.x.dtype.itemsize
    exec_plan = planner.plan(
        sampler.capacity,
        num_params,
        example_bytes,
        n_cap,
        run.execution.chunk_size or "auto",
        num_devices=run.execution.devices or 1,
    )
    mesh = planner.make_mesh(exec_plan.num_devices)
    canaries = None
    if num_canaries:
        if privacy.unit != "user" or privacy.secagg is not None:
            raise ConfigError(
                "canaries.count",
                "canary clients need user-level DP without secure aggregation "
                "(privacy=user_dp or user_dp_adaptive, secagg=none)",
            )
        canaries = CanarySpec(
            first_id=data.train.num_clients,
            count=num_canaries,
            unseen=num_unseen,
            key=purpose_key(seed, KEY_CANARY),
            per_layer=privacy.per_layer,
        )
    population_bytes = data.train.x.nbytes + data.train.y.nbytes
    agg_bytes = sum(int(x.nbytes) for x in jax.tree.leaves(aggregator.init()))
    warning = planner.memory_warning(
        planner.estimate_peak_bytes(
            exec_plan, n_cap, example_bytes, population_bytes, server_state_bytes=agg_bytes
        ),
        planner.available_bytes(),
    )
    if warning:
        print(f"fedpriv: warning: {warning}", file=sys.stderr, flush=True)
    if privacy.secagg is not None and privacy.secagg.mode == "protocol":
        # The protocol runs on the host between two jit-compiled halves of the round.
        if edge is not None:
            raise ConfigError(
                "secagg.mode", "availability models and FedNova need secagg=none or fast"
            )
        round_fn = make_protocol_round(client_update, aggregator, server_opt, privacy.secagg)
    else:
        local_sums = None
        requested = str(run.execution.path or "auto")
        if canaries is not None and requested == "lowrank":
            raise ConfigError("canaries.count", "canary clients need execution.path=direct or auto")
        path = "direct" if canaries is not None else requested
        path = lowrank.choose_path(path, params, client, aggregator, privacy.unit == "example")
        if path == "lowrank":
            exec_plan = _lowrank_plan(exec_plan, params, n_cap, client)
            local_sums = lowrank.make_lowrank_cohort_sums(
                lowrank.dense_layers(params),
                float(client.lr),
                int(client.epochs),
                int(client.batch_size),
                n_cap,
                aggregator,
                exec_plan.chunk_size,
            )
        if hier is not None:
            aggregator, local_sums = hier.round_parts(
                aggregator,
                client_update,
                alg.weighting or "count",
                exec_plan.chunk_size,
            )
        round_fn = jax.jit(
            make_round(
                client_update,
                aggregator,
                server_opt,
                exec_plan.chunk_size,
                mesh,
                local_sums=local_sums,
                canaries=canaries,
                edge=edge,
            )
        )
        if mesh is not None:
            round_fn = _replicating(round_fn, mesh)
    state = init_server_state(params, server_opt, aggregator)
    return Experiment(
        run,
        data,
        model,
        sampler,
        exec_plan,
        n_cap,
        round_fn,
        state,
        privacy,
        mesh=mesh,
        canaries=canaries,
        initial_params=params,
        noise_root=noise_root,
    )


def client_optimizer(client: LocalTraining) -> optax.GradientTransformation:
    """The clients' local optimizer of the ``client`` group."""
    with config_fields({"name": "client.optimizer"}):
        return make_client_optimizer(
            str(client.optimizer), float(client.lr), float(client.momentum or 0.0)
        )


def _public_local_steps(privacy: PrivacyPlan, client: LocalTraining) -> int | None:
    """The local steps a client takes at most, when they are public: DP-SGD's fixed steps
    under example-level DP, else ``E ceil(max_examples / B)`` when the cap is declared."""
    if privacy.unit == "example":
        return int(privacy.steps)
    if client.max_examples is None:
        return None
    return num_local_steps(int(client.max_examples), int(client.batch_size), int(client.epochs))


class _replicating:
    """Calls a jitted round with the server state replicated over the mesh.

    The state may arrive on one device (fresh, or restored from a checkpoint); ``device_put``
    to the replicated sharding is a no-op once it is there.
    """

    def __init__(self, jitted: Callable, mesh: jax.sharding.Mesh):
        self.jitted = jitted
        self.replicated = NamedSharding(mesh, PartitionSpec())

    def __call__(self, state, inputs, key):
        return self.jitted(jax.device_put(state, self.replicated), inputs, key)

    def _cache_size(self) -> int:
        return self.jitted._cache_size()


def _lowrank_plan(
    exec_plan: planner.ExecutionPlan, params: Any, n_cap: int, client: LocalTraining
) -> planner.ExecutionPlan:
    """The same slots per device, regrouped in the wide chunks the factored path wants."""
    per_device = exec_plan.chunk_size * exec_plan.num_chunks
    dims = [tuple(layer["kernel"].shape) for layer in params["params"].values()]
    k = lowrank.lowrank_chunk(per_device, n_cap, int(client.batch_size), int(client.epochs), dims)
    return dataclasses.replace(exec_plan, chunk_size=k, num_chunks=math.ceil(per_device / k))


@jax.jit
def _eval_batch(logits: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()
    return loss, (jnp.argmax(logits, -1) == y).sum()


def evaluate(
    apply_fn: Callable, params: Any, x: np.ndarray, y: np.ndarray, batch_size: int = 2048
) -> dict[str, float]:
    """Loss and accuracy of ``params`` on ``(x, y)``, in batches of ``batch_size``.

    Args:
        apply_fn: ``apply_fn(params, x) -> logits`` (a model's ``apply``, ideally jitted).
        params: the parameters.
        x: ``x[n, ...]``; y: ``y[n]`` integer labels.
        batch_size: examples per call.

    Returns:
        ``{"test_loss": mean cross-entropy, "test_accuracy": fraction correct}``.
    """
    loss = correct = 0.0
    for lo in range(0, len(y), batch_size):
        logits = apply_fn(params, x[lo : lo + batch_size])
        batch_loss, c = _eval_batch(logits, y[lo : lo + batch_size])
        loss += float(batch_loss)
        correct += float(c)
    n = max(len(y), 1)
    return {"test_loss": loss / n, "test_accuracy": correct / n}


def inject_faults(data: data_lib.FederatedData, faults: Faults):
    """Applies ``faults`` from the configuration to the loaded data (for robustness tests).

    ``faults.nan_clients``: the features of these clients become NaN, so every round they
    take part in, their local training diverges; the round drops them and counts them in
    ``nonfinite_clients``.

    Raises:
        ConfigError: a client id outside the population.
    """
    ids = list(faults.nan_clients)
    if not ids:
        return data
    train = data.train
    n = train.num_clients
    for cid in ids:
        if isinstance(cid, bool) or not isinstance(cid, int) or not 0 <= cid < n:
            raise ConfigError(
                "faults.nan_clients", f"client ids must be integers in [0, {n - 1}], got {cid!r}"
            )
    x = np.array(train.x, dtype=np.result_type(train.x.dtype, np.float32))
    for cid in ids:
        x[train.offsets[cid] : train.offsets[cid + 1]] = np.nan
    return dataclasses.replace(data, train=dataclasses.replace(train, x=x))
