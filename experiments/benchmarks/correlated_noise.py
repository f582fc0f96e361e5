"""Cost of correlated noise (privacy=dp_ftrl) per round, relative to DP-FedAvg.

Same workload as ``fedavg_2nn.py`` (2NN 784-200-200-10, 50 examples per client, batch 10, 1
epoch, cohort C). DP-FedAvg (clip 1, noise multiplier 1) and the correlated-noise rounds
(tree aggregation over 100 rounds, banded with 4 bands and BLT with 3 buffers optimised for
100 rounds, a client every 10 rounds) are compiled in this process. Their rounds are timed
interleaved, each pair in alternating order, and the overhead of each is the ratio of
median round times minus one. The noise state's size (model copies held in the server
state) is reported beside it.

    python experiments/benchmarks/correlated_noise.py --cohort 1000 --pairs 7 [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import jax
import numpy as np

from fedpriv.fl.round import RoundInputs
from fedpriv.fl.sampling import Participation
from fedpriv.privacy.mechanisms import dp_ftrl

try:
    from fedavg_2nn import N_EXAMPLES, fedpriv_round, population
except ImportError:  # run as a module from the repository root
    from experiments.benchmarks.fedavg_2nn import N_EXAMPLES, fedpriv_round, population

PLANNED_ROUNDS, SEPARATION = 100, 10
VARIANTS = {
    "dp_fedavg": None,
    "tree": ("tree", 1, 1),
    "banded_4": ("banded", 4, 1),
    "blt_3": ("blt", 1, 3),
}


def _aggregator(strategy: str, bands: int, buffers: int, cohort: int):
    plan = dp_ftrl.plan_for(
        strategy,
        PLANNED_ROUNDS,
        Participation(SEPARATION, PLANNED_ROUNDS // SEPARATION),
        bands=bands,
        buffers=buffers,
        noise_multiplier=1.0,
        delta=1e-5,
    )
    plan = dataclasses.replace(plan, expected_cohort=float(cohort))
    return lambda params: dp_ftrl.MECHANISM.aggregator(plan, "count", None, params)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", type=int, default=1000)
    ap.add_argument("--pairs", type=int, default=7)
    ap.add_argument("--chunk-size", default="auto")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.cohort < 1 or args.pairs < 1:
        ap.error("--cohort and --pairs must be >= 1")

    store = population(args.cohort)
    runs = {}
    for name, spec in VARIANTS.items():
        agg = None if spec is None else _aggregator(*spec, args.cohort)
        fn, state, plan = fedpriv_round(args.cohort, True, args.chunk_size, aggregator=agg)
        slots = plan.slots
        ids = np.concatenate([np.arange(args.cohort), np.zeros(slots - args.cohort, int)])
        inputs = jax.device_put(
            RoundInputs(*store.gather(ids, np.arange(slots) < args.cohort, N_EXAMPLES))
        )
        state, _ = fn(state, inputs, jax.random.key(0))
        jax.block_until_ready(state)
        params_bytes = sum(int(x.nbytes) for x in jax.tree.leaves(state.params))
        state_bytes = sum(int(x.nbytes) for x in jax.tree.leaves(state.agg_state))
        runs[name] = [fn, state, inputs, [], state_bytes / params_bytes]
    names = list(VARIANTS)
    for r in range(args.pairs):
        for name in names if r % 2 == 0 else names[::-1]:
            fn, state, inputs, times, _ = runs[name]
            t0 = time.perf_counter()
            state, _ = fn(state, inputs, jax.random.key(r + 1))
            jax.block_until_ready(state)
            times.append(time.perf_counter() - t0)
            runs[name][1] = state
    base = statistics.median(runs["dp_fedavg"][3])
    result = {"cohort": args.cohort, "backend": jax.default_backend()}
    for name in names:
        median = statistics.median(runs[name][3])
        result[f"{name}_round_s"] = round(median, 4)
        if name != "dp_fedavg":
            result[f"{name}_overhead"] = round(median / base - 1.0, 4)
            result[f"{name}_state_model_copies"] = round(runs[name][4], 2)
    print(
        json.dumps(result) if args.json else "\n".join(f"{k:>28}: {v}" for k, v in result.items())
    )
    return result


if __name__ == "__main__":
    main()
