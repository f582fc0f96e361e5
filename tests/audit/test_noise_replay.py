"""The noise replay: honest runs pass; noise, clipping and divisor bugs planted in the code or
in the files fail it; its statistics hold their stated false-failure rate and power.

The runs train the 2NN (model=mlp, hidden 200-200) on digits: d = 64*200 + 200 + 200*200 +
200 + 200*10 + 10 = 55210 parameters. Under honest noise ``sum(r^2)/s^2 ~ chi2(d)``, i.e. the
variance ratio ``Q/d`` has mean 1 and sd ``sqrt(2/d) = 0.0060``; its two-sided test at level
``1e-3/4`` rejects below ``1 - 3.66 * 0.0060 = 0.978`` (std 0.989x). Noise at 0.9x the claim
gives ``Q/d ~ 0.81 +- 0.81 * 0.0060``: 34 sd below the critical value, power 1 - 1e-250.
The debug experiment's logreg (d = 650) would reject only below ``1 - 3.66 * 0.055 = 0.80``,
so 0.9x noise (0.81) would pass about half the time.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import yaml

from fedpriv.audit import audit_run, read_run
from fedpriv.audit.replay import (
    FALSE_FAILURE_RATE,
    check_noise_replay,
    detectable_std_ratios,
    replay_last_round,
    residual_tests,
)
from fedpriv.settings import RunConfig
from tests.audit import runs

Z = ("privacy.noise_multiplier=1.0", "privacy.target_epsilon=null", "model=mlp")
#: DP-FedAvg with z = 1, clip 1, Poisson q = 0.5 of 20 clients (m = 10), three rounds of the
#: 2NN; nearly every client's update norm exceeds 1, so clients are clipped.
DP = ("privacy=user_dp", *Z, "sampling=poisson", "sampling.rate=0.5")
D = 55210


def _has_noise_source() -> bool:
    return "noise_source" in (runs.compose(*runs.DEBUG, *DP).get("privacy") or {})


def _scaled_noise(factor: float):
    from fedpriv.privacy import aggregators

    real = aggregators.add_gaussian
    return lambda tree, std, key: real(tree, factor * std, key)


def _unclipped(tree, clip_norm, per_layer=False):
    from fedpriv.privacy.clipping import l2_norm

    return tree, l2_norm(tree)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("replay")


@pytest.fixture(scope="module")
def honest(root):
    """``honest(name)``: an honest run, trained on first use."""
    variants = {
        "seeded": DP,
        "secure": (*DP, "privacy.noise_source=secure"),
        # The adaptive clip norm comes from checkpoint 1, the server has momentum.
        "adaptive_fedavgm_fixed": (
            "privacy=user_dp_adaptive",
            *Z,
            "sampling=fixed",
            "sampling.cohort_size=10",
            "algorithm=fedavgm",
            "rounds=2",
        ),
    }
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            made[name] = runs.train(root / name, *variants[name])
        return made[name]

    return get


@pytest.fixture(scope="module")
def planted(root):
    """``planted(name)``: a run trained with a bug planted in the code, on first use.

    One-round runs replay from parameters rebuilt from the seed, so their observed std ratio
    also checks that path."""
    from fedpriv.privacy import aggregators
    from fedpriv.privacy.mechanisms import user_dp

    bugs = {
        "noise_0.5x": (aggregators, "add_gaussian", _scaled_noise(0.5), "rounds=1"),
        "noise_0.9x": (aggregators, "add_gaussian", _scaled_noise(0.9), "rounds=1"),
        "no_clipping": (aggregators, "clip", _unclipped, "rounds=2"),
        "realised_divisor": (
            user_dp,
            "dp_fedavg",
            runs.realised_count_aggregator(aggregators.dp_fedavg),
            "rounds=1",
        ),
    }
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            target, attr, value, *overrides = bugs[name]
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(target, attr, value)
                made[name] = runs.train(root / name, *DP, *overrides)
        return made[name]

    return get


def _replay(run_dir: Path):
    return check_noise_replay(read_run(run_dir))


# --------------------------------------------------------------------------- honest runs


def test_honest_seeded_run_passes_and_the_audit_runs_the_replay(honest):
    report = audit_run(honest("seeded"))
    assert report.verdict == "PASS", [(c.name, c.detail) for c in report.failed]
    check = next(c for c in report.checks if c.name == "noise_replay")
    assert check.status == "pass", check.detail
    ev = check.evidence
    assert ev["d"] == D and ev["round"] == 3 and ev["expected_cohort"] == 10.0
    assert ev["std"] == pytest.approx(1.0 * 1.0 / 10)
    assert ev["clients_clipped"] >= 1 and ev["max_preclip_norm"] > 1.0
    arrays = {f"chi2[params.Dense_{i}.{p}]" for i in range(3) for p in ("kernel", "bias")}
    assert set(ev["tests"]) == {"chi2", "ks", "mean_projection", "excess_projection"} | arrays
    assert all(t["level"] == pytest.approx(FALSE_FAILURE_RATE / 10) for t in ev["tests"].values())
    assert 0.98 < ev["observed_std_ratio"] < 1.02
    assert ev["detectable_std_ratio_below"] > 0.98 and ev["detectable_std_ratio_above"] < 1.02
    assert ev["released_params"] == "checkpoint" and ev["noise_source"] == "seeded"
    assert "refutes a std below" in check.detail
    json.dumps(check.to_dict())


def test_reference_matches_the_round_to_float32_rounding(honest):
    """The residual of a seeded run minus the noise regenerated from its seed is the
    reference's disagreement with the vmapped, jitted round: float32 rounding only."""
    import jax

    from fedpriv.fl import experiment
    from fedpriv.privacy.noise import gaussian_like

    run = read_run(honest("seeded"))
    replay = replay_last_round(run)
    round_key = jax.random.fold_in(experiment.purpose_key(0, experiment.KEY_ROUND), 3)
    noise_key = jax.random.split(jax.random.split(round_key)[1])[0]
    params = experiment.build(RunConfig.from_mapping(run.config)).initial_params
    noise = gaussian_like(params, 1.0 * 1.0, noise_key)
    noise = np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(noise)])
    disagreement = replay.residual - noise / 10
    assert np.max(np.abs(disagreement)) < 1e-5 * replay.std
    assert np.linalg.norm(disagreement) < 1e-5 * np.linalg.norm(replay.reference)


