"""Writes the notebooks of this folder (the tutorial and the figures) from the cell sources
below.

    python notebooks/generate.py          # rewrite every notebook
    python notebooks/generate.py --check  # exit 1 if a notebook differs from its source here

Each notebook reads the runs of one figure from ``FEDPRIV_RUNS`` and writes its PNG to
``FEDPRIV_FIGURE`` (defaults: the full-size runs under ``experiments/runs/`` and the committed
figure under ``experiments/figures/``); ``python experiments/figures.py NAME`` sets both. The
notebooks only read files and draw: every number comes from :mod:`fedpriv.report.curves`
and the accountants. They are stored without outputs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent

SETUP = """\
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
"""

#: The last lines of every figure's drawing cell: lay out, write the PNG, say where.
SAVE = """\
fig.tight_layout()
FIGURE.parent.mkdir(parents=True, exist_ok=True)
fig.savefig(FIGURE, dpi=130)
print(f"wrote {FIGURE}")"""

ACCOUNTING = [
    (
        "markdown",
        """\
# DP-SGD: epsilon against epochs (Abadi et al. 2016, Figure 2)

Poisson sampling rate q = 0.01, noise multiplier sigma = 4, delta = 1e-5; one epoch is
1/q = 100 steps. Four analyses of the same mechanism:

- **strong composition**: the Gaussian mechanism's exact (epsilon, delta) profile (Balle and
  Wang 2018), amplified by Poisson subsampling (Li et al. 2012; Balle et al. 2018), composed
  with the advanced composition theorem of Dwork, Rothblum and Vadhan 2010 (Theorem III.3);
  delta is split between the steps and the theorem's slack so as to minimise epsilon;
- **moments accountant**: Abadi et al.'s log moments at integer orders with their tail bound
  (Theorem 2);
- **RDP** and **PLD**: dp_accounting's accountants (the ones fedpriv's runs use).

The paper reports epsilon = 1.26 (moments accountant) and 9.34 (strong composition) at
10,000 steps (100 epochs). Produced by `python experiments/figures.py accounting`.""",
    ),
    (
        "code",
        "import json\n"
        + SETUP
        + """
from fedpriv.report.curves import epsilon_at, read_records, series

RUNS = Path(os.environ.get("FEDPRIV_RUNS", "experiments/runs/accounting"))
FIGURE = Path(os.environ.get("FEDPRIV_FIGURE", "experiments/figures/dpsgd_accounting.png"))
records = read_records(RUNS / "epsilon_vs_epochs.jsonl")
summary = json.loads((RUNS / "summary.json").read_text())
setting = summary["setting"]
lines = series(records, "epochs", "epsilon", by=["accountant"])""",
    ),
    (
        "code",
        """\
steps = summary["reference_steps"]
published = summary["published"]
print(f"epsilon at {steps} steps ({steps * setting['sampling_rate']:g} epochs):")
print("| analysis | ours | Abadi et al. 2016 |")
print("|---|---|---|")
for name in ("strong_composition", "moments_accountant", "rdp", "pld"):
    ours = epsilon_at(records, name, steps)
    print(f"| {name} | {ours:.3f} | {published.get(name, '-')} |")""",
    ),
    (
        "code",
        """\
labels = {
    "strong_composition": "strong composition (DRV 2010)",
    "moments_accountant": "moments accountant (Abadi et al.)",
    "rdp": "RDP (dp_accounting)",
    "pld": "PLD (dp_accounting)",
}
fig, ax = plt.subplots(figsize=(6.5, 4.4))
for (name,), (xs, ys) in lines.items():
    ax.plot(xs, ys, marker="o", markersize=3, label=labels.get(name, name))
epochs_ref = steps * setting["sampling_rate"]
for name, value in published.items():
    ax.plot([epochs_ref], [value], marker="*", markersize=12, color="black", linestyle="none")
    ax.annotate(
        f"paper: {value}",
        (epochs_ref, value),
        textcoords="offset points",
        xytext=(6, -12 if name == "moments_accountant" else 4),
        fontsize=8,
    )
ax.set_yscale("log")
ax.set_xlabel("epochs (1 epoch = 1/q steps)")
ax.set_ylabel("epsilon (log scale)")
ax.set_title(
    f"DP-SGD, q = {setting['sampling_rate']:g}, sigma = {setting['noise_multiplier']:g}, "
    f"delta = {setting['delta']:g}"
)
ax.grid(True, which="both", alpha=0.3)
ax.legend(fontsize=8)
"""
        + SAVE,
    ),
]

FEDAVG = [
    (
        "markdown",
        """\
# FedAvg against FedSGD (McMahan et al. 2017, Table 2 and Figure 2)

Test accuracy per round of FedAvg with E local epochs of mini-batch SGD (batch B) against
FedSGD (E = 1, B = inf: one full-batch gradient step per client and round), 100 clients,
C = 0.1 (10 clients per round), IID and pathological non-IID (2 shards of one label per
client) partitions. Each line is the best learning rate of the setting's grid; the table
gives the rounds until the test accuracy first reaches the target and the speed-up over
FedSGD. Produced by `python experiments/figures.py fedavg`.""",
    ),
    (
        "code",
        "import json\n"
        + SETUP
        + """
from fedpriv.report import read_runs
from fedpriv.report.curves import fedavg_table, format_rounds

