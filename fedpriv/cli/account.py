"""``fedpriv-account``: epsilon of a training plan, or the noise that meets a target epsilon.

Examples::

    fedpriv-account --noise-multiplier 1.1 --sampling-rate 0.01 --rounds 1000 --delta 1e-5
    fedpriv-account --target-epsilon 2 --population 1000 --cohort 10 --rounds 1000
    fedpriv-account --noise-multiplier 1.0 --steps 10 --example-sampling-rate 0.05 \\
        --rounds 100 --delta 1e-6 --json
    fedpriv-account --target-epsilon 4 --strategy banded --bands 4 --min-separation 10 \\
        --rounds 100 --delta 1e-5
    fedpriv-account --target-epsilon 4 --strategy banded --bands 4 --min-separation 10 \\
        --sampling-rate 0.2 --rounds 100 --delta 1e-5

With ``--strategy`` the plan is correlated noise (``privacy=dp_ftrl``): the strategy optimised
for the rounds, a client taking part at least ``--min-separation`` rounds apart and at most
``--max-participations`` times (default ``ceil(rounds / min_separation)``), no amplification;
with ``--sampling-rate Q`` and ``--strategy banded``, cyclic Poisson sampling in
``--min-separation`` groups (``sampling=cyclic_poisson``), amplified.

Without ``--accountant`` every accountant that supports the plan is used (fixed-size cohorts:
``rdp`` only). ``--json`` prints one JSON object ``{accountant: number}`` (``null`` for an
infinite epsilon). Bad values exit with status 2 and one line naming the flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from fedpriv import accounting, expose_cpu_devices
from fedpriv.errors import ConfigError, exit_on_config_error
from fedpriv.fl.sampling import Participation
from fedpriv.privacy.mechanisms import dp_ftrl

# API argument / ledger field -> the flag that sets it.
_FLAGS = {
    "noise_multiplier": "--noise-multiplier",
    "target_epsilon": "--target-epsilon",
    "sampling_rate": "--sampling-rate",
    "population": "--population",
    "cohort_size": "--cohort",
    "rounds": "--rounds",
    "delta": "--delta",
    "accountant": "--accountant",
    "steps": "--steps",
    "example_sampling_rate": "--example-sampling-rate",
    "max_noise": "--max-noise",
    "strategy": "--strategy",
    "privacy.strategy": "--strategy",
    "privacy.bands": "--bands",
    "privacy.buffers": "--buffers",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fedpriv-account",
        description="Epsilon of a federated training plan under several accountants, or the "
        "noise multiplier that meets a target epsilon.",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--noise-multiplier", type=float, metavar="Z", help="noise std / clip norm; prints epsilon"
    )
    what.add_argument(
        "--target-epsilon",
        type=float,
        metavar="E",
        help="prints the smallest noise multiplier with epsilon <= E",
    )
    p.add_argument(
        "--sampling-rate",
        type=float,
        metavar="Q",
        help="Poisson client sampling probability in (0, 1]",
    )
    p.add_argument("--population", type=int, metavar="N", help="number of clients")
    p.add_argument(
        "--cohort",
        type=int,
        metavar="M",
        help="with --population: fixed cohorts of M clients without replacement",
    )
    p.add_argument("--rounds", type=int, required=True, metavar="T", help="number of rounds")
    p.add_argument(
        "--delta",
        type=float,
        metavar="D",
        help="target delta (default with --population: default_delta(N))",
    )
    p.add_argument(
        "--accountant",
        metavar="NAME",
        help="one of " + ", ".join(accounting.ACCOUNTANTS) + " (default: all that "
        "support the plan)",
    )
    p.add_argument(
        "--steps", type=int, metavar="K", help="example-level DP: local DP-SGD steps per round"
    )
    p.add_argument(
        "--example-sampling-rate",
        type=float,
        metavar="QE",
        help="example-level DP: Poisson rate of examples per local step",
    )
    p.add_argument(
        "--max-noise",
        type=float,
        default=accounting.DEFAULT_MAX_NOISE,
        metavar="Z",
        help="largest noise multiplier searched with --target-epsilon (default %(default)g)",
    )
    p.add_argument(
        "--strategy",
        metavar="S",
        help="correlated noise (privacy=dp_ftrl): independent, tree, banded or blt",
    )
    p.add_argument("--bands", type=int, default=4, metavar="B", help="banded: bands (4)")
    p.add_argument("--buffers", type=int, default=3, metavar="K", help="blt: buffers (3)")
    p.add_argument(
        "--min-separation",
        type=int,
        default=1,
        metavar="S",
        help="with --strategy: rounds between two participations of a client (1: any round)",
    )
    p.add_argument(
        "--max-participations",
        type=int,
        metavar="K",
        help="with --strategy: participations per client (default ceil(rounds / S))",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def _run_correlated(args: argparse.Namespace) -> dict[str, float]:
    """``--strategy``: epsilon or the calibrated noise of correlated-noise rounds."""
    if args.cohort is not None:
        raise ConfigError("--cohort", "cannot be combined with --strategy (no amplification)")
    rate = args.sampling_rate
    if rate is not None and (args.strategy != "banded" or not 0 < rate <= 1):
        raise ConfigError(
            "--sampling-rate",
            "with --strategy: only banded is amplified (cyclic Poisson sampling), at a rate "
            f"in (0, 1]; got --strategy {args.strategy} --sampling-rate {rate:g}",
        )
    rounds = args.rounds
    if rounds is None or rounds < 1:
        raise ConfigError("--rounds", f"must be an integer >= 1, got {rounds!r}")
    sep = args.min_separation
    if sep < 1 or sep > rounds:
        raise ConfigError("--min-separation", f"must be in [1, {rounds}], got {sep}")
    most = math.ceil(rounds / sep)
    k = most if args.max_participations is None else args.max_participations
    if rate is not None and k != most:
        raise ConfigError(
            "--max-participations", "is ceil(rounds / min_separation) with --sampling-rate"
        )
    if not 1 <= k <= most:
        raise ConfigError("--max-participations", f"must be in [1, {most}], got {k}")
    for flag, value, high in (("--bands", args.bands, None), ("--buffers", args.buffers, 15)):
        if value < 1 or (high is not None and value > high):
            raise ConfigError(flag, f"must be an integer in [1, {high or 'inf'}], got {value}")
    if args.delta is not None:
        delta = args.delta
    elif args.population is not None:
        delta = accounting.default_delta(args.population)
    else:
        raise ConfigError("--delta", "is required unless --population is given")
    names = list(dp_ftrl.MECHANISM.accountants)
    if args.accountant is not None:
        if args.accountant not in names:
            raise ConfigError("accountant", f"must be one of {', '.join(names)}")
        names = [args.accountant]
    plan = dp_ftrl.plan_for(
        args.strategy,
        rounds,
        Participation(sep, k),
        bands=args.bands,
        buffers=args.buffers,
        noise_multiplier=args.noise_multiplier or 1.0,
        delta=delta,
        sampling_rate=rate,
    )
    results: dict[str, float] = {}
    for name in names:
        named = dataclasses.replace(plan, accountant=name)
        if args.target_epsilon is None:
            records = dp_ftrl.MECHANISM.planned_records(named)
            results[name] = accounting.epsilon(records, delta, name)
        else:
            results[name] = dp_ftrl.calibrate(
                named, args.target_epsilon, accounting.epsilon, args.max_noise
            )
    corr = plan.correlation
    if args.json:
        print(json.dumps({k: (None if math.isinf(v) else v) for k, v in results.items()}))
        return results
    size = {"banded": f" ({args.bands} bands)", "blt": f" ({args.buffers} buffers)"}
    quantity = "epsilon" if args.target_epsilon is None else "noise_multiplier"
    head = (
        f"noise multiplier {args.noise_multiplier:g}"
        if args.target_epsilon is None
        else f"target epsilon {args.target_epsilon:g}"
    )
    scheme = (
        "no amplification"
        if rate is None
        else f"amplified: cyclic Poisson sampling at rate {rate:g} in {sep} groups"
    )
    print(
        f"{head}; {args.strategy} strategy{size.get(args.strategy, '')}, {rounds} rounds, a "
        f"client at least {sep} rounds apart and at most {k} times, delta={delta:g} "
        f"(add/remove one client; {scheme}); sensitivity {corr.run_sensitivity:.6g}"
    )
    width = max(len("accountant"), *(len(n) for n in results))
    print(f"{'accountant':<{width}}  {quantity:>16}")
    for name, value in results.items():
        print(f"{name:<{width}}  {_format(value):>16}")
    return results


def _plan(args: argparse.Namespace) -> dict[str, Any]:
    """The plan's keyword arguments for plan_events / calibrate_noise."""
    example = args.example_sampling_rate is not None or args.steps is not None
    if example and args.example_sampling_rate is None:
        raise ConfigError("--example-sampling-rate", "is required with --steps")
    if args.cohort is not None:
        if args.sampling_rate is not None:
            raise ConfigError(
                "--cohort",
                "cannot be combined with --sampling-rate (fixed cohorts or Poisson sampling)",
            )
        if args.population is None:
            raise ConfigError("--population", "is required with --cohort")
        sampling = "fixed"
    elif args.sampling_rate is not None:
        sampling = "poisson"
    elif example:
        sampling = "full"  # client sampling does not enter example-level accounting
    else:
        raise ConfigError(
            "--sampling-rate",
            "is required (or --population N --cohort M for fixed-size cohorts)",
        )
    return dict(
        sampling=sampling,
        sampling_rate=args.sampling_rate,
        population=args.population,
        cohort_size=args.cohort,
        steps=args.steps if args.steps is not None else 1,
        example_sampling_rate=args.example_sampling_rate,
        unit="example" if example else "user",
    )