def test_honest_secure_noise_run_passes(honest):
    if not _has_noise_source():
        pytest.skip("this configuration has no privacy.noise_source")
    check = _replay(honest("secure"))
    assert check.status == "pass", check.detail
    assert check.evidence["noise_source"] == "secure"
    assert 0.98 < check.evidence["observed_std_ratio"] < 1.02


def test_honest_adaptive_clipping_with_server_momentum_passes(honest):
    run_dir = honest("adaptive_fedavgm_fixed")
    check = _replay(run_dir)
    assert check.status == "pass", check.detail
    ev = check.evidence
    record = runs.lines(run_dir / "ledger.jsonl")[-1]
    # The clip norm of round 2 comes from checkpoint 1 and was adapted after round 1.
    assert ev["clip_norm"] == pytest.approx(record["clip_norm"], rel=1e-6)
    assert ev["clip_norm"] != pytest.approx(0.1)
    z_update = (1.0 - (2 * record["count_noise_std"]) ** -2) ** -0.5
    assert ev["z_update"] == pytest.approx(z_update)
    assert ev["std"] == pytest.approx(z_update * ev["clip_norm"] / 10)


# --------------------------------------------------------------------------- planted in code


@pytest.mark.parametrize("factor", [0.5, 0.9])
def test_too_little_noise_fails(planted, factor):
    check = _replay(planted(f"noise_{factor}x"))
    assert check.status == "fail", check.detail
    ev = check.evidence
    assert ev["round"] == 1 and ev["tests"]["chi2"]["rejected"]
    assert ev["observed_std_ratio"] == pytest.approx(factor, abs=0.02)
    assert "refuted by" in check.detail and "chi2" in check.detail


def test_clipping_removed_fails(planted):
    check = _replay(planted("no_clipping"))
    assert check.status == "fail", check.detail
    ev = check.evidence
    assert ev["clients_clipped"] >= 1
    assert ev["tests"]["excess_projection"]["rejected"]
    assert ev["tests"]["excess_projection"]["statistic"] > 10


def test_dividing_by_the_realised_cohort_fails(planted):
    check = _replay(planted("realised_divisor"))
    ev = check.evidence
    realised = ev["clients"]
    assert realised != 10, "the bug changes nothing in a round whose cohort is the expected one"
    assert check.status == "fail", check.detail
    # (sum + noise) / n: the noise is scaled by m / n, the signal by m / n - 1.
    assert ev["observed_std_ratio"] == pytest.approx(10 / realised, abs=0.02)
    assert ev["tests"]["chi2"]["rejected"]


