"""Library functions name their argument; a run's builder names the configuration path."""

from __future__ import annotations

import pytest

from fedpriv.errors import ArgumentError, ConfigError
from fedpriv.fl import experiment
from fedpriv.fl.client import make_client_optimizer
from fedpriv.fl.sampling import build_sampler
from fedpriv.fl.server import server_optimizer
from fedpriv.settings import RunConfig
from tests.audit import runs


@pytest.mark.parametrize(
    ("call", "argument", "text"),
    [
        (
            lambda: build_sampler("poisson", 10, None, 1.5),
            "rate",
            "rate must be in (0, 1], got 1.5",
        ),
        (lambda: build_sampler("fixed", 10, 11, None), "cohort_size", "population size 10"),
        (lambda: build_sampler("fixed", 10, None, None), "cohort_size", "is required"),
        (lambda: build_sampler("stratified", 10, 2, None), "kind", "'stratified'"),
        (lambda: make_client_optimizer("lbfgs", 0.1), "name", "unknown optimizer 'lbfgs'"),
        (lambda: server_optimizer("fedfoo"), "name", "unknown algorithm 'fedfoo'"),
    ],
)
def test_library_errors_name_the_argument_not_a_config_path(call, argument, text):
    with pytest.raises(ArgumentError) as err:
        call()
    assert err.value.argument == argument and text in str(err.value)
    assert str(err.value).startswith(f"{argument} ")
    assert isinstance(err.value, ValueError) and not isinstance(err.value, ConfigError)


def test_the_builder_maps_an_argument_onto_its_configuration_path():
    # A cohort larger than the loaded population is only known once the data is loaded.
    cfg = runs.compose(*runs.DEBUG, "sampling.cohort_size=25")
    with pytest.raises(ConfigError) as err:
        experiment.build(RunConfig.from_mapping(cfg))
    assert err.value.field == "sampling.cohort_size"
    assert "population size 20" in err.value.message
