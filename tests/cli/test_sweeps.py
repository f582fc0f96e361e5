"""Sweeps from the shell: launchers, resuming a sweep that died, and fedpriv-report on them."""

import csv
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli

DEBUG = ["experiment=debug", "progress=false"]
EXAMPLE = ["privacy=user_dp", "privacy.target_epsilon=0.5,2,8", "seed=0,1"]
#: The example sweep of docs/guides/sweeps.md with three of its five budgets, two of its three
#: seeds and 30 of its 100 rounds, to keep the suite short (the full sweep: about 2 minutes on
#: two cores, docs/guides/sweeps.md).
EXAMPLE_ROUNDS = "rounds=30"


def _jobs(sweep: Path) -> list[Path]:
    return sorted(
        (p for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit()),
        key=lambda p: int(p.name.split("_")[0]),
    )


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_example_sweep_with_joblib_gives_a_rising_privacy_utility_curve(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [
        "-m",
        *EXAMPLE,
        EXAMPLE_ROUNDS,
        "hydra/launcher=local",
        "progress=false",
        f"hydra.sweep.dir={sweep}",
    ]
    start = time.time()
    proc = run_cli("fedpriv.train", *cmd)
    first_pass = time.time() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = _jobs(sweep)
    assert len(jobs) == 6
    assert all((j / "summary.json").is_file() for j in jobs)

    out = tmp_path / "report"
    rep = run_cli("fedpriv.cli.report", str(sweep), "--out", str(out))
    assert rep.returncode == 0, rep.stderr
    assert (out / "privacy_utility.png").stat().st_size > 0
    assert (out / "privacy_utility.svg").is_file() and (out / "accuracy_vs_round.png").is_file()
    rows = _csv(out / "report.csv")
    assert [float(r["privacy.target_epsilon"]) for r in rows] == [0.5, 2, 8]
    assert all(r["runs"] == r["finished"] == "2" and r["rounds"] == "30" for r in rows)
    acc = [float(r["accuracy_mean"]) for r in rows]
    eps = [float(r["epsilon_mean"]) for r in rows]
    # Calibration is one-sided: epsilon spent <= target, and close to it.
    assert all(0.95 * t <= e <= t for t, e in zip([0.5, 2, 8], eps))
    # Utility rises with the budget (mean over seeds; a loose margin for seed noise).
    assert all(b >= a - 0.02 for a, b in zip(acc, acc[1:])), acc
    assert acc[-1] > acc[0] + 0.1, acc
    assert "| privacy.target_epsilon |" in rep.stdout

    # The same command again finds every job finished and trains nothing.
    before = {j: (j / "metrics.jsonl").stat().st_mtime_ns for j in jobs}
    start = time.time()
    again = run_cli("fedpriv.train", *cmd)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("already finished; skipped") == 6
    assert {j: (j / "metrics.jsonl").stat().st_mtime_ns for j in jobs} == before
    assert time.time() - start < first_pass


def test_a_sweep_killed_halfway_continues_where_it_stopped(tmp_path):
    sweep = tmp_path / "sweep"
    args = [
        *DEBUG,
        "privacy=user_dp",
        "privacy.noise_multiplier=1.0",
        "rounds=60",
        "eval_every=60",
        "checkpoint.every=5",
        "seed=0,1,2",
        f"hydra.sweep.dir={sweep}",
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu", HYDRA_FULL_ERROR="0")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedpriv.train", "-m", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Stop the sweep (as a scheduler or Ctrl-C would) once the second job is under way.
    deadline = time.time() + 300
    while time.time() < deadline:
        second = [j for j in sweep.glob("1_*") if (j / "checkpoints").is_dir()]
        if second and any((second[0] / "checkpoints").iterdir()):
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "run the same command again" in err
    first, second = _jobs(sweep)[:2]
    assert (first / "summary.json").is_file() and not (second / "summary.json").exists()
    stopped_at = sum(1 for _ in open(second / "metrics.jsonl"))
    assert 0 < stopped_at < 60
    first_mtime = (first / "metrics.jsonl").stat().st_mtime_ns

    again = run_cli("fedpriv.train", "-m", *args)
    assert again.returncode == 0, again.stderr[-3000:]
    jobs = _jobs(sweep)
    assert len(jobs) == 3 and all((j / "summary.json").is_file() for j in jobs)
    assert "already finished; skipped" in again.stdout
    assert (first / "metrics.jsonl").stat().st_mtime_ns == first_mtime  # not rerun
    summary = json.loads((second / "summary.json").read_text())
    assert summary["resumed_from"] > 0 and summary["rounds"] == 60
    rounds = [json.loads(line)["round"] for line in open(second / "metrics.jsonl")]
    assert rounds == list(range(1, 61))
    # Rounds that ran after the last checkpoint ran twice; the ledger counts both.
    ledger = [json.loads(line) for line in open(second / "ledger.jsonl")]
    assert len(ledger) == 60 + summary["replayed_rounds"]


def test_report_lists_crashed_jobs_and_reports_the_rest(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "fedpriv.train",
        "-m",
        *DEBUG,
        "privacy=user_dp",
        "privacy.noise_multiplier=0.5,2",
        "faults.crash_at_round=null,2",
        "seed=0",
        f"hydra.sweep.dir={sweep}",
    )
    assert "InjectedFault" in proc.stderr  # the crashed jobs' error reaches the terminal
    jobs = _jobs(sweep)
    assert len(jobs) == 4
    crashed = [j for j in jobs if "crash_at_round=2" in j.name]
    assert all((j / "failed.json").is_file() and not (j / "summary.json").exists() for j in crashed)
    # A job killed while writing leaves a cut-short line; the report must still read it.
    with open(crashed[0] / "metrics.jsonl", "a") as f:
        f.write('{"round": 2, "train_lo')

    rep = run_cli("fedpriv.cli.report", str(sweep))
    assert rep.returncode == 0, rep.stderr
    out = sweep / "report"
    runs = {Path(r["path"]).name: r for r in _csv(out / "runs.csv")}
    for job in jobs:
        status = runs[job.name]["status"]
        assert status == ("failed" if job in crashed else "finished")
    assert "InjectedFault" in runs[crashed[0].name]["reason"]
    assert "cut short" in runs[crashed[0].name]["reason"]
    assert rep.stderr.count("failed:") == 2
    rows = _csv(out / "report.csv")
    finished = [r for r in rows if r["faults.crash_at_round"] == "null"]
    assert len(finished) == 2 and all(r["accuracy_mean"] for r in finished)
    assert all(not r["accuracy_mean"] for r in rows if r["faults.crash_at_round"] == "2")
    text = (out / "report.md").read_text()
    assert "## Runs that did not finish" in text and "InjectedFault" in text
    assert (out / "privacy_utility.png").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["/does/not/exist"], "does not exist"),
        (["{tmp}"], "holds no run directory"),
        (["{run}", "{run}"], "--out: required"),
        (["{run}", "--out", "{file}"], "is a file"),
    ],
)
def test_report_bad_input_is_one_line(tmp_path, args, message):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("rounds: 3\n")
    (tmp_path / "empty").mkdir()
    file = tmp_path / "a_file"
    file.write_text("keep me")
    subs = {"{tmp}": str(tmp_path / "empty"), "{run}": str(run), "{file}": str(file)}
    proc = run_cli("fedpriv.cli.report", *[subs.get(a, a) for a in args])
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr
    assert file.read_text() == "keep me" and not (run / "report").exists()


