"""Added round time of the secure-aggregation fast path on the FedAvg 2NN workload.

The workload of ``fedavg_2nn.py`` (MLP 784-200-200-10, 50 examples per client, 1 local epoch,
batch 10; its helpers are imported): the same jit-compiled round with FedAvg's plain
floating-point sum and with :func:`fedpriv.privacy.secagg.fast.secure_aggregator` (quantise
with stochastic rounding, optional randomised Hadamard rotation, sum in ``Z_2^b``, dequantise).
Rounds of the two are interleaved and the ratio of median round times is reported.

    python experiments/benchmarks/secagg_overhead.py --cohort 1000 --rounds 7 [--no-rotation]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fedavg_2nn import BATCH, CLASSES, DIM, LR, N_EXAMPLES, population  # noqa: E402

from fedpriv import models  # noqa: E402
from fedpriv.fl import planner  # noqa: E402
from fedpriv.fl.aggregators import weighted_mean  # noqa: E402
from fedpriv.fl.client import make_client_update  # noqa: E402
from fedpriv.fl.round import RoundInputs, init_server_state, make_round  # noqa: E402
from fedpriv.privacy.secagg.fast import SecAggSpec, secure_aggregator, with_client_key  # noqa: E402
from fedpriv.privacy.secagg.quantize import auto_scale, padded_dim  # noqa: E402


def build(cohort: int, secure: bool, bits: int, rotation: bool, chunk_size, rounding: str = "hash"):
    model = models.build("mlp", CLASSES, hidden=(200, 200))
    params = model.init(jax.random.key(0), jnp.zeros((1, DIM)))
    apply_fn = lambda p, x: model.apply(p, x.astype(jnp.float32) * (1.0 / 255.0))  # noqa: E731
    cu = make_client_update(apply_fn, optax.sgd(LR), 1, BATCH, N_EXAMPLES)
    agg = weighted_mean()
    num_params = sum(p.size for p in jax.tree.leaves(params))
    if secure:
        dim = padded_dim(num_params)
        bound = 50.0 * 10.0  # count * update: 50 examples, updates of norm up to 10
        spec = SecAggSpec(
            mode="fast",
            bits=bits,
            rotation=rotation,
            scale=auto_scale(bits, cohort, bound, dim, rotation),
            num_params=num_params,
            dimension=dim,
            cohort=cohort,
            rounding=rounding,
        )
        agg = secure_aggregator(agg, spec, jax.random.key(1), params)
        cu = with_client_key(cu)
    sopt = optax.sgd(1.0)
    plan = planner.plan(cohort, num_params, DIM, N_EXAMPLES, chunk_size)
    fn = jax.jit(make_round(cu, agg, sopt, plan.chunk_size, planner.make_mesh(plan.num_devices)))
    return fn, init_server_state(params, sopt, agg), plan


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--bits", type=int, default=20)
    ap.add_argument("--no-rotation", action="store_true")
    ap.add_argument("--chunk-size", default="auto")
    ap.add_argument(
        "--rounding",
        default="hash",
        choices=["hash", "threefry", "rbg"],
        help="source of the stochastic-rounding uniforms",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    store = population(args.cohort)
    runs = {}
    for name, secure in (("plain", False), ("secagg", True)):
        fn, state, plan = build(
            args.cohort, secure, args.bits, not args.no_rotation, args.chunk_size, args.rounding
        )
        ids = np.arange(plan.slots) % args.cohort
        inputs = RoundInputs(*store.gather(ids, np.arange(plan.slots) < args.cohort, N_EXAMPLES))
        inputs = jax.device_put(inputs)
        t0 = time.perf_counter()
        state, m = fn(state, inputs, jax.random.key(0))
        jax.block_until_ready(state)
        runs[name] = {
            "fn": fn,
            "state": state,
            "inputs": inputs,
            "compile_s": time.perf_counter() - t0,
            "times": [],
            "plan": plan,
            "metrics": m,
        }
    for r in range(args.rounds):
        for name in ("plain", "secagg") if r % 2 == 0 else ("secagg", "plain"):
            run = runs[name]
            t0 = time.perf_counter()
            run["state"], run["metrics"] = run["fn"](
                run["state"], run["inputs"], jax.random.key(r + 1)
            )
            jax.block_until_ready(run["state"])
            run["times"].append(time.perf_counter() - t0)
    plain = statistics.median(runs["plain"]["times"])
    sec = statistics.median(runs["secagg"]["times"])
    result = {
        "cohort": args.cohort,
        "bits": args.bits,
        "rotation": not args.no_rotation,
        "rounding": args.rounding,
        "backend": jax.default_backend(),
        "chunk_size": runs["plain"]["plan"].chunk_size,
        "plain_round_s": round(plain, 4),
        "secagg_round_s": round(sec, 4),
        "added_time_pct": round(100.0 * (sec / plain - 1.0), 1),
        "sum_overflow": int(runs["secagg"]["metrics"]["secagg_sum_overflow"]),
        "compile_s": {k: round(v["compile_s"], 2) for k, v in runs.items()},
    }
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>16}: {v}")
    return result


if __name__ == "__main__":
    main()
