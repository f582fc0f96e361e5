"""Cost of user-level DP (clip + noise) per round, relative to plain FedAvg.

Same workload as ``fedavg_2nn.py`` (2NN, 50 examples per client, batch 10, 1 epoch). Both
rounds are compiled in this process and timed in interleaved pairs; the overhead is the
ratio of median round times minus one.

    python experiments/benchmarks/dp_overhead.py --cohort 1000 --pairs 7 [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import numpy as np

from fedpriv.fl.round import RoundInputs

try:
    from fedavg_2nn import N_EXAMPLES, fedpriv_round, population
except ImportError:  # run as a module from the repository root
    from experiments.benchmarks.fedavg_2nn import N_EXAMPLES, fedpriv_round, population


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", type=int, default=1000)
    ap.add_argument("--pairs", type=int, default=7)
    ap.add_argument("--chunk-size", default="auto")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    store = population(args.cohort)
    runs = {}
    for dp in (False, True):
        fn, state, plan = fedpriv_round(args.cohort, dp, args.chunk_size)
        slots = plan.slots
        ids = np.concatenate([np.arange(args.cohort), np.zeros(slots - args.cohort, int)])
        inputs = jax.device_put(
            RoundInputs(*store.gather(ids, np.arange(slots) < args.cohort, N_EXAMPLES))
        )
        state, _ = fn(state, inputs, jax.random.key(0))
        jax.block_until_ready(state)
        runs[dp] = [fn, state, inputs, []]
    for r in range(args.pairs):
        for dp in (False, True) if r % 2 == 0 else (True, False):
            fn, state, inputs, times = runs[dp]
            t0 = time.perf_counter()
            state, _ = fn(state, inputs, jax.random.key(r + 1))
            jax.block_until_ready(state)
            times.append(time.perf_counter() - t0)
            runs[dp][1] = state
    plain, private = statistics.median(runs[False][3]), statistics.median(runs[True][3])
    result = {
        "cohort": args.cohort,
        "plain_round_s": round(plain, 4),
        "dp_round_s": round(private, 4),
        "dp_overhead": round(private / plain - 1.0, 4),
        "backend": jax.default_backend(),
    }
    print(
        json.dumps(result) if args.json else "\n".join(f"{k:>14}: {v}" for k, v in result.items())
    )
    return result


if __name__ == "__main__":
    main()
