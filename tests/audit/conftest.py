"""Honest runs shared by the audit tests, each trained once per session (a few seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.audit import runs

Z = ("privacy.noise_multiplier=1.0", "privacy.target_epsilon=null")
POISSON = ("sampling=poisson", "sampling.rate=0.3")

#: name -> (overrides, resumed)
HONEST = {
    "poisson": (("privacy=user_dp", *Z, *POISSON), False),
    "fixed": (("privacy=user_dp", *Z), False),
    "example": (
        (
            "privacy=example_dp",
            *Z,
            "client.batch_size=2",
            "privacy.example_sampling_rate=0.5",
            "privacy.delta=1e-4",
        ),
        False,
    ),
    "adaptive": (("privacy=user_dp_adaptive", *Z, *POISSON), False),
    "resumed": (("privacy=user_dp", *Z, "sampling=poisson", "sampling.rate=0.5"), True),
    "distributed": (("privacy=distributed_dp", "secagg=fast", *Z), False),
}


@pytest.fixture(scope="session")
def honest_run(tmp_path_factory):
    """``honest_run(name)``: the run directory of one of :data:`HONEST`, trained on first use."""
    root = tmp_path_factory.mktemp("honest")
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            overrides, resumed = HONEST[name]
            build = runs.train_resumed if resumed else runs.train
            made[name] = build(root / name, *overrides)
        return made[name]

    return get
