"""The factored low-rank path computes the same round as the direct path."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedpriv import models
from fedpriv.errors import ConfigError
from fedpriv.fl.aggregators import weighted_mean
from fedpriv.fl.client import make_client_update
from fedpriv.fl.lowrank import choose_path, dense_layers, make_lowrank_cohort_sums
from fedpriv.fl.round import init_server_state, make_round
from fedpriv.privacy import dp_fedavg
from fedpriv.settings import LocalTraining

from .helpers import cohort, toy_population

SGD = LocalTraining(optimizer="sgd")


def _flat(tree):
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


# Every depth and every aggregator, each at least once (not the full product, to keep the
# suite short: each case compiles two rounds).
@pytest.mark.parametrize(
    "hidden,agg_name",
    [
        ((), "dp_clip"),
        ((16,), "fedavg"),
        ((16,), "dp_adaptive"),
        ((16, 8), "dp_clip"),
        ((16, 8), "fedavg"),
    ],
)
def test_lowrank_round_equals_direct_round(hidden, agg_name):
    store = toy_population(50, max_size=9, dim=12, classes=4)
    name = "mlp" if hidden else "logreg"
    model = models.build(name, 4, **({"hidden": hidden} if hidden else {}))
    params = model.init(jax.random.key(0), jnp.zeros((1, 12)))
    lr, epochs, batch, n_cap = 0.3, 2, 3, 9
    if agg_name == "fedavg":
        agg = weighted_mean()
    elif agg_name == "dp_clip":  # tight clip: every update is rescaled by its exact norm
        agg = dp_fedavg(0.05, 0.0, 40.0)
    else:
        from fedpriv.privacy import AdaptiveClip

        agg = dp_fedavg(0.05, 0.0, 40.0, adaptive=AdaptiveClip(0.5, 0.2, 1.0))
    cu = make_client_update(model.apply, optax.sgd(lr), epochs, batch, n_cap)
    sopt = optax.sgd(1.0)
    state = init_server_state(params, sopt, agg)
    inputs = cohort(store, np.arange(3, 40), n_cap, pad_to=40)
    key = jax.random.key(11)
    direct, m_direct = jax.jit(make_round(cu, agg, sopt, 8))(state, inputs, key)
    sums = make_lowrank_cohort_sums(dense_layers(params), lr, epochs, batch, n_cap, agg, 10)
    low, m_low = jax.jit(make_round(cu, agg, sopt, 10, local_sums=sums))(state, inputs, key)
    moved = np.abs(_flat(direct.params) - _flat(params)).max()
    assert moved > 1e-4  # the round really changed the model
    np.testing.assert_allclose(
        _flat(low.params), _flat(direct.params), rtol=1e-4, atol=1e-5 * moved
    )
    for k in ("train_loss", "clients", "local_steps"):
        np.testing.assert_allclose(float(m_low[k]), float(m_direct[k]), rtol=1e-5)
    if agg_name != "fedavg":
        np.testing.assert_allclose(
            float(m_low["mean_update_norm_preclip"]),
            float(m_direct["mean_update_norm_preclip"]),
            rtol=1e-4,
        )
        np.testing.assert_allclose(_flat(low.agg_state), _flat(direct.agg_state), rtol=1e-5)


def test_lowrank_refuses_where_it_does_not_apply():
    model = models.build("cnn", 10)
    params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    with pytest.raises(ConfigError, match="dense layers"):
        choose_path("lowrank", params, SGD, weighted_mean(), False)
    mlp = models.build("mlp", 10)
    p2 = mlp.init(jax.random.key(0), jnp.zeros((1, 64)))
    with pytest.raises(ConfigError, match="plain SGD"):
        choose_path(
            "lowrank", p2, LocalTraining(optimizer="sgd", momentum=0.9), weighted_mean(), False
        )
    with pytest.raises(ConfigError, match="per-layer"):
        choose_path("lowrank", p2, SGD, dp_fedavg(1, 1, 1, per_layer=True), False)
    assert choose_path("lowrank", p2, SGD, weighted_mean(), False) == "lowrank"
    assert choose_path("auto", p2, SGD, weighted_mean(), False) == "direct"