def _describe(plan: dict[str, Any], rounds: int, delta: float) -> str:
    if plan["unit"] == "example":
        return (
            f"example-level DP-SGD: {plan['steps']} local steps per round, example sampling "
            f"rate {plan['example_sampling_rate']:g}, {rounds} rounds, delta={delta:g} "
            "(add/remove one example; client sampling not credited)"
        )
    if plan["sampling"] == "fixed":
        how = f"fixed cohorts of {plan['cohort_size']} of {plan['population']} clients"
        rel = "replace one client"
    else:
        how = f"Poisson client sampling q={plan['sampling_rate']:g}"
        rel = "add/remove one client"
    return f"{how}, {rounds} rounds, delta={delta:g} ({rel})"


def _format(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.6g}"


_SHOWN: set[str] = set()


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # One line per distinct warning; the accountants reset Python's once-per-location registry.
    text = str(message)
    if text not in _SHOWN:
        _SHOWN.add(text)
        print(f"fedpriv: warning: {text}", file=sys.stderr, flush=True)


def _run(args: argparse.Namespace) -> dict[str, float]:
    if args.strategy is not None:
        return _run_correlated(args)
    plan = _plan(args)
    rounds = args.rounds
    if args.delta is not None:
        delta = args.delta
    elif plan["unit"] == "example":
        raise ConfigError(
            "--delta",
            "is required for example-level privacy (its population is the number of "
            "examples, not clients)",
        )
    elif args.population is not None:
        delta = accounting.default_delta(args.population)
    else:
        raise ConfigError("--delta", "is required unless --population is given")
    # Validate the plan (and every value) once, before any accountant runs.
    noise = args.noise_multiplier if args.noise_multiplier is not None else 1.0
    events = accounting.plan_events(noise, rounds, **plan)
    supported = accounting.supported_accountants(events[:1])
    if args.accountant is not None:
        name = args.accountant
        if name not in accounting.ACCOUNTANTS:
            raise ConfigError(
                "accountant",
                f"must be one of {', '.join(accounting.ACCOUNTANTS)}, got {name!r}",
            )
        if name not in supported:
            raise ConfigError(
                "accountant",
                f"{name!r} does not support this plan ({plan['sampling']} sampling); "
                f"accountants that do: {', '.join(supported)}",
            )
        names = [name]
    else:
        names = supported
    results: dict[str, float] = {}
    for name in names:
        if args.target_epsilon is None:
            results[name] = accounting.epsilon(events, delta, name)
        else:
            results[name] = accounting.calibrate_noise(
                args.target_epsilon,
                delta,
                rounds,
                accountant=name,
                max_noise=args.max_noise,
                **plan,
            )
    if args.json:
        print(json.dumps({k: (None if math.isinf(v) else v) for k, v in results.items()}))
    else:
        quantity = "epsilon" if args.target_epsilon is None else "noise_multiplier"
        if args.target_epsilon is None:
            head = f"noise multiplier {args.noise_multiplier:g}"
        else:
            head = f"target epsilon {args.target_epsilon:g}"
        print(f"{head}; {_describe(plan, rounds, delta)}")
        width = max(len("accountant"), *(len(n) for n in results))
        print(f"{'accountant':<{width}}  {quantity:>16}")
        for name, value in results.items():
            print(f"{name:<{width}}  {_format(value):>16}")
    return results


@exit_on_config_error
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fedpriv-account``."""
    expose_cpu_devices()
    args = _parser().parse_args(argv)
    warnings.showwarning = _show_warning
    # dp_accounting logs, through absl, each RDP order it drops for lack of convergence
    # (dropping an order only loosens the bound); the table is the output that matters.
    logging.getLogger("absl").setLevel(logging.ERROR)
    try:
        _run(args)
    except ConfigError as err:
        field = err.field
        flag = _FLAGS.get(field, field)
        raise ConfigError(flag, err.message) from None
    return 0


if __name__ == "__main__":
    main()