RUNS = Path(os.environ.get("FEDPRIV_RUNS", "experiments/runs/fedavg"))
FIGURE = Path(os.environ.get("FEDPRIV_FIGURE", "experiments/figures/fedavg_vs_fedsgd_digits.png"))
record = json.loads((RUNS / "figure.json").read_text())
runs = read_runs([RUNS])
rows = fedavg_table(runs, record["targets"])
dataset = record["dataset"]
models = [m for m in ("mlp", "cnn") if any(r["model"] == m for r in rows)]
partitions = [p for p in ("IID", "non-IID") if any(r["partition"] == p for r in rows)]
MODEL_NAMES = {"mlp": "2NN", "cnn": "CNN"}""",
    ),
    (
        "code",
        """\
print(f"Rounds to the target accuracy ({dataset}); speed-up over FedSGD in parentheses")
print("| model | E | B | u | " + " | ".join(f"{p} lr | {p} rounds" for p in partitions) + " |")
print("|---|---|---|---|" + "---|---|" * len(partitions))
for model in models:
    settings = []
    for r in rows:
        if r["model"] == model and (r["E"], r["B"]) not in settings:
            settings.append((r["E"], r["B"]))
    for e, b in settings:
        cells = []
        for p in partitions:
            match = [
                r
                for r in rows
                if r["model"] == model and r["partition"] == p and (r["E"], r["B"]) == (e, b)
            ]
            cells += [str(match[0]["lr"]), format_rounds(match[0])] if match else ["-", "-"]
        u = next(r["u"] for r in rows if r["model"] == model and (r["E"], r["B"]) == (e, b))
        target = record["targets"][model]
        print(
            f"| {MODEL_NAMES.get(model, model)} ({target:.0%}) | {e} | {b} | {u} | "
            + " | ".join(cells)
            + " |"
        )""",
    ),
    (
        "code",
        """\
fig, axes = plt.subplots(
    len(models),
    len(partitions),
    figsize=(5.2 * len(partitions), 3.9 * len(models)),
    squeeze=False,
)
source = "digits (8x8, scikit-learn), not MNIST" if dataset == "digits" else dataset.upper()
# One colour per setting across all panels; FedSGD in black.
palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
labels = [r["setting"] for r in sorted(rows, key=lambda r: r["u"]) if r["setting"] != "FedSGD"]
colour = {s: palette[i % len(palette)] for i, s in enumerate(dict.fromkeys(labels))}
colour["FedSGD"] = "black"
for i, model in enumerate(models):
    target = record["targets"][model]
    for j, part in enumerate(partitions):
        ax = axes[i][j]
        for r in rows:
            if r["model"] != model or r["partition"] != part:
                continue
            xs, ys = zip(*r["curve"])
            style = {"alpha": 0.85, "linewidth": 1.1, "color": colour[r["setting"]]}
            if r["setting"] == "FedSGD":
                style.update(linewidth=1.6)
            ax.plot(xs, ys, label=f"{r['setting']} (u={r['u']:g}): {format_rounds(r)}", **style)
        ax.axhline(target, color="grey", linestyle="--", linewidth=0.8)
        ax.set_ylim(max(0.0, target - 0.35), 1.0)
        ax.set_title(f"{MODEL_NAMES.get(model, model)}, {part}", fontsize=10)
        ax.set_xlabel("communication round")
        ax.set_ylabel("test accuracy")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, title=f"rounds to {target:.0%}", title_fontsize=7, loc="lower right")
fig.suptitle(f"FedAvg vs FedSGD, 100 clients, C = 0.1, on {source}", fontsize=11)
"""
        + SAVE,
    ),
]

SECAGG = [
    (
        "markdown",
        """\
# Secure aggregation cost (Bonawitz et al. 2017, Figures 7-8)

fedpriv's implementation of the protocol (X25519, HKDF-SHA256, AES-CTR masks, AES-GCM
Shamir shares, dropout recovery), all clients simulated in one process on the CPU: mean
computation time and bytes sent per client, and the server's time, against the number of
clients and the vector length, with no dropout and with 30% of the clients dropping after
sharing their keys (the server then reconstructs their masks). Produced by
`python experiments/figures.py secagg`.""",
    ),
    (
        "code",
        SETUP
        + """
from fedpriv.report.curves import linear_fit, read_records, series

RUNS = Path(os.environ.get("FEDPRIV_RUNS", "experiments/runs/secagg"))
FIGURE = Path(os.environ.get("FEDPRIV_FIGURE", "experiments/figures/secagg_cost.png"))
records = read_records(RUNS / "secagg_cost.jsonl")
dims = sorted({r["dim"] for r in records})
clients = sorted({r["clients"] for r in records})
dropouts = sorted({r["dropout"] for r in records})
bits = records[0]["bits"]""",
    ),
    (
        "code",
        """\
print("| clients | dim | dropout | client s | server s | client KB | server MB | expansion |")
print("|---|---|---|---|---|---|---|---|")
for r in sorted(records, key=lambda r: (r["clients"], r["dim"], r["dropout"])):
    plain_kb = r["dim"] * bits / 8 / 1024
    print(
        f"| {r['clients']} | {r['dim']} | {r['dropout']:.0%} | {r['client_s']:.4f} | "
        f"{r['server_s']:.4f} | {r['client_kb']:.1f} | {r['server_mb']:.2f} | "
        f"{r['client_kb'] / plain_kb:.2f}x |"
    )
