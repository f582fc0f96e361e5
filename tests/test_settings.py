"""The typed run configuration (fedpriv.settings): every preset resolves to its typed group,
the edge refuses keys no choice of a group has, and the library receives what was composed."""

from __future__ import annotations

import dataclasses

import pytest

from fedpriv import algorithms, conf
from fedpriv.config import validate
from fedpriv.errors import ConfigError
from fedpriv.groups import group_classes, group_keys
from fedpriv.settings import (
    Asynchronous,
    Availability,
    Compute,
    Cyclic,
    CyclicPoisson,
    Execution,
    FixedCohort,
    Hierarchy,
    LocalTraining,
    MinSeparation,
    Poisson,
    RunConfig,
    SecureAggregation,
    algorithm_from_block,
    sampling_from_block,
)
from tests.audit import runs

SINGLE = {
    "client": LocalTraining,
    "execution": Execution,
    "secagg": SecureAggregation,
    "availability": Availability,
    "compute": Compute,
    "hierarchy": Hierarchy,
    "async": Asynchronous,
}


def _resolve(group: str, name: str):
    block = conf.preset(group, name)
    if group == "sampling":
        return sampling_from_block(block)
    if group == "algorithm":
        return algorithm_from_block(block)
    return SINGLE[group].from_block(block)


@pytest.mark.parametrize("group", [*SINGLE, "sampling", "algorithm"])
def test_every_preset_resolves_to_its_typed_group_with_every_value(group):
    for name in conf.presets(group):
        preset = conf.preset(group, name)
        typed = _resolve(group, name)
        fields = {f.name for f in dataclasses.fields(typed)}
        for key, value in preset.items():
            if key in fields:
                assert getattr(typed, key) == value, (group, name, key)
            else:  # the key that names the preset
                assert key == typed.preset_key and value == name, (group, name, key)


def test_a_preset_key_the_file_lacks_is_none_and_the_file_keys_are_the_group_keys():
    for group in (*SINGLE, "sampling", "algorithm"):
        keys = set().union(*(conf.preset(group, n) for n in conf.presets(group)))
        assert keys <= group_keys(group) | {"name", "kind", "mode"}, group


def test_typed_choices_of_sampling_and_algorithm():
    assert group_classes("sampling") == [
        Poisson,
        FixedCohort,
        Cyclic,
        CyclicPoisson,
        MinSeparation,
    ]
    assert set(algorithms.by_name()) == {
        "fedavg",
        "fedavgm",
        "fedadam",
        "fedyogi",
        "fedprox",
        "fednova",
    }
    assert (
        sampling_from_block({"kind": "fixed"}).cohort_size
        == conf.preset("sampling", "fixed")["cohort_size"]
    )


def test_unknown_keys_are_refused_and_a_sibling_choices_key_is_left_out():
    with pytest.raises(ConfigError) as err:
        LocalTraining.from_block({"lrr": 0.1})
    assert err.value.field == "client.lrr" and "'lr'" in err.value.message
    # FedProx's mu in a FedAvg block (an experiment preset run with algorithm=fedavg): not
    # FedAvg's setting, and not an error.
    fedavg = algorithm_from_block({"name": "fedavg", "mu": 1.0})
    assert fedavg == algorithms.FedAvg(server_lr=1.0, weighting="count")
    with pytest.raises(ConfigError) as err:
        sampling_from_block({"kind": "uniform"})
    assert err.value.field == "sampling.kind"


def test_algorithms_own_their_server_step_and_local_options():
    import jax.numpy as jnp

    params, grad = {"w": jnp.zeros(2)}, {"w": jnp.ones(2)}
    for name in algorithms.by_name():
        alg = algorithm_from_block({"name": name})
        opt = alg.server_optimizer()
        update, _ = opt.update(grad, opt.init(params), params)
        lr = conf.preset("algorithm", name)["server_lr"]
        # The first step of every server optimizer moves against the pseudo-gradient; SGD's
        # by exactly lr, Adam's and Yogi's by about lr (bias-corrected).
        assert float(update["w"][0]) < 0
        if name in ("fedavg", "fedavgm", "fedprox", "fednova"):
            assert float(update["w"][0]) == pytest.approx(-lr)
    assert algorithm_from_block({"name": "fedprox"}).local_options() == {
        "proximal_mu": conf.preset("algorithm", "fedprox")["mu"]
    }
    assert algorithm_from_block({"name": "fedprox", "mu": 0.0}).local_options() == {}
    assert algorithm_from_block({"name": "fednova"}).normalizes


def test_validate_returns_the_run_the_library_receives():
    cfg = runs.compose(*runs.DEBUG, "secagg=fast", "client.max_examples=8", "compute=stragglers")
    run = validate(cfg)
    assert isinstance(run, RunConfig)
    assert run.seed == cfg["seed"] and run.rounds == cfg["rounds"]
    assert run.client.max_examples == 8 and run.client.lr == cfg["client"]["lr"]
    assert run.sampling == FixedCohort(cohort_size=cfg["sampling"]["cohort_size"])
    assert run.secagg.enabled and run.secagg.bits == cfg["secagg"]["bits"]
    assert run.compute.kind == "stragglers" and not run.compute.drops_stragglers
    assert run.privacy == cfg["privacy"] and run.dataset == cfg["dataset"]
    assert run.source == cfg and not run.is_async
    assert dataclasses.replace(run, rounds=7).rounds == 7
    # Groups left out take fedpriv-train's defaults.
    bare = RunConfig.from_mapping({"seed": 0, "rounds": 2})
    assert bare.client == LocalTraining.from_block(conf.preset("client", "sgd"))
    assert bare.algorithm == algorithm_from_block(conf.preset("algorithm", "fedavg"))
    with pytest.raises(ConfigError) as err:
        RunConfig.from_mapping({"seed": 0})
    assert err.value.field == "rounds"


def test_canary_counts_are_checked_at_the_edge():
    with pytest.raises(ConfigError) as err:
        RunConfig.from_mapping({"seed": 0, "rounds": 1, "canaries": {"count": -1}})
    assert err.value.field == "canaries.count"
    run = RunConfig.from_mapping({"seed": 0, "rounds": 1, "canaries": {"count": 3}})
    assert (run.canaries.count, run.canaries.unseen) == (3, 3)
