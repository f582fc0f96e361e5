"""The Python API: typed settings compose to the command line's configuration, a run from
Python is the run ``fedpriv-train`` makes, and its epsilon is the one an independent
accountant computes for the mechanism that ran."""

from __future__ import annotations

import dp_accounting
import jax
import numpy as np
import pytest

import fedpriv
from fedpriv import algorithms, mechanisms
from fedpriv.errors import ConfigError
from fedpriv.settings import RunConfig
from tests.audit import runs

SMALL = fedpriv.Population("digits", num_clients=100, partition="iid")


def test_typed_settings_compose_to_what_the_command_line_composes():
    typed = fedpriv.configure(
        fedpriv.Population("digits", num_clients=200, partition="shards", shards_per_client=3),
        fedpriv.Model("mlp", {"hidden": [32]}),
        algorithms.FedProx(mu=0.1),
        fedpriv.LocalTraining(lr=0.05, epochs=2),
        fedpriv.FixedCohort(cohort_size=20),
        mechanisms.AdaptiveDpFedAvg(noise_multiplier=0.8, target_quantile=0.3),
        seed=3,
        rounds=7,
    )
    shell = runs.compose(
        "dataset=digits",
        "dataset.num_clients=200",
        "dataset.partition.kind=shards",
        "dataset.partition.shards_per_client=3",
        "model=mlp",
        "model.hidden=[32]",
        "algorithm=fedprox",
        "algorithm.mu=0.1",
        "client.lr=0.05",
        "client.epochs=2",
        "sampling=fixed",
        "sampling.cohort_size=20",
        "privacy=user_dp_adaptive",
        "privacy.noise_multiplier=0.8",
        "privacy.target_epsilon=null",
        "privacy.adaptive.target_quantile=0.3",
        "seed=3",
        "rounds=7",
    )
    assert typed == shell


def test_fields_left_unset_keep_the_presets_values():
    cfg = fedpriv.configure(mechanisms.AdaptiveDpFedAvg(), algorithms.FedAdam())
    preset = runs.compose("privacy=user_dp_adaptive", "algorithm=fedadam")
    assert cfg["privacy"] == preset["privacy"]
    assert cfg["algorithm"] == preset["algorithm"]
    assert cfg["privacy"]["clip_norm"] == 0.1  # the adaptive preset's, not DP-FedAvg's 1.0


def test_a_run_from_python_is_the_run_the_command_line_makes(tmp_path):
    from fedpriv.config import validate
    from fedpriv.fl import loop

    shell = runs.compose(
        "model=logreg",
        "dataset.num_clients=100",
        "dataset.partition.kind=iid",
        "sampling.rate=0.2",
        "privacy.noise_multiplier=1.1",
        "privacy.target_epsilon=null",
        "rounds=3",
        "progress=false",
    )
    validate(shell)
    loop.run(RunConfig.from_mapping(shell), tmp_path / "shell", progress=False)
    result = fedpriv.simulate(
        SMALL,
        model="logreg",
        sampling=fedpriv.Poisson(rate=0.2),
        mechanism=mechanisms.DpFedAvg(noise_multiplier=1.1),
        rounds=3,
        run_dir=tmp_path / "python",
    )
    assert result.config == shell
    want = np.load(tmp_path / "shell" / "final_params.npz")
    got = np.load(result.run_dir / "final_params.npz")
    assert sorted(want.files) == sorted(got.files)
    for name in want.files:
        np.testing.assert_array_equal(want[name], got[name])
    assert result.ledger == runs.lines(tmp_path / "shell" / "ledger.jsonl")
    assert len(result.history) == 3
    assert sum(x.size for x in jax.tree.leaves(result.params)) == sum(
        got[n].size for n in got.files
    )
    assert (result.run_dir / ".hydra" / "config.yaml").is_file()  # fedpriv-audit reads it


def test_epsilon_is_the_independent_accountants_for_the_mechanism_that_ran(tmp_path):
    result = fedpriv.simulate(
        SMALL,
        model="logreg",
        sampling=fedpriv.Poisson(rate=0.2),
        mechanism=mechanisms.DpFedAvg(noise_multiplier=1.3, delta=1e-4),
        rounds=4,
        run_dir=tmp_path / "run",
    )
    assert result.plan.noise_multiplier == 1.3 and result.plan.sampling_rate == 0.2
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.2, dp_accounting.GaussianDpEvent(1.3)), 4
    )
    pld = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    pld.compose(event)
    assert result.epsilon(accountant="pld") == pytest.approx(pld.get_epsilon(1e-4), rel=0.02)
    assert result.epsilon(delta=1e-6) > result.epsilon()  # a smaller delta costs epsilon
    assert result.mechanism.name == "user_dp"


def test_no_privacy_claims_no_epsilon(tmp_path):
    result = fedpriv.simulate(
        SMALL, model="logreg", mechanism=mechanisms.NoPrivacy(), rounds=2, run_dir=tmp_path / "r"
    )
    assert result.ledger == [] and "epsilon" not in result.summary
    with pytest.raises(ValueError, match="no differential privacy"):
        result.epsilon()


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ((mechanisms.DpFedAvg(clip_norm=-1.0),), "privacy.clip_norm"),
        ((fedpriv.Poisson(rate=1.5),), "sampling.rate"),
        ((fedpriv.Population("nonesuch"),), "dataset"),
        ((fedpriv.LocalTraining(optimizer="lbfgs"),), "client.optimizer"),
    ],
)
def test_bad_settings_raise_one_error_naming_the_field(settings, field):
    with pytest.raises(ConfigError) as err:
        fedpriv.configure(*settings)
    assert err.value.field.startswith(field), err.value


def test_a_noise_multiplier_and_a_target_together_are_refused():
    with pytest.raises(ValueError, match="noise_multiplier and target_epsilon"):
        mechanisms.DpFedAvg(noise_multiplier=1.0, target_epsilon=2.0)


def test_population_load_is_the_data_a_run_with_that_seed_trains_on():
    a, b = SMALL.load(seed=4), SMALL.load(seed=4)
    np.testing.assert_array_equal(a.train.client_sizes, b.train.client_sizes)
    assert a.train.num_clients == 100
    other = SMALL.load(seed=5)
    assert not np.array_equal(a.train.x, other.train.x)


def test_correlated_noise_from_python_accounts_its_own_ledger(tmp_path):
    import fedpriv
    from fedpriv import mechanisms

    result = fedpriv.simulate(
        fedpriv.Population("digits", num_clients=40),
        model="logreg",
        sampling=fedpriv.Cyclic(groups=4, cohort_size=5),
        mechanism=mechanisms.DpFtrl(strategy="banded", bands=2, noise_multiplier=1.0),
        rounds=3,
        run_dir=tmp_path / "run",
    )
    assert [r["mechanism"] for r in result.ledger] == ["gaussian_mf"] * 3
    assert result.plan.correlation.participation == (4, 1)
    assert result.epsilon(accountant="pld") == pytest.approx(result.summary["epsilon"]["pld"])
