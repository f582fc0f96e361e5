"""Example-level DP on two neighbouring data sets built here: one client with 4 examples (D)
and the same client with one example removed (D').

Under the add/remove-one-example relation everything the mechanism releases must have the
same distribution on D and D' up to the bounded effect of the one example's clipped
gradient: the noise scale, the divisor, the number of steps, the sampling rate, the server's
weights and every ledger record. A mechanism that divides by the client's own count (or
derives the rate from it) releases the count: its noise std differs by 4/3 here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.stats

from fedpriv.settings import RunConfig
from tests.audit import runs

#: The run on each data set: one client, one round of example-level DP-SGD, much noise
#: (z = 5), so the released change is almost all noise and its std is the noise scale.
OVERRIDES = (
    "privacy=example_dp",
    "privacy.noise_multiplier=5",
    "privacy.target_epsilon=null",
    "privacy.example_sampling_rate=0.5",
    "privacy.delta=1e-5",
    "client.lr=0.01",
    "client.batch_size=2",
    "model=mlp",
    "sampling=fixed",
    "sampling.cohort_size=1",
    "rounds=1",
    "dataset=npz",
    "dataset.partition.kind=natural",
    "dataset.num_classes=10",
)


def _write(path, n):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(4, 64)).astype(np.float32)
    y = np.array([0, 3, 5, 9])
    x_test = rng.normal(size=(10, 64)).astype(np.float32)
    np.savez(
        path,
        x=x[:n],
        y=y[:n],
        user_ids=np.zeros(n, np.int64),
        x_test=x_test,
        y_test=np.arange(10),
    )
    return path


#: Local-training options that compose with DP-SGD and must not change the relation: FedProx
#: (its term is post-processing) with a straggler's work fraction drawn from the client key.
LOCAL = {
    "plain": (),
    "fedprox-straggler": (
        "algorithm=fedprox",
        "algorithm.mu=0.5",
        "compute=stragglers",
        "compute.fraction=1.0",
        "compute.steps_fraction=0.5",
    ),
}


def _release(tmp_path, name, n, seed, local=()):
    """(parameter change, ledger, summary) of one run on the data set with ``n`` examples."""
    from fedpriv.fl import checkpoint, experiment

    data = _write(tmp_path / f"{name}.npz", n)
    run_dir = tmp_path / name
    overrides = (*OVERRIDES, *local, f"dataset.path={data}", f"seed={seed}")
    runs.train(run_dir, *overrides)
    initial = experiment.build(
        RunConfig.from_mapping(runs.compose(*runs.DEBUG, *overrides))
    ).initial_params
    final = checkpoint.load_final_params(run_dir)
    start = checkpoint.flatten(initial)
    assert sorted(final) == sorted(start)
    change = np.concatenate([(final[k] - np.asarray(v)).ravel() for k, v in start.items()])
    ledger = [json.loads(x) for x in (run_dir / "ledger.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    return change, ledger, summary


@pytest.fixture(scope="module", params=list(LOCAL))
def neighbours(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("example_dp")
    local = LOCAL[request.param]
    d = _release(tmp, "d", 4, seed=0, local=local)
    return d, _release(tmp, "d_prime", 3, seed=1, local=local), request.param


def test_release_has_the_same_distribution_on_neighbouring_data(neighbours):
    (d, _, _), (d_prime, _, _), local = neighbours
    assert d.size == d_prime.size > 50_000
    # The std of d coordinates has relative standard error 1 / sqrt(2 d), about 0.3%.
    tolerance = 5 / np.sqrt(2 * d.size)
    if local == "plain":
        # Predicted by public values alone: lr z C sqrt(steps) / B, steps = ceil(1 / q) = 2.
        predicted = 0.01 * 5 * 1.0 * np.sqrt(2) / 2
    else:
        # The straggler takes 1 of its 2 steps (steps_fraction 0.5), so one step's noise;
        # FedProx's term is zero at the first step (local = global).
        predicted = 0.01 * 5 * 1.0 / 2
    assert d.std() == pytest.approx(predicted, rel=tolerance)
    assert d_prime.std() == pytest.approx(predicted, rel=tolerance)
    # A divisor of q * count would make the ratio 4/3.
    assert d.std() / d_prime.std() == pytest.approx(1.0, abs=2 * tolerance)
    assert scipy.stats.ks_2samp(d, d_prime).pvalue > 1e-3


def test_ledger_and_privacy_summary_are_the_same_on_neighbouring_data(neighbours):
    (_, ledger, summary), (_, ledger_prime, summary_prime), _ = neighbours
    assert ledger == ledger_prime
    assert ledger[0]["steps"] == 2 and ledger[0]["example_sampling_rate"] == 0.5
    for key in ("privacy", "epsilon", "delta"):
        assert summary[key] == summary_prime[key], key


def test_example_dp_server_weights_ignore_example_counts():
    """The server's mean under example-level DP weights every reporting client equally."""
    import jax.numpy as jnp

    from fedpriv.fl.sampling import build_sampler
    from fedpriv.privacy.plan import build_plan
    from fedpriv.settings import LocalTraining

    plan = build_plan(
        {"name": "example_dp", "noise_multiplier": 1.0, "example_sampling_rate": 0.5},
        build_sampler("fixed", 10, 2, None),
        LocalTraining(batch_size=2, epochs=1),
        rounds=1,
    )
    agg = plan.aggregator("count")
    update = {"w": jnp.ones(3)}
    weights = [
        float(agg.contribution(update, jnp.asarray(n), jnp.asarray(1.0), agg.init())[1])
        for n in (1, 4, 100)
    ]
    assert weights == [1.0, 1.0, 1.0]
    # The delta default and the noise are functions of declared values only.
    assert plan.expected_batch_size == 2.0 and plan.steps == 2
    assert plan.delta == 1e-3  # below 1 / (10 clients x B / q = 4 examples each)
