"""The reproduced figures, reduced: each command runs, its notebook executes headless and
writes the PNG, and the paper's qualitative claims hold on the data the runs wrote."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedpriv.report import read_runs
from fedpriv.report.curves import epsilon_at, fedavg_table, linear_fit, read_records, series
from tests.conftest import REPO

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def figure(name: str, runs: Path, *extra: str, timeout: float = 600):
    return subprocess.run(
        [sys.executable, "experiments/figures.py", name, "--reduced", "--runs", str(runs), *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "HYDRA_FULL_ERROR": "0"},
    )


def check_drawn(proc, runs: Path, png_name: str) -> dict:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    png = runs / png_name
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000
    executed = list(runs.glob("*.executed.ipynb"))
    assert len(executed) == 1, executed
    record = json.loads((runs / "figure.json").read_text())
    assert record["reduced"] is True and record["commands"], record
    return record


def test_accounting_figure_matches_the_moments_accountant_and_orders_the_analyses(tmp_path):
    runs = tmp_path / "accounting"
    record = check_drawn(figure("accounting", runs), runs, "dpsgd_accounting.png")
    assert record["figure"] == "accounting"
    records = read_records(runs / "epsilon_vs_epochs.jsonl")
    # Abadi et al. 2016, Section 3.1: epsilon about 1.26 at q = 0.01, sigma = 4, delta = 1e-5,
    # T = 10,000 with the moments accountant.
    ma = epsilon_at(records, "moments_accountant", 10_000)
    assert abs(ma - 1.26) <= 0.05 * 1.26, ma
    for steps in sorted({r["steps"] for r in records}):
        strong = epsilon_at(records, "strong_composition", steps)
        rdp = epsilon_at(records, "rdp", steps)
        pld = epsilon_at(records, "pld", steps)
        assert strong > epsilon_at(records, "moments_accountant", steps) >= rdp >= pld > 0
        assert strong > rdp
    # Epsilon grows with the number of steps under every analysis.
    for (_,), (xs, ys) in series(records, "steps", "epsilon", by=["accountant"]).items():
        assert ys == sorted(ys) and len(xs) >= 3


@pytest.mark.slow
def test_fedavg_figure_reaches_the_target_in_fewer_rounds_than_fedsgd(tmp_path):
    runs = tmp_path / "fedavg"
    record = check_drawn(figure("fedavg", runs), runs, "fedavg_vs_fedsgd_digits.png")
    assert record["dataset"] == "digits"
    rows = fedavg_table(read_runs([runs]), record["targets"])
    by = {(r["partition"], r["setting"]): r for r in rows}
    assert set(by) == {
        ("IID", "FedSGD"),
        ("IID", "E=5, B=10"),
        ("non-IID", "FedSGD"),
        ("non-IID", "E=5, B=10"),
    }
    for part in ("IID", "non-IID"):
        sgd, avg = by[(part, "FedSGD")], by[(part, "E=5, B=10")]
        # FedSGD is one full-batch step per round: B at least the largest client.
        assert sgd["B"] == "∞" and sgd["u"] == 1.0
        # McMahan et al. 2017: more local computation per round reaches the target in
        # fewer rounds than FedSGD, IID and non-IID (not reached counts as more rounds).
        assert avg["rounds"] is not None, avg
        assert sgd["rounds"] is None or avg["rounds"] < sgd["rounds"], (sgd, avg)
        assert avg["speedup"] is not None and avg["speedup"] > 1.0


def test_secagg_figure_shows_the_protocols_cost_growth(tmp_path):
    runs = tmp_path / "secagg"
    record = check_drawn(figure("secagg", runs), runs, "secagg_cost.png")
    assert record["grid"] == "reduced"
    records = read_records(runs / "secagg_cost.jsonl")
    assert all(r["sum_correct"] for r in records)
    clients = sorted({r["clients"] for r in records})
    dims = sorted({r["dim"] for r in records})
    assert len(clients) >= 3 and len(dims) >= 3

    def server_s(n, d, dropout):
        return next(
            r["server_s"]
            for r in records
            if (r["clients"], r["dim"], r["dropout"]) == (n, d, dropout)
        )

    # Bonawitz et al. 2017, Figure 8: server time grows with the number of clients, and
    # more with 30% dropout (the server reconstructs the dropped clients' masks).
    for d in dims:
        for dropout in (0.0, 0.3):
            assert server_s(clients[-1], d, dropout) > server_s(clients[0], d, dropout)
    # ... and the server spends more with 30% dropout than without, at the most clients.
    for d in dims:
        assert server_s(clients[-1], d, 0.3) > server_s(clients[-1], d, 0.0)
    # Figure 7: a client's bytes grow linearly in the vector length, by bits/8 per coordinate.
    bits = records[0]["bits"]
    for n in clients:
        xs, ys = series(records, "dim", "client_kb", where={"clients": n, "dropout": 0.0})[()]
        slope, _, r2 = linear_fit(xs, ys)
        assert r2 > 0.9999, (n, xs, ys)
        assert slope * 1024 == pytest.approx(bits / 8, rel=0.02)


@pytest.mark.slow
def test_dp_cohorts_figure_larger_cohorts_buy_accuracy_at_equal_epsilon(tmp_path):
    runs = tmp_path / "dp_cohorts"
    record = check_drawn(figure("dp_cohorts", runs), runs, "dp_cohorts.png")
    from fedpriv.report import group_runs, swept_keys

    found = read_runs([runs / "sweep"])
    assert len(found) == 4 and all(r.status == "finished" for r in found)
    keys = swept_keys(found)
    assert set(keys) == {"sampling.rate", "seed"}
    acc = {}
    for g in group_runs(found, keys):
        eps, _ = g.stat("epsilon")
        target = float(found[0].value("privacy.target_epsilon"))
        assert 0.95 * target <= eps <= target  # calibrated, one-sided
        acc[(target, float(g.setting["sampling.rate"]))] = g.stat("accuracy")[0]
    # McMahan et al. 2018: at a fixed population and equal epsilon, a larger expected cohort
    # gives a more accurate model (mean over seeds).
    assert acc[(1.0, 0.3)] > acc[(1.0, 0.02)] + 0.02, acc
    assert record["grid"]["rates"] == "0.02,0.3"


def test_distributed_figure_approaches_central_dp_as_bits_grow(tmp_path):
    runs = tmp_path / "distributed"
    record = check_drawn(figure("distributed", runs), runs, "distributed_dp.png")

    def finished(name):
        found = read_runs([runs / name])
        assert found and all(r.status == "finished" for r in found), found
        return found

    by_bits = {int(r.value("secagg.bits")): r for r in finished("distributed")}
    assert sorted(by_bits) == [12, 18]
    central = finished("central")[0]
    general = finished("central_general_bound")[0]
    z = {b: r.summary["privacy"]["noise_multiplier"] for b, r in by_bits.items()}
    z_central = central.summary["privacy"]["noise_multiplier"]
    for run in (*by_bits.values(), central):
        assert 0.95 * 4.0 <= run.epsilon <= 4.0  # every run calibrated to the same epsilon
    # Kairouz et al. 2021: with few bits the rounding inflates the sensitivity and more noise
    # is needed; with enough bits distributed DP needs about central DP's noise, and no less
    # than the Gaussian under the same (general) sampling bound.
    assert z[12] > 1.3 * z[18]
    assert general.summary["privacy"]["noise_multiplier"] <= z[18] <= 1.1 * z_central
    assert z_central < record["general_bound_noise_multiplier"] < 1.1 * z_central
    assert by_bits[18].accuracy > by_bits[12].accuracy + 0.03
    assert by_bits[18].accuracy > central.accuracy - 0.05


def test_empirical_figure_stays_below_the_analytical_epsilon(tmp_path):
    runs = tmp_path / "empirical"
    check_drawn(figure("empirical", runs), runs, "empirical_privacy.png")
    from fedpriv.audit import empirical_audit

    rows = []
    for run in read_runs([runs / "sweep"]):
        assert run.status == "finished"
        found = empirical_audit(run.path, run.summary["delta"])
        z = float(run.value("privacy.noise_multiplier"))
        rows.append((z, min(run.summary["epsilon"].values()), found))
    rows.sort()
    assert [r[0] for r in rows] == [0.7, 4.0]
    for _, analytical, found in rows:
        # A lower bound above the analytical epsilon would mean the accounting is wrong.
        assert found["epsilon_lower_bound"] <= analytical
    # Andrew et al. 2023: the estimate falls as the noise grows, and with little noise it lies
    # below the analytical bound (only the final model is observed).
    (_, eps_low_noise, low), (_, _, high) = rows
    assert low["epsilon_estimate"] > high["epsilon_estimate"]
    assert low["epsilon_estimate"] < eps_low_noise


@pytest.mark.slow
def test_correlated_figure_meets_the_closed_forms_and_calibrates_every_run(tmp_path):
    runs = tmp_path / "correlated"
    check_drawn(figure("correlated", runs), runs, "correlated_noise.png")
    errors = [json.loads(x) for x in (runs / "errors.jsonl").read_text().splitlines()]
    assert sorted({r["rounds"] for r in errors}) == [16, 40]
    for r in errors:
        forms = r["published"]
        if r["strategy"] == "independent":  # closed forms: sqrt(k (n + 1) / 2), sqrt(k n)
            assert r["rmse"] == pytest.approx(forms["independent_rmse"], rel=1e-9)
            assert r["max_error"] == pytest.approx(forms["independent_max_error"], rel=1e-9)
        elif not r["strategy"].startswith("tree"):
            # optimised over factorisations that include the identity (banded with one band)
            assert r["rmse_vs_independent"] <= 1.0 + 1e-6, r
        elif r["participations"] == 1:  # one participation: the tree beats independent noise
            assert r["strategy"] == "tree (plain)" or r["rmse_vs_independent"] < 1.0, r
        if r["participations"] == 1:  # no factorisation beats the lower bound
            assert r["max_error"] >= forms["optimal_max_error_lower_bound"], r
        if r["strategy"].startswith("square root"):
            assert r["max_error"] <= 1.05 * forms["optimal_max_error_upper_bound"], r
        if r["strategy"].startswith("tree") and r["participations"] == 1:
            assert r["sensitivity"] == pytest.approx(forms["tree_sensitivity"])
    by = {(r["rounds"], r["participations"], r["strategy"]): r for r in errors}
    for n, k in {(r["rounds"], r["participations"]) for r in errors}:
        assert by[(n, k, "tree (efficient)")]["rmse"] < by[(n, k, "tree (plain)")]["rmse"]
    noise = {}
    for sweep in ("correlated", "poisson", "fixed", "amplified"):
        found = read_runs([runs / sweep])
        assert found and all(r.status == "finished" for r in found), found
        for run in found:
            assert 0.95 * 2.0 <= run.epsilon <= 2.0
            privacy = run.summary["privacy"]
            sens = (privacy.get("correlation") or {}).get("run_sensitivity", 1.0)
            strategy = run.value("privacy.strategy") if sweep == "correlated" else sweep
            noise[strategy] = privacy["noise_multiplier"] * sens
    assert len(noise) == 7
    # Any client in any round, no amplification: the most noise of all.
    assert noise["fixed"] > max(v for k, v in noise.items() if k != "fixed")


def test_notebooks_match_their_generator_and_hold_no_outputs():
    proc = subprocess.run(
        [sys.executable, "notebooks/generate.py", "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for path in (REPO / "notebooks").glob("*.ipynb"):
        nb = json.loads(path.read_text())
        assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"), path


@pytest.mark.parametrize(
    "args, field",
    [
        (["experiments/figures.py", "nonsense"], "figure"),
        (["experiments/figures.py", "fedavg", "--rounds", "0"], "--rounds"),
        (["experiments/figures.py", "fedavg", "--dataset", "mnist"], "--data-root"),
        (["experiments/figures.py", "accounting", "--draw-only", "--runs", "{tmp}"], "--draw-only"),
        (["experiments/dpsgd_accounting.py", "--epochs", "1,-2", "--out", "{tmp}"], "--epochs"),
        (["experiments/dpsgd_accounting.py", "--delta", "2", "--out", "{tmp}"], "--delta"),
        (["experiments/benchmarks/secagg_cost.py", "--bits", "40"], "--bits"),
        (["experiments/benchmarks/secagg_cost.py", "--repeats", "0"], "--repeats"),
    ],
)
def test_bad_input_stops_with_one_line_and_exit_2(tmp_path, args, field):
    args = [a.replace("{tmp}", str(tmp_path / "out")) for a in args]
    proc = subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"fedpriv: error: {field}"), proc.stderr
