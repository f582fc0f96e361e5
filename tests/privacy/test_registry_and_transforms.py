"""The mechanism registry and the composable aggregation transforms."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from fedpriv import accounting
from fedpriv.errors import ConfigError
from fedpriv.fl.aggregators import AggregationTransform, as_aggregator, chain
from fedpriv.fl.sampling import build_sampler
from fedpriv.privacy import mechanisms
from fedpriv.privacy.aggregators import (
    AdaptiveClip,
    DPState,
    adaptive_clip,
    clip_transform,
    dp_fedavg,
    gaussian,
    mean,
)
from fedpriv.privacy.plan import build_plan
from fedpriv.settings import LocalTraining
from tests.conftest import REPO

CONF = REPO / "fedpriv" / "conf" / "privacy"


def _flat(tree):
    return np.concatenate([np.ravel(np.asarray(v, np.float64)) for v in jax.tree.leaves(tree)])


def test_every_config_group_has_a_mechanism_and_back():
    groups = {p.stem: yaml.safe_load(p.read_text()) for p in CONF.glob("*.yaml")}
    assert set(groups) == set(mechanisms.names())
    for name, block in groups.items():
        assert block["name"] == name
        mechanisms.get(name).validate(block)  # the shipped defaults are valid


def test_unknown_mechanism_names_the_field():
    with pytest.raises(ConfigError) as err:
        mechanisms.get("dp")
    assert err.value.field == "privacy.name" and "user_dp_laplace" in err.value.message


@pytest.mark.parametrize(
    "record, name",
    [
        ({"mechanism": "gaussian", "unit": "user"}, "user_dp"),
        ({"mechanism": "gaussian", "unit": "gateway"}, "user_dp"),
        ({"mechanism": "gaussian", "unit": "user", "count_noise_std": 3.0}, "user_dp_adaptive"),
        ({"mechanism": "gaussian", "unit": "example"}, "example_dp"),
        ({"mechanism": "laplace", "unit": "user"}, "user_dp_laplace"),
    ],
)
def test_each_record_is_read_by_the_mechanism_that_writes_it(record, name):
    fields = {"round": 1, "sampling": "poisson", "sampling_rate": 0.1, "noise_multiplier": 1.2}
    if record["unit"] == "example":
        fields["example_sampling_rate"] = 0.5
    event = accounting.RoundEvent(**fields, **record)
    assert mechanisms.for_record(event).name == name


@pytest.mark.parametrize("sampling", ["poisson", "fixed", "full"])
def test_gaussian_sensitivity_under_the_relation_gives_the_event_multiplier(sampling):
    """The event's multiplier is noise std over the sensitivity of the relation: z for
    add/remove one client (sensitivity C), z / 2 for replace-one (2C)."""
    z, c = 1.3, 0.7
    events = accounting.plan_events(
        z,
        1,
        sampling=sampling,
        sampling_rate=0.1 if sampling == "poisson" else None,
        population=100,
        cohort_size=10 if sampling == "fixed" else None,
        clip_norm=c,
    )
    mech = mechanisms.for_record(events[0])
    relation = mech.relation(events[0])
    multiplier = events[0].noise_std / mech.sensitivity(relation, c)
    base = mech.dp_event(events[0])
    inner = getattr(base, "event", base)
    assert inner.noise_multiplier == pytest.approx(multiplier, rel=1e-12)
    expected = mechanisms.REPLACE_ONE if sampling == "fixed" else mechanisms.ADD_OR_REMOVE_ONE
    assert relation == expected


def test_build_plan_dispatches_through_the_registry():
    sampler = build_sampler("fixed", 20, 5, None)
    for name in mechanisms.names():
        if name == "distributed_dp":
            continue  # needs secure aggregation; covered by the secagg tests
        block = {"name": name, "noise_multiplier": 1.0, "example_sampling_rate": 0.5}
        plan = build_plan(block, sampler, LocalTraining(batch_size=2, epochs=1), rounds=2)
        assert plan.mechanism is mechanisms.get(name) and plan.name == name
        assert plan.is_private == (name != "none")


def test_library_errors_name_the_argument():
    with pytest.raises(ValueError, match="clip_norm must be > 0, got -1"):
        dp_fedavg(-1.0, 1.0, 10.0)
    with pytest.raises(ValueError, match="noise_multiplier must be >= 0"):
        dp_fedavg(1.0, -1.0, 10.0)
    assert not isinstance(_raised(lambda: dp_fedavg(-1.0, 1.0, 10.0)), ConfigError)


def _raised(fn):
    try:
        fn()
    except Exception as err:  # noqa: BLE001
        return err
    return None


def test_chain_without_noise_is_the_mean_of_clipped_updates():
    """Against numpy: clip each update to norm C, sum the reporting clients, divide by m."""
    rng = np.random.default_rng(0)
    updates = (
        rng.normal(size=(6, 30)).astype(np.float32) * np.array([0.1, 1, 5, 9, 0.5, 3])[:, None]
    )
    mask = np.array([1, 1, 1, 1, 1, 0], np.float32)
    c, m = 2.0, 4.5
    agg = as_aggregator(chain(clip_transform(c), mean(m)), params={"u": jnp.zeros(30)})
    contrib, weight, st = jax.vmap(agg.contribution, in_axes=(0, None, 0, None))(
        {"u": jnp.asarray(updates)}, jnp.asarray(1.0), jnp.asarray(mask), agg.init()
    )
    total = jax.tree.map(lambda x: x.sum(0), contrib)
    st = {k: v.sum() for k, v in st.items()}
    out, state, metrics = agg.finalize(total, weight.sum(), st, agg.init(), jax.random.key(0))
    norms = np.linalg.norm(updates, axis=1, keepdims=True)
    clipped = updates * np.minimum(1.0, c / norms) * mask[:, None]
    np.testing.assert_allclose(_flat(out), clipped.sum(0) / m, rtol=1e-5, atol=1e-7)
    assert float(metrics["denominator"]) == m and float(metrics["clip_norm"]) == c
    assert float(metrics["clipped_fraction"]) == pytest.approx(np.mean(norms[:5] > c))
    assert isinstance(state, DPState)  # stateless transforms leave no trace in the state


def test_chain_state_is_the_clip_state_and_keys_have_slots():
    agg = dp_fedavg(1.0, 1.0, 10.0, adaptive=AdaptiveClip(0.5, 0.2, 5.0))
    assert isinstance(agg.init(), DPState) and agg.client_scale is not None
    assert dp_fedavg(1.0, 1.0, 10.0, per_layer=True).client_scale is None
    with pytest.raises(ValueError, match="same key slot"):
        chain(gaussian(1.0), gaussian(2.0))
    with pytest.raises(ValueError, match="at least one"):
        chain()


def test_noise_does_not_depend_on_the_count_noise_neighbour():
    """The update noise draws from its own key slot: adding adaptive clipping's count noise to
    the chain leaves the update noise (at equal std) unchanged."""
    zero = {"u": jnp.zeros(2000)}
    info_stats = {"clipped": 0.0, "norm": 0.0, "below_centred": 0.0}
    fixed = as_aggregator(chain(clip_transform(1.0), gaussian(1.0), mean(1.0)))
    adaptive = as_aggregator(
        chain(adaptive_clip(1.0, AdaptiveClip(0.5, 0.2, 3.0), 1.0), gaussian(1.0), mean(1.0))
    )
    key = jax.random.key(7)
    a = fixed.finalize(zero, 0.0, info_stats, fixed.init(), key)[0]
    b, new_state, metrics = adaptive.finalize(zero, 0.0, info_stats, adaptive.init(), key)
    np.testing.assert_array_equal(_flat(a), _flat(b))
    assert "unclipped_estimate" in metrics and float(new_state.clip_norm) != 1.0
    draws = _flat(a)
    assert abs(draws.std() - 1.0) < 0.05 and math.isfinite(draws.mean())


def test_a_transform_is_a_plain_named_tuple():
    t = clip_transform(1.0)
    assert isinstance(t, AggregationTransform) and t.key_slot is None
    assert float(t.init(None).clip_norm) == 1.0
