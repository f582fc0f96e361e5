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
    python experiments/benchmarks/secagg_cost.py --grid figure --out costs.jsonl

``--grid figure`` is the grid of the reproduced figure (0% and 30% dropout, as in Bonawitz
et al.'s Figure 8), ``--grid reduced`` a small version of it for tests. ``--out FILE`` writes
one JSON line per configuration as it finishes. ``--repeats R`` runs each configuration R
times and keeps the smallest client and server times (less noise from other processes).

References:
    Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning",
    CCS 2017, Section 7, Figures 7-8, Table 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from fedpriv.errors import ConfigError, exit_on_config_error
from fedpriv.privacy.secagg.protocol import PHASES, simulate

DEFAULT = {"clients": [100, 200, 300], "dims": [1_000, 10_000], "dropouts": [0.0, 0.1]}
FULL = {
    "clients": [100, 250, 500, 750, 1000],
    "dims": [1_000, 10_000, 100_000],
    "dropouts": [0.0, 0.1, 0.3],
}
#: The reproduced figure's grid (about 5 minutes on 2 CPU cores) and its reduced version.
FIGURE = {"clients": [50, 100, 200, 300], "dims": [1_000, 10_000, 100_000], "dropouts": [0.0, 0.3]}
REDUCED = {"clients": [10, 20, 40], "dims": [100, 1_000, 4_000], "dropouts": [0.0, 0.3]}
GRIDS = {"default": DEFAULT, "full": FULL, "figure": FIGURE, "reduced": REDUCED}


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


def repeated(n: int, d: int, dropout: float, bits: int, neighbours, repeats: int) -> dict:
    """:func:`one` run ``repeats`` times: the smallest client and server times, the rest from
    the first run (bytes do not depend on the repetition)."""
    runs = [
        one(n, d, dropout, bits, neighbours, seed=n * 7 + d + 1_000_003 * r) for r in range(repeats)
    ]
    row = dict(runs[0])
    for key in ("client_s", "server_s"):
        row[key] = min(r[key] for r in runs)
    row["repeats"] = repeats
    row["wall_s"] = round(sum(r["wall_s"] for r in runs), 2)
    row["sum_correct"] = all(r["sum_correct"] for r in runs)
    return row


@exit_on_config_error
def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="the full grid (slow: about an hour)")
    ap.add_argument("--grid", choices=sorted(GRIDS), default=None, help="a named grid")
    ap.add_argument("--bits", type=int, default=20)
    ap.add_argument("--neighbours", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", default=None, help="also write JSON lines to this file")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if not 2 <= args.bits <= 32:
        raise ConfigError("--bits", f"must be in 2..32, got {args.bits}")
    if args.neighbours is not None and args.neighbours < 2:
        raise ConfigError("--neighbours", f"must be >= 2, got {args.neighbours}")
    if args.repeats < 1:
        raise ConfigError("--repeats", f"must be >= 1, got {args.repeats}")
    if args.full and args.grid not in (None, "full"):
        raise ConfigError("--full", f"conflicts with --grid {args.grid}")
    grid = GRIDS[args.grid or ("full" if args.full else "default")]
    out = None
    if args.out:
        try:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            out = open(args.out, "w", encoding="utf-8")
        except OSError as err:
            raise ConfigError("--out", f"cannot write {args.out}: {err.strerror}") from None
    rows = []
    total = len(grid["clients"]) * len(grid["dims"]) * len(grid["dropouts"])
    if not args.json:
        print(
            f"{'n':>5} {'d':>7} {'drop':>5} {'client s':>9} {'server s':>9} "
            f"{'client KB':>10} {'server MB':>10} {'ok':>3}"
        )
    for n in grid["clients"]:
        for d in grid["dims"]:
            for dropout in grid["dropouts"]:
                row = repeated(n, d, dropout, args.bits, args.neighbours, args.repeats)
                rows.append(row)
                if out is not None:
                    out.write(json.dumps(row) + "\n")
                    out.flush()
                    print(
                        f"[{len(rows)}/{total}] n={n} d={d} dropout={dropout}: "
                        f"{row['wall_s']:.1f} s",
                        file=sys.stderr,
                        flush=True,
                    )
                if args.json:
                    print(json.dumps(row), flush=True)
                else:
                    print(
                        f"{n:>5} {d:>7} {dropout:>5} {row['client_s']:>9.4f} "
                        f"{row['server_s']:>9.4f} {row['client_kb']:>10.1f} "
                        f"{row['server_mb']:>10.2f} {'yes' if row['sum_correct'] else 'NO':>3}",
                        flush=True,
                    )
    if out is not None:
        out.close()
    return rows


if __name__ == "__main__":
    main()
