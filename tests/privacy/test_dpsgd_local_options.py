"""Example-level DP-SGD is local training with DP-SGD's schedule and gradient, so FedProx,
heterogeneous compute and FedNova compose with it. Each case is checked against a loop
written here from the algorithms' definitions (no fedpriv code beyond the model)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedpriv.fl.client import ClientBatch, cross_entropy, fednova_norm
from fedpriv.privacy import make_dpsgd_client_update
from tests.audit import runs
from tests.fl.helpers import cohort, toy_model, toy_population

N_CAP = 6


def _setup():
    store = toy_population(4, max_size=N_CAP)
    model, params = toy_model(store)
    b = ClientBatch(*(jnp.asarray(a[0]) for a in cohort(store, [1], N_CAP)[:3]))
    return model, params, b


def _reference(model, params, b, key, steps, q, c, z, batch, lr, mu=0.0, taken=None):
    """DP-SGD written out: per step, the same Poisson sample and noise key as the schedule
    (one split of the client key per step, then (sample, noise)), clipped per-example
    gradients by a Python loop over examples, noise, divide by B, the proximal term, SGD."""
    count = int(b.count)
    w = params
    keys = jax.random.split(key, steps)
    taken = steps if taken is None else taken
    for t in range(taken):
        sample_key, noise_key = jax.random.split(keys[t])
        chosen = np.asarray(jax.random.bernoulli(sample_key, q, (N_CAP,)))
        total = jax.tree.map(jnp.zeros_like, w)
        for i in range(count):
            if not chosen[i]:
                continue
            g = jax.grad(lambda p: cross_entropy(model.apply(p, b.x[i][None]), b.y[i][None])[0])(w)
            norm = jnp.sqrt(sum(jnp.sum(v**2) for v in jax.tree.leaves(g)))
            g = jax.tree.map(lambda v: v * jnp.minimum(1.0, c / norm), g)
            total = jax.tree.map(jnp.add, total, g)
        leaves, tree = jax.tree.flatten(total)
        noise_keys = jax.random.split(noise_key, len(leaves))
        noised = [
            v + z * c * jax.random.normal(k, v.shape, v.dtype) for v, k in zip(leaves, noise_keys)
        ]
        grad = jax.tree.map(lambda v: v / batch, jax.tree.unflatten(tree, noised))
        grad = jax.tree.map(lambda g, wl, wg: g + mu * (wl - wg), grad, w, params)
        w = jax.tree.map(lambda wl, g: wl - lr * g, w, grad)
    return jax.tree.map(jnp.subtract, w, params)


def _close(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-4, atol=2e-6)


@pytest.mark.parametrize("mu", [0.0, 0.5])
def test_dpsgd_with_fedprox_is_the_written_out_loop(mu):
    model, params, b = _setup()
    steps, q, c, z, batch, lr = 4, 0.6, 0.5, 0.8, 3.0, 0.3
    key = jax.random.key(7)
    local = {"proximal_mu": mu} if mu else {}
    cu = make_dpsgd_client_update(model.apply, optax.sgd(lr), steps, q, c, z, N_CAP, batch, **local)
    got = jax.jit(cu)(params, b, key)
    assert int(got.steps) == steps  # every step is taken, sampled examples or not
    _close(got.update, _reference(model, params, b, key, steps, q, c, z, batch, lr, mu))


def test_a_straggler_takes_its_share_of_dpsgd_steps_and_fednova_divides_by_them():
    model, params, b = _setup()
    steps, q, c, z, batch, lr = 5, 0.5, 1.0, 0.6, 2.0, 0.2
    key = jax.random.key(3)
    cu = make_dpsgd_client_update(
        model.apply,
        optax.sgd(lr),
        steps,
        q,
        c,
        z,
        N_CAP,
        batch,
        work_fraction=lambda k: jnp.float32(0.4),  # round(0.4 * 5) = 2 steps
        normalize=fednova_norm(),
    )
    got = jax.jit(cu)(params, b, key)
    assert int(got.steps) == 2
    want = _reference(model, params, b, key, steps, q, c, z, batch, lr, taken=2)
    _close(got.update, jax.tree.map(lambda u: u / 2.0, want))


@pytest.mark.parametrize(
    "local",
    [
        ("algorithm=fedprox", "algorithm.mu=0.1", "compute=stragglers", "compute.fraction=0.5"),
        ("algorithm=fednova", "compute=uniform", "compute.low_fraction=0.5"),
    ],
    ids=["fedprox-stragglers", "fednova-uniform"],
)
def test_example_dp_trains_with_local_options_and_passes_the_audit(tmp_path, local):
    from fedpriv.audit import audit_run

    run_dir = runs.train(
        tmp_path / "run",
        "privacy=example_dp",
        "privacy.noise_multiplier=1.0",
        "privacy.target_epsilon=null",
        "privacy.example_sampling_rate=0.5",
        "privacy.delta=1e-5",  # below 1 / (the debug population's 1,438 examples)
        "client.batch_size=2",
        *local,
        "rounds=3",
    )
    metrics = runs.metrics(run_dir / "metrics.jsonl")
    ledger = runs.lines(run_dir / "ledger.jsonl")
    assert len(metrics) == len(ledger) == 3
    assert all(rec["unit"] == "example" for rec in ledger)
    report = audit_run(run_dir)
    assert report.verdict == "PASS", [(c.name, c.detail) for c in report.failed]
