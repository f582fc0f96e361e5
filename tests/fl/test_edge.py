"""Edge devices: availability and dropout, heterogeneous compute, FedNova and FedProx."""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedpriv.config import validate
from fedpriv.errors import ConfigError
from fedpriv.fl import edge as edge_lib
from fedpriv.fl.aggregators import weighted_mean
from fedpriv.fl.client import (
    ClientBatch,
    fednova_norm,
    make_client_update,
    step_budget_mask,
)
from fedpriv.fl.round import RoundInputs, init_server_state, make_round
from fedpriv.fl.server import server_optimizer
from fedpriv.settings import RunConfig
from tests.audit import runs
from tests.conftest import run_cli

from .helpers import cohort, toy_client_update, toy_model, toy_population

Z = ("privacy.noise_multiplier=1.0", "privacy.target_epsilon=null")


def _flat(tree):
    return np.concatenate([np.ravel(np.asarray(v)) for v in jax.tree.leaves(tree)])


def _round(store, edge=None, chunk=6, cu=None):
    model, params = toy_model(store)
    n_cap = int(store.client_sizes.max())
    cu = cu or toy_client_update(model, n_cap)
    agg = weighted_mean()
    sopt = server_optimizer("fedavg")
    fn = jax.jit(make_round(cu, agg, sopt, chunk, edge=edge))
    return fn, init_server_state(params, sopt, agg), n_cap


def _trace_file(path: Path, rows) -> Path:
    path.write_text(
        "client,available_from,available_to\n" + "".join(f"{c},{a},{b}\n" for c, a, b in rows)
    )
    return path


# --------------------------------------------------------------------------- reductions


def _keep_everyone(tmp_path: Path, population: int) -> dict[str, edge_lib.EdgeSpec]:
    trace = edge_lib.read_trace(
        _trace_file(tmp_path / "t.csv", [(c, 0, 1e6) for c in range(population)])
    )
    key = jax.random.key(9)
    return {
        "bernoulli_0": edge_lib.EdgeSpec(available=edge_lib.bernoulli(0.0)),
        "diurnal_always": edge_lib.EdgeSpec(available=edge_lib.diurnal(1.0, 1.0, 24.0, key)),
        "trace_always": edge_lib.EdgeSpec(available=edge_lib.trace(trace, population)),
    }


def test_availability_that_keeps_everyone_is_the_synchronous_round_bit_for_bit(tmp_path):
    store = toy_population(30)
    plain, state, n_cap = _round(store)
    inputs = cohort(store, np.arange(3, 21), n_cap, pad_to=24)
    key = jax.random.key(4)
    ref, ref_m = plain(state, inputs, key)
    for name, edge in _keep_everyone(tmp_path, 30).items():
        fn, state, _ = _round(store, edge)
        s = state
        for r in range(2):  # the round index moves the diurnal and trace clocks
            s, m = fn(s, inputs, jax.random.fold_in(key, r))
        s_ref = state
        for r in range(2):
            s_ref, _ = plain(s_ref, inputs, jax.random.fold_in(key, r))
        np.testing.assert_array_equal(_flat(s.params), _flat(s_ref.params), err_msg=name)
        assert int(m["sampled"]) == 18 and int(m["dropped"]) == 0, name
        assert int(m["participated"]) == int(m["clients"]) == 18, name
    assert int(ref_m["clients"]) == 18 and "dropped" not in ref_m


