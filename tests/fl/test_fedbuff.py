"""FedBuff: the schedule, staleness weights, the reduction to synchronous rounds, the ledger."""

import json
import signal

import jax
import numpy as np
import pytest
from omegaconf import OmegaConf

from fedpriv import accounting
from fedpriv.cli import compose
from fedpriv.config import validate
from fedpriv.errors import ConfigError
from fedpriv.fl import experiment, fedbuff, loop
from fedpriv.fl.fedbuff import DelayModel, simulate, staleness_weight, sync_round_times
from fedpriv.fl.round import RoundInputs
from fedpriv.settings import RunConfig
from tests.audit import runs
from tests.conftest import run_cli


def _flat(tree):
    return np.concatenate([np.ravel(np.asarray(v)) for v in jax.tree.leaves(tree)])


def _cfg(*overrides):
    cfg = compose(["experiment=debug", "progress=false", *overrides])
    plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("hydra", None)
    plain = OmegaConf.to_container(OmegaConf.create(plain), resolve=True)
    validate(plain)
    return plain


# --------------------------------------------------------------------------- weights, schedule


def test_staleness_weights_are_the_papers():
    tau = np.array([0, 1, 3, 8, 24])
    np.testing.assert_allclose(staleness_weight(tau), [1, 2**-0.5, 0.5, 1 / 3, 0.2], rtol=1e-6)
    assert float(staleness_weight(np.array(0))) == 1.0  # exactly: s(0) leaves updates alone
    np.testing.assert_array_equal(staleness_weight(tau, 0.0), np.ones(5))
    np.testing.assert_allclose(staleness_weight(tau, 1.0), 1 / (1 + tau), rtol=1e-6)


def _schedule(seed, **kw):
    args = dict(num_clients=60, steps=40, buffer_size=5, concurrency=12, max_staleness=6)
    args.update(kw)
    delay = args.pop("delay", DelayModel("exponential", 1.0, 1.0, 0.25, 8.0))
    return simulate(delay=delay, rng=np.random.default_rng(seed), **args)


def test_schedule_is_deterministic_for_a_seed_and_consistent():
    a, b, c = _schedule(0), _schedule(0), _schedule(1)
    for name in ("client_ids", "versions", "staleness", "arrival_time", "step_time", "dropped"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.client_ids, c.client_ids)
    assert a.client_ids.shape == (40, 5)
    for t in range(a.steps):
        assert len(set(a.client_ids[t])) == 5  # a client at most once per server step
    assert np.all(a.staleness == np.arange(40)[:, None] - a.versions)
    assert a.staleness.min() >= 0 and a.staleness.max() <= 6
    assert a.staleness.max() > 0  # stragglers and concurrency > K make stale updates
    assert np.all(np.diff(a.step_time) >= 0)
    assert np.all(a.arrival_time.max(axis=1) == a.step_time)
    assert sum(a.histogram(t)[0] for t in range(40)) == np.sum(a.staleness == 0)


def test_stale_arrivals_beyond_the_ring_are_dropped():
    s = _schedule(3, max_staleness=0)
    assert s.staleness.max() == 0 and s.dropped.sum() > 0


def test_constant_delays_with_concurrency_k_are_synchronous_rounds():
    s = simulate(20, 6, 5, 5, 2, DelayModel("constant", 2.0), np.random.default_rng(0))
    assert np.all(s.staleness == 0) and s.dropped.sum() == 0
    np.testing.assert_array_equal(s.step_time, 2.0 * np.arange(1, 7))


def test_stragglers_are_the_chosen_fraction_and_sync_rounds_wait_for_them():
    delay = DelayModel("constant", 1.0, stragglers=0.25, slowdown=10.0)
    speed = delay.speeds(40, np.random.default_rng(0))
    assert np.sum(speed == 10.0) == 10 and np.sum(speed == 1.0) == 30
    slow = np.flatnonzero(speed == 10.0)
    fast = np.flatnonzero(speed == 1.0)
    cohorts = np.stack([np.r_[fast[:4], slow[:1]], fast[:5]])
    np.testing.assert_array_equal(
        sync_round_times(delay, speed, cohorts, np.random.default_rng(0)), [10.0, 1.0]
    )


