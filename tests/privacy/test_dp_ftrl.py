"""Correlated-noise DP (privacy=dp_ftrl), checked against things computed independently:
the dense product C^-1 Z with the same keys, the empirical covariance, a brute-force
maximum over participation patterns, the cyclic sampler's pattern over a whole run,
dp_accounting's Gaussian mechanism, and an uninterrupted run against a resumed one."""

from __future__ import annotations

import itertools
import math

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from fedpriv import accounting
from fedpriv.errors import ConfigError
from fedpriv.fl.sampling import CyclicCohorts, FixedCohort, Participation
from fedpriv.privacy.mechanisms import dp_ftrl
from fedpriv.privacy.noise import gaussian_like
from fedpriv.privacy.plan import build_plan
from fedpriv.settings import LocalTraining
from tests.audit import runs

STRATEGIES = [("independent", 1, 1), ("banded", 3, 1), ("blt", 1, 2)]


def _dense(coefficients: np.ndarray) -> np.ndarray:
    """The lower-triangular Toeplitz matrix with first column ``coefficients``."""
    n = len(coefficients)
    return np.array([[coefficients[i - j] if i >= j else 0.0 for j in range(n)] for i in range(n)])


@pytest.mark.parametrize("strategy,bands,buffers", STRATEGIES)
def test_streamed_noise_is_the_dense_inverse_times_the_same_gaussians(strategy, bands, buffers):
    n = 9
    part = Participation(3, 3)
    corr = dp_ftrl.build_correlation(strategy, n, part, bands, buffers)
    transform = dp_ftrl.correlated_gaussian(corr.noising, 0.7)
    params = {"w": jnp.zeros((2, 3)), "b": jnp.zeros(3)}
    state = transform.init(params)
    step = jax.jit(transform.update)
    outs, zs = [], []
    for t in range(n):
        key = jax.random.fold_in(jax.random.key(5), t)
        total = jax.tree.map(jnp.zeros_like, params)
        out, state, metrics = step(total, state, key, {"clip_norm": jnp.float32(2.0)})
        assert float(metrics["noise_std"]) == pytest.approx(1.4)
        outs.append(np.concatenate([np.ravel(out["b"]), np.ravel(out["w"])]))
        z = gaussian_like(total, 1.4, key)
        zs.append(np.concatenate([np.ravel(z["b"]), np.ravel(z["w"])]))
    want = np.linalg.inv(_dense(corr.coefficients)) @ np.stack(zs).astype(np.float64)
    np.testing.assert_allclose(np.stack(outs), want, rtol=2e-4, atol=2e-5)


def test_noise_covariance_is_sigma_squared_cinv_cinv_transposed():
    n, samples = 6, 20000
    corr = dp_ftrl.build_correlation("banded", n, Participation(2, 3), 2, 1)
    transform = dp_ftrl.correlated_gaussian(corr.noising, 1.0)
    params = {"x": jnp.zeros(samples)}  # one coordinate per sample: i.i.d. draws of the noise

    def run(state, key):
        out, state, _ = transform.update(
            {"x": jnp.zeros(samples)}, state, key, {"clip_norm": jnp.float32(1.0)}
        )
        return state, out["x"]

    keys = jax.random.split(jax.random.key(11), n)
    _, draws = jax.lax.scan(run, transform.init(params), keys)
    draws = np.asarray(draws, np.float64)  # (n, samples)
    cinv = np.linalg.inv(_dense(corr.coefficients))
    cov = cinv @ cinv.T
    # Whitened by the claimed covariance, the draws are i.i.d. N(0, I_n): their squared norms
    # are chi-square with n degrees of freedom.
    white = np.linalg.solve(np.linalg.cholesky(cov), draws)
    stat = float(np.sum(white**2))
    dof = n * samples  # two-sided, false-failure rate 2e-4
    assert scipy.stats.chi2.sf(stat, dof) > 1e-4 and scipy.stats.chi2.cdf(stat, dof) > 1e-4
    # and each entry, off-diagonal structure included, within 6 standard errors
    emp = np.cov(draws)
    np.testing.assert_allclose(emp, cov, atol=6 * np.sqrt(2 / samples) * cov.max())


def _brute_force_sensitivity(c: np.ndarray, t: int, b: int, k: int) -> float:
    """max over participation patterns (rounds >= b apart, at most k) of ||C[:t] u||^2."""
    dense = _dense(c[:t])
    best = 0.0
    for size in range(1, k + 1):
        for pattern in itertools.combinations(range(t), size):
            if any(q - p < b for p, q in zip(pattern, pattern[1:])):
                continue
            u = np.zeros(t)
            u[list(pattern)] = 1.0
            best = max(best, float(np.sum((dense @ u) ** 2)))
    return best