@pytest.mark.parametrize(
    "work",
    [edge_lib.uniform_work(1.0), edge_lib.straggler_work(0.0), edge_lib.straggler_work(0.0, 0.1)],
)
def test_compute_models_that_change_nothing_are_bit_equal(work):
    store = toy_population(20)
    model, params = toy_model(store)
    n_cap = int(store.client_sizes.max())
    plain = make_client_update(model.apply, optax.sgd(0.1), 2, 3, n_cap)
    masked = make_client_update(model.apply, optax.sgd(0.1), 2, 3, n_cap, work_fraction=work)
    inputs = cohort(store, np.arange(12), n_cap)
    fa, state, _ = _round(store, cu=plain)
    fb, _, _ = _round(store, cu=masked)
    a, ma = fa(state, inputs, jax.random.key(1))
    b, mb = fb(state, inputs, jax.random.key(1))
    np.testing.assert_array_equal(_flat(a.params), _flat(b.params))
    assert float(ma["local_steps"]) == float(mb["local_steps"])


def test_default_configuration_builds_no_edge_stage_and_no_local_options():
    cfg = runs.compose(*runs.DEBUG)
    validate(cfg)
    assert cfg["availability"] == {"kind": "none"} and cfg["compute"] == {"kind": "none"}
    assert edge_lib.local_options(RunConfig.from_mapping(cfg)) == {}
    spec = edge_lib.build_edge(
        RunConfig.from_mapping(cfg),
        population=20,
        seed_key=jax.random.key(0),
        user_dp=False,
        local_steps=4,
    )
    assert spec is None


def test_dropout_zero_and_no_stragglers_leave_a_run_bit_equal(tmp_path):
    """Through the configuration: every option at its no-op setting equals the default run."""
    from fedpriv.fl import experiment

    def final(*overrides):
        cfg = runs.compose(*runs.DEBUG, "rounds=2", *overrides)
        validate(cfg)
        exp = experiment.build(RunConfig.from_mapping(cfg))
        state = exp.state
        for rnd in (1, 2):
            state, _ = exp.round_fn(state, exp.cohort(rnd), exp.round_key(rnd))
        return _flat(state.params)

    base = final()
    trace = _trace_file(tmp_path / "all.csv", [(c, -1, 100) for c in range(20)])
    for overrides in [
        ("availability=bernoulli", "availability.dropout=0"),
        ("availability=diurnal", "availability.low=1", "availability.high=1"),
        ("availability=trace", f"availability.path={trace}"),
        ("compute=uniform", "compute.low_fraction=1"),
        ("compute=stragglers", "compute.fraction=0"),
        ("compute=stragglers", "compute.fraction=0", "compute.drop=true"),
        ("algorithm=fedprox", "algorithm.mu=0"),
    ]:
        np.testing.assert_array_equal(final(*overrides), base, err_msg=str(overrides))
    assert not np.array_equal(final("algorithm=fedprox", "algorithm.mu=0.5"), base)


# --------------------------------------------------------------------------- dropout


def test_dropped_clients_are_the_masked_clients_and_are_counted():
    store = toy_population(40)
    edge = edge_lib.EdgeSpec(available=edge_lib.bernoulli(0.3))
    fn, state, n_cap = _round(store, edge, chunk=8)
    plain, _, _ = _round(store, chunk=8)
    inputs = cohort(store, np.arange(2, 34), n_cap, pad_to=40)
    key = jax.random.key(11)
    new, m = fn(state, inputs, key)
    selected, sel_m = edge.select(inputs, state.round, key)
    kept = np.asarray(selected.client_mask) > 0
    sampled = np.asarray(inputs.client_mask) > 0
    assert int(m["sampled"]) == sampled.sum() == 32
    assert int(m["dropped"]) == (sampled & ~kept).sum() > 0
    assert int(m["participated"]) == int(m["clients"]) == kept.sum()
    assert int(m["sampled"]) == int(m["dropped"]) + int(m["participated"])
    # The same round with those slots masked out by hand is the same round.
    by_hand = inputs._replace(client_mask=np.where(kept, inputs.client_mask, 0.0))
    ref, ref_m = plain(state, by_hand, key)
    np.testing.assert_array_equal(_flat(new.params), _flat(ref.params))
    assert float(m["train_loss"]) == float(ref_m["train_loss"])
    # The draw is per client id, not per slot: a shuffled cohort drops the same clients.
    perm = np.random.default_rng(0).permutation(40)
    shuffled = RoundInputs(*(np.asarray(a)[perm] for a in inputs))
    sel2, _ = edge.select(shuffled, state.round, key)
    dropped_ids = set(np.asarray(inputs.client_ids)[sampled & ~kept].tolist())
    k2 = np.asarray(sel2.client_mask) > 0
    s2 = np.asarray(shuffled.client_mask) > 0
    assert set(np.asarray(shuffled.client_ids)[s2 & ~k2].tolist()) == dropped_ids


