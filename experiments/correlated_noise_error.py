"""Data-free error of the correlated-noise strategies: RMSE and max error of the prefix sums
against independent noise, at equal privacy.

    python experiments/correlated_noise_error.py --rounds 100,1000,2000 --out errors.jsonl

For ``n`` rounds and ``k`` participations (``k = 1``, and ``k = 4`` and ``10``, a client
every ``b = n // k`` rounds), each strategy of ``privacy=dp_ftrl`` is built as a run builds it
(:func:`fedpriv.privacy.mechanisms.dp_ftrl.build_correlation`) and its decoder ``B`` (with
``A = B C`` the prefix sums) gives the error of the noised prefix sums with unit noise per
unit of sensitivity, i.e. at equal privacy (the noise of every strategy is its noise
multiplier times its sensitivity ``s``):

* RMSE ``= s ||B||_F / sqrt(n)``, the root mean squared error over the ``n`` prefix sums;
* max error ``= s max_t ||B_t||``, the root squared error of the worst prefix;
* round RMSE ``= s sqrt(mean_t ||(C^-1)_t||^2)``, the noise each round adds to the model
  (what the clients train from changes by this much from one round to the next).

Beside them, the published closed forms: independent noise has RMSE ``sqrt(k (n + 1) / 2)``
and max error ``sqrt(k n)``; for one participation, every factorisation's max error is at
least ``(2 + ln((2n + 1) / 3)) / pi`` (Matousek, Nikolov and Talwar 2020) and the optimal
one's at most ``1 + ln(n) / pi`` (Mathias 1993; McMahan et al. 2024, Eq. 2.8), and the
square-root factorisation of Fichtenberger, Henzinger and Upadhyay 2023 (jax_privacy's
``toeplitz.optimal_max_error_strategy_coefs``) lies between them. Tree aggregation is shown
with the plain and the efficient (Honaker) estimator; the mechanism runs the efficient one.
Its sensitivity for ``k > 1`` is an upper bound (Algorithm 4 of Choquette-Choo et al. 2023).

Writes one JSON line per (n, k, strategy) to ``--out`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax_privacy.matrix_factorization import toeplitz
from tqdm import tqdm

from fedpriv.errors import ConfigError, exit_on_config_error
from fedpriv.fl.sampling import Participation
from fedpriv.privacy import tree_aggregation
from fedpriv.privacy.mechanisms import dp_ftrl

#: Participations per client: once, and k times a client every n // k rounds (10: the
#: setting of the accuracy sweep, 100 rounds in 10 groups).
PARTICIPATIONS = (1, 4, 10)
#: The most bands of the banded strategy (at most the separation, as its sensitivity needs).
MAX_BANDS = 32
BUFFERS = 3


def _toeplitz_errors(coefficients: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The squared error with unit noise of every prefix sum, ``||B_t||^2`` (B = A C^-1), and
    of every round, ``||(C^-1)_t||^2``."""
    with jax.enable_x64():
        coef = jnp.asarray(coefficients, jnp.float64)
        prefix = np.asarray(toeplitz.per_query_error(strategy_coef=coef), np.float64)
        inverse = np.asarray(toeplitz.inverse_coef(coef), np.float64)
    return prefix, np.cumsum(inverse**2)


def strategies(
    n: int, participation: Participation
) -> dict[str, tuple[float, np.ndarray, np.ndarray]]:
    """``name -> (sensitivity, squared error of each prefix sum with unit noise, of each
    round's noise)``."""
    b = participation.min_separation
    out = {}
    for name, bands in (("independent", 1), ("banded", min(MAX_BANDS, b)), ("blt", 1)):
        corr = dp_ftrl.build_correlation(name, n, participation, bands, BUFFERS)
        label = f"banded ({bands} bands)" if name == "banded" else name
        label = f"blt ({BUFFERS} buffers)" if name == "blt" else label
        out[label] = (corr.run_sensitivity, *_toeplitz_errors(corr.coefficients))
    tree = dp_ftrl.build_correlation("tree", n, participation, 1, 1)
    for estimator in tree_aggregation.ESTIMATORS:
        decoder = tree_aggregation.decoder(n, estimator)
        rounds = np.diff(decoder, axis=0, prepend=0.0)
        out[f"tree ({estimator})"] = (
            tree.run_sensitivity,
            np.sum(decoder**2, axis=1),
            np.sum(rounds**2, axis=1),
        )
    if participation.max_participations == 1:
        sqrt_coef = np.asarray(toeplitz.optimal_max_error_strategy_coefs(n), np.float64)
        out["square root (optimal Toeplitz)"] = (
            float(np.linalg.norm(sqrt_coef)),
            *_toeplitz_errors(sqrt_coef),
        )
    return out


def published(n: int, k: int) -> dict[str, float]:
    """The closed forms this table is checked against."""
    forms = {
        "independent_rmse": math.sqrt(k * (n + 1) / 2),
        "independent_max_error": math.sqrt(k * n),
    }
    if k == 1:
        forms["optimal_max_error_lower_bound"] = (2 + math.log((2 * n + 1) / 3)) / math.pi
        forms["optimal_max_error_upper_bound"] = 1 + math.log(n) / math.pi
        forms["tree_sensitivity"] = math.sqrt(tree_aggregation.levels(n))
    return forms


def rows(rounds: list[int]) -> list[dict]:
    out = []
    cases = [(n, k) for n in rounds for k in PARTICIPATIONS if k <= n]
    for n, k in tqdm(cases, desc="strategies", unit="case", file=sys.stderr):
        participation = Participation(n // k if k > 1 else n, k)
        t0 = time.perf_counter()
        built = strategies(n, participation)
        base_sens, base_err, _ = built["independent"]
        base_rmse = base_sens * math.sqrt(float(np.mean(base_err)))
        for name, (sens, err, per_round) in built.items():
            rmse = sens * math.sqrt(float(np.mean(err)))
            out.append(
                {
                    "rounds": n,
                    "participations": k,
                    "min_separation": participation.min_separation,
                    "strategy": name,
                    "sensitivity": sens,
                    "rmse": rmse,
                    "max_error": sens * math.sqrt(float(np.max(err))),
                    "rmse_vs_independent": rmse / base_rmse,
                    "round_rmse": sens * math.sqrt(float(np.mean(per_round))),
                    "published": published(n, k),
                    "seconds": round(time.perf_counter() - t0, 2),
                }
            )
    return out


def markdown(table: list[dict]) -> str:
    lines = [
        "| n | k | strategy | sensitivity | RMSE | max error | RMSE / independent | round RMSE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        lines.append(
            f"| {r['rounds']} | {r['participations']} | {r['strategy']} | "
            f"{r['sensitivity']:.4g} | {r['rmse']:.4g} | {r['max_error']:.4g} | "
            f"{r['rmse_vs_independent']:.3f} | {r['round_rmse']:.4g} |"
        )
    return "\n".join(lines)


def _rounds(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 2:
        raise ConfigError(
            "--rounds", f"must be a comma-separated list of integers >= 2, got {text!r}"
        )
    return values


@exit_on_config_error
def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", default="100,1000,2000", help="numbers of rounds (100,1000,2000)")
    ap.add_argument("--out", default=None, help="JSON lines file to write")
    args = ap.parse_args(argv)
    rounds = _rounds(args.rounds)
    table = rows(rounds)
    if args.out:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in table), encoding="utf-8")
        tmp.replace(path)
    print(markdown(table))
    return table


if __name__ == "__main__":
    main()