# --------------------------------------------------------------------------- planted in files


def _claim_twice_the_noise(run_dir: Path) -> None:
    """Rewrites every file so the run consistently claims noise multiplier 2z."""
    from fedpriv import accounting

    cfg_path = run_dir / ".hydra" / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["privacy"]["noise_multiplier"] *= 2
    cfg_path.write_text(yaml.safe_dump(cfg))
    ledger = runs.lines(run_dir / "ledger.jsonl")
    for rec in ledger:
        rec["noise_multiplier"] *= 2
        rec["noise_std"] *= 2
    runs.write_lines(run_dir / "ledger.jsonl", ledger)
    summary = json.loads((run_dir / "summary.json").read_text())
    delta, accountant = summary["delta"], summary["accountant"]
    tracker = accounting.EpsilonTracker(delta, accountant)
    metrics = runs.lines(run_dir / "metrics.jsonl")
    for row, rec in zip(metrics, ledger):
        row["noise_std"] *= 2
        row["epsilon"] = tracker.add(rec)
    runs.write_lines(run_dir / "metrics.jsonl", metrics)
    summary["privacy"]["noise_multiplier"] *= 2
    summary["epsilon"] = {
        name: accounting.epsilon(ledger, delta, name)
        for name in accounting.supported_accountants(ledger)
    }
    summary["epsilon_spent"] = tracker.epsilon
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for meta_path in (run_dir / "checkpoints").glob("*/meta/metadata"):
        meta = json.loads(meta_path.read_text())
        meta["config"]["privacy"]["noise_multiplier"] *= 2
        for event in meta["epsilon_tracker"]["events"]:
            event["noise_multiplier"] *= 2
        meta_path.write_text(json.dumps(meta))


def test_files_that_all_claim_twice_the_noise_fail_only_the_replay(honest, tmp_path):
    run_dir = tmp_path / "claims_2z"
    shutil.copytree(honest("seeded"), run_dir)
    _claim_twice_the_noise(run_dir)
    report = audit_run(run_dir)
    assert {c.name for c in report.failed} == {"noise_replay"}, [
        (c.name, c.detail) for c in report.failed
    ]
    check = next(c for c in report.checks if c.name == "noise_replay")
    assert check.evidence["noise_multiplier"] == 2.0
    assert check.evidence["observed_std_ratio"] == pytest.approx(0.5, abs=0.01)


# --------------------------------------------------------------------------- n/a


def _with_config(src: Path, dst: Path, edit: dict) -> Path:
    run_dir = runs.copy_run(src, dst)
    cfg_path = run_dir / ".hydra" / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    for group, values in edit.items():
        cfg[group] = {**(cfg.get(group) or {}), **values}
    cfg_path.write_text(yaml.safe_dump(cfg))
    return run_dir


def test_an_adaptive_server_optimizer_is_not_applicable(honest, tmp_path):
    edit = {"algorithm": {"name": "fedadam", "server_lr": 0.01}}
    check = _replay(_with_config(honest("seeded"), tmp_path / "r", edit))
    assert check.status == "n/a"
    assert check.detail == (
        "server optimizer fedadam is not affine in the pseudo-gradient, so the released mean "
        "update cannot be recovered from the parameters"
    )


def test_a_missing_checkpoint_of_the_round_before_is_not_applicable(honest, tmp_path):
    run_dir = tmp_path / "keep1"
    shutil.copytree(honest("seeded"), run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "2")
    check = _replay(run_dir)
    assert check.status == "n/a"
    assert "no checkpoint of round 2 (kept: [3])" in check.detail
    assert "checkpoint.keep" in check.detail


@pytest.mark.parametrize(
    "edit, reason",
    [
        ({"privacy": {"name": "example_dp"}}, "example-level DP-SGD"),
        ({"privacy": {"name": "distributed_dp"}}, "distributed DP"),
        ({"secagg": {"mode": "fast"}}, "secure aggregation"),
        ({"hierarchy": {"name": "gateways"}}, "hierarchical aggregation"),
        ({"async": {"name": "fedbuff"}}, "asynchronous"),
        ({"availability": {"kind": "bernoulli"}}, "availability"),
        ({"compute": {"kind": "stragglers"}}, "compute"),
        ({"algorithm": {"name": "fedprox"}}, "fedprox"),
        ({"algorithm": {"name": "fednova"}}, "fednova"),
        ({"canaries": {"count": 4}}, "canary"),
        ({"privacy": {"name": "none"}}, "no differential privacy"),
    ],
)
def test_what_the_reference_does_not_cover_is_not_applicable(honest, tmp_path, edit, reason):
    check = _replay(_with_config(honest("seeded"), tmp_path / "r", edit))
    assert check.status == "n/a" and reason in check.detail, check.detail