def test_bernoulli_dropout_rate_is_right():
    avail = jax.jit(edge_lib.bernoulli(0.3))
    ids = jnp.arange(20000)
    rates = [1.0 - float(jnp.mean(avail(ids, 0.0, jax.random.key(r)))) for r in range(5)]
    se = np.sqrt(0.3 * 0.7 / 20000)
    assert all(abs(r - 0.3) < 5 * se for r in rates)
    assert len({round(r, 6) for r in rates}) > 1  # fresh draws every round key


def test_dropped_clients_data_does_not_influence_the_model():
    """Neighbouring cohorts: change everything a dropped client holds; nothing else moves."""
    store = toy_population(30)
    edge = edge_lib.EdgeSpec(available=edge_lib.bernoulli(0.5))
    fn, state, n_cap = _round(store, edge, chunk=5)
    inputs = cohort(store, np.arange(20), n_cap)
    key = jax.random.key(5)
    selected, _ = edge.select(inputs, state.round, key)
    dropped = np.flatnonzero(np.asarray(selected.client_mask) == 0)
    assert len(dropped) > 0
    a, ma = fn(state, inputs, key)
    x = np.array(inputs.x)
    y = np.array(inputs.y)
    count = np.array(inputs.count)
    x[dropped] = np.nan
    y[dropped] = 0
    count[dropped] = n_cap
    b, mb = fn(state, inputs._replace(x=x, y=y, count=count), key)
    np.testing.assert_array_equal(_flat(a.params), _flat(b.params))
    assert int(mb["nonfinite_clients"]) == 0 and int(ma["clients"]) == int(mb["clients"])


def test_poisson_dropout_divides_by_the_expected_cohort_and_passes_the_audit(tmp_path):
    from fedpriv.audit import audit_run

    overrides = (
        "privacy=user_dp",
        *Z,
        "sampling=poisson",
        "sampling.rate=0.5",
        "availability=bernoulli",
        "availability.dropout=0.3",
        "rounds=6",
    )
    run_dir = runs.train(tmp_path / "run", *overrides)
    metrics = runs.metrics(run_dir / "metrics.jsonl")
    ledger = runs.lines(run_dir / "ledger.jsonl")
    assert len(metrics) == len(ledger) == 6
    for row, rec in zip(metrics, ledger):
        assert row["denominator"] == pytest.approx(0.5 * 20)  # q N, every round
        assert row["sampled"] == row["dropped"] + row["participated"]
        assert row["participated"] == row["clients"]
        assert "realised_cohort" not in rec and "dropped" not in rec  # diagnostics
    assert sum(r["dropped"] for r in metrics) > 0
    report = audit_run(run_dir)
    assert report.verdict == "PASS", [(c.name, c.detail) for c in report.failed]
    checks = {c.name: c for c in report.checks}
    assert checks["denominator"].status == "pass"


def test_renormalising_by_survivors_fails_the_denominator_check(tmp_path, monkeypatch):
    from fedpriv.audit import audit_run
    from fedpriv.privacy import aggregators
    from fedpriv.privacy.mechanisms import user_dp

    monkeypatch.setattr(user_dp, "dp_fedavg", runs.realised_count_aggregator(aggregators.dp_fedavg))
    run_dir = runs.train(
        tmp_path / "bug",
        "privacy=user_dp",
        *Z,
        "sampling=poisson",
        "sampling.rate=0.5",
        "availability=bernoulli",
        "rounds=4",
    )
    report = audit_run(run_dir)
    assert report.verdict == "FAIL"
    assert {c.name for c in report.failed} == {"denominator"}
    check = next(c for c in report.checks if c.name == "denominator")
    assert "realised count" in check.detail


