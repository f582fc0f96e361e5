"""A run compiles its round once: cohorts of varying realised size never recompile it."""

import numpy as np
from omegaconf import OmegaConf

from fedpriv.cli import compose
from fedpriv.config import validate
from fedpriv.fl import experiment
from fedpriv.settings import RunConfig


def _cfg(*overrides):
    cfg = compose(["experiment=debug", *overrides])
    plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("hydra", None)
    plain = OmegaConf.to_container(OmegaConf.create(plain), resolve=True)
    validate(plain)
    return plain


def test_poisson_cohorts_of_varying_size_compile_once():
    cfg = _cfg(
        "sampling=poisson",
        "sampling.rate=0.3",
        "dataset.num_clients=40",
        "privacy=user_dp",
        "privacy.target_epsilon=null",
        "privacy.noise_multiplier=1.0",
    )
    exp = experiment.build(RunConfig.from_mapping(cfg))
    state = exp.state
    sizes = []
    for rnd in range(1, 9):
        batch = exp.cohort(rnd)
        sizes.append(int(np.asarray(batch.client_mask).sum()))
        state, metrics = exp.round_fn(state, batch, exp.round_key(rnd))
        assert int(metrics["clients"]) == sizes[-1]
    assert len(set(sizes)) > 1  # the realised cohort really varied
    assert exp.round_fn._cache_size() == 1
