"""Tree aggregation (privacy.strategy=tree), checked against what is computed independently:
the prefix-sum matrix, the dense decoder applied to the same node Gaussians, the empirical
covariance, a brute-force maximum over participation patterns, dp_accounting's Gaussian
mechanism, and a resumed run against an uninterrupted one."""

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
from fedpriv.fl.sampling import CyclicCohorts, Participation
from fedpriv.privacy import tree_aggregation as tree
from fedpriv.privacy.mechanisms import dp_ftrl
from fedpriv.privacy.noise import gaussian_like
from fedpriv.privacy.plan import build_plan
from fedpriv.settings import LocalTraining
from tests.audit import runs


@pytest.mark.parametrize("n", [1, 2, 7, 8, 11])
@pytest.mark.parametrize("estimator", tree.ESTIMATORS)
def test_the_decoder_recovers_every_prefix_sum(n, estimator):
    c, b = tree.encoder(n), tree.decoder(n, estimator)
    np.testing.assert_allclose(b @ c, np.tril(np.ones((n, n))), atol=1e-12)
    # every row of C is a dyadic block of rounds
    for row in c:
        ones = np.flatnonzero(row)
        size = len(ones)
        assert size & (size - 1) == 0 and ones[0] % size == 0 and np.all(np.diff(ones) == 1)


def test_the_efficient_estimator_has_honakers_closed_form_variance():
    """Honaker's weights: the level-l estimate's variance solves 1/v_l = 1 + 1/(2 v_{l-1});
    the decoder's row norms are the sums of the variances of the decomposition's nodes."""
    n = 13
    v = tree.level_variances(tree.levels(n))
    for lv in range(1, len(v)):
        assert 1 / v[lv] == pytest.approx(1 + 1 / (2 * v[lv - 1]))
    b_eff, b_plain = tree.decoder(n, "efficient"), tree.decoder(n, "plain")
    for t in range(1, n + 1):
        bits = [lv for lv in range(len(v)) if t >> lv & 1]
        assert float(np.sum(b_eff[t - 1] ** 2)) == pytest.approx(sum(v[lv] for lv in bits))
        assert float(np.sum(b_plain[t - 1] ** 2)) == pytest.approx(len(bits))


def _node_noise(n: int, std: float, params, keys) -> np.ndarray:
    """Node ``(l, m)`` completes in round ``(m + 1) 2^l`` and draws from ``fold_in(key, l)``."""
    rows = []
    for lv, m in tree.nodes(n):
        z = gaussian_like(params, std, jax.random.fold_in(keys[(m + 1) * 2**lv - 1], lv))
        rows.append(np.concatenate([np.ravel(z[name]) for name in sorted(z)]))
    return np.stack(rows).astype(np.float64)


def test_streamed_noise_is_the_dense_decoder_times_the_same_gaussians():
    n = 11
    transform = tree.tree_gaussian(tree.levels(n), 0.7)
    params = {"w": jnp.zeros((2, 3)), "b": jnp.zeros(3)}
    keys = [jax.random.fold_in(jax.random.key(5), t) for t in range(n)]
    state = transform.init(params)
    step = jax.jit(transform.update)
    outs = []
    for t in range(n):
        total = jax.tree.map(jnp.zeros_like, params)
        out, state, metrics = step(total, state, keys[t], {"clip_norm": jnp.float32(2.0)})
        assert float(metrics["noise_std"]) == pytest.approx(1.4)
        outs.append(np.concatenate([np.ravel(out[name]) for name in sorted(out)]))
    prefix_noise = tree.decoder(n) @ _node_noise(n, 1.4, params, keys)
    want = np.diff(prefix_noise, axis=0, prepend=0.0)  # what each round adds
    np.testing.assert_allclose(np.stack(outs), want, rtol=2e-4, atol=2e-5)
    # the running sum of the released noise is the decoder's prefix noise
    np.testing.assert_allclose(np.cumsum(np.stack(outs), axis=0), prefix_noise, atol=1e-4)


