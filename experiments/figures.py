"""Reproduce a published figure with one command: run what it needs, then draw it.

    python experiments/figures.py accounting    # Abadi et al. 2016, Fig. 2 (no training)
    python experiments/figures.py fedavg        # McMahan et al. 2017, Table 2 / Fig. 2
    python experiments/figures.py secagg        # Bonawitz et al. 2017, Figs. 7-8
    python experiments/figures.py fedprox       # Li et al. 2020, Fig. 1 (stragglers)
    python experiments/figures.py dp_cohorts    # McMahan et al. 2018, Fig. 3 (sweep + report)
    python experiments/figures.py distributed   # Kairouz et al. 2021, Fig. 1 (bits)
    python experiments/figures.py empirical     # Andrew et al. 2023 (canaries)
    python experiments/figures.py correlated    # DP-FTRL, banded MF, BLTs vs DP-FedAvg
    python experiments/figures.py fedavg --reduced --runs /tmp/fedavg   # small, for tests
    python experiments/figures.py --list

Each figure runs its experiments into ``experiments/runs/<figure>/`` (``<figure>-reduced``
with ``--reduced``; git-ignored): Hydra sweeps of ``fedpriv-train -m`` for training figures,
a script for the others. It writes ``figure.json`` there (the figure, its settings, the
commands and their run times), then executes the figure's notebook under ``notebooks/``
headless (nbclient), which reads only those files and writes the PNG: into
``experiments/figures/`` for the full-size figure, next to the runs for ``--reduced``. The
executed notebook is kept next to the runs. Running the same command again continues an
interrupted sweep (finished runs are skipped); ``--draw-only`` redraws from existing runs.

Notebooks take their paths from the environment: ``FEDPRIV_RUNS`` (the figure's runs) and
``FEDPRIV_FIGURE`` (the PNG to write).

To add a figure: a function ``run_<name>(args, runs) -> dict`` that runs the experiments and
returns what ``figure.json`` should record, an entry in :data:`FIGURES`, and a notebook.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from fedpriv.errors import ConfigError, exit_on_config_error

REPO = Path(__file__).resolve().parent.parent
RUNS = REPO / "experiments" / "runs"
FIGURES_DIR = REPO / "experiments" / "figures"
NOTEBOOKS = REPO / "notebooks"


@dataclasses.dataclass(frozen=True)
class Figure:
    """A reproduced figure.

    Attributes:
        name: the command-line name.
        paper: what it reproduces.
        notebook: the notebook (under ``notebooks/``) that draws it.
        png: the PNG's file name (under ``experiments/figures/`` at full size).
        run: ``run(args, runs_dir) -> dict`` runs the experiments; the dict goes into
            ``figure.json``.
    """

    name: str
    paper: str
    notebook: str
    png: str
    run: Callable[[argparse.Namespace, Path], dict]


def _sh(cmd: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)


def _call(cmd: list[str], label: str) -> float:
    """Runs ``cmd`` from the repository root, output passed through; returns its seconds.

    Raises:
        SystemExit: the command failed; its exit status is passed on (2: bad input), after
            one line naming the command.
    """
    print(f"[figures] {label}: {_sh(cmd)}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        print(
            f"fedpriv: error: {label}: exit status {proc.returncode}: {_sh(cmd)}",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(proc.returncode)
    print(f"[figures] {label}: done in {seconds:.0f} s", file=sys.stderr, flush=True)
    return seconds


# --- Abadi et al. 2016, Figure 2: epsilon against epochs -----------------------------------


def run_accounting(args: argparse.Namespace, runs: Path) -> dict:
    epochs = "1,10,100" if args.reduced else None
    cmd = [sys.executable, "experiments/dpsgd_accounting.py", "--out", str(runs)]
    if epochs:
        cmd += ["--epochs", epochs]
    seconds = _call(cmd, "accounting")
    return {"commands": [_sh(cmd)], "seconds": round(seconds, 1)}


# --- McMahan et al. 2017, Table 2 and Figure 2: FedAvg against FedSGD -----------------------

#: Per data set: B standing for "infinity" (at least the largest client: one full-batch step
#: per epoch), target accuracies per model, rounds per model.
FEDAVG_DATA = {
    # 1,438 training images over 100 clients: 14 to 16 per client, so B = 16 is full batch.
    "digits": {
        "full_batch": 16,
        "targets": {"mlp": 0.95, "cnn": 0.90},
        "rounds": {"mlp": 150, "cnn": 60},
    },
    # 60,000 images over 100 clients: 600 per client; the paper's targets (Table 2).
    "mnist": {
        "full_batch": 600,
        "targets": {"mlp": 0.97, "cnn": 0.99},
        "rounds": {"mlp": 1000, "cnn": 300},
    },
}
#: The grid: per model, sweeps of (name, epochs, batch sizes, learning rates); "inf" is the
#: data set's full batch. FedSGD is E = 1, B = inf. Learning rates: FedSGD the better of
#: two; FedAvg one rate (on digits, 0.3 beat 0.1 for every 2NN FedAvg setting with B = 10).
FEDAVG_GRID = {
    "mlp": [
        ("fedsgd", "1", ["inf"], "0.3,1.0"),
        ("fedavg_b10", "1,5,20", ["10"], "0.3"),
        ("fedavg_binf", "5,20", ["inf"], "0.3"),
    ],
    # The CNN costs about 1 s per round on 2 CPU cores: FedSGD and E = 5, B = 10 only.
    "cnn": [
        ("fedsgd", "1", ["inf"], "0.3"),
        ("fedavg_b10", "5", ["10"], "0.1"),
    ],
}
#: The reduced grid for tests: the 2NN, FedSGD against E = 5, B = 10, 30 rounds, target 85%.
FEDAVG_REDUCED = {
    "grid": {"mlp": [("fedsgd", "1", ["inf"], "0.3"), ("fedavg_b10", "5", ["10"], "0.3")]},
    "targets": {"mlp": 0.85},
    "rounds": {"mlp": 30},
}
PRESETS = {"mlp": "paper_fedavg_2nn", "cnn": "paper_fedavg_cnn"}


def run_fedavg(args: argparse.Namespace, runs: Path) -> dict:
    data = FEDAVG_DATA[args.dataset]
    grid = FEDAVG_REDUCED["grid"] if args.reduced else FEDAVG_GRID
    targets = FEDAVG_REDUCED["targets"] if args.reduced else data["targets"]
    rounds = FEDAVG_REDUCED["rounds"] if args.reduced else data["rounds"]
    if args.rounds is not None:
        rounds = {m: args.rounds for m in rounds}
    dataset = [f"dataset={args.dataset}"]
    if args.dataset != "digits":
        dataset.append(f"dataset.root={args.data_root}")
    commands, seconds = [], {}
    jobs = [(m, sweep) for m in grid for sweep in grid[m]]
    for i, (model, (name, epochs, batches, lrs)) in enumerate(jobs, 1):
        batch = ",".join(str(data["full_batch"]) if b == "inf" else b for b in batches)
        cmd = [
            sys.executable,
            "-m",
            "fedpriv.train",
            "-m",
            f"experiment={PRESETS[model]}",
            *dataset,
            "dataset.partition.kind=iid,shards",
            f"client.epochs={epochs}",
            f"client.batch_size={batch}",
            f"client.lr={lrs}",
            f"rounds={rounds[model]}",
            "progress=false",
            f"hydra.sweep.dir={runs / model / name}",
        ]
        seconds[f"{model}/{name}"] = round(_call(cmd, f"fedavg sweep {i}/{len(jobs)}"), 1)
        commands.append(_sh(cmd))
    from fedpriv.report import read_runs
    from fedpriv.report.curves import fedavg_table, format_rounds

    rows = fedavg_table(read_runs([runs]), targets)
    for r in rows:
        print(
            f"{r['model']:>4} {r['partition']:>8} {r['setting']:>13} u={r['u']:>6} "
            f"lr={r['lr']:<4} rounds to {r['target']:.0%}: {format_rounds(r)}",
            flush=True,
        )
    return {
        "dataset": args.dataset,
        "targets": targets,
        "rounds": rounds,
        "full_batch": data["full_batch"],
        "commands": commands,
        "seconds": seconds,
    }


# --- Bonawitz et al. 2017, Figures 7-8: secure aggregation cost -----------------------------


def run_secagg(args: argparse.Namespace, runs: Path) -> dict:
    grid = "reduced" if args.reduced else "figure"
    cmd = [
        sys.executable,
        "experiments/benchmarks/secagg_cost.py",
        "--grid",
        grid,
        "--repeats",
        "3" if args.reduced else "1",
        "--out",
        str(runs / "secagg_cost.jsonl"),
    ]
    seconds = _call(cmd, "secagg")
    return {"grid": grid, "commands": [_sh(cmd)], "seconds": round(seconds, 1)}


# --- McMahan et al. 2018: DP-FedAvg accuracy against epsilon for several cohort sizes --------

#: Budgets, expected cohorts (Poisson rates over 1,000 clients) and seeds of the sweep.
COHORTS_FULL = {"eps": "0.5,1,2,4,8", "rates": "0.03,0.1,0.3", "seeds": "0,1,2", "rounds": 100}
COHORTS_REDUCED = {"eps": "1", "rates": "0.02,0.3", "seeds": "0,1", "rounds": 40}


def run_dp_cohorts(args: argparse.Namespace, runs: Path) -> dict:
    grid = COHORTS_REDUCED if args.reduced else COHORTS_FULL
    cmd = [
        sys.executable,
        "-m",
        "fedpriv.train",
        "-m",
        "experiment=paper_dp_cohorts",
        f"privacy.target_epsilon={grid['eps']}",
        f"sampling.rate={grid['rates']}",
        f"seed={grid['seeds']}",
        f"rounds={grid['rounds']}",
        "progress=false",
        f"hydra.sweep.dir={runs / 'sweep'}",
    ]
    if not args.reduced:
        cmd.insert(4, "hydra/launcher=local")  # two worker processes
    seconds = _call(cmd, "dp_cohorts sweep")
    return {"grid": grid, "commands": [_sh(cmd)], "seconds": round(seconds, 1)}


# --- Andrew et al. 2023: empirical epsilon from canaries against the analytical one ----------

EMPIRICAL_FULL = {"noise": "0.5,0.7,1,2,4", "canaries": 500, "rounds": 20}
EMPIRICAL_REDUCED = {"noise": "0.7,4", "canaries": 200, "rounds": 10}


def run_empirical(args: argparse.Namespace, runs: Path) -> dict:
    grid = EMPIRICAL_REDUCED if args.reduced else EMPIRICAL_FULL
    cmd = [
        sys.executable,
        "-m",
        "fedpriv.train",
        "-m",
        "experiment=paper_empirical",
        f"privacy.noise_multiplier={grid['noise']}",
        f"canaries.count={grid['canaries']}",
        f"rounds={grid['rounds']}",
        f"eval_every={grid['rounds']}",
        "progress=false",
        f"hydra.sweep.dir={runs / 'sweep'}",
    ]
    seconds = _call(cmd, "empirical sweep")
    return {"grid": grid, "commands": [_sh(cmd)], "seconds": round(seconds, 1)}


# --- Kairouz et al. 2021, Figure 1: distributed DP against central DP, by bits ------------

DISTRIBUTED_FULL = {
    "noises": "discrete_gaussian,skellam",
    "bits": "12,13,14,16,18,20",
    "seeds": "0,1,2",
    "rounds": 100,
}
DISTRIBUTED_REDUCED = {"noises": "discrete_gaussian", "bits": "12,18", "seeds": "0", "rounds": 40}
#: Population and cohort of experiment=paper_distributed_dp (fixed cohorts, epsilon 4).
DISTRIBUTED_SETTING = {"population": 1000, "cohort": 100, "epsilon": 4.0}


def gaussian_noise_under_the_general_sampling_bound(
    epsilon: float, delta: float, rounds: int, population: int, cohort: int
) -> float:
    """The Gaussian noise multiplier that meets ``epsilon`` when fixed cohorts are accounted
    with the general sampling-without-replacement bound that distributed DP uses
    (:func:`fedpriv.accounting.distributed.subsampled_rdp`) rather than dp_accounting's
    tighter Gaussian-only one: what distributed DP tends to as the bits grow."""
    from fedpriv.accounting import _rdp
    from fedpriv.accounting.calibration import smallest_noise
    from fedpriv.accounting.distributed import subsampled_rdp

    orders = _rdp.orders("rdp")

    def eps(z: float) -> float:
        per_round = subsampled_rdp(orders, lambda js: 2.0 * js / z**2, cohort / population)
        return _rdp.to_epsilon("rdp", rounds * per_round, delta)

    return smallest_noise(eps, epsilon)


def run_distributed(args: argparse.Namespace, runs: Path) -> dict:
    from fedpriv.privacy.plan import resolve_delta

    grid = DISTRIBUTED_REDUCED if args.reduced else DISTRIBUTED_FULL
    setting = DISTRIBUTED_SETTING
    delta = resolve_delta({}, setting["population"])
    z_general = gaussian_noise_under_the_general_sampling_bound(
        setting["epsilon"], delta, grid["rounds"], setting["population"], setting["cohort"]
    )
    common = [
        "experiment=paper_distributed_dp",
        f"seed={grid['seeds']}",
        f"rounds={grid['rounds']}",
        f"eval_every={grid['rounds']}",
        "progress=false",
    ]
    base = [sys.executable, "-m", "fedpriv.train", "-m"]
    if not args.reduced:
        base.append("hydra/launcher=local")  # two worker processes
    sweeps = {
        "distributed": [f"privacy.noise={grid['noises']}", f"secagg.bits={grid['bits']}"],
        "central": ["privacy=user_dp", "secagg=none"],
        "central_general_bound": [
            "privacy=user_dp",
            "secagg=none",
            f"privacy.noise_multiplier={z_general:.6g}",
        ],
    }
    commands, seconds = [], {}
    for name, overrides in sweeps.items():
        cmd = [*base, *common, *overrides, f"hydra.sweep.dir={runs / name}"]
        seconds[name] = round(_call(cmd, f"distributed: {name}"), 1)
        commands.append(_sh(cmd))
    return {
        "grid": grid,
        "setting": {**setting, "delta": delta},
        "general_bound_noise_multiplier": z_general,
        "commands": commands,
        "seconds": seconds,
    }


# --- Correlated noise (DP-FTRL, banded MF, BLTs) against DP-FedAvg at equal epsilon ---------

CORRELATED_FULL = {
    "eps": "1,2,4,8",
    "seeds": "0,1,2",
    "rounds": 100,
    "cohort": 50,
    "error_rounds": "100,1000,2000",
}
CORRELATED_REDUCED = {
    "eps": "2",
    "seeds": "0",
    "rounds": 20,
    "cohort": 10,
    "error_rounds": "16,40",
}


def run_correlated(args: argparse.Namespace, runs: Path) -> dict:
    grid = CORRELATED_REDUCED if args.reduced else CORRELATED_FULL
    errors = [
        sys.executable,
        "experiments/correlated_noise_error.py",
        "--rounds",
        grid["error_rounds"],
        "--out",
        str(runs / "errors.jsonl"),
    ]
    population = 1000
    common = [
        "experiment=paper_correlated_noise",
        f"privacy.target_epsilon={grid['eps']}",
        f"seed={grid['seeds']}",
        f"rounds={grid['rounds']}",
        f"eval_every={grid['rounds']}",
        "progress=false",
    ]
    base = [sys.executable, "-m", "fedpriv.train", "-m"]
    if not args.reduced:
        base.append("hydra/launcher=local")  # two worker processes
    sweeps = {
        "correlated": [
            "privacy.strategy=independent,tree,banded,blt",
            f"sampling.cohort_size={grid['cohort']}",
        ],
        "poisson": [
            "privacy=user_dp",
            "sampling=poisson",
            f"sampling.rate={grid['cohort'] / population:g}",
        ],
        "fixed": [
            "privacy.strategy=independent",
            "sampling=fixed",
            f"sampling.cohort_size={grid['cohort']}",
        ],
        # banded MF amplified by Poisson sampling inside the round's group (same expected
        # cohort: the rate is the cohort over the group's size)
        "amplified": [
            "privacy.strategy=banded",
            "sampling=cyclic_poisson",
            f"sampling.rate={grid['cohort'] * 10 / population:g}",
        ],
    }
    commands, seconds = [_sh(errors)], {"errors": round(_call(errors, "correlated: errors"), 1)}
    for name, overrides in sweeps.items():
        cmd = [*base, *common, *overrides, f"hydra.sweep.dir={runs / name}"]
        seconds[name] = round(_call(cmd, f"correlated: {name}"), 1)
        commands.append(_sh(cmd))
    return {"grid": grid, "commands": commands, "seconds": seconds}


# --- Li et al. 2020, Figure 1: FedAvg against FedProx with stragglers ----------------------

#: The methods compared: FedAvg drops the stragglers; FedProx keeps their partial work, with
#: mu = 0 (only the partial work) and mu = 1 (partial work and the proximal term).
FEDPROX_METHODS = {
    "fedavg": ["algorithm=fedavg", "compute.drop=true"],
    "fedprox_mu0": ["algorithm=fedprox", "algorithm.mu=0", "compute.drop=false"],
    "fedprox_mu1": ["algorithm=fedprox", "algorithm.mu=1", "compute.drop=false"],
}
#: Full size: the paper's straggler levels and Synthetic(0,0), (0.5,0.5), (1,1); 100 rounds
#: (the paper plots 200; `--rounds 200` for its length). Every client runs the scan of the
#: largest device (3,407 examples: 6,820 local steps), about 0.7 s per round on 2 CPU cores.
FEDPROX_FULL = {"stragglers": (0.0, 0.5, 0.9), "heterogeneity": "0,0.5,1", "rounds": 100}
#: Reduced (tests): 90% stragglers on Synthetic(1, 1), FedAvg against mu = 1.
FEDPROX_REDUCED = {"stragglers": (0.9,), "heterogeneity": "1", "rounds": 30}


def run_fedprox(args: argparse.Namespace, runs: Path) -> dict:
    grid = FEDPROX_REDUCED if args.reduced else FEDPROX_FULL
    methods = (
        {k: v for k, v in FEDPROX_METHODS.items() if k != "fedprox_mu0"}
        if args.reduced
        else FEDPROX_METHODS
    )
    rounds = args.rounds or grid["rounds"]
    commands, seconds = [], {}
    jobs = [(s, m) for s in grid["stragglers"] for m in methods]
    for i, (stragglers, method) in enumerate(jobs, 1):
        cmd = [
            sys.executable,
            "-m",
            "fedpriv.train",
            "-m",
            "experiment=paper_fedprox_synthetic",
            f"heterogeneity={grid['heterogeneity']}",
            f"compute.fraction={stragglers}",
            *methods[method],
            f"rounds={rounds}",
            "progress=false",
            f"hydra.sweep.dir={runs / f'stragglers_{stragglers:g}' / method}",
        ]
        label = f"fedprox sweep {i}/{len(jobs)}"
        seconds[f"{stragglers:g}/{method}"] = round(_call(cmd, label), 1)
        commands.append(_sh(cmd))
    return {
        "stragglers": list(grid["stragglers"]),
        "heterogeneity": grid["heterogeneity"],
        "methods": {k: " ".join(v) for k, v in methods.items()},
        "rounds": rounds,
        "commands": commands,
        "seconds": seconds,
    }


FIGURES = {
    f.name: f
    for f in (
        Figure(
            "accounting",
            "Abadi et al. 2016, Deep Learning with Differential Privacy, Figure 2",
            "dpsgd_accounting.ipynb",
            "dpsgd_accounting.png",
            run_accounting,
        ),
        Figure(
            "fedavg",
            "McMahan et al. 2017, Communication-Efficient Learning of Deep Networks from "
            "Decentralized Data, Table 2 and Figure 2",
            "fedavg_vs_fedsgd.ipynb",
            "fedavg_vs_fedsgd_{dataset}.png",
            run_fedavg,
        ),
        Figure(
            "secagg",
            "Bonawitz et al. 2017, Practical Secure Aggregation for Privacy-Preserving "
            "Machine Learning, Figures 7-8",
            "secagg_cost.ipynb",
            "secagg_cost.png",
            run_secagg,
        ),
        Figure(
            "fedprox",
            "Li et al. 2020, Federated Optimization in Heterogeneous Networks, Figure 1",
            "fedprox_synthetic.ipynb",
            "fedprox_synthetic.png",
            run_fedprox,
        ),
        Figure(
            "dp_cohorts",
            "McMahan et al. 2018, Learning Differentially Private Recurrent Language Models, "
            "Figure 3 (accuracy against epsilon for several expected cohort sizes)",
            "dp_cohorts.ipynb",
            "dp_cohorts.png",
            run_dp_cohorts,
        ),
        Figure(
            "distributed",
            "Kairouz, Liu, Steinke 2021, The Distributed Discrete Gaussian Mechanism for "
            "Federated Learning with Secure Aggregation, Figure 1 (accuracy against bits)",
            "distributed_dp.ipynb",
            "distributed_dp.png",
            run_distributed,
        ),
        Figure(
            "correlated",
            "Kairouz et al. 2021 (DP-FTRL), Choquette-Choo et al. 2023 (banded MF), McMahan et "
            "al. 2024 (BLTs): prefix-sum error and accuracy against epsilon, correlated noise "
            "against DP-FedAvg",
            "correlated_noise.ipynb",
            "correlated_noise.png",
            run_correlated,
        ),
        Figure(
            "empirical",
            "Andrew et al. 2023, One-shot Empirical Privacy Estimation for Federated Learning, "
            "empirical against analytical epsilon",
            "empirical_privacy.ipynb",
            "empirical_privacy.png",
            run_empirical,
        ),
    )
}


def execute_notebook(notebook: Path, runs: Path, png: Path, executed: Path) -> None:
    """Runs ``notebook`` headless with ``FEDPRIV_RUNS`` and ``FEDPRIV_FIGURE`` set and keeps
    the executed copy at ``executed``.

    Raises:
        ConfigError: the notebook failed or did not write ``png``.
    """
    import nbformat
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(notebook, as_version=4)
    saved = {k: os.environ.get(k) for k in ("FEDPRIV_RUNS", "FEDPRIV_FIGURE")}
    os.environ["FEDPRIV_RUNS"], os.environ["FEDPRIV_FIGURE"] = str(runs), str(png)
    png.unlink(missing_ok=True)
    # The kernel talks over Unix sockets in a private directory rather than local TCP.
    sockets = tempfile.TemporaryDirectory(prefix="fedpriv-kernel-")
    km = KernelManager(kernel_name="python3", transport="ipc", ip=f"{sockets.name}/kernel")
    try:
        NotebookClient(
            nb, km=km, timeout=600, resources={"metadata": {"path": str(REPO)}}
        ).execute()
    except CellExecutionError as err:
        nbformat.write(nb, executed)
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()  # no terminal colours
        last = text.splitlines()[-1] if text else repr(err)
        raise ConfigError(str(notebook), f"failed ({last}); executed copy in {executed}") from None
    finally:
        if km.has_kernel:  # a kernel manager passed in is not shut down by nbclient
            km.shutdown_kernel(now=True)
        sockets.cleanup()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    nbformat.write(nb, executed)
    if not png.is_file():
        raise ConfigError(str(notebook), f"did not write {png}")


@exit_on_config_error
def main(argv: list[str] | None = None) -> Path | None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("figure", nargs="?", help="the figure: " + ", ".join(FIGURES))
    ap.add_argument("--list", action="store_true", help="list the figures and exit")
    ap.add_argument("--reduced", action="store_true", help="a small version (tests, smoke)")
    ap.add_argument("--runs", default=None, help="runs directory (default experiments/runs/..)")
    ap.add_argument("--png", default=None, help="the PNG to write")
    ap.add_argument("--draw-only", action="store_true", help="only execute the notebook")
    ap.add_argument("--dataset", default="digits", help="fedavg: digits or mnist")
    ap.add_argument("--data-root", default=None, help="fedavg: dataset.root for MNIST files")
    ap.add_argument("--rounds", type=int, default=None, help="fedavg, fedprox: rounds of every run")
    args = ap.parse_args(argv)
    if args.list:
        for f in FIGURES.values():
            print(f"{f.name:>10}  {f.paper}")
        return None
    if args.figure not in FIGURES:
        raise ConfigError("figure", f"unknown figure {args.figure!r}; choose from {list(FIGURES)}")
    if args.dataset not in FEDAVG_DATA:
        raise ConfigError("--dataset", f"must be one of {list(FEDAVG_DATA)}, got {args.dataset!r}")
    if args.rounds is not None and args.rounds < 1:
        raise ConfigError("--rounds", f"must be >= 1, got {args.rounds}")
    if args.dataset != "digits" and not args.data_root:
        raise ConfigError("--data-root", f"required with --dataset {args.dataset}")
    fig = FIGURES[args.figure]
    suffix = "-reduced" if args.reduced else ""
    runs = Path(args.runs) if args.runs else RUNS / f"{fig.name}{suffix}"
    runs = runs.resolve()
    png_name = fig.png.format(dataset=args.dataset)
    if args.png:
        png = Path(args.png).resolve()
    else:
        png = (runs / png_name) if args.reduced else (FIGURES_DIR / png_name)
    try:
        runs.mkdir(parents=True, exist_ok=True)
        png.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError("--runs", f"cannot create {runs}: {err.strerror}") from None
    record_path = runs / "figure.json"
    t0 = time.perf_counter()
    if args.draw_only:
        if not record_path.is_file():
            raise ConfigError("--draw-only", f"{runs} holds no figure.json; run the figure first")
    else:
        record = {
            "figure": fig.name,
            "paper": fig.paper,
            "reduced": args.reduced,
            "command": _sh(["python", "experiments/figures.py", *(argv or sys.argv[1:])]),
            **fig.run(args, runs),
        }
        record["run_seconds"] = round(time.perf_counter() - t0, 1)
        record_path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    t1 = time.perf_counter()
    print(f"[figures] drawing {fig.notebook} -> {png}", file=sys.stderr, flush=True)
    execute_notebook(NOTEBOOKS / fig.notebook, runs, png, runs / f"{fig.name}.executed.ipynb")
    print(
        f"[figures] {fig.name}: {png} (runs {t1 - t0:.0f} s, notebook "
        f"{time.perf_counter() - t1:.0f} s; runs in {runs})",
        flush=True,
    )
    return png


if __name__ == "__main__":
    main()