# --------------------------------------------------------------------------- diurnal, trace


def test_diurnal_availability_follows_the_cosine():
    phase_key = jax.random.key(3)
    low, high, period = 0.1, 0.9, 24.0
    avail = jax.jit(edge_lib.diurnal(low, high, period, phase_key))
    ids = jnp.arange(40000)
    phase = edge_lib.client_uniforms(phase_key, ids)
    assert 0.0 <= float(phase.min()) and float(phase.max()) < 1.0
    for t in (0.0, 6.0, 13.0):
        p = edge_lib.diurnal_probability(t, phase, low, high, period)
        got = avail(ids, jnp.float32(t), jax.random.key(int(t)))
        se = np.sqrt(float(jnp.sum(p * (1 - p)))) / len(ids)
        assert abs(float(jnp.mean(got)) - float(jnp.mean(p))) < 5 * se
        # Clients near their peak are available far more often than those near their trough.
        peak = jnp.abs(((t / period - phase + 0.5) % 1.0) - 0.5) < 0.1
        assert float(jnp.mean(got[peak])) > 0.8 and float(jnp.mean(got[~peak])) < 0.6
    # The closed form at the peak and the trough.
    assert float(edge_lib.diurnal_probability(6.0, 0.25, low, high, period)) == pytest.approx(high)
    assert float(edge_lib.diurnal_probability(18.0, 0.25, low, high, period)) == pytest.approx(low)


def test_trace_availability_is_the_covering_intervals(tmp_path):
    rows = [(0, 0, 2), (0, 5, 6), (2, 1, 3.5), (3, 0, 100), (5, 2.5, 2.75)]
    table = edge_lib.read_trace(_trace_file(tmp_path / "t.csv", rows))
    avail = jax.jit(edge_lib.trace(table, 6))
    ids = jnp.arange(6)
    for t in (0.0, 1.0, 2.0, 2.5, 3.0, 5.0, 5.5, 6.0, 7.0):
        want = [any(c == i and a <= t < b for c, a, b in rows) for i in range(6)]
        got = np.asarray(avail(ids, jnp.float32(t), jax.random.key(0)))
        assert got.tolist() == want, t
    # Inside the round: round r starts at (r - 1) * round_duration.
    store = toy_population(6, max_size=3)
    edge = edge_lib.EdgeSpec(available=avail, round_duration=2.5)
    fn, state, n_cap = _round(store, edge)
    inputs = cohort(store, np.arange(6), n_cap)
    seen = []
    for _ in range(3):  # starts 0, 2.5, 5.0
        state, m = fn(state, inputs, jax.random.key(0))
        seen.append(int(m["participated"]))
    assert seen == [2, 3, 2]


@pytest.mark.parametrize(
    "content,fragment",
    [
        ("client,available_from,available_to\n0,1,1\n", "available_from < available_to"),
        ("0,1\n", "expected 3 fields"),
        ("x,0,1\n", "integer >= 0"),
        ("-1,0,1\n", "integer >= 0"),
        ("0,a,1\n", "must be numbers"),
        ("client,available_from,available_to\n", "no availability intervals"),
    ],
)
def test_bad_trace_files_name_the_field(tmp_path, content, fragment):
    path = tmp_path / "t.csv"
    path.write_text(content)
    with pytest.raises(ConfigError) as err:
        edge_lib.read_trace(path)
    assert err.value.field == "availability.path" and fragment in err.value.message


def test_trace_ids_beyond_the_population_are_refused(tmp_path):
    table = edge_lib.read_trace(_trace_file(tmp_path / "t.csv", [(7, 0, 1)]))
    with pytest.raises(ConfigError, match="population has 5 clients"):
        edge_lib.trace(table, 5)