def test_prefix_noise_covariance_is_sigma_squared_b_b_transposed():
    n, samples = 6, 20000
    transform = tree.tree_gaussian(tree.levels(n), 1.0)
    params = {"x": jnp.zeros(samples)}

    def run(state, key):
        out, state, _ = transform.update(
            {"x": jnp.zeros(samples)}, state, key, {"clip_norm": jnp.float32(1.0)}
        )
        return state, out["x"]

    _, draws = jax.lax.scan(run, transform.init(params), jax.random.split(jax.random.key(3), n))
    prefix = np.cumsum(np.asarray(draws, np.float64), axis=0)  # (n, samples)
    b = tree.decoder(n)
    cov = b @ b.T
    white = np.linalg.solve(np.linalg.cholesky(cov), prefix)
    stat, dof = float(np.sum(white**2)), n * samples
    assert scipy.stats.chi2.sf(stat, dof) > 1e-4 and scipy.stats.chi2.cdf(stat, dof) > 1e-4
    np.testing.assert_allclose(np.cov(prefix), cov, atol=6 * np.sqrt(2 / samples) * cov.max())


def _brute_force(n: int, t: int, b: int, k: int) -> float:
    """max over patterns (rounds >= b apart, at most k) of ||C_t u||^2, C_t the nodes that
    are complete after round t."""
    c = tree.encoder(n)
    done = [i for i, (lv, m) in enumerate(tree.nodes(n)) if (m + 1) * 2**lv <= t]
    ct = c[done][:, :t]
    best = 0.0
    for size in range(1, k + 1):
        for pattern in itertools.combinations(range(t), size):
            if any(q - p < b for p, q in zip(pattern, pattern[1:])):
                continue
            u = np.zeros(t)
            u[list(pattern)] = 1.0
            best = max(best, float(np.sum((ct @ u) ** 2)))
    return best


@pytest.mark.parametrize("n", [8, 10])
@pytest.mark.parametrize("b,k", [(1, 1), (1, 2), (1, 99), (2, 1), (2, 99), (3, 2), (3, 99)])
def test_sensitivity_bounds_every_prefix_and_is_exact_where_the_bound_is(n, b, k):
    k = min(k, math.ceil(n / b))
    prefixes = tree.sensitivity(n, b, k)
    assert np.all(np.diff(prefixes) >= 0)
    brute = [_brute_force(n, t, b, k) for t in range(1, n + 1)]
    assert all(p >= q - 1e-9 for p, q in zip(prefixes, brute))
    if k == 1:  # one participation: the deepest leaf, one node per level
        assert prefixes[-1] == pytest.approx(brute[-1]) == tree.levels(n)
    if b == 1 and k == n:  # every round: the sum of the squared node sizes
        sizes = [2**lv for lv, _ in tree.nodes(n)]
        assert prefixes[-1] == pytest.approx(brute[-1]) == sum(s * s for s in sizes)
    # the bound is not loose for the whole run on these sizes
    assert prefixes[-1] <= 1.1 * brute[-1]


def test_the_plan_is_one_gaussian_mechanism_of_the_tree_sensitivity():
    sampler = CyclicCohorts(population=40, groups=4, cohort_size=5)
    plan = build_plan(
        {"name": "dp_ftrl", "strategy": "tree", "target_epsilon": 2.0, "delta": 1e-4},
        sampler,
        LocalTraining(batch_size=2),
        rounds=16,
    )
    corr = plan.correlation
    assert corr.participation == Participation(4, 4)
    assert corr.run_sensitivity**2 == pytest.approx(_brute_force(16, 16, 4, 4))
    records = plan.mechanism.planned_records(plan)
    assert accounting.epsilon(records, 1e-4, "pld") <= 2.0
    direct = dp_accounting.pld.PLDAccountant()
    direct.compose(dp_accounting.GaussianDpEvent(plan.noise_multiplier))
    assert accounting.epsilon(records, 1e-4, "pld") == pytest.approx(
        direct.get_epsilon(1e-4), rel=2e-3
    )
    # noise on every node: z * clip * s_n
    assert records[0]["noise_std"] == pytest.approx(plan.noise_multiplier * corr.run_sensitivity)
    assert records[0]["strategy"] == "tree"


