"""The noise source: seeded noise can be rebuilt from the recorded seed; secure noise cannot.

The attack is the one an adversary holding the run directory would run: read the seed from
``.hydra/config.yaml``, re-derive the round's aggregation key by the documented key
schedule, regenerate the Gaussian noise and correlate it with the released model change.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from fedpriv.settings import RunConfig
from tests.audit import runs

OVERRIDES = (
    "privacy=user_dp",
    "privacy.noise_multiplier=1.0",
    "privacy.target_epsilon=null",
    "model=mlp",
    "rounds=1",
)


def _run(tmp_path, name, *extra):
    from fedpriv.fl import checkpoint

    run_dir = runs.train(tmp_path / name, *OVERRIDES, *extra)
    return run_dir, checkpoint.load_final_params(run_dir)


def _rebuilt_noise(run_dir):
    """The noise of round 1 as the seed determines it, scaled as the release holds it."""
    from omegaconf import OmegaConf

    from fedpriv.fl import checkpoint, experiment
    from fedpriv.privacy.noise import gaussian_like

    cfg = OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "config.yaml"))
    seed = cfg["seed"]
    round_key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 3), 1)
    agg_key = jax.random.split(round_key)[1]
    update_key = jax.random.split(agg_key)[0]  # DP-FedAvg: the update sum's noise
    initial = experiment.build(RunConfig.from_mapping(cfg)).initial_params
    z, c = cfg["privacy"]["noise_multiplier"], cfg["privacy"]["clip_norm"]
    m = cfg["sampling"]["cohort_size"]
    noise = gaussian_like(initial, z * c, update_key)
    return initial, {k: np.asarray(v) / m for k, v in checkpoint.flatten(noise).items()}


def _correlation(run_dir, final):
    from fedpriv.fl import checkpoint

    initial, noise = _rebuilt_noise(run_dir)
    start = checkpoint.flatten(initial)
    change = np.concatenate([(final[k] - np.asarray(v)).ravel() for k, v in start.items()])
    rebuilt = np.concatenate([noise[k].ravel() for k in start])
    return float(np.corrcoef(change, rebuilt)[0, 1]), change.size


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("noise_source")
    return {
        "seeded": _run(tmp, "seeded"),
        "seeded_again": _run(tmp, "seeded_again"),
        "secure": _run(tmp, "secure", "privacy.noise_source=secure"),
        "secure_again": _run(tmp, "secure_again", "privacy.noise_source=secure"),
    }


def test_seeded_noise_is_rebuilt_from_the_seed_and_secure_noise_is_not(made):
    corr, d = _correlation(*made["seeded"])
    assert d > 50_000 and corr > 0.99  # the seed gives the noise away
    # With d coordinates an unrelated vector has |correlation| about 1/sqrt(d) = 0.004.
    for name in ("secure", "secure_again"):
        corr, _ = _correlation(*made[name])
        assert abs(corr) < 5 / np.sqrt(d), name


def test_secure_runs_with_one_seed_release_different_noise(made):
    seeded, again = made["seeded"][1], made["seeded_again"][1]
    assert all(np.array_equal(seeded[k], again[k]) for k in seeded)
    secure, secure_again = made["secure"][1], made["secure_again"][1]
    assert not any(np.array_equal(secure[k], secure_again[k]) for k in secure)
    # Without noise both would be the same model: the difference is all noise, of the
    # claimed std sqrt(2) z C / m per coordinate (z = C = 1, m = 5).
    diff = np.concatenate([(secure[k] - secure_again[k]).ravel() for k in secure])
    assert diff.std() == pytest.approx(np.sqrt(2) / 5, rel=0.02)


def test_the_run_directory_records_the_noise_source(made):
    for name, source in (("seeded", "seeded"), ("secure", "secure")):
        run_dir = made[name][0]
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["noise_source"] == source
        assert ("only while the seed stays secret" in summary["guarantee"]) == (source == "seeded")
        text = "".join(p.read_text(errors="replace") for p in run_dir.rglob("*.json*"))
        assert "noise_key" not in text and "noise_root" not in text


def test_secure_example_level_noise_differs_between_runs(tmp_path):
    extra = (
        "privacy=example_dp",
        "privacy.example_sampling_rate=0.5",
        "client.batch_size=2",
        "privacy.noise_source=secure",
        "model=logreg",
    )
    _, a = _run(tmp_path, "a", *extra)
    _, b = _run(tmp_path, "b", *extra)
    assert not any(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "mechanism",
    [
        ("privacy=distributed_dp", "secagg=fast", "privacy.noise_multiplier=2"),
        ("privacy=distributed_dp", "secagg=fast", "secagg.rotation=true", "hierarchy=gateways"),
    ],
)
def test_secure_noise_inside_secure_aggregation_differs_between_runs(tmp_path, mechanism):
    """Distributed DP draws its noise on the clients: with a secure source their keys are
    secure too, so two runs with one seed release different models."""
    extra = (*mechanism, "privacy.target_epsilon=null", "privacy.noise_source=secure")
    _, a = _run(tmp_path, "a", *extra, "model=logreg", "rounds=2")
    _, b = _run(tmp_path, "b", *extra, "model=logreg", "rounds=2")
    assert not any(np.array_equal(a[k], b[k]) for k in a)
