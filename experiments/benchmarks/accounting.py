"""Accounting speed: epsilon, calibration and round-by-round tracking at T = 10,000 rounds.

Plan: Poisson client sampling q = 0.01, noise multiplier 1.0, delta = 1e-5, user-level.
Measures, for every accountant, the seconds for one ``epsilon`` of the whole ledger (records
built as a training run writes them) and for one ``calibrate_noise`` to ``--target-epsilon``,
and the seconds ``EpsilonTracker`` spends on all 10,000 rounds (RDP backends; the PLD and PRV
trackers recompute the whole ledger each round, so they are timed over ``--tracker-rounds``
rounds only when asked).

Usage::

    python experiments/benchmarks/accounting.py [--rounds 10000] [--json]

With ``--json`` the last line is one JSON object with every number.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings

from fedpriv import accounting


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=10_000)
    p.add_argument("--sampling-rate", type=float, default=0.01)
    p.add_argument("--noise-multiplier", type=float, default=1.0)
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--target-epsilon", type=float, default=4.0)
    p.add_argument("--accountants", nargs="+", default=list(accounting.ACCOUNTANTS), metavar="NAME")
    p.add_argument(
        "--tracker-accountants", nargs="+", default=["rdp", "opacus_rdp"], metavar="NAME"
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")

    q, z, t, delta = args.sampling_rate, args.noise_multiplier, args.rounds, args.delta
    # The records a run writes, as dicts (what ledger.jsonl holds).
    ledger = [ev.to_dict() for ev in accounting.poisson_events(q, z, t, population=100_000)]
    # Warm the imports (dp_accounting, opacus/torch) so they are not timed.
    for name in args.accountants:
        accounting.epsilon(ledger[:1], delta, name)

    results: dict = {
        "plan": {"sampling_rate": q, "noise_multiplier": z, "rounds": t, "delta": delta},
        "target_epsilon": args.target_epsilon,
        "epsilon": {},
        "epsilon_s": {},
        "calibrated_noise": {},
        "calibration_s": {},
        "tracker_s": {},
        "tracker_final_epsilon": {},
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    for name in args.accountants:
        eps, secs = _timed(accounting.epsilon, ledger, delta, name)
        results["epsilon"][name] = eps
        results["epsilon_s"][name] = secs
        noise, secs = _timed(
            accounting.calibrate_noise,
            args.target_epsilon,
            delta,
            t,
            sampling="poisson",
            sampling_rate=q,
            accountant=name,
        )
        results["calibrated_noise"][name] = noise
        results["calibration_s"][name] = secs
    for name in args.tracker_accountants:
        tracker = accounting.EpsilonTracker(delta, name)
        start = time.perf_counter()
        for rec in ledger:
            tracker.add(rec)
        results["tracker_s"][name] = time.perf_counter() - start
        results["tracker_final_epsilon"][name] = tracker.epsilon

    print(f"Poisson q={q:g}, z={z:g}, T={t}, delta={delta:g}; target {args.target_epsilon:g}")
    header = f"{'accountant':<11} {'epsilon':>9} {'eps s':>8} {'calib z':>9} {'calib s':>8}"
    print(header)
    for name in args.accountants:
        print(
            f"{name:<11} {results['epsilon'][name]:>9.4f} {results['epsilon_s'][name]:>8.3f} "
            f"{results['calibrated_noise'][name]:>9.4f} {results['calibration_s'][name]:>8.3f}"
        )
    for name, secs in results["tracker_s"].items():
        per_round = 1e6 * secs / t
        print(f"EpsilonTracker[{name}] over {t} rounds: {secs:.3f} s ({per_round:.1f} us/round)")
    if args.json:
        print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
