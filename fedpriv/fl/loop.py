"""The host training loop: sample, gather, run the jitted round, evaluate, log.

The host does only what must happen outside jit: cohort sampling, gathering the cohort batch
from the population store, evaluation every ``eval_every`` rounds, and writing the run
directory. The next round's cohort is gathered while the device computes the current one
(JAX dispatch is asynchronous), so the host is not on the critical path.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fedpriv import data as data_lib
from fedpriv import models
from fedpriv.data.stats import population_stats
from fedpriv.errors import ConfigError
from fedpriv.fl import checkpoint as checkpoint_lib
from fedpriv.fl import edge as edge_lib
from fedpriv.fl import hierarchy, lowrank, planner
from fedpriv.fl.canaries import CanarySpec, participations, write_canaries_file
from fedpriv.fl.client import make_client_optimizer, num_local_steps
from fedpriv.fl.round import RoundInputs, ServerState, init_server_state, make_round
from fedpriv.fl.sampling import build_sampler
from fedpriv.fl.server import server_optimizer_from_config
from fedpriv.privacy import release
from fedpriv.privacy.ledger import LEDGER_FILE, LedgerWriter
from fedpriv.privacy.plan import PrivacyPlan, build_plan
from fedpriv.validation import check_output_dir, read_jsonl

# Purposes of the keys split from the root seed (DESIGN.md, rule 5).
KEY_DATA, KEY_INIT, KEY_SAMPLING, KEY_ROUND = 0, 1, 2, 3
KEY_SECAGG, KEY_CANARY = 4, 5


def purpose_key(seed: int, purpose: int) -> jax.Array:
    """The root key of ``seed`` folded with a purpose id."""
    return jax.random.fold_in(jax.random.key(seed), purpose)


@dataclasses.dataclass
class Experiment:
    """Everything built from a configuration, ready to run rounds.

    Attributes:
        cfg: the plain-dict configuration.
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
    """

    cfg: dict[str, Any]
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

    def sampling_key(self, rnd: int) -> jax.Array:
        return jax.random.fold_in(purpose_key(self.cfg["seed"], KEY_SAMPLING), rnd)

    def round_key(self, rnd: int) -> jax.Array:
        """The key of round ``rnd``: from the seed, or with a secure noise source a stack of
        ``(client key, noise key, round key)`` (:func:`fedpriv.fl.round.split_round_key`)
        whose noise key comes from :attr:`noise_root`. Example-level DP draws its noise and
        example sampling inside the clients, and secure aggregation each client's noise
        (distributed DP) and quantisation rounding from the client key, so there the client
        key is secure as well."""
        key = jax.random.fold_in(purpose_key(self.cfg["seed"], KEY_ROUND), rnd)
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
        ids, mask = self.sampler.sample(self.sampling_key(rnd))
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
        from jax.sharding import NamedSharding, PartitionSpec

        return jax.device_put(batch, NamedSharding(self.mesh, PartitionSpec("clients")))

    def evaluate(self, params: Any) -> dict[str, float]:
        """Test loss and accuracy; with ``eval_train: true`` also the global model's loss and
        accuracy on the whole training population (``global_train_loss``,
        ``global_train_accuracy``: the federated objective ``sum_k p_k F_k(w)`` that Li et
        al. 2020 plot as "training loss")."""
        out = evaluate(self.model, params, self.data.test_x, self.data.test_y)
        if self.cfg.get("eval_train"):
            train = evaluate(self.model, params, self.data.train.x, self.data.train.y)
            out.update(
                global_train_loss=train["test_loss"], global_train_accuracy=train["test_accuracy"]
            )
        return out


def build(cfg: Mapping[str, Any]) -> Experiment:
    """Builds data, model, sampler, aggregator and the jitted round from a configuration.

    Raises:
        ConfigError: on any value that cannot work with the loaded data.
    """
    cfg = dict(cfg)
    seed = int(cfg["seed"])
    data_rng = np.random.default_rng(
        np.asarray(jax.random.key_data(purpose_key(seed, KEY_DATA))).astype(np.uint64)
    )
    cache_dir = (cfg["dataset"] or {}).get("cache_dir")
    if cache_dir:
        from fedpriv.data import cache

        key = cache.cache_key(cfg["dataset"], seed)
        data = cache.load_cached(cache_dir, key, lambda: data_lib.load(cfg["dataset"], data_rng))
    else:
        data = data_lib.load(cfg["dataset"], data_rng)
    data = inject_faults(data, cfg.get("faults"))
    model_cfg = {k: v for k, v in dict(cfg["model"]).items() if k != "name"}
    model = models.build(cfg["model"]["name"], data.num_classes, **model_cfg)
    params = model.init(purpose_key(seed, KEY_INIT), jnp.zeros((1,) + data.example_shape))

    sizes = data.train.client_sizes
    max_examples = cfg["client"].get("max_examples")
    n_cap = int(sizes.max() if max_examples is None else min(sizes.max(), max_examples))
    samp = cfg["sampling"]
    num_canaries, num_unseen = canary_counts(cfg)
    sampler = build_sampler(
        samp["kind"],
        data.train.num_clients + num_canaries,
        samp.get("cohort_size"),
        samp.get("rate"),
    )
    hier = hierarchy.from_config(cfg.get("hierarchy"), data.train.num_clients)
    if hier is not None:  # with dp_unit=gateway the sampler draws gateways
        sampler = hier.wrap_sampler(sampler, samp)
    client_opt = make_client_optimizer(
        cfg["client"]["optimizer"],
        float(cfg["client"]["lr"]),
        float(cfg["client"].get("momentum") or 0.0),
    )
    privacy = build_plan(
        cfg.get("privacy") or {"name": "none"},
        sampler,
        cfg["client"],
        int(cfg["rounds"]),
        secagg_cfg=cfg.get("secagg"),
        num_params=sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params)),
    )
    if hier is not None:
        privacy = hier.plan(privacy)
    client_update = privacy.client_update(
        model.apply,
        client_opt,
        int(cfg["client"]["epochs"]),
        int(cfg["client"]["batch_size"]),
        n_cap,
        **edge_lib.local_options(cfg),
    )
    edge = edge_lib.build_edge(
        cfg,
        population=data.train.num_clients,
        seed_key=purpose_key(seed, edge_lib.EDGE_PURPOSE),
        user_dp=privacy.unit in ("user", "gateway"),
        local_steps=None
        if max_examples is None
        else num_local_steps(
            int(max_examples), int(cfg["client"]["batch_size"]), int(cfg["client"]["epochs"])
        ),
    )
    alg = cfg["algorithm"]
    server_opt = server_optimizer_from_config(alg)
    noise_root = None
    if release.noise_source(cfg.get("privacy")) == "secure" and privacy.is_private:
        noise_root = release.secure_root_key()
    # The secure-aggregation key (masks, rotation) is in the server state and so in every
    # checkpoint: it stays seeded; the noise comes from the client keys (round_key).
    aggregator = privacy.aggregator(
        alg.get("weighting", "count"), key=purpose_key(seed, KEY_SECAGG), params=params
    )
    num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    example_bytes = int(np.prod(data.example_shape)) * data.train.x.dtype.itemsize
    exec_plan = planner.plan(
        sampler.capacity,
        num_params,
        example_bytes,
        n_cap,
        (cfg.get("execution") or {}).get("chunk_size", "auto"),
        num_devices=(cfg.get("execution") or {}).get("devices", 1),
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
    warning = planner.memory_warning(
        planner.estimate_peak_bytes(exec_plan, n_cap, example_bytes, population_bytes),
        planner.available_bytes(),
    )
    if warning:
        print(f"fedpriv: warning: {warning}", file=sys.stderr, flush=True)
    if privacy.secagg is not None and privacy.secagg.mode == "protocol":
        # The protocol runs on the host between two jit-compiled halves of the round.
        from fedpriv.privacy.secagg.host_round import make_protocol_round

        if edge is not None:
            raise ConfigError(
                "secagg.mode", "availability models and FedNova need secagg=none or fast"
            )
        round_fn = make_protocol_round(client_update, aggregator, server_opt, privacy.secagg)
    else:
        local_sums = None
        requested = str((cfg.get("execution") or {}).get("path", "auto"))
        if canaries is not None and requested == "lowrank":
            raise ConfigError("canaries.count", "canary clients need execution.path=direct or auto")
        path = "direct" if canaries is not None else requested
        path = lowrank.choose_path(
            path, params, cfg["client"], aggregator, privacy.unit == "example"
        )
        if path == "lowrank":
            exec_plan = _lowrank_plan(exec_plan, params, n_cap, cfg["client"])
            local_sums = lowrank.make_lowrank_cohort_sums(
                lowrank.dense_layers(params),
                float(cfg["client"]["lr"]),
                int(cfg["client"]["epochs"]),
                int(cfg["client"]["batch_size"]),
                n_cap,
                aggregator,
                exec_plan.chunk_size,
            )
        if hier is not None:
            aggregator, local_sums = hier.round_parts(
                aggregator,
                client_update,
                alg.get("weighting", "count"),
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
        cfg,
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


def canary_counts(cfg: Mapping[str, Any]) -> tuple[int, int]:
    """``(count, unseen)`` of the ``canaries`` block (``(0, 0)`` without it).

    Raises:
        ConfigError: a count that is not a non-negative integer.
    """
    block = cfg.get("canaries") or {}
    count, unseen = block.get("count") or 0, block.get("unseen")
    for field, value in (("canaries.count", count), ("canaries.unseen", unseen)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(field, f"must be an integer >= 0, got {value!r}")
        if value is not None and value < 0:
            raise ConfigError(field, f"must be an integer >= 0, got {value!r}")
    if not count:
        return 0, 0
    return int(count), int(count if unseen is None else unseen)


class _replicating:
    """Calls a jitted round with the server state replicated over the mesh.

    The state may arrive on one device (fresh, or restored from a checkpoint); ``device_put``
    to the replicated sharding is a no-op once it is there.
    """

    def __init__(self, jitted: Callable, mesh: jax.sharding.Mesh):
        from jax.sharding import NamedSharding, PartitionSpec

        self.jitted = jitted
        self.replicated = NamedSharding(mesh, PartitionSpec())

    def __call__(self, state, inputs, key):
        return self.jitted(jax.device_put(state, self.replicated), inputs, key)

    def _cache_size(self) -> int:
        return self.jitted._cache_size()


def _lowrank_plan(exec_plan, params, n_cap: int, client_cfg) -> planner.ExecutionPlan:
    """The same slots per device, regrouped in the wide chunks the factored path wants."""
    per_device = exec_plan.chunk_size * exec_plan.num_chunks
    dims = [tuple(layer["kernel"].shape) for layer in params["params"].values()]
    k = lowrank.lowrank_chunk(
        per_device, n_cap, int(client_cfg["batch_size"]), int(client_cfg["epochs"]), dims
    )
    return dataclasses.replace(exec_plan, chunk_size=k, num_chunks=math.ceil(per_device / k))


@jax.jit
def _eval_batch(logits: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    import optax

    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()
    return loss, (jnp.argmax(logits, -1) == y).sum()


def evaluate(
    model: Any, params: Any, x: np.ndarray, y: np.ndarray, batch_size: int = 2048
) -> dict[str, float]:
    """Test loss and accuracy of ``params`` on ``(x, y)``."""
    apply = _jitted_apply(model)
    loss = correct = 0.0
    for lo in range(0, len(y), batch_size):
        logits = apply(params, x[lo : lo + batch_size])
        batch_loss, c = _eval_batch(logits, y[lo : lo + batch_size])
        loss += float(batch_loss)
        correct += float(c)
    n = max(len(y), 1)
    return {"test_loss": loss / n, "test_accuracy": correct / n}


_APPLY_CACHE: dict[int, Callable] = {}


def _jitted_apply(model: Any) -> Callable:
    key = id(model)
    if key not in _APPLY_CACHE:
        _APPLY_CACHE[key] = jax.jit(model.apply)
    return _APPLY_CACHE[key]


def _to_python(metrics: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in metrics.items():
        v = np.asarray(v)
        out[k] = v.item() if v.ndim == 0 else v.tolist()
        if isinstance(out[k], float):
            out[k] = float(np.float32(out[k])) if np.isfinite(out[k]) else None
    return out


def package_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in (
        "fedpriv",
        "jax",
        "jaxlib",
        "flax",
        "optax",
        "numpy",
        "hydra-core",
        "dp-accounting",
        "opacus",
    ):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _final_epsilons(plan: PrivacyPlan, ledger: list[dict]) -> dict[str, float]:
    """Epsilon of the whole ledger under every accountant that supports it."""
    from fedpriv import accounting

    if not ledger:
        return {}
    out = {}
    for name in accounting.supported_accountants(ledger):
        out[name] = float(accounting.epsilon(ledger, plan.delta, name))
    return out


class InjectedFault(RuntimeError):
    """The failure that ``faults.crash_at_round`` plants, standing in for a job that dies
    (a lost node, an out-of-memory kill) in tests of sweeps, reports and resumption."""


class Interrupted(Exception):
    """Training stopped by SIGTERM or SIGINT after a checkpoint was written.

    Attributes:
        signum: the signal received.
        round: the last completed round (the checkpoint's round).
        checkpoint: the checkpoint directory written.
    """

    def __init__(self, signum: int, rnd: int, checkpoint: Path):
        self.signum, self.round, self.checkpoint = signum, rnd, checkpoint
        name = signal.Signals(signum).name
        super().__init__(f"interrupted by {name} after round {rnd}; checkpoint {checkpoint}")


class _StopSignals:
    """Turns SIGTERM and SIGINT into a flag that the loop checks after every round."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def inject_faults(data: data_lib.FederatedData, faults: Mapping[str, Any] | None):
    """Applies ``faults`` from the configuration to the loaded data (for robustness tests).

    ``faults.nan_clients``: the features of these clients become NaN, so every round they
    take part in, their local training diverges; the round drops them and counts them in
    ``nonfinite_clients``.

    Raises:
        ConfigError: a client id outside the population.
    """
    ids = list((faults or {}).get("nan_clients") or [])
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


@dataclasses.dataclass
class _Start:
    """Where a run starts: round 0, or the state restored from a checkpoint."""

    round: int = 0
    state: ServerState | None = None
    ledger: list[dict] = dataclasses.field(default_factory=list)
    metrics_lines: int = 0
    last_eval: dict[str, float] = dataclasses.field(default_factory=dict)
    checkpoint: Path | None = None


def _resume_point(exp: Experiment, run_dir: Path, ckpt: checkpoint_lib.Checkpointer) -> _Start:
    """Reads and checks what a resumed run continues from; writes nothing.

    The ledger is read whole: rounds that ran after the checkpoint consumed privacy and stay.

    Raises:
        ConfigError: naming the checkpoint, ledger or metrics file that is bad.
    """
    start = _Start()
    ledger = read_jsonl(run_dir / LEDGER_FILE)
    restored = ckpt.restore(exp.state)
    if restored is not None:
        state, meta = restored
        start = _Start(
            round=int(meta["round"]),
            state=state,
            metrics_lines=int(meta["metrics_lines"]),
            last_eval=dict(meta.get("last_eval") or {}),
            checkpoint=ckpt.root / str(meta["round"]),
        )
        if int(np.asarray(state.round)) != start.round:
            raise ConfigError(
                str(start.checkpoint),
                f"holds server state after round {int(np.asarray(state.round))} but says "
                f"round {start.round}",
            )
        tracked = (meta.get("epsilon_tracker") or {}).get("events") or []
        if len(ledger) < int(meta["ledger_lines"]) or len(tracked) > len(ledger):
            raise ConfigError(
                str(run_dir / LEDGER_FILE),
                f"has {len(ledger)} records but checkpoint {start.checkpoint} was written "
                f"after {meta['ledger_lines']}; a ledger must never shrink",
            )
        from fedpriv.accounting import RoundEvent

        for t, saved in enumerate(tracked):
            try:
                same = RoundEvent.from_dict(ledger[t]).to_dict() == saved
            except ConfigError:
                same = False
            if not same:
                raise ConfigError(
                    str(run_dir / LEDGER_FILE),
                    f"record {t} differs from the copy in checkpoint {start.checkpoint}; the "
                    "ledger was edited",
                )
    read_jsonl(run_dir / "metrics.jsonl", start.metrics_lines)
    start.ledger = ledger
    return start


def _truncate_lines(path: Path, lines: int) -> None:
    """Keeps the first ``lines`` lines of ``path`` (atomically; creates an empty file)."""
    kept: list[str] = []
    if path.exists() and lines:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if len(kept) == lines:
                    break
                if line.strip():
                    kept.append(line if line.endswith("\n") else line + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    os.replace(tmp, path)


def run(cfg: Mapping[str, Any], run_dir: str | os.PathLike, progress: bool = True) -> dict:
    """Trains as configured and writes the run directory.

    Writes ``metrics.jsonl`` (a line per round, with ``epsilon`` spent so far under DP;
    released values at the top level, un-noised diagnostics apart, none with
    ``privacy.release=strict``: :mod:`fedpriv.privacy.release`), ``ledger.jsonl`` (one DP
    event per executed round, appended by the privacy plan that ran; absent without DP),
    ``checkpoints/`` (every ``checkpoint.every`` rounds, after the round before the last, at
    the end, and on SIGTERM/SIGINT), ``final_params.npz`` and ``summary.json``; with
    ``canaries.count >
    0`` also ``canaries.json`` (:func:`fedpriv.fl.canaries.write_canaries_file`).

    With ``resume: true`` the run continues from the newest checkpoint in ``run_dir`` (from
    round 0 when there is none). The ledger is kept whole: rounds that ran after that
    checkpoint stay in it, and when they run again their records carry ``"replay": true``, so
    epsilon, computed over the whole ledger, never under-counts. ``metrics.jsonl`` is cut back
    to the checkpoint's round. Keys depend only on the seed and the round, so a resumed run
    ends with the same parameters as one that was never interrupted.

    With ``async.name: fedbuff`` the run is buffered asynchronous aggregation
    (:func:`fedpriv.fl.fedbuff.run`: a line and a ledger record per server step).

    Args:
        cfg: a validated configuration (plain dicts).
        run_dir: the run directory (Hydra's output directory).
        progress: show a progress bar on stderr.

    Returns:
        The summary dict (also written to ``summary.json``).

    Raises:
        ConfigError: bad data, checkpoint, ledger or metrics file; nothing has been written.
        Interrupted: SIGTERM or SIGINT arrived; the checkpoint of the last round is written.
    """
    if ((cfg.get("async") or {}).get("name") or "none") != "none":
        from fedpriv.fl import fedbuff  # buffered asynchronous aggregation: its own loop

        return fedbuff.run(cfg, run_dir, progress)
    from tqdm.auto import tqdm

    from fedpriv import accounting

    start_time = time.time()
    run_dir = Path(run_dir)
    check_output_dir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resume = bool(cfg.get("resume", False))
    ck_cfg = cfg.get("checkpoint") or {}
    every = int(ck_cfg.get("every", 25) or 0)
    ckpt = checkpoint_lib.Checkpointer(run_dir, int(ck_cfg.get("keep", 2) or 2))
    exp = build(cfg)
    plan = exp.privacy
    rounds, eval_every = int(cfg["rounds"]), int(cfg["eval_every"])
    stop_at = (cfg.get("privacy") or {}).get("stop_at_epsilon")
    release_mode = release.mode(cfg.get("privacy"))
    crash_at = (cfg.get("faults") or {}).get("crash_at_round")

    # Everything is read and checked before anything in the run directory changes.
    begin = _resume_point(exp, run_dir, ckpt) if resume else _Start()
    tracker = accounting.EpsilonTracker(plan.delta, plan.accountant) if plan.is_private else None
    if begin.ledger:
        if tracker is None:
            raise ConfigError(
                str(run_dir / LEDGER_FILE),
                "holds DP events but this configuration has privacy=none; resume with the "
                "privacy setting the run was made with",
            )
        try:
            tracker.extend(begin.ledger)  # rebuilt from the ledger file itself, every line
        except ConfigError as err:
            raise ConfigError(f"{run_dir / LEDGER_FILE}: {err.field}", err.message) from None
    ledger_records = list(begin.ledger)
    recorded_rounds = {int(r.get("round", -1)) for r in ledger_records}
    replayed = sum(bool(r.get("replay")) for r in ledger_records)

    _truncate_lines(run_dir / "metrics.jsonl", begin.metrics_lines)
    ledger = LedgerWriter(run_dir) if plan.is_private else None
    state = exp.state if begin.state is None else begin.state
    done = begin.round
    metrics_lines = begin.metrics_lines
    last_eval: dict[str, float] = dict(begin.last_eval)
    saved_at: int | None = begin.round if begin.checkpoint is not None else None
    compile_start = time.time()
    compile_s = 0.0
    record: dict[str, Any] = {}
    epsilon = tracker.epsilon if tracker is not None and tracker.rounds else None
    stopped = stop_at is not None and epsilon is not None and epsilon >= float(stop_at)

    def save(rnd: int) -> Path:
        meta = {
            "metrics_lines": metrics_lines,
            "ledger_lines": len(ledger_records),
            "epsilon_tracker": tracker.state_dict() if tracker is not None else None,
            "config": {k: v for k, v in cfg.items() if k != "resume"},
            "last_eval": release.released(last_eval) if release_mode == "strict" else last_eval,
        }
        return ckpt.save(rnd, state, meta)

    bar = tqdm(
        total=rounds,
        initial=min(done, rounds),
        desc="fedpriv",
        unit="round",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    with _StopSignals() as signals, open(run_dir / "metrics.jsonl", "a") as metrics_file:
        batch = exp.cohort(done + 1) if done < rounds and not stopped else None
        while done < rounds and not stopped and signals.received is None:
            rnd = done + 1
            if rnd == crash_at:
                raise InjectedFault(
                    f"faults.crash_at_round: the run was made to fail at round {rnd}"
                )
            t0 = time.time()
            state, metrics = exp.round_fn(state, batch, exp.round_key(rnd))
            if rnd < rounds:  # gathered while the device computes this round
                batch = exp.cohort(rnd + 1)
            record = {"round": rnd, **_to_python(metrics)}
            event = plan.ledger_record(rnd, record)
            if event is not None:
                if rnd in recorded_rounds:  # ran before, after the checkpoint we resumed from
                    event = {**event, "replay": True}
                    record["replay"] = True
                    replayed += 1
                ledger.append(event)
                ledger_records.append(event)
                record["epsilon"] = tracker.add(event)
            if rnd % eval_every == 0 or rnd == rounds:
                last_eval = exp.evaluate(state.params)
                record.update(last_eval)
            record["seconds"] = round(time.time() - t0, 6)
            metrics_file.write(json.dumps(release.metrics_line(record, release_mode)) + "\n")
            metrics_file.flush()
            metrics_lines += 1
            done = rnd
            if rnd == begin.round + 1:
                compile_s = time.time() - compile_start
            bar.update(1)
            post = {"loss": f"{record['train_loss']:.3f}" if record["train_loss"] else "nan"}
            if last_eval:
                post["acc"] = f"{last_eval['test_accuracy']:.3f}"
            if "epsilon" in record:
                post["eps"] = f"{record['epsilon']:.2f}"
            bar.set_postfix(post)
            if stop_at is not None and record.get("epsilon", 0.0) >= float(stop_at):
                if rnd % eval_every and rnd != rounds:
                    last_eval = exp.evaluate(state.params)
                stopped = True
            # The round before the last is always checkpointed too, so the audit can replay
            # the last round from the state before it (fedpriv.audit.replay).
            periodic = bool(every) and rnd % every == 0
            if (periodic or rnd == rounds - 1) and signals.received is None:
                save(rnd)
                saved_at = rnd
        bar.close()
        if signals.received is not None:
            path = save(done) if saved_at != done else ckpt.root / str(done)
            if ledger is not None:
                ledger.close()
            ckpt.close()
            raise Interrupted(signals.received, done, path)
    if ledger is not None:
        ledger.close()
    if not last_eval or done == begin.round:
        last_eval = exp.evaluate(state.params)
    if saved_at != done:
        save(done)
    ckpt.close()
    checkpoint_lib.save_final_params(run_dir, state.params)
    if exp.canaries is not None:
        write_canaries_file(
            run_dir,
            exp.canaries,
            exp.initial_params,
            state.params,
            participations(exp.sampler, exp.sampling_key, done, exp.canaries),
        )
    exp.state = state
    wall = time.time() - start_time
    executed = done - begin.round
    summary = {
        "rounds": int(done),
        "planned_rounds": rounds,
        "final": last_eval,
        "train_loss": record.get("train_loss"),
        "wall_seconds": round(wall, 3),
        "compile_seconds": round(compile_s, 3),
        "rounds_per_second": round(executed / max(wall, 1e-9), 3),
        "population": exp.data.train.num_clients,
        "data": population_stats(exp.data),
        "sampling": {"kind": exp.sampler.kind, "expected_cohort": exp.sampler.expected_size},
        "privacy": plan.describe(),
        "execution": dataclasses.asdict(exp.plan),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "versions": package_versions(),
    }
    if resume:
        summary["resumed_from"] = int(begin.round)
    if exp.canaries is not None:
        summary["canaries"] = exp.canaries.count
    if plan.is_private:
        summary["epsilon"] = _final_epsilons(plan, ledger_records)
        summary["delta"] = plan.delta
        summary["accountant"] = plan.accountant
        summary["epsilon_spent"] = tracker.epsilon if tracker.rounds else None
        summary["ledger_events"] = len(ledger_records)
        summary["replayed_rounds"] = replayed
        summary["noise_source"] = release.noise_source(cfg.get("privacy"))
        summary["guarantee"] = release.statement(summary["noise_source"])
    summary = release.summary(summary, release_mode)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