@pytest.mark.parametrize("strategy,bands,buffers", STRATEGIES[1:])
@pytest.mark.parametrize("b", [1, 2, 3])
def test_sensitivity_and_its_prefixes_are_the_brute_force_maximum(strategy, bands, buffers, b):
    n = 8
    k = math.ceil(n / b)
    corr = dp_ftrl.build_correlation(strategy, n, Participation(b, k), bands, buffers)
    prefixes = np.cumsum(corr.increments)
    for t in range(1, n + 1):
        brute = _brute_force_sensitivity(corr.coefficients, t, b, k)
        assert prefixes[t - 1] == pytest.approx(brute, rel=1e-9), t
    assert corr.run_sensitivity**2 == pytest.approx(prefixes[-1], rel=1e-9)


def test_worst_case_refuses_coefficients_the_theorem_does_not_cover():
    with pytest.raises(ValueError, match="non-increasing"):
        dp_ftrl.worst_case_participation(np.array([1.0, 0.2, 0.5]), Participation(1, 3))


def test_cyclic_sampler_enforces_its_participation_over_a_whole_run():
    sampler = CyclicCohorts(population=23, groups=4, cohort_size=5)
    rounds = 30
    part = sampler.participation(rounds)
    assert part == Participation(4, 8)
    seen: dict[int, list[int]] = {}
    for t in range(1, rounds + 1):
        ids, mask = sampler.sample(jax.random.fold_in(jax.random.key(0), t), t)
        assert mask.all() and len(set(ids.tolist())) == 5
        for cid in ids.tolist():
            seen.setdefault(cid, []).append(t)
    for cid, when in seen.items():
        assert all(q - p >= part.min_separation for p, q in zip(when, when[1:])), cid
        assert len(when) <= part.max_participations
        assert {cid % 4} == {(t - 1) % 4 for t in when}
    assert FixedCohort(10, 3).participation(7) == Participation(1, 7)


def _plan(rounds=12, sampler=None, **privacy):
    block = {"name": "dp_ftrl", **privacy}
    sampler = sampler or CyclicCohorts(40, 4, 5)
    return build_plan(block, sampler, LocalTraining(batch_size=2), rounds=rounds)


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_calibration_is_one_sided_and_the_run_is_one_gaussian_mechanism(accountant):
    plan = _plan(target_epsilon=2.0, delta=1e-4, accountant=accountant, strategy="banded")
    records = plan.mechanism.planned_records(plan)
    spent = accounting.epsilon(records, 1e-4, accountant)
    assert spent <= 2.0
    smaller = plan.mechanism.planned_records(
        type(plan)(**{**plan.__dict__, "noise_multiplier": plan.noise_multiplier * 0.98})
    )
    assert accounting.epsilon(smaller, 1e-4, accountant) > 2.0
    # The whole ledger is the Gaussian mechanism with multiplier z, computed here directly.
    direct = (
        dp_accounting.pld.PLDAccountant()
        if accountant == "pld"
        else dp_accounting.rdp.RdpAccountant()
    )
    direct.compose(dp_accounting.GaussianDpEvent(plan.noise_multiplier))
    assert spent == pytest.approx(direct.get_epsilon(1e-4), rel=2e-3)
    # A prefix of t rounds is the Gaussian mechanism of the prefix's sensitivity.
    t = 5
    s_t = math.sqrt(float(np.sum(plan.correlation.increments[:t])))
    prefix = dp_accounting.rdp.RdpAccountant()
    prefix.compose(
        dp_accounting.GaussianDpEvent(
            plan.noise_multiplier * plan.correlation.run_sensitivity / s_t
        )
    )
    assert accounting.epsilon(records[:t], 1e-4, "rdp") == pytest.approx(
        prefix.get_epsilon(1e-4), rel=1e-6
    )


def test_independent_noise_under_fixed_cohorts_is_k_fold_gaussian_composition():
    """Without correlation and without amplification, a client in every round: sensitivity
    sqrt(n), i.e. n Gaussian releases of multiplier z sqrt(n) each."""
    plan = _plan(rounds=6, sampler=FixedCohort(40, 5), noise_multiplier=3.0, strategy="independent")
    assert plan.correlation.run_sensitivity == pytest.approx(math.sqrt(6))
    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(dp_accounting.GaussianDpEvent(3.0 * math.sqrt(6)), 6)
    records = plan.mechanism.planned_records(plan)
    assert accounting.epsilon(records, 1e-5, "rdp") == pytest.approx(acc.get_epsilon(1e-5))


