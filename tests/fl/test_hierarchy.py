"""Hierarchical aggregation: gateway sums, gateway-level DP, its sampling and its ledger."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from omegaconf import OmegaConf

from fedpriv import accounting
from fedpriv.accounting import RoundEvent
from fedpriv.cli import compose
from fedpriv.config import validate
from fedpriv.errors import ConfigError
from fedpriv.fl import experiment, loop
from fedpriv.fl.aggregators import weighted_mean
from fedpriv.fl.hierarchy import (
    GatewaySampler,
    Hierarchy,
    assign_gateways,
    hierarchical_aggregator,
)
from fedpriv.fl.round import init_server_state, make_round
from fedpriv.fl.sampling import FixedCohort, PoissonCohort
from fedpriv.fl.server import server_optimizer
from fedpriv.privacy.aggregators import dp_fedavg
from fedpriv.settings import RunConfig
from tests.audit import runs
from tests.conftest import run_cli

from .helpers import cohort, toy_client_update, toy_model, toy_population


def _flat(tree):
    return np.concatenate([np.ravel(np.asarray(v)) for v in jax.tree.leaves(tree)])


def _rounds(store, agg, hier, chunk, lr=0.1):
    """A flat round and a hierarchical round around the same client update and aggregator."""
    model, params = toy_model(store)
    n_cap = int(store.client_sizes.max())
    cu = toy_client_update(model, n_cap, lr=lr)
    sopt = server_optimizer("fedavg", 1.0)
    flat = jax.jit(make_round(cu, agg, sopt, chunk))
    h_agg, local_sums = hier.round_parts(agg, cu, "count", chunk)
    tiered = jax.jit(make_round(cu, h_agg, sopt, chunk, local_sums=local_sums))
    return (
        flat,
        init_server_state(params, sopt, agg),
        tiered,
        init_server_state(params, sopt, h_agg),
        n_cap,
    )


# --------------------------------------------------------------------------- assignment


def test_assignment_rules_balance_gateways_and_reject_bad_counts():
    for rule in ("modulo", "blocks"):
        g = assign_gateways(23, 5, rule)
        sizes = np.bincount(g, minlength=5)
        assert sizes.sum() == 23 and sizes.min() >= 4 and sizes.max() <= 5
    np.testing.assert_array_equal(assign_gateways(6, 3, "modulo"), [0, 1, 2, 0, 1, 2])
    np.testing.assert_array_equal(assign_gateways(6, 3, "blocks"), [0, 0, 1, 1, 2, 2])
    for bad in (0, 7, 2.5):
        with pytest.raises(ConfigError, match="hierarchy.gateways"):
            assign_gateways(6, bad)
    with pytest.raises(ConfigError, match="hierarchy.assign"):
        assign_gateways(6, 2, "random")


def test_gateway_sampler_takes_every_client_of_the_drawn_gateways():
    gateway_of = assign_gateways(50, 7, "modulo")
    for inner in (FixedCohort(7, 3), PoissonCohort(7, 0.4)):
        sampler = GatewaySampler(inner, gateway_of)
        assert (sampler.population, sampler.kind) == (7, inner.kind)
        for r in range(20):
            ids, mask = sampler.sample(jax.random.key(r))
            assert len(ids) >= sampler.capacity
            chosen = ids[mask]
            drawn = np.unique(gateway_of[chosen])
            np.testing.assert_array_equal(
                np.sort(chosen), np.flatnonzero(np.isin(gateway_of, drawn))
            )
            if inner.kind == "fixed":
                assert len(drawn) == 3


# --------------------------------------------------------------------------- client level


@pytest.mark.parametrize("gateways,chunk", [(1, 8), (7, 4), (24, 24)])
def test_client_level_hierarchy_equals_flat(gateways, chunk):
    """Sums are associative: gateways of clipped clients add up to the flat round."""
    store = toy_population(40)
    ids = np.arange(2, 26)
    key = jax.random.key(5)
    hier = Hierarchy(assign_gateways(40, gateways, "blocks"), gateways, "client")
    for agg in (weighted_mean(), dp_fedavg(0.05, 0.7, expected_cohort=24.0)):
        flat, s_flat, tiered, s_tier, n_cap = _rounds(store, agg, hier, chunk)
        inputs = cohort(store, ids, n_cap, pad_to=24)
        new_flat, m_flat = flat(s_flat, inputs, key)
        new_tier, m_tier = tiered(s_tier, inputs, key)
        np.testing.assert_allclose(
            _flat(new_tier.params), _flat(new_flat.params), rtol=1e-6, atol=1e-6
        )
        assert int(m_tier["clients"]) == int(m_flat["clients"]) == 24
        counts = np.bincount(hier.gateway_of[ids], minlength=gateways)
        assert int(m_tier["gateways"]) == np.sum(counts > 0)
        assert float(m_tier["gateway_clients_max"]) == counts.max()
        assert float(m_tier["gateway_clients_min"]) == counts[counts > 0].min()


def test_secure_aggregation_per_gateway_equals_flat_bit_for_bit():
    """Modular sums per gateway add up to the flat modular sum exactly."""
    cfg = _cfg(
        "privacy=user_dp",
        "privacy.target_epsilon=null",
        "privacy.noise_multiplier=0.5",
        "secagg=fast",
    )
    exp_flat = experiment.build(RunConfig.from_mapping(cfg))
    exp_tier = experiment.build(
        RunConfig.from_mapping({**cfg, "hierarchy": {"name": "gateways", "gateways": 4}})
    )
    batch = exp_flat.cohort(1)
    key = exp_flat.round_key(1)
    s1, m1 = exp_flat.round_fn(exp_flat.state, batch, key)
    s2, m2 = exp_tier.round_fn(exp_tier.state, batch, key)
    np.testing.assert_array_equal(_flat(s1.params), _flat(s2.params))
    assert int(m2["secagg_mask_residual"]) == int(m1["secagg_mask_residual"]) == 0


# --------------------------------------------------------------------------- gateway level


def _gateway_release(totals, weights, clients, clip, z, m, key):
    """``m * mean`` (the noised sum) of a gateway-level DP-FedAvg finalize."""
    agg = hierarchical_aggregator(weighted_mean(), dp_fedavg(clip, z, m))
    stats = {"gateway_clients": clients}
    mean, _, metrics = agg.finalize({"w": totals}, weights, stats, agg.init(), key)
    return m * np.asarray(mean["w"], np.float64), metrics


def test_removing_one_gateway_moves_the_sum_by_at_most_the_clip():
    """Built neighbouring datasets: gateway g with all its clients, then without it."""
    rng = np.random.default_rng(0)
    g, d, clip = 6, 50, 0.5
    weights = rng.integers(1, 9, g).astype(np.float32)
    clients = rng.integers(1, 5, g).astype(np.float32)
    totals = (rng.normal(size=(g, d)) * 10 * weights[:, None]).astype(np.float32)
    key = jax.random.key(0)
    full, metrics = _gateway_release(totals, weights, clients, clip, 0.0, 4.0, key)
    assert float(metrics["clipped_fraction"]) == 1.0  # every gateway is clipped
    for drop in range(g):
        keep = np.arange(g) != drop
        neighbour, _ = _gateway_release(
            totals * keep[:, None], weights * keep, clients * keep, clip, 0.0, 4.0, key
        )
        assert np.linalg.norm(full - neighbour) <= clip * (1 + 1e-5)
        assert np.linalg.norm(full - neighbour) >= clip * (1 - 1e-5)  # the bound is tight
    # Client-level clipping gives no such bound for a gateway: its k clients move it by k*C.
    per_client = dp_fedavg(clip, 0.0, 4.0)
    many = np.stack([np.full(d, 10.0, np.float32)] * 4)
    contrib, _, _ = jax.vmap(per_client.contribution, in_axes=(0, None, None, None))(
        many, 1, 1.0, per_client.init()
    )
    assert np.linalg.norm(np.sum(contrib, 0)) == pytest.approx(4 * clip, rel=1e-5)


def test_gateway_noise_std_matches_its_sensitivity():
    g, d, clip, z, m = 5, 200_000, 0.3, 1.7, 2.5
    totals = np.zeros((g, d), np.float32)
    weights = np.ones(g, np.float32)
    clients = np.ones(g, np.float32)
    noise, metrics = _gateway_release(totals, weights, clients, clip, z, m, jax.random.key(1))
    assert float(metrics["noise_std"]) == pytest.approx(z * clip, rel=1e-6)
    assert float(metrics["denominator"]) == m
    assert np.std(noise) == pytest.approx(z * clip, rel=0.02)
    assert abs(np.mean(noise)) < 5 * z * clip / np.sqrt(d)
    same, _ = _gateway_release(totals, weights, clients, clip, z, m, jax.random.key(1))
    other, _ = _gateway_release(totals, weights, clients, clip, z, m, jax.random.key(2))
    np.testing.assert_array_equal(noise, same)
    assert not np.allclose(noise, other)


def test_gateway_mean_is_the_weighted_mean_of_its_clients_before_clipping():
    """Without clipping or noise, one gateway's release is its clients' FedAvg mean."""
    store = toy_population(30)
    hier = Hierarchy(assign_gateways(30, 1), 1, "gateway")
    flat, s_flat, tiered, s_tier, n_cap = _rounds(
        store, dp_fedavg(1e6, 0.0, expected_cohort=1.0), hier, 10
    )
    # The flat reference is plain FedAvg over the same clients: one gateway holds them all.
    model, params = toy_model(store)
    cu = toy_client_update(model, n_cap)
    sopt = server_optimizer("fedavg", 1.0)
    fedavg = jax.jit(make_round(cu, weighted_mean(), sopt, 10))
    inputs = cohort(store, np.arange(20), n_cap)
    key = jax.random.key(9)
    ref, _ = fedavg(init_server_state(params, sopt, weighted_mean()), inputs, key)
    got, metrics = tiered(s_tier, inputs, key)
    np.testing.assert_allclose(_flat(got.params), _flat(ref.params), rtol=1e-5, atol=1e-6)
    assert int(metrics["gateways"]) == 1 and float(metrics["gateway_clients_max"]) == 20


# --------------------------------------------------------------------------- ledger


def test_gateway_ledger_is_accounted_like_a_flat_run_of_gateways():
    g, q, z, rounds, delta = 40, 0.1, 1.1, 50, 1e-3
    base = {"format": 1, "mechanism": "gaussian", "noise_multiplier": z, "clip_norm": 1.0}
    base["noise_std"] = z
    gateway = [
        {**base, "round": r, "unit": "gateway", "sampling": "poisson", "sampling_rate": q}
        | {"population": g, "realised_cohort": 4}
        for r in range(1, rounds + 1)
    ]
    user = [{**rec, "unit": "user"} for rec in gateway]
    assert RoundEvent.from_dict(gateway[0]).to_dict()["unit"] == "gateway"
    assert accounting.supported_accountants(gateway) == accounting.supported_accountants(user)
    for name in accounting.supported_accountants(gateway):
        eps_g = accounting.epsilon(gateway, delta, name)
        assert eps_g == pytest.approx(accounting.epsilon(user, delta, name), rel=1e-12)
        assert np.isfinite(eps_g) and eps_g > 0
    # Fixed cohorts of gateways: sampling without replacement, replace one gateway (rdp only).
    fixed = [
        {**base, "round": r, "unit": "gateway", "sampling": "fixed"}
        | {"population": g, "cohort_size": 4}
        for r in range(1, rounds + 1)
    ]
    assert accounting.supported_accountants(fixed) == ["rdp"]
    eps_fixed = accounting.epsilon(fixed, delta, "rdp")
    user_fixed = [{**rec, "unit": "user"} for rec in fixed]
    assert eps_fixed == pytest.approx(accounting.epsilon(user_fixed, delta, "rdp"), rel=1e-12)
    with pytest.raises(ConfigError, match="unit"):
        accounting.epsilon(gateway + user, delta, "rdp")  # one ledger, one unit


# --------------------------------------------------------------------------- runs


def _cfg(*overrides):
    cfg = compose(["experiment=debug", *overrides])
    plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("hydra", None)
    plain = OmegaConf.to_container(OmegaConf.create(plain), resolve=True)
    validate(plain)
    return plain


def test_gateway_level_run_writes_a_gateway_ledger(tmp_path):
    cfg = _cfg(
        "hierarchy=gateways",
        "hierarchy.gateways=8",
        "hierarchy.dp_unit=gateway",
        "sampling=poisson",
        "sampling.rate=0.5",
        "privacy=user_dp",
        "privacy.target_epsilon=null",
        "privacy.noise_multiplier=1.0",
        "progress=false",
    )
    summary = loop.run(RunConfig.from_mapping(cfg), tmp_path, progress=False)
    ledger = [json.loads(x) for x in (tmp_path / "ledger.jsonl").read_text().splitlines()]
    metrics = runs.metrics(tmp_path / "metrics.jsonl")
    assert len(ledger) == cfg["rounds"]
    for rec, met in zip(ledger, metrics):
        assert rec["unit"] == "gateway" and rec["population"] == 8
        assert rec["sampling"] == "poisson" and rec["sampling_rate"] == 0.5
        assert "realised_cohort" not in rec  # a diagnostic: met["gateways"]
        assert met["clients"] >= met["gateways"] * met["gateway_clients_min"]
    assert summary["privacy"]["unit"] == "gateway"
    expected = accounting.epsilon(
        accounting.poisson_events(0.5, 1.0, cfg["rounds"], population=8), summary["delta"], "rdp"
    )
    assert summary["epsilon"]["rdp"] == pytest.approx(expected, rel=1e-9)


def test_client_level_run_ledger_equals_flat(tmp_path):
    common = ("privacy=user_dp", "privacy.target_epsilon=null", "privacy.noise_multiplier=1.0")
    flat = loop.run(RunConfig.from_mapping(_cfg(*common)), tmp_path / "flat", progress=False)
    tier = loop.run(
        RunConfig.from_mapping(_cfg(*common, "hierarchy=gateways", "hierarchy.gateways=3")),
        tmp_path / "tier",
        progress=False,
    )
    read = lambda p: (p / "ledger.jsonl").read_text()  # noqa: E731
    assert read(tmp_path / "flat") == read(tmp_path / "tier")
    assert flat["epsilon"] == tier["epsilon"]
    assert tier["final"]["test_accuracy"] == pytest.approx(flat["final"]["test_accuracy"], abs=0.02)


BAD = [
    (["hierarchy=gateways", "hierarchy.gateways=0"], "hierarchy.gateways", "[1, inf]"),
    (["hierarchy=gateways", "hierarchy.gateways=500"], "hierarchy.gateways", "[1, 20]"),
    (["hierarchy=gateways", "hierarchy.gateways=two"], "hierarchy.gateways", "integer"),
    (["hierarchy=gateways", "hierarchy.assign=random"], "hierarchy.assign", "choose from"),
    (["hierarchy=gateways", "hierarchy.dp_unit=region"], "hierarchy.dp_unit", "choose from"),
    (["hierarchy=gateways", "hierarchy.dp_unit=gateway"], "hierarchy.dp_unit", "user_dp"),
    (
        ["hierarchy=gateways", "hierarchy.dp_unit=gateway", "privacy=user_dp", "secagg=fast"],
        "secagg.mode",
        "dp_unit=client only",
    ),
    (
        ["hierarchy=gateways", "hierarchy.gateways=4", "hierarchy.dp_unit=gateway"]
        + ["privacy=user_dp"],
        "sampling.cohort_size",
        "[1, 4]",
    ),
    (["hierarchy=gateways", "secagg=protocol"], "secagg.mode", "fast path only"),
    (["hierarchy=gateways", "execution.path=lowrank"], "execution.path", "direct or auto"),
    (["hierarchy=regions"], "hierarchy", "choose from"),
]


@pytest.mark.parametrize("overrides,field,fragment", BAD)
def test_bad_hierarchy_config_is_one_line_and_exit_2(tmp_path, overrides, field, fragment):
    run_dir = tmp_path / "run"
    proc = run_cli("fedpriv.train", "experiment=debug", *overrides, f"hydra.run.dir={run_dir}")
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert field in lines[0] and fragment in lines[0], lines[0]
    assert not run_dir.exists()


def test_gateway_assignment_is_static_in_the_round():
    """The round reads gateway ids from a table: one trace for any cohort."""
    store = toy_population(30)
    hier = Hierarchy(assign_gateways(30, 4), 4, "gateway")
    flat, _, tiered, s_tier, n_cap = _rounds(store, dp_fedavg(1.0, 1.0, 2.0), hier, 5)
    for ids in (np.arange(10), np.arange(10, 20)):
        tiered(s_tier, cohort(store, ids, n_cap), jax.random.key(0))
    assert tiered._cache_size() == 1
    assert jnp.asarray(hier.gateway_of).dtype == jnp.int32


@pytest.mark.skipif(jax.local_device_count() < 2, reason="needs 2 devices")
def test_sharded_gateway_round_clips_each_gateway_once():
    """Gateways whose clients sit on different devices are summed across devices first."""
    from fedpriv.fl import planner

    store = toy_population(40)
    hier = Hierarchy(assign_gateways(40, 3, "modulo"), 3, "gateway")
    model, params = toy_model(store)
    n_cap = int(store.client_sizes.max())
    cu = toy_client_update(model, n_cap, lr=0.5)
    sopt = server_optimizer("fedavg", 1.0)
    agg, local_sums = hier.round_parts(dp_fedavg(0.05, 0.0, 2.0), cu, "count", 4)
    state = init_server_state(params, sopt, agg)
    inputs = cohort(store, np.arange(16), n_cap)
    key = jax.random.key(4)
    one, m_one = jax.jit(make_round(cu, agg, sopt, 4, local_sums=local_sums))(state, inputs, key)
    mesh = planner.make_mesh(2)
    two, m_two = jax.jit(make_round(cu, agg, sopt, 4, mesh, local_sums=local_sums))(
        state, inputs, key
    )
    assert float(m_one["clipped_fraction"]) == 1.0
    np.testing.assert_allclose(_flat(two.params), _flat(one.params), rtol=1e-5, atol=1e-7)
    # Three clipped gateways: the update's norm is at most 3 * C / m.
    assert float(m_two["update_norm"]) <= 3 * 0.05 / 2.0 * (1 + 1e-5)
    assert int(m_two["gateways"]) == int(m_one["gateways"]) == 3