def test_bad_sizes_raise_config_errors():
    with pytest.raises(ConfigError, match="async.concurrency"):
        simulate(10, 5, 5, 7, 2, DelayModel(), np.random.default_rng(0))
    with pytest.raises(ConfigError, match="async.delay.distribution"):
        DelayModel("pareto")
    with pytest.raises(ConfigError, match="async.delay.slowdown"):
        DelayModel(slowdown=0.5)


# --------------------------------------------------------------------------- reduction to sync


DP = ("privacy=user_dp", "privacy.target_epsilon=null", "privacy.noise_multiplier=0.8")


def test_concurrency_k_and_no_delay_spread_is_the_synchronous_round():
    cfg = _cfg(
        *DP,
        "privacy.clip_norm=0.2",
        "rounds=4",
        "async=fedbuff",
        "async.buffer_size=5",
        "async.concurrency=5",
        "async.delay.distribution=constant",
        "async.accounting=uniform_subset",
    )
    fb = fedbuff.build(RunConfig.from_mapping(cfg))
    sync = experiment.build(
        RunConfig.from_mapping({**cfg, "async": {"name": "none"}})
    )  # fixed cohorts of 5, same plan
    assert np.all(fb.schedule.staleness == 0)
    state, sync_state = fb.state, sync.state
    for t in range(4):
        state, metrics = fb.step(state, fb.inputs(t + 1), fb.key(t + 1))
        ids = fb.schedule.client_ids[t]
        slots = sync.plan.slots
        pad = np.zeros(slots - len(ids), np.int64)
        mask = np.arange(slots) < len(ids)
        batch = RoundInputs(*sync.data.train.gather(np.r_[ids, pad], mask, sync.n_cap))
        sync_state, sync_metrics = sync.round_fn(sync_state, batch, sync.round_key(t + 1))
        np.testing.assert_allclose(
            _flat(state.server.params), _flat(sync_state.params), rtol=1e-6, atol=1e-7
        )
        assert float(metrics["staleness_weight_mean"]) == 1.0
        rec = fb.ledger_record(t + 1, loop.to_python(metrics))
        assert rec == sync.privacy.ledger_record(t + 1, loop.to_python(sync_metrics))
    # The ring buffer holds the newest version in slot v % (S + 1).
    depth = fb.config.max_staleness + 1
    newest = jax.tree.map(lambda r: r[4 % depth], state.ring)
    np.testing.assert_array_equal(_flat(newest), _flat(state.server.params))


def test_a_stale_arrival_trains_from_its_own_version():
    """Two arrivals of the same client from different versions give different updates."""
    cfg = _cfg("rounds=3", "async=fedbuff", "async.buffer_size=4", "async.concurrency=8")
    fb = fedbuff.build(RunConfig.from_mapping(cfg))
    state = fb.state
    for t in (1, 2):
        state, _ = fb.step(state, fb.inputs(t), fb.key(t))
    inp = fb.inputs(3)
    zero = inp._replace(slot=inp.slot * 0, staleness=inp.staleness * 0)
    new_a, _ = fb.step(state, zero, fb.key(3))
    current = inp._replace(slot=inp.slot * 0 + 2, staleness=inp.staleness * 0)
    new_b, _ = fb.step(state, current, fb.key(3))
    assert not np.allclose(_flat(new_a.server.params), _flat(new_b.server.params))


# --------------------------------------------------------------------------- runs and ledger


def _records(path):
    """JSON lines; a metrics line's diagnostics merged into its top level."""
    return runs.metrics(path)


