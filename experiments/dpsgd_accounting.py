"""Epsilon of DP-SGD against training epochs, by four analyses (Abadi et al. 2016, Figure 2).

Setting of the paper: Poisson sampling rate q = 0.01 (lot size L = 0.01 N), noise multiplier
sigma = 4, delta = 1e-5; one epoch is 1/q steps. For each number of epochs the script writes
epsilon under

* ``strong_composition``: Gaussian mechanism -> amplification by Poisson subsampling ->
  advanced composition (Dwork, Rothblum, Vadhan 2010, Theorem III.3), with the split of delta
  between the steps and the theorem's slack chosen to minimise epsilon
  (:func:`fedpriv.accounting.composition.strong_composition_epsilon`);
* ``moments_accountant``: Abadi et al.'s moments accountant (log moments at integer orders,
  tail bound of their Theorem 2;
  :func:`fedpriv.accounting.composition.moments_accountant_epsilon`);
* ``rdp``: dp_accounting's RDP accountant (conversion of Canonne, Kamath, Steinke 2020);
* ``pld``: dp_accounting's privacy loss distribution accountant,

as JSON lines ``{"epochs", "steps", "accountant", "epsilon", "sampling_rate",
"noise_multiplier", "delta"}`` in ``OUT/epsilon_vs_epochs.jsonl``, and the paper's reference
values with ours at 10,000 steps in ``OUT/summary.json``. No training is involved.

    python experiments/dpsgd_accounting.py --out experiments/runs/accounting
    python experiments/dpsgd_accounting.py --out /tmp/acc --epochs 1,10,100      # quick

References:
    Abadi et al., "Deep Learning with Differential Privacy", CCS 2016, Section 3.1 (epsilon
    about 1.26 by the moments accountant and about 9.34 by strong composition at q = 0.01,
    sigma = 4, delta = 1e-5, T = 10,000) and Figure 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from fedpriv.accounting import epsilon, poisson_events
from fedpriv.accounting.composition import moments_accountant_epsilon, strong_composition_epsilon
from fedpriv.errors import ConfigError, exit_on_config_error

#: Epochs of the full figure (Abadi et al.'s Figure 2 runs to 400 epochs).
EPOCHS = (1, 2, 5, 10, 20, 30, 50, 75, 100, 125, 150, 200, 250, 300, 350, 400)
ACCOUNTANTS = ("strong_composition", "moments_accountant", "rdp", "pld")
#: Published values (Abadi et al. 2016, Section 3.1) at T = 10,000 steps.
PUBLISHED = {"moments_accountant": 1.26, "strong_composition": 9.34}
REFERENCE_STEPS = 10_000


def epsilon_of(accountant: str, q: float, sigma: float, steps: int, delta: float) -> float:
    """Epsilon of ``steps`` Poisson-subsampled Gaussian steps under one analysis."""
    if accountant == "strong_composition":
        return strong_composition_epsilon(q, sigma, steps, delta).epsilon
    if accountant == "moments_accountant":
        return moments_accountant_epsilon(q, sigma, steps, delta)
    return epsilon(poisson_events(q, sigma, steps), delta, accountant)


def _epochs(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError("--epochs", f"must be comma-separated numbers, got {text!r}") from None
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise ConfigError("--epochs", f"must be positive numbers, got {text!r}")
    return sorted(set(values))


@exit_on_config_error
def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="experiments/runs/accounting", help="output directory")
    ap.add_argument("--epochs", default=",".join(str(e) for e in EPOCHS))
    ap.add_argument("--sampling-rate", type=float, default=0.01)
    ap.add_argument("--noise-multiplier", type=float, default=4.0)
    ap.add_argument("--delta", type=float, default=1e-5)
    args = ap.parse_args(argv)
    q, sigma, delta = args.sampling_rate, args.noise_multiplier, args.delta
    if not 0.0 < q <= 1.0:
        raise ConfigError("--sampling-rate", f"must be in (0, 1], got {q}")
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ConfigError("--noise-multiplier", f"must be > 0, got {sigma}")
    if not 0.0 < delta < 1.0:
        raise ConfigError("--delta", f"must be in (0, 1), got {delta}")
    epochs = _epochs(args.epochs)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError("--out", f"cannot create {out}: {err.strerror}") from None
    steps_list = sorted({max(1, round(e / q)) for e in epochs} | {REFERENCE_STEPS})
    records = []
    t0 = time.perf_counter()
    with open(out / "epsilon_vs_epochs.jsonl", "w", encoding="utf-8") as f:
        for i, steps in enumerate(steps_list, 1):
            for acc in ACCOUNTANTS:
                rec = {
                    "epochs": steps * q,
                    "steps": steps,
                    "accountant": acc,
                    "epsilon": epsilon_of(acc, q, sigma, steps, delta),
                    "sampling_rate": q,
                    "noise_multiplier": sigma,
                    "delta": delta,
                }
                records.append(rec)
                f.write(json.dumps(rec) + "\n")
            print(
                f"[{i}/{len(steps_list)}] {steps} steps ({steps * q:g} epochs): "
                + ", ".join(f"{r['accountant']} {r['epsilon']:.3f}" for r in records[-4:]),
                file=sys.stderr,
                flush=True,
            )
    ours = {r["accountant"]: r["epsilon"] for r in records if r["steps"] == REFERENCE_STEPS}
    summary = {
        "setting": {"sampling_rate": q, "noise_multiplier": sigma, "delta": delta},
        "reference_steps": REFERENCE_STEPS,
        "published": PUBLISHED if (q, sigma, delta) == (0.01, 4.0, 1e-5) else {},
        "ours": ours,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(
        f"at {REFERENCE_STEPS} steps: "
        + ", ".join(f"{k} {v:.3f}" for k, v in ours.items())
        + (
            f" (published: moments accountant {PUBLISHED['moments_accountant']}, strong "
            f"composition {PUBLISHED['strong_composition']})"
            if summary["published"]
            else ""
        ),
        flush=True,
    )
    return records


if __name__ == "__main__":
    main()