def test_bad_settings_name_their_field():
    with pytest.raises(ConfigError) as err:
        _plan(noise_multiplier=1.0, strategy="tree-ish")
    assert err.value.field == "privacy.strategy"
    with pytest.raises(ConfigError) as err:
        _plan(noise_multiplier=1.0, strategy="blt", buffers=16)
    assert err.value.field == "privacy.buffers"


def test_a_resumed_run_is_bit_identical_to_an_uninterrupted_one(tmp_path):
    common = (
        "privacy=dp_ftrl",
        "privacy.strategy=blt",
        "privacy.noise_multiplier=1.0",
        "privacy.target_epsilon=null",
        "sampling=cyclic",
        "sampling.groups=2",
        "sampling.cohort_size=5",
    )
    straight = runs.train(tmp_path / "a", *common, "rounds=6")
    resumed = runs.train_resumed(tmp_path / "b", *common, rounds=6, every=3)
    with np.load(straight / "final_params.npz") as a, np.load(resumed / "final_params.npz") as b:
        assert sorted(a) == sorted(b)
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])
    ledger = runs.lines(resumed / "ledger.jsonl")
    assert [r["round"] for r in ledger if not r.get("replay")] == list(range(1, 7))
    from fedpriv.audit import audit_run

    assert audit_run(resumed).exit_status == 0


def test_fedpriv_account_answers_for_a_strategy(capsys):
    import json

    from fedpriv.cli import account

    args = ["--strategy", "independent", "--min-separation", "5", "--rounds", "20"]
    account.main(["--noise-multiplier", "2", *args, "--delta", "1e-5", "--json"])
    got = json.loads(capsys.readouterr().out)
    # Independent noise, 4 participations of a client: one Gaussian of multiplier 2 in all.
    acc = dp_accounting.pld.PLDAccountant()
    acc.compose(dp_accounting.GaussianDpEvent(2.0))
    assert got["pld"] == pytest.approx(acc.get_epsilon(1e-5), rel=1e-3)
    account.main(["--target-epsilon", str(got["pld"]), *args, "--delta", "1e-5", "--json"])
    z = json.loads(capsys.readouterr().out)["pld"]
    assert z == pytest.approx(2.0, rel=2e-3) and z >= 2.0 * (1 - 1e-3)
    with pytest.raises(SystemExit) as stop:
        account.main(
            ["--noise-multiplier", "2", *args, "--sampling-rate", "0.1", "--delta", "1e-5"]
        )
    assert stop.value.code == 2
    assert "--sampling-rate" in capsys.readouterr().err


def test_the_audit_fails_a_ledger_whose_sensitivity_was_understated(tmp_path):
    import json
    import shutil

    from fedpriv.audit import audit_run

    run = runs.train(
        tmp_path / "run",
        "privacy=dp_ftrl",
        "privacy.noise_multiplier=1.0",
        "privacy.target_epsilon=null",
        "sampling=cyclic",
        "sampling.groups=2",
        "sampling.cohort_size=5",
        "rounds=4",
    )
    assert audit_run(run).exit_status == 0
    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    ledger = bad / "ledger.jsonl"
    rows = [json.loads(x) for x in ledger.read_text().splitlines()]
    for r in rows:  # a smaller claimed sensitivity, consistent with itself
        r["run_sensitivity"] *= 0.9
        r["sensitivity_increment"] *= 0.81
        r["noise_std"] = r["noise_multiplier"] * r["clip_norm"] * r["run_sensitivity"]
    ledger.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = audit_run(bad)
    assert report.exit_status == 1
    text = json.dumps(report.to_dict()) if hasattr(report, "to_dict") else str(report)
    assert "run_sensitivity" in text


@pytest.mark.parametrize("strategy,bands,buffers,copies", [("banded", 4, 1, 3), ("blt", 1, 3, 3)])
def test_the_noise_state_is_model_copies_in_the_server_state(strategy, bands, buffers, copies):
    """What the planner's memory estimate counts: ``bands - 1`` (banded) or ``buffers``
    (BLT) copies of the model in the aggregation state, and nothing per client."""
    plan = dp_ftrl.plan_for(
        strategy, 20, Participation(4, 5), bands=bands, buffers=buffers, delta=1e-5
    )
    params = {"w": jnp.zeros((7, 3)), "b": jnp.zeros(3)}
    state = plan.mechanism.aggregator(plan, "count", None, params).init()
    model_bytes = sum(int(x.nbytes) for x in jax.tree.leaves(params))
    noise_bytes = sum(int(x.nbytes) for x in jax.tree.leaves(state)) - 4  # the clip's scalar
    assert noise_bytes == copies * model_bytes