@pytest.mark.parametrize("mode", ["no_amplification", "uniform_subset"])
def test_run_writes_staleness_metrics_and_one_event_per_server_step(tmp_path, mode):
    cfg = _cfg(
        *DP,
        "rounds=6",
        "eval_every=3",
        "async=fedbuff",
        "async.buffer_size=4",
        "async.concurrency=6",
        "async.max_staleness=3",
        "async.delay.stragglers=0.2",
        f"async.accounting={mode}",
    )
    summary = loop.run(RunConfig.from_mapping(cfg), tmp_path, progress=False)
    metrics = _records(tmp_path / "metrics.jsonl")
    ledger = _records(tmp_path / "ledger.jsonl")
    assert [m["round"] for m in metrics] == list(range(1, 7))
    for m in metrics:
        assert m["clients"] == 4 and len(m["staleness_hist"]) == 4
        assert sum(m["staleness_hist"]) == 4 and m["arrivals"] == 4 + m["dropped_stale"]
        assert 0 <= m["staleness_mean"] <= m["staleness_max"] <= 3
    assert [m["sim_time"] for m in metrics] == sorted(m["sim_time"] for m in metrics)
    assert "test_accuracy" in metrics[2] and "test_accuracy" in metrics[5]
    assert len(ledger) == 6 and not any("realised_cohort" in r for r in ledger)
    assert all(r["population"] == 20 and r["unit"] == "user" for r in ledger)
    delta = summary["delta"]
    if mode == "no_amplification":
        assert all(r["sampling"] == "full" for r in ledger)
        expected = accounting.full_participation_events(0.8, 6, population=20)
    else:
        assert all(r["sampling"] == "fixed" and r["cohort_size"] == 4 for r in ledger)
        expected = accounting.fixed_cohort_events(20, 4, 0.8, 6)
    for name, eps in summary["epsilon"].items():
        assert eps == pytest.approx(accounting.epsilon(expected, delta, name), rel=1e-9)
    assert summary["async"]["buffer_size"] == 4 and summary["rounds"] == 6
    assert (tmp_path / "final_params.npz").exists() and (tmp_path / "checkpoints").is_dir()


def test_runs_are_deterministic_and_resume_exactly_after_sigterm(tmp_path):
    """Two runs of a seed agree; a run stopped by SIGTERM after step 2 (through the host
    driver's signal handling) and resumed ends bit-identical, with ``checkpoint.keep=null``."""
    cfg = _cfg(
        *DP,
        "rounds=4",
        "async=fedbuff",
        "async.buffer_size=4",
        "async.concurrency=8",
        "checkpoint.keep=null",
        "checkpoint.every=0",
    )
    loop.run(RunConfig.from_mapping(cfg), tmp_path / "a", progress=False)
    loop.run(RunConfig.from_mapping(cfg), tmp_path / "b", progress=False)
    assert runs.without_seconds(_records(tmp_path / "a" / "metrics.jsonl")) == runs.without_seconds(
        _records(tmp_path / "b" / "metrics.jsonl")
    )

    exp = fedbuff.build(RunConfig.from_mapping(cfg))
    step = exp.step

    def step_then_sigterm(state, inputs, key):
        out = step(state, inputs, key)
        if exp.completed(out[0]) == 2:
            signal.raise_signal(signal.SIGTERM)
        return out

    exp.step = step_then_sigterm
    settings = loop.RunSettings.from_run(RunConfig.from_mapping(cfg))
    with pytest.raises(loop.Interrupted) as stop:
        loop.drive(exp, settings, tmp_path / "c", cfg, progress=False)
    assert stop.value.round == 2 and (tmp_path / "c" / "checkpoints" / "2").is_dir()
    assert len(_records(tmp_path / "c" / "ledger.jsonl")) == 2
    summary = loop.run(
        RunConfig.from_mapping({**cfg, "resume": True}), tmp_path / "c", progress=False
    )
    assert summary["resumed_from"] == 2 and summary["replayed_rounds"] == 0
    assert (
        summary["epsilon"] == json.loads((tmp_path / "a" / "summary.json").read_text())["epsilon"]
    )
    assert runs.without_seconds(_records(tmp_path / "c" / "metrics.jsonl")) == runs.without_seconds(
        _records(tmp_path / "a" / "metrics.jsonl")
    )
    for name in ("a", "b", "c"):
        assert (tmp_path / name / "summary.json").exists()
    a = np.load(tmp_path / "a" / "final_params.npz")
    for name in ("b", "c"):
        other = np.load(tmp_path / name / "final_params.npz")
        for k in a.files:
            np.testing.assert_array_equal(a[k], other[k])


