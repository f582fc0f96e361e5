import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax

from fedpriv.data import load
from fedpriv.fl.aggregators import weighted_mean
from fedpriv.fl.client import ClientBatch
from fedpriv.fl.round import init_server_state, make_round
from fedpriv.fl.sampling import FixedCohort, PoissonCohort
from fedpriv.fl.server import server_optimizer

from .helpers import cohort, toy_client_update, toy_model, toy_population


def _flat(tree):
    return np.concatenate([np.ravel(np.asarray(v)) for v in jax.tree.leaves(tree)])


def _count_eqns(jaxpr):
    n = 0
    for eqn in jaxpr.eqns:
        n += 1
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            n += _count_eqns(sub)
    return n


def _round(store, chunk, server="fedavg", lr=1.0):
    model, params = toy_model(store)
    n_cap = int(store.client_sizes.max())
    cu = toy_client_update(model, n_cap)
    agg = weighted_mean()
    sopt = server_optimizer(server, lr)
    fn = jax.jit(make_round(cu, agg, sopt, chunk))
    return fn, init_server_state(params, sopt, agg), cu, params, n_cap


def test_vmapped_round_equals_python_loop_over_clients():
    store = toy_population(40)
    fn, state, cu, params, n_cap = _round(store, chunk=12)
    ids = np.arange(0, 36)
    inputs = cohort(store, ids, n_cap)
    key = jax.random.key(3)
    new_state, metrics = fn(state, inputs, key)

    # Reference: a plain Python loop, one client at a time, weighted mean in float64.
    client_key, _ = jax.random.split(key)
    one = jax.jit(cu)
    total, weight = 0.0, 0.0
    for i, cid in enumerate(ids):
        b = ClientBatch(inputs.x[i], inputs.y[i], inputs.count[i])
        out = one(params, b, jax.random.fold_in(client_key, cid))
        n = float(inputs.count[i])
        total = total + n * _flat(out.update).astype(np.float64)
        weight += n
    expected = _flat(params) + total / weight
    np.testing.assert_allclose(_flat(new_state.params), expected, rtol=1e-5, atol=1e-6)
    assert int(metrics["clients"]) == 36


def test_chunked_equals_unchunked_and_padding_changes_nothing():
    store = toy_population(40)
    ids = np.arange(3, 27)
    key = jax.random.key(7)
    results = []
    for chunk, pad_to in [(24, None), (6, None), (1, None), (8, 32), (5, 25)]:
        fn, state, _, _, n_cap = _round(store, chunk)
        new_state, m = fn(state, cohort(store, ids, n_cap, pad_to), key)
        assert int(m["clients"]) == 24
        results.append(_flat(new_state.params))
    for r in results[1:]:
        np.testing.assert_allclose(r, results[0], rtol=1e-5, atol=1e-6)


def test_round_is_one_computation_whatever_the_cohort_size():
    """The traced round does not grow with the cohort: clients are vmapped, not unrolled."""
    store = toy_population(1000, max_size=3)
    model, params = toy_model(store)
    n_cap = 3
    cu = toy_client_update(model, n_cap)
    agg = weighted_mean()
    sopt = server_optimizer("fedavg")
    state = init_server_state(params, sopt, agg)
    sizes = []
    for c in (10, 1000):
        fn = make_round(cu, agg, sopt, c)
        jaxpr = jax.make_jaxpr(fn)(state, cohort(store, np.arange(c), n_cap), jax.random.key(0))
        sizes.append(_count_eqns(jaxpr.jaxpr))
    assert sizes[0] == sizes[1]


def test_thousand_small_clients_of_the_embedded_digits():
    data = load(
        {"name": "digits", "num_clients": 1000, "partition": {"kind": "iid"}},
        np.random.default_rng(0),
    )
    store = data.train
    fn, state, cu, params, n_cap = _round(store, chunk=1000)
    ids = np.arange(1000)
    inputs = cohort(store, ids, n_cap)
    key = jax.random.key(0)
    new_state, m = fn(state, inputs, key)
    chunked, _, _, _, _ = _round(store, chunk=50)
    new_chunked, _ = chunked(state, inputs, key)
    assert int(m["clients"]) == 1000
    np.testing.assert_allclose(
        _flat(new_state.params), _flat(new_chunked.params), rtol=1e-4, atol=1e-6
    )
    client_key, _ = jax.random.split(key)
    one = jax.jit(cu)
    total = 0.0
    for i in ids:
        out = one(
            params,
            ClientBatch(inputs.x[i], inputs.y[i], inputs.count[i]),
            jax.random.fold_in(client_key, i),
        )
        total = total + float(inputs.count[i]) * _flat(out.update).astype(np.float64)
    expected = _flat(params) + total / float(inputs.count.sum())
    np.testing.assert_allclose(_flat(new_state.params), expected, rtol=1e-4, atol=1e-6)