for n in clients:
    xs, ys = series(records, "dim", "client_kb", where={"clients": n, "dropout": 0.0})[()]
    slope, _, r2 = linear_fit(xs, ys)
    print(
        f"{n} clients: client KB = {slope * 1024:.3f} bytes per coordinate x dim + const "
        f"(R^2 = {r2:.6f}; {bits} bits are {bits / 8:g} bytes)"
    )""",
    ),
    (
        "code",
        """\
fig, axes = plt.subplots(2, 2, figsize=(10, 7.4))
styles = {d: ("-" if d == 0 else "--") for d in dropouts}
panels = [
    (axes[0][0], "clients", "client_s", "dim", "client time (s, mean per client)"),
    (axes[0][1], "clients", "server_s", "dim", "server time (s)"),
    (axes[1][0], "dim", "client_kb", "clients", "client bytes sent (KB)"),
    (axes[1][1], "dim", "server_s", "clients", "server time (s)"),
]
colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
for ax, x, y, by, ylabel in panels:
    keys = dims if by == "dim" else clients
    for k, key in enumerate(keys):
        for d in dropouts:
            line = series(records, x, y, where={by: key, "dropout": d}).get(())
            if not line:
                continue
            name = f"d = {key:,}" if by == "dim" else f"n = {key}"
            ax.plot(
                *line,
                marker="o",
                markersize=3,
                color=colours[k % len(colours)],
                linestyle=styles[d],
                label=name if d == dropouts[0] else None,
            )
    ax.set_xlabel("clients" if x == "clients" else "vector length (coordinates)")
    if y != "client_kb":  # bytes: linear axes, where linear growth is a straight line
        ax.set_yscale("log")
        if x == "dim":
            ax.set_xscale("log")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
fig.suptitle(
    f"Secure aggregation (Bonawitz et al. 2017), {bits}-bit inputs, one CPU process "
    "(solid: no dropout, dashed: 30% dropout)",
    fontsize=10,
)
"""
        + SAVE,
    ),
]

DP_COHORTS = [
    (
        "markdown",
        """\
# DP-FedAvg: accuracy against epsilon for several cohort sizes (McMahan et al. 2018)

User-level DP-FedAvg on the 1,000 digits clients (2NN), Poisson sampling at rate q (expected
cohort qN), noise calibrated to each target epsilon over 100 rounds (RDP, delta 1e-4), mean
and standard deviation over seeds. McMahan et al. (2018, Figure 3) and Geyer et al. (2017)
find that at a fixed population larger cohorts buy accuracy at equal epsilon: the noise on
the averaged update is z C / (qN), and the z needed for a budget grows more slowly than q
once q is small. Produced by `python experiments/figures.py dp_cohorts` (a sweep of
`fedpriv-train -m experiment=paper_dp_cohorts`; `fedpriv-report` reads the same runs).""",
    ),
    (
        "code",
        SETUP
        + """
from fedpriv.report import group_runs, read_runs, swept_keys, table_rows
from fedpriv.report.tables import to_markdown

RUNS = Path(os.environ.get("FEDPRIV_RUNS", "experiments/runs/dp_cohorts"))
FIGURE = Path(os.environ.get("FEDPRIV_FIGURE", "experiments/figures/dp_cohorts.png"))
runs = read_runs([RUNS / "sweep"])
keys = swept_keys(runs)
groups = group_runs(runs, keys)
print(to_markdown(table_rows(groups), keys))""",
    ),
    (
        "code",
        """\
population = next(r.summary["population"] for r in runs if r.summary)
by_rate = {}
for g in groups:
    eps, _ = g.stat("epsilon")
    acc, acc_sd = g.stat("accuracy")
    if eps is not None and acc is not None:
        by_rate.setdefault(float(g.setting["sampling.rate"]), []).append((eps, acc, acc_sd))
fig, ax = plt.subplots(figsize=(6.5, 4.2))
for rate, pts in sorted(by_rate.items()):
    pts.sort()
    ax.errorbar(
        [p[0] for p in pts],
        [p[1] for p in pts],
        yerr=[p[2] for p in pts],
        marker="o",
        capsize=3,
        label=f"q = {rate:g} (expected cohort {rate * population:.0f})",
    )
ax.set_xscale("log")
eps_ticks = sorted({round(p[0], 2) for pts in by_rate.values() for p in pts})
ax.set_xticks(eps_ticks)
ax.set_xticklabels([f"{e:.3g}" for e in eps_ticks])
ax.minorticks_off()
ax.set_xlabel("epsilon spent (log scale)")
ax.set_ylabel("test accuracy (mean ± std over seeds)")
ax.set_title(f"DP-FedAvg on digits, {population} clients: larger cohorts at equal epsilon")
ax.grid(True, alpha=0.3)
ax.legend(fontsize=8)
"""
        + SAVE,
    ),
]

DISTRIBUTED = [
    (
        "markdown",
        """\
# Distributed DP against central DP, by bits per coordinate (Kairouz et al. 2021)

