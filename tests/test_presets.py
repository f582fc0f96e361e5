"""Each default lives in its preset: a library call with a partial block gets the preset's
values, the same ones the command line composes."""

from __future__ import annotations

import numpy as np
import pytest

from fedpriv import conf
from fedpriv.data import load
from fedpriv.errors import ConfigError
from fedpriv.fl.sampling import build_sampler
from fedpriv.privacy.plan import build_plan
from fedpriv.settings import LocalTraining
from tests.audit import runs


def test_a_partial_dataset_block_is_the_preset_with_those_keys():
    partial = load({"name": "digits", "num_clients": 60}, np.random.default_rng(1))
    composed = runs.compose("dataset=digits", "dataset.num_clients=60")["dataset"]
    whole = load(composed, np.random.default_rng(1))
    assert composed["partition"]["kind"] == "dirichlet"  # the preset's, not iid
    np.testing.assert_array_equal(partial.train.client_sizes, whole.train.client_sizes)
    np.testing.assert_array_equal(partial.train.x, whole.train.x)


def test_a_partial_privacy_block_takes_the_presets_clip():
    sampler = build_sampler("poisson", 100, None, 0.1)
    client = LocalTraining.from_block(runs.compose()["client"])
    block = {"name": "user_dp_adaptive", "noise_multiplier": 1.0, "target_epsilon": None}
    plan = build_plan(block, sampler, client, rounds=5)
    preset = conf.preset("privacy", "user_dp_adaptive")
    assert plan.clip_norm == preset["clip_norm"] == 0.1
    assert plan.adaptive.target_quantile == preset["adaptive"]["target_quantile"]


def test_an_unknown_preset_names_the_group_and_the_choices():
    with pytest.raises(ConfigError) as err:
        conf.preset("privacy", "nonesuch")
    assert err.value.field == "privacy" and "user_dp" in err.value.message
    assert "digits" in conf.presets("dataset")