# --------------------------------------------------------------------------- compute


def test_step_budget_takes_the_first_non_empty_steps():
    weights = jnp.asarray([[1, 1], [1, 0], [0, 0], [1, 1], [1, 0], [0, 0]], bool)  # T_i = 4
    for fraction, allowed in [
        (1.0, [1, 1, 1, 1, 1, 1]),
        (0.5, [1, 1, 0, 0, 0, 0]),
        (0.6, [1, 1, 1, 0, 0, 0]),
        (0.01, [1, 0, 0, 0, 0, 0]),
    ]:
        got = step_budget_mask(weights, jnp.float32(fraction)) & jnp.any(weights, 1)
        assert got.astype(int).tolist() == [a & int(w) for a, w in zip(allowed, [1, 1, 0, 1, 1, 0])]


def test_clients_take_their_budget_of_local_steps():
    store = toy_population(12, max_size=7)
    model, params = toy_model(store)
    n_cap, epochs, b = 7, 3, 2
    inputs = cohort(store, np.arange(12), n_cap)
    for fraction in (0.25, 0.5, 1.0):
        cu = jax.jit(
            jax.vmap(
                make_client_update(
                    model.apply,
                    optax.sgd(0.1),
                    epochs,
                    b,
                    n_cap,
                    work_fraction=lambda k, f=fraction: jnp.float32(f),
                ),
                in_axes=(None, 0, 0),
            )
        )
        out = cu(
            params,
            ClientBatch(inputs.x, inputs.y, inputs.count),
            jax.random.split(jax.random.key(0), 12),
        )
        full = epochs * -(-np.asarray(inputs.count) // b)
        want = np.clip(np.round(fraction * full), 1, full)
        np.testing.assert_array_equal(np.asarray(out.steps), want)


def test_stragglers_are_the_configured_fraction_and_do_partial_work():
    work = jax.jit(jax.vmap(edge_lib.straggler_work(0.3, 0.1)))
    f = np.asarray(work(jax.random.split(jax.random.key(0), 20000)))
    np.testing.assert_allclose(np.unique(f), [0.1, 1.0])
    assert abs(np.mean(f < 1) - 0.3) < 5 * np.sqrt(0.3 * 0.7 / 20000)
    drawn = np.asarray(
        jax.vmap(edge_lib.straggler_work(0.5))(jax.random.split(jax.random.key(1), 4000))
    )
    partial = drawn[drawn < 1]
    assert 0 < partial.min() and partial.max() < 1 and abs(partial.mean() - 0.5) < 0.05
    uni = np.asarray(
        jax.vmap(edge_lib.uniform_work(0.2))(jax.random.split(jax.random.key(2), 4000))
    )
    assert 0.2 <= uni.min() and uni.max() <= 1.0 and abs(uni.mean() - 0.6) < 0.02


def test_dropped_stragglers_are_dropped_and_kept_ones_train_less(tmp_path):
    store = toy_population(40)
    ids = np.arange(30)
    drop = edge_lib.EdgeSpec(drop_stragglers=0.5)
    fn, state, n_cap = _round(store, drop)
    inputs = cohort(store, ids, n_cap)
    _, m = fn(state, inputs, jax.random.key(0))
    assert 0 < int(m["dropped"]) < 30 and int(m["participated"]) + int(m["dropped"]) == 30
    model, _ = toy_model(store)
    plain = toy_client_update(model, n_cap)
    keep = make_client_update(
        model.apply, optax.sgd(0.1), 2, 3, n_cap, work_fraction=edge_lib.straggler_work(0.5, 0.1)
    )
    fk, sk, _ = _round(store, cu=keep)
    fp, sp, _ = _round(store, cu=plain)
    _, mk = fk(sk, inputs, jax.random.key(0))
    _, mp = fp(sp, inputs, jax.random.key(0))
    assert int(mk["clients"]) == int(mp["clients"]) == 30
    assert float(mk["local_steps"]) < float(mp["local_steps"])


# --------------------------------------------------------------------------- FedNova


def _quadratic_round(taus, centres, lr, fednova):
    """Clients with objectives ``0.5 ||w - c_i||^2`` and ``tau_i`` local SGD steps of batch 1."""
    k, d = centres.shape
    n_cap = int(max(taus))

    def grad_fn(params, x, y, w, key):
        del y, key

        def loss(p):
            per = 0.5 * jnp.sum((p["w"][None] - x) ** 2, axis=1)
            return jnp.sum(per * w) / jnp.maximum(jnp.sum(w), 1.0)

        return jax.value_and_grad(loss)(params)

    cu = make_client_update(
        None,
        optax.sgd(lr),
        1,
        1,
        n_cap,
        grad_fn=grad_fn,
        normalize=fednova_norm() if fednova else None,
    )
    x = np.repeat(centres[:, None, :], n_cap, axis=1).astype(np.float32)
    inputs = RoundInputs(
        x,
        np.zeros((k, n_cap), np.int32),
        np.asarray(taus, np.int32),
        np.ones(k, np.float32),
        np.arange(k, dtype=np.int32),
    )
    agg = weighted_mean("uniform")
    sopt = server_optimizer("fednova" if fednova else "fedavg", 1.0)
    edge = edge_lib.EdgeSpec(normalize=fednova_norm(), weighting="uniform") if fednova else None
    fn = jax.jit(make_round(cu, agg, sopt, k, edge=edge))
    state = init_server_state({"w": jnp.zeros(d, jnp.float32)}, sopt, agg)
    return fn, state, inputs


def test_fednova_removes_the_objective_inconsistency_of_fedavg():
    rng = np.random.default_rng(0)
    taus = np.array([1, 2, 4, 8])
    centres = rng.normal(size=(4, 3)) * 3
    lr = 0.02
    optimum = centres.mean(axis=0)  # argmin of (1/K) sum_i 0.5 ||w - c_i||^2
    # One round maps w to w + sum_i p_i s_i (c_i - w): local SGD on a quadratic contracts
    # towards c_i by a_i = 1 - (1 - lr)^tau_i. Fixed points (Wang et al. 2020, Thm. 1):
    # FedAvg weights c_i by a_i (roughly lr tau_i); FedNova by a_i / tau_i (roughly lr).
    a = 1.0 - (1.0 - lr) ** taus
    fedavg_fixed = (a[:, None] * centres).sum(0) / a.sum()
    nova_w = a / taus
    fednova_fixed = (nova_w[:, None] * centres).sum(0) / nova_w.sum()
    finals = {}
    for nova in (False, True):
        fn, state, inputs = _quadratic_round(taus, centres, lr, nova)
        for r in range(400):
            state, m = fn(state, inputs, jax.random.key(r))
        finals[nova] = np.asarray(state.params["w"], np.float64)
        if nova:
            assert float(m["tau_eff"]) == pytest.approx(taus.mean())
    np.testing.assert_allclose(finals[False], fedavg_fixed, atol=1e-4)
    np.testing.assert_allclose(finals[True], fednova_fixed, atol=1e-4)
    bias_avg = np.linalg.norm(finals[False] - optimum)
    bias_nova = np.linalg.norm(finals[True] - optimum)
    assert bias_avg > 0.5  # FedAvg lands near the step-weighted mean, far from the optimum
    assert bias_nova < 0.05 * bias_avg


def test_fednova_momentum_norm_and_dp_tau_eff():
    norm = fednova_norm(0.9)
    tau = jnp.arange(1, 6, dtype=jnp.float32)
    # ||a||_1 = sum_k (1 - rho^(tau - k)) / (1 - rho) over the tau local steps.
    want = [sum((1 - 0.9 ** (t - k)) / 0.1 for k in range(t)) for t in range(1, 6)]
    np.testing.assert_allclose(np.asarray(norm(tau)), want, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(fednova_norm()(tau)), np.asarray(tau))
    cfg = runs.compose(*runs.DEBUG, "algorithm=fednova", "privacy=user_dp", *Z)
    validate(cfg)
    spec = edge_lib.build_edge(
        RunConfig.from_mapping(cfg),
        population=20,
        seed_key=jax.random.key(0),
        user_dp=True,
        local_steps=7,
    )
    assert spec.tau_eff == 7.0  # public under DP: from the declared cap
    with pytest.raises(ConfigError, match="must be public"):
        edge_lib.build_edge(
            RunConfig.from_mapping(cfg),
            population=20,
            seed_key=jax.random.key(0),
            user_dp=True,
            local_steps=None,
        )
    spec = edge_lib.build_edge(
        RunConfig.from_mapping(cfg),
        population=20,
        seed_key=jax.random.key(0),
        user_dp=False,
        local_steps=7,
    )
    assert spec.tau_eff is None  # data-dependent without DP


def test_fednova_under_dp_clips_the_normalised_update(tmp_path):
    run_dir = runs.train(
        tmp_path / "nova",
        "algorithm=fednova",
        "privacy=user_dp",
        *Z,
        "privacy.clip_norm=0.05",
        "client.epochs=3",
        "client.max_examples=200",
        "rounds=2",
    )
    rows = runs.metrics(run_dir / "metrics.jsonl")
    # 3 epochs of ceil(200 / B) steps for the declared cap, whatever the largest client holds.
    batch = runs.compose(*runs.DEBUG)["client"]["batch_size"]
    assert all(r["tau_eff"] == 3 * math.ceil(200 / batch) for r in rows)
    # Normalised (per-step) updates are what is clipped: their mean norm is a per-step norm.
    assert all(r["mean_update_norm_preclip"] < 1.0 for r in rows)


# --------------------------------------------------------------------------- FedProx


def test_fedprox_keeps_local_models_closer_to_the_global_model():
    store = toy_population(10, max_size=7)
    model, params = toy_model(store)
    batch = ClientBatch(*(a[0] for a in cohort(store, [int(np.argmax(store.client_sizes))], 7)[:3]))
    norms = []
    for mu in (0.0, 0.1, 1.0, 5.0):
        cu = make_client_update(model.apply, optax.sgd(0.1), 10, 2, 7, proximal_mu=mu)
        out = jax.jit(cu)(params, batch, jax.random.key(0))
        norms.append(float(optax.tree.norm(out.update)))
    assert all(a > b for a, b in zip(norms, norms[1:])), norms
    # Any optax optimizer: the term is added to the gradient before the optimizer.
    adam = make_client_update(model.apply, optax.adam(0.05), 10, 2, 7, proximal_mu=1.0)
    plain = make_client_update(model.apply, optax.adam(0.05), 10, 2, 7)
    na = float(optax.tree.norm(jax.jit(adam)(params, batch, jax.random.key(0)).update))
    npl = float(optax.tree.norm(jax.jit(plain)(params, batch, jax.random.key(0)).update))
    assert na < npl


def test_eval_train_reports_the_global_training_loss(tmp_path):
    run_dir = runs.train(tmp_path / "run", "+eval_train=true", "rounds=2")
    rows = runs.metrics(run_dir / "metrics.jsonl")
    assert all(0 < r["global_train_loss"] and 0 <= r["global_train_accuracy"] <= 1 for r in rows)
    assert rows[-1]["global_train_loss"] != rows[-1]["test_loss"]


def test_fedprox_with_mu_zero_is_fedavg_bit_for_bit():
    store = toy_population(10)
    model, params = toy_model(store)
    inputs = cohort(store, np.arange(10), int(store.client_sizes.max()))
    n_cap = int(store.client_sizes.max())
    avg = make_client_update(model.apply, optax.sgd(0.1), 2, 3, n_cap)
    prox0 = make_client_update(model.apply, optax.sgd(0.1), 2, 3, n_cap, proximal_mu=0.0)
    fa, state, _ = _round(store, cu=avg, chunk=5)
    fp, _, _ = _round(store, cu=prox0, chunk=5)
    a, _ = fa(state, inputs, jax.random.key(0))
    b, _ = fp(state, inputs, jax.random.key(0))
    np.testing.assert_array_equal(_flat(a.params), _flat(b.params))


# --------------------------------------------------------------------------- validation


def _bad(*overrides):
    cfg = runs.compose(*runs.DEBUG, *overrides)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    return err.value


@pytest.mark.parametrize(
    "overrides,field,fragment",
    [
        (["availability=bernoulli", "availability.dropout=1"], "availability.dropout", "[0, 1)"),
        (["availability=bernoulli", "availability.dropout=-0.1"], "availability.dropout", "[0, 1)"),
        (
            ["availability=diurnal", "availability.low=0.9", "availability.high=0.2"],
            "availability.low",
            "at most",
        ),
        (["availability=diurnal", "availability.period=0"], "availability.period", "(0, inf]"),
        (["availability=diurnal", "availability.high=0"], "availability.high", "(0, 1]"),
        (["availability=trace"], "availability.path", "is required"),
        (
            ["availability=bernoulli", "availability.round_duration=0"],
            "availability.round_duration",
            "(0, inf]",
        ),
        (["availability.kind=sometimes"], "availability.kind", "choose from"),
        (["compute=uniform", "compute.low_fraction=0"], "compute.low_fraction", "(0, 1]"),
        (["compute=stragglers", "compute.fraction=1.2"], "compute.fraction", "[0, 1]"),
        (["compute=stragglers", "compute.steps_fraction=0"], "compute.steps_fraction", "(0, 1]"),
        (["compute=stragglers", "compute.drop=yes"], "compute.drop", "true or false"),
        (["compute.kind=fast"], "compute.kind", "choose from"),
        (["+eval_train=3"], "eval_train", "true or false"),
        (["algorithm=fedprox", "algorithm.mu=-1"], "algorithm.mu", "[0, inf]"),
        (["algorithm=fednova", "algorithm.tau_eff=0"], "algorithm.tau_eff", "(0, inf]"),
        (["algorithm=fednova", "client.optimizer=adam"], "client.optimizer", "sgd"),
        (["compute=uniform", "execution.path=lowrank"], "execution.path", "lowrank"),
        (["availability=bernoulli", "secagg=protocol"], "secagg.mode", "protocol"),
        (
            ["availability=bernoulli", "privacy=user_dp", *Z, "canaries.count=2"],
            "canaries.count",
            "never dropped",
        ),
    ],
)
def test_bad_edge_settings_name_the_field(overrides, field, fragment):
    err = _bad(*overrides)
    assert err.field == field and fragment in err.message, err


@pytest.mark.parametrize(
    "overrides,field,fragment",
    [
        (["availability=bernoulli", "availability.dropout=1.5"], "availability.dropout", "[0, 1)"),
        (["compute=stragglers", "compute.fraction=-0.5"], "compute.fraction", "[0, 1]"),
        (["algorithm=fedprox", "algorithm.mu=-0.1"], "algorithm.mu", "[0, inf]"),
        (
            ["availability=trace", "availability.path=/nonexistent/trace.csv"],
            "availability.path",
            "is not a file",
        ),
    ],
)
def test_bad_edge_settings_on_the_command_line(tmp_path, overrides, field, fragment):
    run_dir = tmp_path / "run"
    proc = run_cli("fedpriv.train", *runs.DEBUG, *overrides, f"hydra.run.dir={run_dir}")
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert field in lines[0] and fragment in lines[0], lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not run_dir.exists()