# --------------------------------------------------------------------------- statistics


def test_false_failure_rate_is_the_stated_level():
    """Honest residuals (numpy Gaussians, with both projection directions) at a level raised
    to 0.05: the rejection rate is at most the level (Bonferroni) and each test rejects at
    its share alpha / 4, by exact binomial tests at 1e-3."""
    rng = np.random.default_rng(20240601)
    trials, d, alpha, s = 2000, 1000, 0.05, 0.3
    any_rejected = 0
    per_test: dict[str, int] = {}
    for _ in range(trials):
        tests = residual_tests(
            rng.normal(0.0, s, d),
            s,
            rng.normal(size=d),
            np.abs(rng.normal(size=d)),
            false_failure_rate=alpha,
        )
        any_rejected += any(t.rejected for t in tests)
        for t in tests:
            per_test[t.name] = per_test.get(t.name, 0) + t.rejected
    assert set(per_test) == {"chi2", "ks", "mean_projection", "excess_projection"}
    assert scipy.stats.binomtest(any_rejected, trials, alpha, "greater").pvalue > 1e-3
    assert any_rejected > 0.5 * alpha * trials  # the tests are not vacuous
    for name, k in per_test.items():
        assert scipy.stats.binomtest(k, trials, alpha / 4).pvalue > 1e-3, (name, k)


def test_power_against_the_planted_bugs_at_the_stated_level():
    rng = np.random.default_rng(7)
    s = 0.1
    low, high = detectable_std_ratios(D, FALSE_FAILURE_RATE / 4)
    assert 0.985 < low < 0.99 and 1.01 < high < 1.015
    # Noise at 0.9x, and at 1.1x (files claiming less noise than ran): always refuted.
    for factor in (0.9, 1.1):
        for _ in range(10):
            tests = residual_tests(rng.normal(0.0, factor * s, D), s)
            assert "chi2" in {t.name for t in tests if t.rejected}
    # A clipping excess of norm 8 s adds 64 s^2 to sum(r^2), far inside chi2's sd of
    # sqrt(2 d) s^2 = 332 s^2; its matched filter sees 8 sd against a critical 3.5.
    v = rng.normal(size=D)
    excess = 8.0 * s * v / np.linalg.norm(v)
    tests = residual_tests(rng.normal(0.0, s, D) + excess, s, None, excess)
    assert not tests[0].rejected and "excess_projection" in {t.name for t in tests if t.rejected}
    # Division by n = 11 instead of m = 10 where the mean (norm 100 s) dominates the noise:
    # the mean filter sees (10/11 - 1) 100 = -9.1 sd.
    mean = 100 * s * v / np.linalg.norm(v)
    shifted = rng.normal(0.0, s, D) + (10 / 11 - 1) * mean
    tests = residual_tests(shifted, s, mean)
    assert "mean_projection" in {t.name for t in tests if t.rejected}
    # Under the null the same directions are not refuted (the false-failure rate is 1e-3).
    assert not any(t.rejected for t in residual_tests(rng.normal(0.0, s, D), s, mean, excess))


def test_each_parameter_array_is_tested_on_its_own():
    """Noise left off a small array (a bias of 200 of 55,210 coordinates) hardly moves the
    global chi-square but fails the array's own; honest residuals pass every array's test at
    the Bonferroni share of the level."""
    rng = np.random.default_rng(11)
    s = 0.1
    segments = (("kernel", 0, D - 200), ("bias", D - 200, D))
    residual = rng.normal(0.0, s, D)
    residual[D - 200 :] = rng.normal(0.0, 1e-6 * s, 200)  # the bias released un-noised
    tests = {t.name: t for t in residual_tests(residual, s, segments=segments)}
    assert not tests["chi2"].rejected and tests["chi2[bias]"].rejected
    assert tests["chi2"].level == FALSE_FAILURE_RATE / 4  # chi2, ks and two arrays
    rejected = 0
    for _ in range(200):
        honest = residual_tests(rng.normal(0.0, s, D), s, segments=segments)
        rejected += any(t.rejected for t in honest)
    assert scipy.stats.binomtest(rejected, 200, FALSE_FAILURE_RATE, "greater").pvalue > 1e-3
