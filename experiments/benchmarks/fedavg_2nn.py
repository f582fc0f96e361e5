"""Client updates per second on the FedAvg 2NN workload, against a plain PyTorch loop.

Workload (McMahan et al. 2017's MNIST 2NN): MLP 784-200-200-10 (ReLU), every client holds
50 examples, 1 local epoch of SGD with batch 10 (5 steps), lr 0.1; cohort C per round; with
``--dp``, user-level DP-FedAvg with clip 1.0 and noise multiplier 1.0. Inputs are random
uint8 pixels scaled to [0, 1] inside the model, as MNIST is stored (throughput does not
depend on the pixel values).

fedpriv and a sequential PyTorch loop over the same clients run in this one process (the
PyTorch rounds first), and the ratio of their median client updates per second is reported.
With ``--devices N`` the cohort is sharded over N XLA devices; on a CPU these are one device
per core (``XLA_FLAGS=--xla_force_host_platform_device_count=N``, which
:func:`fedpriv.expose_cpu_devices` sets at the start of :func:`main`).

    python experiments/benchmarks/fedavg_2nn.py --cohort 1000 --rounds 5 [--dp] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedpriv import expose_cpu_devices, models
from fedpriv.data import PopulationStore
from fedpriv.fl import lowrank, planner
from fedpriv.fl.aggregators import weighted_mean
from fedpriv.fl.client import make_client_update
from fedpriv.fl.round import RoundInputs, init_server_state, make_round
from fedpriv.privacy import dp_fedavg

N_EXAMPLES, BATCH, LR, DIM, CLASSES = 50, 10, 0.1, 784, 10


def population(num_clients: int, seed: int = 0) -> PopulationStore:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (num_clients * N_EXAMPLES, DIM), dtype=np.uint8)
    y = rng.integers(0, CLASSES, num_clients * N_EXAMPLES).astype(np.int32)
    client_of = np.repeat(np.arange(num_clients), N_EXAMPLES)
    return PopulationStore.from_assignment(x, y, client_of, CLASSES, "synthetic-mnist")


def fedpriv_round(cohort: int, dp: bool, chunk_size, devices=1, path="direct", aggregator=None):
    """``(jitted round, server state, execution plan)`` of the workload; ``aggregator``
    (a function of the model's parameters) replaces DP-FedAvg's or FedAvg's."""
    model = models.build("mlp", CLASSES, hidden=(200, 200))
    params = model.init(jax.random.key(0), jnp.zeros((1, DIM)))
    apply_fn = lambda p, x: model.apply(p, x.astype(jnp.float32) * (1.0 / 255.0))
    cu = make_client_update(apply_fn, optax.sgd(LR), 1, BATCH, N_EXAMPLES)
    agg = dp_fedavg(1.0, 1.0, float(cohort)) if dp else weighted_mean()
    if aggregator is not None:
        agg = aggregator(params)
    sopt = optax.sgd(1.0)
    num_params = sum(p.size for p in jax.tree.leaves(params))
    plan = planner.plan(cohort, num_params, DIM, N_EXAMPLES, chunk_size, num_devices=devices)
    local_sums = None
    if path == "lowrank":
        per_device = plan.chunk_size * plan.num_chunks
        dims = [tuple(v["kernel"].shape) for v in params["params"].values()]
        k = lowrank.lowrank_chunk(per_device, N_EXAMPLES, BATCH, 1, dims)
        plan = dataclasses.replace(plan, chunk_size=k, num_chunks=-(-per_device // k))
        local_sums = lowrank.make_lowrank_cohort_sums(
            lowrank.dense_layers(params),
            LR,
            1,
            BATCH,
            N_EXAMPLES,
            agg,
            k,
            preprocess=lambda x: x.astype(jnp.float32) * (1.0 / 255.0),
        )
    mesh = planner.make_mesh(plan.num_devices)
    fn = jax.jit(make_round(cu, agg, sopt, plan.chunk_size, mesh, local_sums=local_sums))
    return fn, init_server_state(params, sopt, agg), plan


def torch_loop(store: PopulationStore, ids: np.ndarray, dp: bool, net, xs, ys):
    """McMahan et al.'s FedAvg written the plain way: a Python loop over clients."""
    import torch

    global_state = {k: v.clone() for k, v in net.state_dict().items()}
    total = {k: torch.zeros_like(v) for k, v in global_state.items()}
    loss_fn = torch.nn.CrossEntropyLoss()
    for cid in ids:
        net.load_state_dict(global_state)
        opt = torch.optim.SGD(net.parameters(), lr=LR)
        x, y = xs[cid], ys[cid]
        perm = torch.randperm(N_EXAMPLES, device=x.device)
        for lo in range(0, N_EXAMPLES, BATCH):
            idx = perm[lo : lo + BATCH]
            opt.zero_grad()
            loss_fn(net(x[idx]), y[idx]).backward()
            opt.step()
        with torch.no_grad():
            delta = {k: v - global_state[k] for k, v in net.state_dict().items()}
            if dp:
                norm = torch.sqrt(sum((d**2).sum() for d in delta.values()))
                scale = min(1.0, 1.0 / max(float(norm), 1e-12))
                delta = {k: d * scale for k, d in delta.items()}
            for k in total:
                total[k] += delta[k] if dp else N_EXAMPLES * delta[k]
    with torch.no_grad():
        denom = len(ids) if dp else N_EXAMPLES * len(ids)
        new_state = {}
        for k, v in global_state.items():
            noise = torch.randn_like(v) if dp else 0.0
            new_state[k] = v + (total[k] + noise) / denom
        net.load_state_dict(new_state)


def main(argv=None) -> dict:
    expose_cpu_devices()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dp", action="store_true")
    ap.add_argument("--chunk-size", default="auto")
    ap.add_argument("--devices", default="auto", help="devices to shard the cohort over, or auto")
    ap.add_argument(
        "--path",
        default="direct",
        choices=["direct", "lowrank"],
        help="client execution path (see fedpriv.fl.lowrank)",
    )
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch baseline")
    ap.add_argument("--torch-device", default="cpu", help="device of the PyTorch loop")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    store = population(args.cohort)
    ids = np.arange(args.cohort)
    inputs = RoundInputs(*store.gather(ids, np.ones(args.cohort, bool), N_EXAMPLES))
    fn, state, plan = fedpriv_round(args.cohort, args.dp, args.chunk_size, args.devices, args.path)
    pad = plan.slots - args.cohort
    if pad:
        inputs = RoundInputs(
            *store.gather(
                np.concatenate([ids, np.zeros(pad, int)]),
                np.arange(plan.slots) < args.cohort,
                N_EXAMPLES,
            )
        )
    dev_inputs = jax.device_put(inputs)
    t0 = time.perf_counter()
    compiled = fn.lower(state, dev_inputs, jax.random.key(0)).compile()
    compile_s = time.perf_counter() - t0
    state, m = compiled(state, dev_inputs, jax.random.key(0))
    jax.block_until_ready(state)
    fn = compiled

    net = xs = ys = None
    if not args.no_torch:
        import torch

        torch.manual_seed(0)
        net = torch.nn.Sequential(
            torch.nn.Linear(DIM, 200),
            torch.nn.ReLU(),
            torch.nn.Linear(200, 200),
            torch.nn.ReLU(),
            torch.nn.Linear(200, CLASSES),
        )
        xs = torch.from_numpy(store.x.reshape(args.cohort, N_EXAMPLES, DIM)).float() / 255.0
        ys = torch.from_numpy(store.y.reshape(args.cohort, N_EXAMPLES).astype(np.int64))
        torch_loop(store, ids[: min(20, args.cohort)], args.dp, net, xs, ys)  # warm-up

    # The PyTorch rounds run first and the fedpriv rounds after them (not interleaved): XLA's
    # CPU worker threads keep spinning briefly after each computation, which would slow a
    # PyTorch round started right after one and flatter the ratio.
    fed_times, torch_times = [], []
    if net is not None:
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            torch_loop(store, ids, args.dp, net, xs, ys)
            if args.torch_device.startswith("cuda"):
                torch.cuda.synchronize()
            torch_times.append(time.perf_counter() - t0)
    for r in range(args.rounds):
        t0 = time.perf_counter()
        state, m = fn(state, dev_inputs, jax.random.key(r + 1))
        jax.block_until_ready(state)
        fed_times.append(time.perf_counter() - t0)

    fed = args.cohort / statistics.median(fed_times)
    result = {
        "cohort": args.cohort,
        "dp": args.dp,
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "torch_device": None if args.no_torch else args.torch_device,
        "chunk_size": plan.chunk_size,
        "devices": plan.num_devices,
        "path": args.path,
        "num_chunks": plan.num_chunks,
        "fedpriv_cu_per_s": round(fed, 1),
        "torch_loop_cu_per_s": None,
        "ratio": None,
        "compile_s": round(compile_s, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if torch_times:
        tl = args.cohort / statistics.median(torch_times)
        result["torch_loop_cu_per_s"] = round(tl, 1)
        result["ratio"] = round(fed / tl, 2)
    if not args.json:
        for k, v in result.items():
            print(f"{k:>22}: {v}")
    print(json.dumps(result) if args.json else "", file=sys.stdout)
    return result


if __name__ == "__main__":
    main()
