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
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fedpriv import data as data_lib
from fedpriv import models
from fedpriv.fl import planner
from fedpriv.fl.client import make_client_optimizer
from fedpriv.fl.round import RoundInputs, ServerState, init_server_state, make_round
from fedpriv.fl.sampling import build_sampler
from fedpriv.fl.server import server_optimizer
from fedpriv.privacy.ledger import LedgerWriter
from fedpriv.privacy.plan import PrivacyPlan, build_plan

# Purposes of the keys split from the root seed (DESIGN.md, rule 5).
KEY_DATA, KEY_INIT, KEY_SAMPLING, KEY_ROUND = 0, 1, 2, 3


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

    def sampling_key(self, rnd: int) -> jax.Array:
        return jax.random.fold_in(purpose_key(self.cfg["seed"], KEY_SAMPLING), rnd)

    def round_key(self, rnd: int) -> jax.Array:
        return jax.random.fold_in(purpose_key(self.cfg["seed"], KEY_ROUND), rnd)

    def cohort(self, rnd: int) -> RoundInputs:
        """Samples and gathers round ``rnd``'s cohort, padded to the plan's slots, and starts
        its transfer to the device(s) (asynchronous: it overlaps the running round)."""
        ids, mask = self.sampler.sample(self.sampling_key(rnd))
        multiple = self.plan.slot_multiple
        slots = max(self.plan.slots, math.ceil(len(ids) / multiple) * multiple)
        pad = slots - len(ids)
        ids = np.concatenate([ids, np.zeros(pad, ids.dtype)])
        mask = np.concatenate([mask, np.zeros(pad, bool)])
        batch = RoundInputs(*self.data.train.gather(ids, mask, self.n_cap))
        if self.mesh is None:
            return jax.device_put(batch)
        from jax.sharding import NamedSharding, PartitionSpec

        return jax.device_put(batch, NamedSharding(self.mesh, PartitionSpec("clients")))

    def evaluate(self, params: Any) -> dict[str, float]:
        return evaluate(self.model, params, self.data.test_x, self.data.test_y)


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
    data = data_lib.load(cfg["dataset"], data_rng)
    model_cfg = {k: v for k, v in dict(cfg["model"]).items() if k != "name"}
    model = models.build(cfg["model"]["name"], data.num_classes, **model_cfg)
    params = model.init(purpose_key(seed, KEY_INIT), jnp.zeros((1,) + data.example_shape))

    sizes = data.train.client_sizes
    max_examples = cfg["client"].get("max_examples")
    n_cap = int(sizes.max() if max_examples is None else min(sizes.max(), max_examples))
    samp = cfg["sampling"]
    sampler = build_sampler(
        samp["kind"], data.train.num_clients, samp.get("cohort_size"), samp.get("rate")
    )
    client_opt = make_client_optimizer(
        cfg["client"]["optimizer"],
        float(cfg["client"]["lr"]),
        float(cfg["client"].get("momentum") or 0.0),
    )
    privacy = build_plan(
        cfg.get("privacy") or {"name": "none"}, sampler, sizes, cfg["client"], int(cfg["rounds"])
    )
    client_update = privacy.client_update(
        model.apply,
        client_opt,
        int(cfg["client"]["epochs"]),
        int(cfg["client"]["batch_size"]),
        n_cap,
    )
    alg = cfg["algorithm"]
    server_opt = server_optimizer(
        alg["name"],
        float(alg["server_lr"]),
        float(alg.get("server_momentum") or 0.9),
        float(alg.get("beta1") or 0.9),
        float(alg.get("beta2") or 0.99),
        float(alg.get("tau") or 1e-3),
    )
    aggregator = privacy.aggregator(alg.get("weighting", "count"))
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
    population_bytes = data.train.x.nbytes + data.train.y.nbytes
    warning = planner.memory_warning(
        planner.estimate_peak_bytes(exec_plan, n_cap, example_bytes, population_bytes),
        planner.available_bytes(),
    )
    if warning:
        print(f"fedpriv: warning: {warning}", file=sys.stderr, flush=True)
    round_fn = jax.jit(
        make_round(client_update, aggregator, server_opt, exec_plan.chunk_size, mesh)
    )
    state = init_server_state(params, server_opt, aggregator)
    return Experiment(
        cfg, data, model, sampler, exec_plan, n_cap, round_fn, state, privacy, mesh=mesh
    )


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


def run(cfg: Mapping[str, Any], run_dir: str | os.PathLike, progress: bool = True) -> dict:
    """Trains as configured and writes the run directory.

    Writes ``metrics.jsonl`` (a line per round, with ``epsilon`` spent so far under DP),
    ``ledger.jsonl`` (one DP event per round, appended by the privacy plan that ran; absent
    without DP) and ``summary.json``.

    Args:
        cfg: a validated configuration (plain dicts).
        run_dir: the run directory (Hydra's output directory).
        progress: show a progress bar on stderr.

    Returns:
        The summary dict (also written to ``summary.json``).
    """
    from tqdm.auto import tqdm

    from fedpriv import accounting

    start = time.time()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    exp = build(cfg)
    plan = exp.privacy
    rounds, eval_every = int(cfg["rounds"]), int(cfg["eval_every"])
    stop_at = (cfg.get("privacy") or {}).get("stop_at_epsilon")
    tracker = accounting.EpsilonTracker(plan.delta, plan.accountant) if plan.is_private else None
    ledger = LedgerWriter(run_dir) if plan.is_private else None
    ledger_records: list[dict] = []
    state = exp.state
    last_eval: dict[str, float] = {}
    compile_start = time.time()
    compile_s = 0.0
    record: dict[str, Any] = {}
    bar = tqdm(
        total=rounds,
        desc="fedpriv",
        unit="round",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    with open(run_dir / "metrics.jsonl", "w") as metrics_file:
        batch = exp.cohort(1)
        for rnd in range(1, rounds + 1):
            t0 = time.time()
            state, metrics = exp.round_fn(state, batch, exp.round_key(rnd))
            if rnd < rounds:  # gathered while the device computes this round
                batch = exp.cohort(rnd + 1)
            record = {"round": rnd, **_to_python(metrics)}
            event = plan.ledger_record(rnd, record)
            if event is not None:
                ledger.append(event)
                ledger_records.append(event)
                record["epsilon"] = tracker.add(event)
            if rnd % eval_every == 0 or rnd == rounds:
                last_eval = exp.evaluate(state.params)
                record.update(last_eval)
            record["seconds"] = round(time.time() - t0, 6)
            metrics_file.write(json.dumps(record) + "\n")
            metrics_file.flush()
            if rnd == 1:
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
                break
        bar.close()
    if ledger is not None:
        ledger.close()
    exp.state = state
    wall = time.time() - start
    summary = {
        "rounds": int(record.get("round", 0)),
        "planned_rounds": rounds,
        "final": last_eval,
        "train_loss": record.get("train_loss"),
        "wall_seconds": round(wall, 3),
        "compile_seconds": round(compile_s, 3),
        "rounds_per_second": round(rounds / max(wall, 1e-9), 3),
        "population": exp.data.train.num_clients,
        "sampling": {"kind": exp.sampler.kind, "expected_cohort": exp.sampler.expected_size},
        "privacy": plan.describe(),
        "execution": dataclasses.asdict(exp.plan),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "versions": package_versions(),
    }
    if plan.is_private:
        summary["epsilon"] = _final_epsilons(plan, ledger_records)
        summary["delta"] = plan.delta
        summary["accountant"] = plan.accountant
        summary["epsilon_spent"] = record.get("epsilon")
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