def test_nonfinite_client_is_dropped_and_counted():
    store = toy_population(20)
    fn, state, _, params, n_cap = _round(store, chunk=5)
    inputs = cohort(store, np.arange(10), n_cap)
    x = inputs.x.copy()
    x[3] = np.nan
    poisoned = inputs._replace(x=x)
    # Client ids fix the keys, so the reference drops client 3 by masking the same slot.
    mask = inputs.client_mask.copy()
    mask[3] = 0.0
    ref = inputs._replace(client_mask=mask)
    key = jax.random.key(1)
    s1, m1 = fn(state, poisoned, key)
    s2, _ = fn(state, ref, key)
    assert int(m1["nonfinite_clients"]) == 1
    assert np.isfinite(_flat(s1.params)).all()
    np.testing.assert_allclose(_flat(s1.params), _flat(s2.params), rtol=1e-6, atol=1e-7)


def test_server_optimizers_match_their_update_rules():
    store = toy_population(20)
    ids = np.arange(8)
    key = jax.random.key(2)
    base_fn, base_state, _, params, n_cap = _round(store, 8, "fedavg", 1.0)
    inputs = cohort(store, ids, n_cap)
    after, _ = base_fn(base_state, inputs, key)
    delta = _flat(after.params) - _flat(params)  # the mean client update
    fn, state, *_ = _round(store, 8, "fedadam", 0.01)
    s, _ = fn(state, inputs, key)
    # Adam's first step moves each coordinate by lr * g / (|g| + eps') ~ lr * sign(delta).
    step = _flat(s.params) - _flat(params)
    big = np.abs(delta) > 1e-2
    np.testing.assert_allclose(step[big], 0.01 * np.sign(delta[big]), rtol=0.2)
    fn, state, *_ = _round(store, 8, "fedyogi", 0.01)
    s, _ = fn(state, inputs, key)
    assert np.all(np.sign(_flat(s.params) - _flat(params))[big] == np.sign(delta[big]))
    fn, state, *_ = _round(store, 8, "fedavgm", 0.5)
    s, _ = fn(state, inputs, key)
    np.testing.assert_allclose(_flat(s.params) - _flat(params), 0.5 * delta, rtol=1e-4, atol=1e-7)


def test_fixed_cohorts_are_distinct_and_poisson_rate_is_right():
    fixed = FixedCohort(100, 30)
    ids, mask = fixed.sample(jax.random.key(0))
    assert len(np.unique(ids)) == 30 and mask.all()
    ids2, _ = fixed.sample(jax.random.key(0))
    np.testing.assert_array_equal(ids, ids2)
    poisson = PoissonCohort(2000, 0.05)
    counts = []
    for r in range(200):
        ids, mask = poisson.sample(jax.random.key(r))
        assert len(ids) == poisson.capacity
        chosen = ids[mask]
        assert len(np.unique(chosen)) == len(chosen)
        counts.append(mask.sum())
    # Mean within 4 standard errors of q*N; variance of Binomial(N, q).
    se = np.sqrt(2000 * 0.05 * 0.95 / 200)
    assert abs(np.mean(counts) - 100) < 4 * se
    assert 0.7 < np.var(counts) / (2000 * 0.05 * 0.95) < 1.4


def test_optax_chain_as_client_optimizer():
    store = toy_population(10)
    model, params = toy_model(store)
    from fedpriv.fl.client import make_client_update

    cu = make_client_update(
        model.apply, optax.chain(optax.clip_by_global_norm(1.0), optax.adam(0.01)), 1, 4, 7
    )
    batch = ClientBatch(*(a[0] for a in cohort(store, [0], 7)[:3]))
    out = jax.jit(cu)(params, batch, jax.random.key(0))
    assert np.isfinite(_flat(out.update)).all() and np.abs(_flat(out.update)).max() > 0


def test_server_momentum_zero_is_plain_sgd():
    """A zero server momentum is kept (not replaced by the 0.9 default)."""
    from fedpriv.settings import algorithm_from_block

    params = {"w": jnp.zeros(3)}
    grad = {"w": jnp.ones(3)}
    for momentum, second_step in ((0.0, -1.0), (None, -1.9)):
        opt = algorithm_from_block(
            {"name": "fedavgm", "server_lr": 1.0, "server_momentum": momentum}
        ).server_optimizer()
        state = opt.init(params)
        _, state = opt.update(grad, state, params)
        update, _ = opt.update(grad, state, params)
        np.testing.assert_allclose(np.asarray(update["w"]), second_step, rtol=1e-6)