def test_neighbouring_populations_release_node_sums_apart_by_the_claimed_sensitivity():
    """Two populations that differ in one client (its updates zeroed out), the same keys:
    the tree's node sums of the released noised sums differ by at most
    ``clip * run_sensitivity``, with equality for the client of group 0."""
    n, b, m, clip = 8, 2, 3, 0.5
    sampler = CyclicCohorts(population=b * m, groups=b, cohort_size=m)
    plan = build_plan(
        {"name": "dp_ftrl", "strategy": "tree", "noise_multiplier": 1.0, "clip_norm": clip},
        sampler,
        LocalTraining(batch_size=2),
        rounds=n,
    )
    agg = plan.aggregator("count", None, {"w": jnp.zeros(3)})
    rng = np.random.default_rng(0)
    updates = {c: rng.normal(size=3).astype(np.float32) for c in range(b * m)}
    updates[0] = np.array([4.0, 0.0, 0.0], np.float32)

    def released(without: int) -> np.ndarray:
        state, out = agg.init(), []
        for t in range(1, n + 1):
            ids, _ = sampler.sample(jax.random.fold_in(jax.random.key(1), t), t)
            total, weight, stats = None, None, {}
            for cid in ids.tolist():
                c, w, st = agg.contribution(
                    {"w": jnp.asarray(updates[cid])},
                    jnp.int32(10),
                    jnp.float32(0.0 if cid == without else 1.0),
                    state,
                )
                total = c if total is None else jax.tree.map(jnp.add, total, c)
                weight = w if weight is None else weight + w
                stats = {key: stats.get(key, 0.0) + v for key, v in st.items()}
            mean, state, _ = agg.finalize(
                total, weight, stats, state, jax.random.fold_in(jax.random.key(2), t)
            )
            out.append(np.asarray(mean["w"], np.float64))
        return np.stack(out)

    base = released(-1)
    bound = clip * plan.correlation.run_sensitivity
    norms = [np.linalg.norm(tree.encoder(n) @ ((base - released(c)) * m)) for c in (0, 1)]
    assert norms[0] == pytest.approx(bound, rel=1e-3)
    assert norms[1] <= bound * (1 + 1e-4)


def test_the_noise_state_is_levels_plus_one_model_copies():
    plan = dp_ftrl.plan_for("tree", 20, Participation(4, 5), delta=1e-5)
    params = {"w": jnp.zeros((7, 3)), "b": jnp.zeros(3)}
    state = plan.mechanism.aggregator(plan, "count", None, params).init()
    model_bytes = sum(int(x.nbytes) for x in jax.tree.leaves(params))
    noise_bytes = sum(int(x.nbytes) for x in jax.tree.leaves(state)) - 4 - 4  # clip, counter
    assert noise_bytes == (tree.levels(20) + 1) * model_bytes


def test_a_resumed_tree_run_is_bit_identical_and_passes_the_audit(tmp_path):
    common = (
        "privacy=dp_ftrl",
        "privacy.strategy=tree",
        "privacy.noise_multiplier=1.0",
        "privacy.target_epsilon=null",
        "sampling=cyclic",
        "sampling.groups=2",
        "sampling.cohort_size=5",
    )
    straight = runs.train(tmp_path / "a", *common, "rounds=7")
    resumed = runs.train_resumed(tmp_path / "b", *common, rounds=7, every=3)
    with np.load(straight / "final_params.npz") as a, np.load(resumed / "final_params.npz") as b:
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])
    from fedpriv.audit import audit_run

    assert audit_run(resumed).exit_status == 0
