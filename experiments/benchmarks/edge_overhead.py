"""Cost of edge-device modelling per round (dropout + heterogeneous steps), relative to the
plain synchronous round.

Same workload as ``fedavg_2nn.py`` (2NN, 50 examples per client, batch 10, 1 epoch). The
edge round drops each sampled client with probability 0.3 (``availability=bernoulli``) and
gives every client a work fraction uniform on [0.2, 1] (``compute=uniform``): the dropout
mask and the step budgets are computed inside the jit-compiled round and masked steps still
run (one compiled program for every client), so the time should stay close to the plain
round's. Both rounds are compiled in this process and timed in interleaved pairs after
compilation; the overhead is the ratio of median round times minus one.

    python experiments/benchmarks/edge_overhead.py --cohort 1000 --pairs 7 [--dp] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedpriv import models
from fedpriv.fl import edge as edge_lib
from fedpriv.fl import planner
from fedpriv.fl.aggregators import weighted_mean
from fedpriv.fl.client import make_client_update
from fedpriv.fl.round import RoundInputs, init_server_state, make_round
from fedpriv.privacy import dp_fedavg

try:
    from fedavg_2nn import BATCH, CLASSES, DIM, LR, N_EXAMPLES, population
except ImportError:  # run as a module from the repository root
    from experiments.benchmarks.fedavg_2nn import (
        BATCH,
        CLASSES,
        DIM,
        LR,
        N_EXAMPLES,
        population,
    )


def edge_round(cohort: int, edge: bool, dp: bool, chunk_size, dropout: float, low: float):
    """The jitted 2NN round, plain or with dropout and heterogeneous steps."""
    model = models.build("mlp", CLASSES, hidden=(200, 200))
    params = model.init(jax.random.key(0), jnp.zeros((1, DIM)))
    apply_fn = lambda p, x: model.apply(p, x.astype(jnp.float32) * (1.0 / 255.0))
    work = edge_lib.uniform_work(low) if edge else None
    cu = make_client_update(apply_fn, optax.sgd(LR), 1, BATCH, N_EXAMPLES, work_fraction=work)
    agg = dp_fedavg(1.0, 1.0, float(cohort)) if dp else weighted_mean()
    sopt = optax.sgd(1.0)
    num_params = sum(p.size for p in jax.tree.leaves(params))
    plan = planner.plan(cohort, num_params, DIM, N_EXAMPLES, chunk_size)
    spec = edge_lib.EdgeSpec(available=edge_lib.bernoulli(dropout)) if edge else None
    fn = jax.jit(make_round(cu, agg, sopt, plan.chunk_size, edge=spec))
    return fn, init_server_state(params, sopt, agg), plan


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", type=int, default=1000)
    ap.add_argument("--pairs", type=int, default=7)
    ap.add_argument("--dropout", type=float, default=0.3)
    ap.add_argument("--low-fraction", type=float, default=0.2)
    ap.add_argument("--chunk-size", default="auto")
    ap.add_argument("--dp", action="store_true", help="DP-FedAvg aggregation in both rounds")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    store = population(args.cohort)
    runs = {}
    participated, steps = [], []
    for edge in (False, True):
        fn, state, plan = edge_round(
            args.cohort, edge, args.dp, args.chunk_size, args.dropout, args.low_fraction
        )
        slots = plan.slots
        ids = np.concatenate([np.arange(args.cohort), np.zeros(slots - args.cohort, int)])
        inputs = jax.device_put(
            RoundInputs(*store.gather(ids, np.arange(slots) < args.cohort, N_EXAMPLES))
        )
        state, _ = fn(state, inputs, jax.random.key(0))  # compile
        jax.block_until_ready(state)
        runs[edge] = [fn, state, inputs, []]
    for r in range(args.pairs):
        for edge in (False, True) if r % 2 == 0 else (True, False):
            fn, state, inputs, times = runs[edge]
            t0 = time.perf_counter()
            state, metrics = fn(state, inputs, jax.random.key(r + 1))
            jax.block_until_ready(state)
            times.append(time.perf_counter() - t0)
            runs[edge][1] = state
            if edge:
                participated.append(int(metrics["participated"]))
                steps.append(float(metrics["local_steps"]))
    plain, edged = statistics.median(runs[False][3]), statistics.median(runs[True][3])
    result = {
        "cohort": args.cohort,
        "dropout": args.dropout,
        "low_fraction": args.low_fraction,
        "dp": args.dp,
        "plain_round_s": round(plain, 4),
        "edge_round_s": round(edged, 4),
        "ratio": round(edged / plain, 4),
        "edge_overhead": round(edged / plain - 1.0, 4),
        "mean_participated": round(float(np.mean(participated)), 1),
        "mean_local_steps": round(float(np.mean(steps)), 3),
        "pairs": args.pairs,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "backend": jax.default_backend(),
    }
    print(
        json.dumps(result) if args.json else "\n".join(f"{k:>18}: {v}" for k, v in result.items())
    )
    return result


if __name__ == "__main__":
    main()
