"""Costs of the secure-aggregation protocol, in the shape of Bonawitz et al. 2017 (Figures 7-8,
Table 1): client and server computation time and bytes sent, against the number of clients
and the vector length, with and without dropout.

Each configuration runs the whole protocol (:mod:`fedpriv.privacy.secagg.protocol`) once on
random inputs in ``Z_2^bits``; clients run one after another in this process, so the client
time is the mean per client and the server time is the server's own work. Dropouts happen
after ShareKeys, before the masked input (the case whose recovery costs the server most).

    python experiments/benchmarks/secagg_cost.py              # default grid, a few minutes
    python experiments/benchmarks/secagg_cost.py --full       # 100..1000 clients, 10^3..10^5
    python experiments/benchmarks/secagg_cost.py --neighbours 40   # SecAgg+ graph
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from fedpriv.privacy.secagg.protocol import PHASES, simulate

DEFAULT = {"clients": [100, 200, 300], "dims": [1_000, 10_000], "dropouts": [0.0, 0.1]}
FULL = {
    "clients": [100, 250, 500, 750, 1000],
    "dims": [1_000, 10_000, 100_000],
    "dropouts": [0.0, 0.1, 0.3],
}


def one(n: int, d: int, dropout: float, bits: int, neighbours: int | None, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 2**bits, (n, d), dtype=np.uint64).astype(np.uint32)
    t0 = time.perf_counter()
    k = n - 1 if neighbours is None else min(neighbours, n - 1)
    result = simulate(x, bits, rng, threshold=k // 2 + 1, neighbours=neighbours, dropout=dropout)
    wall = time.perf_counter() - t0
    ok = bool(np.array_equal(result.total, x[result.included].astype(np.uint64).sum(0) % 2**bits))
    return {
        "clients": n,
        "dim": d,
        "dropout": dropout,
        "neighbours": neighbours,
        "bits": bits,
        "client_s": round(sum(result.client_seconds.values()), 5),
        "server_s": round(sum(result.server_seconds.values()), 5),
        "client_kb": round(sum(result.client_bytes.values()) / 1024, 2),
        "server_mb": round(sum(result.server_bytes.values()) / 2**20, 3),
        "client_s_by_phase": {p: round(result.client_seconds[p], 5) for p in PHASES},
        "server_s_by_phase": {p: round(result.server_seconds[p], 5) for p in PHASES},
        "wall_s": round(wall, 2),
        "sum_correct": ok,
    }


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="the full grid (slow: about an hour)")
    ap.add_argument("--bits", type=int, default=20)
    ap.add_argument("--neighbours", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    grid = FULL if args.full else DEFAULT
    rows = []
    if not args.json:
        print(
            f"{'n':>5} {'d':>7} {'drop':>5} {'client s':>9} {'server s':>9} "
            f"{'client KB':>10} {'server MB':>10} {'ok':>3}"
        )
    for n in grid["clients"]:
        for d in grid["dims"]:
            for dropout in grid["dropouts"]:
                row = one(n, d, dropout, args.bits, args.neighbours, seed=n * 7 + d)
                rows.append(row)
                if args.json:
                    print(json.dumps(row), flush=True)
                else:
                    print(
                        f"{n:>5} {d:>7} {dropout:>5} {row['client_s']:>9.4f} "
                        f"{row['server_s']:>9.4f} {row['client_kb']:>10.1f} "
                        f"{row['server_mb']:>10.2f} {'yes' if row['sum_correct'] else 'NO':>3}",
                        flush=True,
                    )
    return rows


if __name__ == "__main__":
    main()