def test_fedbuff_reaches_synchronous_accuracy_at_equal_server_steps(tmp_path):
    common = (
        "dataset.num_clients=100",
        "model=logreg",
        "rounds=80",
        "eval_every=80",
    )
    sync = loop.run(
        RunConfig.from_mapping(_cfg(*common, "sampling.cohort_size=10")),
        tmp_path / "sync",
        progress=False,
    )
    fb = loop.run(
        RunConfig.from_mapping(
            _cfg(
                *common,
                "async=fedbuff",
                "async.buffer_size=10",
                "async.concurrency=20",
                "async.delay.stragglers=0.2",
                "async.delay.slowdown=5",
            )
        ),
        tmp_path / "fedbuff",
        progress=False,
    )
    acc_sync = sync["final"]["test_accuracy"]
    acc_fb = fb["final"]["test_accuracy"]
    assert acc_sync > 0.7
    assert abs(acc_fb - acc_sync) <= 0.05, (acc_fb, acc_sync)
    assert fb["async"]["staleness_mean"] > 0


BAD = [
    (["async.buffer_size=0"], "async.buffer_size", "[1, inf]"),
    (["async.concurrency=0"], "async.concurrency", "[1, inf]"),
    (["async.concurrency=17"], "async.concurrency", "[1, 16]"),
    (["async.max_staleness=-1"], "async.max_staleness", "[0, inf]"),
    (["async.staleness_exponent=-0.5"], "async.staleness_exponent", "[0, inf]"),
    (["async.delay.distribution=pareto"], "async.delay.distribution", "choose from"),
    (["async.delay.mean=0"], "async.delay.mean", "(0, inf]"),
    (["async.delay.stragglers=1.5"], "async.delay.stragglers", "[0, 1]"),
    (["async.delay.slowdown=0.5"], "async.delay.slowdown", "[1, inf]"),
    (["async.accounting=poisson"], "async.accounting", "choose from"),
    (["secagg=fast"], "secagg.mode", "without secure aggregation"),
    (["hierarchy=gateways"], "hierarchy.name", "async=none"),
    (["availability=bernoulli"], "availability", "async=fedbuff"),
    (["algorithm=fednova"], "async=fedbuff", "algorithm"),
]


@pytest.mark.parametrize("overrides,field,fragment", BAD)
def test_bad_async_config_is_one_line_and_exit_2(tmp_path, overrides, field, fragment):
    run_dir = tmp_path / "run"
    proc = run_cli(
        "fedpriv.train",
        "experiment=debug",
        "async=fedbuff",
        "async.buffer_size=5",
        "async.concurrency=5",
        *overrides,
        f"hydra.run.dir={run_dir}",
    )
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert field in lines[0] and fragment in lines[0], lines[0]
    assert not run_dir.exists()


def test_cli_runs_fedbuff(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(
        "fedpriv.train",
        "experiment=debug",
        "progress=false",
        "async=fedbuff",
        "async.buffer_size=5",
        "async.concurrency=5",
        "async.delay.distribution=lognormal",
        f"hydra.run.dir={run_dir}",
    )
    assert proc.returncode == 0, proc.stderr
    assert "test accuracy" in proc.stdout
    assert len(_records(run_dir / "metrics.jsonl")) == 3