Fixed cohorts of 100 of the 1,000 digits clients (logistic regression, 100 rounds), every run
calibrated to epsilon 4 (RDP, delta 1e-4). Distributed DP: each client clips its update,
rotates it (randomised Hadamard), scales it to integers, rounds stochastically, adds discrete
Gaussian or Skellam noise and takes part in a secure sum modulo 2^bits; the server sees only
the sum. Central DP: the server adds Gaussian noise to the plain sum. Kairouz, Liu, Steinke
(2021, Figure 1) and Agarwal, Kairouz, Liu (2021) find that the distributed mechanisms match
central DP once there are enough bits (about 16 to 18 for their models): with few bits the
scale must be small so that the sum does not wrap, rounding inflates the sensitivity and more
noise is needed for the same epsilon. The right panel shows the noise multiplier each run was
calibrated to. Dashed: central DP with the noise that the general sampling-without-replacement
bound (Wang et al. 2019, Theorem 9; the one the distributed mechanisms are accounted with)
needs for epsilon 4, where distributed DP must converge; dp_accounting's tighter Gaussian-only
bound lets central DP use less. Produced by `python experiments/figures.py distributed`.""",
    ),
    (
        "code",
        SETUP
        + """
from fedpriv.report import group_runs, read_runs

RUNS = Path(os.environ.get("FEDPRIV_RUNS", "experiments/runs/distributed"))
FIGURE = Path(os.environ.get("FEDPRIV_FIGURE", "experiments/figures/distributed_dp.png"))


def finished(name):
    runs = read_runs([RUNS / name])
    for r in runs:
        if r.status != "finished":
            print(f"skipped ({r.status}): {r.path} {r.reason}")
    return [r for r in runs if r.status == "finished"]


def noise_multiplier(run):
    return run.summary["privacy"]["noise_multiplier"]