def test_the_correlated_noise_benchmark_runs():
    from experiments.benchmarks import correlated_noise

    out = correlated_noise.main(["--cohort", "8", "--pairs", "1", "--json"])
    assert set(out) >= {"banded_4_overhead", "blt_3_overhead", "dp_fedavg_round_s"}
    assert out["banded_4_state_model_copies"] == 3.0


def test_the_audit_redraws_the_cohorts_and_fails_a_sampler_that_breaks_its_pattern(
    tmp_path, monkeypatch
):
    """A planted bug: cyclic sampling that draws from every client, not the round's group.
    The ledger still claims separation 2; the audit re-draws the cohorts from the seed and
    finds a client closer together than that."""
    from fedpriv.audit import audit_run

    def from_everyone(self, key, rnd=1):
        ids = np.random.default_rng(int(rnd)).choice(self.population, self.cohort_size, False)
        return np.sort(ids).astype(np.int64), np.ones(self.cohort_size, bool)

    monkeypatch.setattr(CyclicCohorts, "sample", from_everyone)
    run = runs.train(
        tmp_path / "run",
        "privacy=dp_ftrl",
        "privacy.noise_multiplier=1.0",
        "privacy.target_epsilon=null",
        "sampling=cyclic",
        "sampling.groups=2",
        "sampling.cohort_size=8",
        "rounds=6",
    )
    report = audit_run(run)
    assert report.exit_status == 1
    assert "closer than the claimed separation 2" in str(report.to_dict())


@pytest.mark.parametrize("strategy,bands,buffers", STRATEGIES)
def test_neighbouring_populations_release_streams_apart_by_the_claimed_sensitivity(
    strategy, bands, buffers
):
    """Two populations that differ in one client (its updates zeroed out), the same keys:
    the released noised means differ by that client's clipped updates only, and ``C`` applied
    to the difference over the whole run has norm ``clip * run_sensitivity`` at most, with
    equality for a client of group 0 (rounds 1, 1 + b, ...: the worst-case pattern)."""
    n, b, m, clip = 9, 3, 4, 0.5
    sampler = CyclicCohorts(population=b * m, groups=b, cohort_size=m)  # a round = its group
    plan = build_plan(
        {
            "name": "dp_ftrl",
            "strategy": strategy,
            "bands": bands,
            "buffers": buffers,
            "noise_multiplier": 1.0,
            "clip_norm": clip,
        },
        sampler,
        LocalTraining(batch_size=2),
        rounds=n,
    )
    params = {"w": jnp.zeros(3)}
    agg = plan.aggregator("count", None, params)
    rng = np.random.default_rng(0)
    updates = {c: rng.normal(size=3).astype(np.float32) for c in range(b * m)}
    updates[0] = np.array([5.0, 0.0, 0.0], np.float32)  # far beyond the clip, every round

    def released(without: int | None) -> np.ndarray:
        state, out = agg.init(), []
        for t in range(1, n + 1):
            ids, _ = sampler.sample(jax.random.fold_in(jax.random.key(1), t), t)
            total = weight = None
            stats: dict = {}
            for cid in ids.tolist():
                mask = jnp.float32(0.0 if cid == without else 1.0)
                c, w, st = agg.contribution(
                    {"w": jnp.asarray(updates[cid])}, jnp.int32(10), mask, state
                )
                total = c if total is None else jax.tree.map(jnp.add, total, c)
                weight = w if weight is None else weight + w
                stats = {k: stats.get(k, 0.0) + v for k, v in st.items()}
            mean, state, _ = agg.finalize(
                total, weight, stats, state, jax.random.fold_in(jax.random.key(2), t)
            )
            out.append(np.asarray(mean["w"], np.float64))
        return np.stack(out)

    diff = (released(None) - released(0)) * m  # the zeroed client's clipped sums, per round
    assert np.count_nonzero(np.abs(diff).max(axis=1) > 1e-4) == math.ceil(n / b)
    streamed = _dense(plan.correlation.coefficients) @ diff
    norm = float(np.linalg.norm(streamed))
    assert norm <= clip * plan.correlation.run_sensitivity * (1 + 1e-4)
    assert norm >= clip * plan.correlation.run_sensitivity * (1 - 1e-3)
    # a client of another group participates later: never more than the claim
    other = (released(None) - released(1)) * m
    assert float(np.linalg.norm(_dense(plan.correlation.coefficients) @ other)) <= (
        clip * plan.correlation.run_sensitivity * (1 + 1e-4)
    )