def test_slurm_launcher_composes_the_requested_job_array(tmp_path):
    """The sbatch file and each array task's overrides, without a cluster: stand-ins for
    ``sbatch`` and ``srun`` on PATH; ``sbatch`` keeps what it is given and refuses to queue it."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    bin_dir, kept = tmp_path / "bin", tmp_path / "kept.sh"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(f"#!/bin/sh\ncp \"$1\" {kept}\necho 'sbatch: no cluster here' >&2\nexit 1\n")
    sbatch.chmod(0o755)
    srun = bin_dir / "srun"  # submitit only checks that it exists
    srun.write_text("#!/bin/sh\nexit 1\n")
    srun.chmod(0o755)
    sweep = tmp_path / "sweep"
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedpriv.train",
            "-m",
            "hydra/launcher=slurm",
            "hydra.launcher.partition=a100",
            "hydra.launcher.timeout_min=90",
            "hydra.launcher.gpus_per_task=2",
            *DEBUG,
            "privacy=user_dp",
            "privacy.target_epsilon=1,4",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0 and kept.is_file(), proc.stderr[-2000:]
    text = kept.read_text()
    for line in (
        "#SBATCH --partition=a100",
        "#SBATCH --time=90",
        "#SBATCH --gpus-per-task=2",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=32GB",
        "#SBATCH --array=0-1%2",
    ):
        assert line in text, text
    assert "submitit.core._submit" in text
    # Each array task runs fedpriv's task function with one job's overrides.
    submitted = sorted((sweep / ".submitit").rglob("*.pkl"))
    assert len(submitted) == 2
    jobs = []
    for path in submitted:
        with open(path, "rb") as f:
            delayed = pickle.load(f)
        overrides, key, *_ = delayed.args
        assert key == "hydra.sweep.dir"
        jobs.append(sorted(overrides))
        assert delayed.function.task_function.__module__ == "fedpriv.cli.train"
    targets = sorted(o for job in jobs for o in job if o.startswith("privacy.target_epsilon="))
    assert targets == ["privacy.target_epsilon=1", "privacy.target_epsilon=4"]


def test_optuna_preset_tunes_learning_rates_and_clip_at_a_fixed_epsilon(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "fedpriv.train",
        "-m",
        "hparams_search=dp_optuna",
        *DEBUG,
        "privacy=user_dp",
        "privacy.target_epsilon=2",
        "hydra.sweeper.n_trials=2",
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = _jobs(sweep)
    assert len(jobs) == 2
    tuned = ("algorithm.server_lr", "client.lr", "privacy.clip_norm")
    for job in jobs:
        summary = json.loads((job / "summary.json").read_text())
        assert summary["epsilon"]["rdp"] == pytest.approx(2.0, rel=0.01)  # the budget is fixed
        assert all(f"{k}=" in job.name for k in tuned)
    best = (sweep / "optimization_results.yaml").read_text()
    assert "best_params" in best and all(k in best for k in tuned)