def mean_sd(values):
    values = [float(v) for v in values]
    m = sum(values) / len(values)
    sd = (sum((v - m) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return m, sd


distributed = {}
for g in group_runs(finished("distributed"), ["privacy.noise", "secagg.bits"]):
    kind, bits = g.setting["privacy.noise"], int(g.setting["secagg.bits"])
    distributed.setdefault(kind, []).append(
        (bits, *g.stat("accuracy"), *mean_sd(noise_multiplier(r) for r in g.finished))
    )
central = finished("central")
general = finished("central_general_bound")
c_acc, c_sd = mean_sd(r.accuracy for r in central)
c_z = noise_multiplier(central[0])
g_acc, g_sd = mean_sd(r.accuracy for r in general)
g_z = noise_multiplier(general[0])
print("| mechanism | bits | accuracy (mean ± std) | noise multiplier |")
print("|---|---|---|---|")
for kind, rows in sorted(distributed.items()):
    rows.sort()
    for bits, acc, sd, z, _ in rows:
        print(f"| {kind} | {bits} | {acc:.3f} ± {sd:.3f} | {z:.3f} |")
print(f"| central Gaussian | float | {c_acc:.3f} ± {c_sd:.3f} | {c_z:.3f} |")
print(f"| central, general sampling bound | float | {g_acc:.3f} ± {g_sd:.3f} | {g_z:.3f} |")""",
    ),
    (
        "code",
        """\
fig, (ax, az) = plt.subplots(1, 2, figsize=(11, 4.2))
colours = {"discrete_gaussian": "tab:blue", "skellam": "tab:orange"}
labels = {"discrete_gaussian": "distributed discrete Gaussian", "skellam": "Skellam"}
all_bits = sorted({b for rows in distributed.values() for b, *_ in rows})
for kind, rows in sorted(distributed.items()):
    bits = [r[0] for r in rows]
    ax.errorbar(bits, [r[1] for r in rows], yerr=[r[2] for r in rows], marker="o", capsize=3,
                color=colours.get(kind), label=labels.get(kind, kind))
    az.plot(bits, [r[3] for r in rows], marker="o", color=colours.get(kind),
            label=labels.get(kind, kind))
for a, value, text in ((ax, c_acc, "central DP"), (az, c_z, "central DP")):
    a.axhline(value, color="black", linewidth=1.2, label=text)
ax.axhspan(c_acc - c_sd, c_acc + c_sd, color="black", alpha=0.08)
ax.axhline(g_acc, color="black", linestyle="--", linewidth=1,
           label="central, noise of the general sampling bound")
az.axhline(g_z, color="black", linestyle="--", linewidth=1,
           label="central, general sampling bound")
plan = central[0].summary["privacy"]
ax.set_title(f"test accuracy at epsilon {plan['target_epsilon']:g} "
             f"({plan['expected_cohort']:.0f} of {plan['population']} clients per round)",
             fontsize=10)
ax.set_ylabel("test accuracy (mean ± std over seeds)")
az.set_title("noise multiplier calibrated to the same epsilon", fontsize=10)
az.set_ylabel("noise multiplier z")
for a in (ax, az):
    a.set_xlabel("bits per coordinate (modulus 2^bits)")
    a.set_xticks(all_bits)
    a.grid(True, alpha=0.3)
    a.legend(fontsize=7)
fig.suptitle("Distributed DP with secure aggregation against central DP "
             "(Kairouz et al. 2021, Fig. 1), digits", fontsize=11)
"""
        + SAVE,
    ),
]

EMPIRICAL = [
    (
        "markdown",
        """\
# Empirical against analytical epsilon (Andrew et al. 2023)

DP-FedAvg on 500 digits clients (2NN, Poisson q = 0.2, 20 rounds, delta 1e-4) with canary
clients in the population, at several noise multipliers. For each run: the analytical epsilon
of its ledger (RDP and PLD), Andrew et al.'s one-shot estimate from the cosines of the final
model delta with inserted and unseen canaries, and a membership-inference lower bound with
Clopper-Pearson confidence (Jagielski et al. 2020). The paper's finding: when only the final
model is released, the empirical estimate lies well below the analytical bound (which assumes
every round's aggregate is seen), and both fall as noise grows. A lower bound above the
analytical epsilon would mean the accounting is wrong. Produced by
`python experiments/figures.py empirical`.""",
    ),
    (
        "code",
        SETUP
        + """
from fedpriv.audit import empirical_audit
from fedpriv.report import read_runs

RUNS = Path(os.environ.get("FEDPRIV_RUNS", "experiments/runs/empirical"))
FIGURE = Path(os.environ.get("FEDPRIV_FIGURE", "experiments/figures/empirical_privacy.png"))
rows = []
for run in read_runs([RUNS / "sweep"]):
    if run.status != "finished":
        print(f"skipped ({run.status}): {run.path}")
        continue
    found = empirical_audit(run.path, run.summary["delta"])
    rows.append(
        {
            "z": float(run.value("privacy.noise_multiplier")),
            "rdp": run.summary["epsilon"]["rdp"],
            "pld": run.summary["epsilon"]["pld"],
            "estimate": found["epsilon_estimate"],
            "lower": found["epsilon_lower_bound"],
            "canaries": found["num_inserted"],
        }
    )
rows.sort(key=lambda r: r["z"])
print("| z | epsilon (RDP) | epsilon (PLD) | empirical estimate | lower bound (95%) |")
print("|---|---|---|---|---|")
for r in rows:
    cells = [f"{r['z']:g}", *(f"{r[k]:.2f}" for k in ("rdp", "pld", "estimate", "lower"))]
    print("| " + " | ".join(cells) + " |")""",
    ),
    (
        "code",
        """\
z = [r["z"] for r in rows]
fig, ax = plt.subplots(figsize=(6.5, 4.2))
ax.plot(z, [r["rdp"] for r in rows], "-o", label="analytical (RDP)")
ax.plot(z, [r["pld"] for r in rows], "--o", label="analytical (PLD)")
ax.plot(z, [r["estimate"] for r in rows], "-s", label="empirical estimate (final model)")
ax.plot(z, [r["lower"] for r in rows], ":v", label="empirical lower bound, 95%")
ax.set_xscale("log")
ax.set_yscale("symlog", linthresh=0.1)
ax.set_ylim(bottom=0)
ax.set_xticks(z)
ax.set_xticklabels([f"{v:g}" for v in z])
ax.minorticks_off()
ax.set_xlabel("noise multiplier z")
ax.set_ylabel("epsilon at the run's delta (symlog)")
ax.set_title(f"Canary audit, {rows[0]['canaries']} canaries per run")
ax.grid(True, alpha=0.3)
ax.legend(fontsize=8)
"""
        + SAVE,
    ),
]

CORRELATED = [
    (
        "markdown",
        """\
# Correlated noise against DP-FedAvg (DP-FTRL, banded MF, BLTs)

**Prefix-sum error, no data.** For n rounds and k participations of a client (k = 1, and
k = 4 and 10, a client every n // k rounds), each strategy of `privacy=dp_ftrl` as a run builds it:
the RMSE and max error of the noised prefix sums at equal privacy (the noise of every
strategy is its noise multiplier times its sensitivity), beside the closed forms they must
meet: independent noise has RMSE sqrt(k (n + 1) / 2) and max error sqrt(k n), and with one
participation no factorisation's max error is below (2 + ln((2n + 1) / 3)) / pi
(Matousek, Nikolov and Talwar 2020) while the optimal one's is at most 1 + ln(n) / pi
(Mathias 1993; McMahan et al. 2024, Eq. 2.8).

**Accuracy against epsilon.** The 1,000 digits clients (2NN), 100 rounds, 50 clients a
round, every run calibrated to its epsilon (PLD, delta 1e-4), 3 seeds: DP-FedAvg with
Poisson sampling (q = 0.05, amplified: what it may claim only when the sampling can be
trusted), DP-FedAvg with the fixed cohorts a deployment really runs (any client in any
round, no amplification: independent noise with the sensitivity of every round), and the
correlated strategies under cyclic participation (10 groups, a client every 10 rounds, at
most 10 times): independent noise, tree aggregation (efficient estimator), banded MF (10
bands) and BLT (3 buffers), and banded MF amplified by Poisson sampling inside the round's
group (sampling=cyclic_poisson, rate 0.5: the same expected cohort of 50). Produced by
`python experiments/figures.py correlated`.""",
    ),
    (
        "code",
        "import json\n"
        + SETUP
        + """
from fedpriv.report import group_runs, read_runs

RUNS = Path(os.environ.get("FEDPRIV_RUNS", "experiments/runs/correlated"))
FIGURE = Path(os.environ.get("FEDPRIV_FIGURE", "experiments/figures/correlated_noise.png"))
errors = [json.loads(x) for x in (RUNS / "errors.jsonl").read_text().splitlines() if x]
print("| n | k | strategy | sensitivity | RMSE | max error | RMSE / independent | round RMSE |")
print("|---|---|---|---|---|---|---|---|")
for r in errors:
    print(
        f"| {r['rounds']} | {r['participations']} | {r['strategy']} | {r['sensitivity']:.4g} | "
        f"{r['rmse']:.4g} | {r['max_error']:.4g} | {r['rmse_vs_independent']:.3f} | "
        f"{r['round_rmse']:.4g} |"
    )
print()
print("closed forms (published):")
seen = set()
for r in errors:
    key = (r["rounds"], r["participations"])
    if key not in seen:
        seen.add(key)
        forms = ", ".join(f"{k} {v:.4g}" for k, v in r["published"].items())
        print(f"  n {key[0]}, k {key[1]}: {forms}")""",
    ),
    (
        "code",
        """\
LABELS = {
    "poisson": "DP-FedAvg, Poisson (amplified)",
    "fixed": "DP-FedAvg, fixed cohorts (no amplification)",
    "amplified": "cyclic Poisson, banded (amplified)",
}
curves = {}
for sweep in ("poisson", "fixed", "correlated", "amplified"):
    runs = read_runs([RUNS / sweep])
    keys = ["privacy.target_epsilon"] + (["privacy.strategy"] if sweep == "correlated" else [])
    for g in group_runs(runs, keys):
        eps, _ = g.stat("epsilon")
        acc, sd = g.stat("accuracy")
        if eps is None or acc is None:
            continue
        label = LABELS.get(sweep) or f"cyclic, {g.setting['privacy.strategy']}"
        curves.setdefault(label, []).append((eps, acc, sd or 0.0, len(g.finished)))
budgets = sorted(curves[LABELS["poisson"]])
print("| mechanism | " + " | ".join(f"eps {p[0]:.3g}" for p in budgets) + " |")
print("|---|" + "---|" * len(budgets))
for label, pts in curves.items():
    pts.sort()
    print(f"| {label} | " + " | ".join(f"{a:.3f} ± {s:.3f} ({n})" for _, a, s, n in pts) + " |")
print()
for eps, acc, _, _ in sorted(curves[LABELS["poisson"]]):
    at = {
        lab: a for lab, pts in curves.items() for e, a, _, _ in pts if abs(e - eps) < 0.05 * eps
    }
    best = max(at, key=at.get)
    beats = [lab for lab, a in at.items() if lab.startswith("cyclic") and a > acc] or "none"
    print(f"epsilon {eps:.3g}: best {best} ({at[best]:.3f}); above Poisson DP-FedAvg: {beats}")""",
    ),
    (
        "code",
        """\
fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.4))
for label, pts in curves.items():
    style = "--" if label.startswith("DP-FedAvg") else "-"
    xs, ys, sds = ([p[i] for p in pts] for i in range(3))
    left.errorbar(xs, ys, yerr=sds, fmt=style + "o", capsize=3, label=label)
left.set_xscale("log")
ticks = sorted({round(p[0], 2) for pts in curves.values() for p in pts})
left.set_xticks(ticks)
left.set_xticklabels([f"{e:.3g}" for e in ticks])
left.minorticks_off()
left.set_xlabel("epsilon spent (log scale)")
left.set_ylabel("test accuracy (mean ± std over seeds)")
left.set_title("digits, 1,000 clients, 100 rounds, 50 a round")
left.grid(True, alpha=0.3)
left.legend(fontsize=7)
several = max(r["participations"] for r in errors)
# banded MF's band count follows the separation (min(32, n // k)): one curve for all n
ratio = {
    (
        "banded (min(32, n / k) bands)" if r["strategy"].startswith("banded") else r["strategy"],
        r["rounds"],
    ): r["rmse_vs_independent"]
    for r in errors
    if r["participations"] == several
}
ns = sorted({n for _, n in ratio})
for name in dict.fromkeys(name for name, _ in ratio):
    have = [n for n in ns if (name, n) in ratio]
    right.plot(have, [ratio[(name, n)] for n in have], "-o", label=name)
right.set_xscale("log")
right.set_xticks(ns)
right.set_xticklabels([str(n) for n in ns])
right.minorticks_off()
right.set_xlabel("rounds n")
right.set_ylabel("prefix-sum RMSE / independent noise's")
right.set_title(f"data-free error at equal privacy, k = {several} participations")
right.grid(True, alpha=0.3)
right.legend(fontsize=7)
"""
        + SAVE,
    ),
]

FEDPROX = [
    (
        "markdown",
        """\
# FedAvg against FedProx with stragglers (Li et al. 2020, Figure 1)

Multinomial logistic regression on Synthetic(alpha, beta) with alpha = beta in {0, 0.5, 1}
(30 devices, 10 per round, E = 20 epochs of SGD with batch 10 and learning rate 0.01), with
0%, 50% and 90% of the sampled devices stragglers that finish only a random part of their
local work. FedAvg drops the stragglers; FedProx aggregates their partial work, with mu = 0
and mu = 1. The curves are the global model's training loss on all devices' data, the
objective the paper plots. The paper's claims: with many stragglers FedAvg is unstable or
slow on the heterogeneous sets, keeping partial work helps, and the proximal term (mu > 0)
stabilises training further. Without stragglers FedAvg and FedProx with mu = 0 are the same
algorithm: their curves coincide (bit for bit). Produced by
`python experiments/figures.py fedprox` (sweeps of
`fedpriv-train -m experiment=paper_fedprox_synthetic`).""",
    ),
    (
        "code",
        SETUP
        + """
from fedpriv.report import read_runs
from fedpriv.report.curves import read_records, series

RUNS = Path(os.environ.get("FEDPRIV_RUNS", "experiments/runs/fedprox"))
FIGURE = Path(os.environ.get("FEDPRIV_FIGURE", "experiments/figures/fedprox_synthetic.png"))
LABELS = {
    "fedavg": "FedAvg (stragglers dropped)",
    "fedprox_mu0": "FedProx, mu = 0 (partial work kept)",
    "fedprox_mu1": "FedProx, mu = 1",
}
curves = {}
for run in read_runs([RUNS]):
    if run.status != "finished":
        print(f"skipped ({run.status}): {run.path}")
        continue
    method = run.path.parent.name
    key = (float(run.value("compute.fraction")), float(run.value("heterogeneity")), method)
    xs, ys = series(read_records(run.path / "metrics.jsonl"), "round", "global_train_loss")[()]
    curves[key] = (xs, ys)
stragglers = sorted({k[0] for k in curves})
sets = sorted({k[1] for k in curves})
methods = [m for m in LABELS if any(k[2] == m for k in curves)]""",
    ),
    (
        "code",
        """\
last = 10
print(f"Global training loss, mean of the last {last} rounds (max over the second half)")
print("| stragglers | Synthetic | " + " | ".join(LABELS[m] for m in methods) + " |")
print("|---|---|" + "---|" * len(methods))
for s in stragglers:
    for h in sets:
        cells = []
        for m in methods:
            if (s, h, m) not in curves:
                cells.append("-")
                continue
            ys = curves[(s, h, m)][1]
            cells.append(f"{sum(ys[-last:]) / len(ys[-last:]):.3f} ({max(ys[len(ys) // 2:]):.3f})")
        print(f"| {s:.0%} | ({h:g},{h:g}) | " + " | ".join(cells) + " |")""",
    ),
    (
        "code",
        """\
fig, axes = plt.subplots(
    len(stragglers), len(sets), figsize=(4.2 * len(sets), 3.2 * len(stragglers)), squeeze=False
)
colours = {"fedavg": "tab:blue", "fedprox_mu0": "tab:orange", "fedprox_mu1": "tab:green"}
top = min(6.0, 1.05 * max(max(ys) for _, ys in curves.values()))
for i, s in enumerate(stragglers):
    for j, h in enumerate(sets):
        ax = axes[i][j]
        for m in methods:
            if (s, h, m) in curves:
                ax.plot(*curves[(s, h, m)], label=LABELS[m], color=colours[m], linewidth=1.1)
        ax.set_title(f"Synthetic({h:g},{h:g}), {s:.0%} stragglers", fontsize=9)
        ax.set_xlabel("communication round")
        ax.set_ylabel("training loss")
        ax.set_ylim(0, top)
        ax.grid(True, alpha=0.3)
axes[0][0].legend(fontsize=7)
fig.suptitle("FedAvg vs FedProx under systems heterogeneity (Li et al. 2020, Fig. 1)", fontsize=11)
"""
        + SAVE,
    ),
]

#: The tutorial: a DP-FedAvg run from Python, its epsilon from the mechanism's own
#: accounting, checked against dp_accounting directly, then audited. It trains; it reads no
#: runs. ``FEDPRIV_TUTORIAL_ROUNDS`` shortens it (the test suite runs it with fewer rounds).
TUTORIAL = [
    (
        "markdown",
        """\
# Tutorial: user-level DP-FedAvg from Python

This notebook trains a model with user-level differentially private federated averaging
(DP-FedAvg, McMahan et al. 2018) from Python, without Hydra's command line, reads the epsilon
it spent from the mechanism's own accounting, checks that number against `dp_accounting`
directly, and audits the run.

Every setting is a typed object that selects a preset of `fedpriv/conf` and replaces the
fields you set; a field you leave out keeps the preset's value, exactly as `fedpriv-train`
would use it.""",
    ),
    (
        "code",
        """\
import os

import dp_accounting
import matplotlib.pyplot as plt

import fedpriv
from fedpriv import algorithms, mechanisms
from fedpriv.audit import audit_run

fedpriv.expose_cpu_devices()  # one XLA device per CPU core, before JAX starts
ROUNDS = int(os.environ.get("FEDPRIV_TUTORIAL_ROUNDS", "30"))""",
    ),
    (
        "markdown",
        """\
## The population

scikit-learn's handwritten digits, split over 300 clients with Dirichlet label skew
(alpha = 0.5: most clients hold a few classes). `load` returns the data a run with that seed
trains on.""",
    ),
    (
        "code",
        """\
population = fedpriv.Population("digits", num_clients=300, partition="dirichlet", alpha=0.5)
data = population.load(seed=0)
sizes = data.train.client_sizes
print(f"{data.train.num_clients} clients, {sizes.sum()} training examples, "
      f"{sizes.min()}-{sizes.max()} per client; {len(data.test_y)} test examples")""",
    ),
    (
        "markdown",
        """\
## The mechanism and the run

Each round Poisson-samples clients at rate q = 0.1, clips each client's update to L2 norm
C = 1, adds Gaussian noise of std z C to the sum and divides by the expected cohort. The
mechanism calibrates z so that the whole run spends epsilon = 4 at delta = 1e-4 under the
RDP accountant. The privacy unit is one client (add/remove-one adjacency): the guarantee
covers everything a client holds, over every round it takes part in.""",
    ),
    (
        "code",
        """\
mechanism = mechanisms.DpFedAvg(clip_norm=1.0, target_epsilon=4.0, delta=1e-4, accountant="rdp")
result = fedpriv.simulate(
    population,
    model="mlp",
    algorithm=algorithms.FedAvg(server_lr=1.0),
    local=fedpriv.LocalTraining(lr=0.3, epochs=1, batch_size=10),
    sampling=fedpriv.Poisson(rate=0.1),
    mechanism=mechanism,
    rounds=ROUNDS,
    eval_every=5,
    seed=0,
)
plan = result.plan
print(f"noise multiplier z = {plan.noise_multiplier:.4f} (calibrated), "
      f"expected cohort {plan.expected_cohort:.0f}")
accuracy, done = result.final["test_accuracy"], result.summary["rounds"]
print(f"test accuracy {accuracy:.3f} after {done} rounds")""",
    ),
    (
        "markdown",
        """\
## Epsilon, from the mechanism's own accounting

`result.epsilon()` composes the run's ledger (one record per round, written by the mechanism
as it ran): each record becomes a `dp_accounting` event built by the mechanism that wrote it,
from its sensitivity, neighbouring relation and the sampling that ran. Any other accountant
can read the same ledger.""",
    ),
    (
        "code",
        """\
eps = {acc: result.epsilon(accountant=acc) for acc in ("rdp", "pld", "prv")}
for acc, value in eps.items():
    print(f"{acc:>4}: epsilon = {value:.3f} at delta = {plan.delta:g}")
assert eps["rdp"] <= 4.0 + 1e-6, eps  # the calibrated target is met""",
    ),
    (
        "markdown",
        """\
### The same number, from dp_accounting directly

A round of this mechanism is the Poisson-subsampled Gaussian mechanism with multiplier z
(sensitivity C under adding or removing one client); the run is that event composed once
per round. Built here by hand, without fedpriv:""",
    ),
    (
        "code",
        """\
q, z, rounds = plan.sampling_rate, plan.noise_multiplier, len(result.ledger)
event = dp_accounting.SelfComposedDpEvent(
    dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), rounds
)
rdp = dp_accounting.rdp.RdpAccountant()
rdp.compose(event)
by_hand = rdp.get_epsilon(plan.delta)
print(f"dp_accounting RDP: epsilon = {by_hand:.3f}; fedpriv: {eps['rdp']:.3f}")
assert abs(by_hand - eps["rdp"]) <= 0.02 * by_hand""",
    ),
    (
        "markdown",
        """\
## Accuracy and privacy spent, round by round""",
    ),
    (
        "code",
        """\
evals = [row for row in result.history if "test_accuracy" in row]
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
ax1.plot([r["round"] for r in evals], [r["test_accuracy"] for r in evals], marker="o")
ax1.set(xlabel="round", ylabel="test accuracy", title="DP-FedAvg on digits")
ax2.plot([r["round"] for r in result.history], [r["epsilon"] for r in result.history])
ax2.axhline(4.0, color="grey", linestyle="--", label="target")
ax2.set(xlabel="round", ylabel="epsilon spent (RDP)", title=f"delta = {plan.delta:g}")
ax2.legend()
fig.tight_layout()
plt.show()""",
    ),
    (
        "markdown",
        """\
## Auditing the run

The audit recomputes epsilon from the ledger with every accountant and checks the run
against its assumptions (records against metrics, the noise against the clip, the divisor
against the expected cohort). `fedpriv-audit` on the shell prints the same report.""",
    ),
    (
        "code",
        """\
report = audit_run(result.run_dir)
print(report.verdict)
for check in report.checks:
    print(f"  {check.status:>4}  {check.name}")
assert report.verdict == "PASS", [(c.name, c.detail) for c in report.failed]""",
    ),
]

NOTEBOOKS = {
    "tutorial_dp_fedavg.ipynb": TUTORIAL,
    "dpsgd_accounting.ipynb": ACCOUNTING,
    "fedavg_vs_fedsgd.ipynb": FEDAVG,
    "secagg_cost.ipynb": SECAGG,
    "dp_cohorts.ipynb": DP_COHORTS,
    "distributed_dp.ipynb": DISTRIBUTED,
    "empirical_privacy.ipynb": EMPIRICAL,
    "correlated_noise.ipynb": CORRELATED,
    "fedprox_synthetic.ipynb": FEDPROX,
}


def build(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    """A notebook (nbformat 4, Python 3 kernel, no outputs) of ``(kind, source)`` cells."""
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for i, (kind, source) in enumerate(cells):
        make = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
        cell = make(source)
        cell["id"] = f"cell-{i}"
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def main(argv: list[str] | None = None) -> int:
    check = "--check" in (argv if argv is not None else sys.argv[1:])
    stale = []
    for name, cells in NOTEBOOKS.items():
        text = nbformat.writes(build(cells)) + "\n"
        path = HERE / name
        if check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print("out of date (run python notebooks/generate.py): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
