import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedpriv.fl.client import ClientBatch, cross_entropy, make_client_update

from .helpers import toy_model, toy_population


def _client(store, k, n_cap):
    x, y = store.client_data(k)
    xp = np.zeros((n_cap,) + x.shape[1:], np.float32)
    yp = np.zeros(n_cap, np.int32)
    xp[: len(x)], yp[: len(y)] = x, y
    return ClientBatch(jnp.asarray(xp), jnp.asarray(yp), jnp.asarray(len(x)))


def test_full_batch_step_is_one_gradient_step_on_real_examples():
    store = toy_population()
    model, params = toy_model(store)
    n_cap, lr = 10, 0.3
    update_fn = make_client_update(
        model.apply, optax.sgd(lr), epochs=1, batch_size=n_cap, n_cap=n_cap
    )
    k = 4
    out = update_fn(params, _client(store, k, n_cap), jax.random.key(1))
    x, y = store.client_data(k)
    grads = jax.grad(lambda p: cross_entropy(model.apply(p, x), y).mean())(params)
    expected = jax.tree.map(lambda g: -lr * g, grads)
    for a, b in zip(jax.tree.leaves(out.update), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert int(out.steps) == 1


def test_steps_follow_client_size_and_padding_is_ignored():
    store = toy_population(max_size=7)
    model, params = toy_model(store)
    fn = jax.jit(make_client_update(model.apply, optax.sgd(0.1), epochs=3, batch_size=2, n_cap=12))
    for k in range(6):
        n = int(store.client_sizes[k])
        batch = _client(store, k, 12)
        out = fn(params, batch, jax.random.key(k))
        assert int(out.steps) == 3 * -(-n // 2)
        # Garbage in the padding rows changes nothing.
        noisy = batch._replace(x=batch.x.at[n:].set(1e6), y=batch.y.at[n:].set(2))
        out2 = fn(params, noisy, jax.random.key(k))
        for a, b in zip(jax.tree.leaves(out.update), jax.tree.leaves(out2.update)):
            np.testing.assert_array_equal(a, b)


def test_same_key_same_update_different_key_different_order():
    store = toy_population()
    model, params = toy_model(store)
    fn = jax.jit(make_client_update(model.apply, optax.sgd(0.5), 1, 2, 10))
    k = int(np.argmax(store.client_sizes))
    batch = _client(store, k, 10)
    a = fn(params, batch, jax.random.key(0)).update
    b = fn(params, batch, jax.random.key(0)).update
    c = fn(params, batch, jax.random.key(1)).update
    leaves = lambda t: np.concatenate([np.ravel(v) for v in jax.tree.leaves(t)])
    np.testing.assert_array_equal(leaves(a), leaves(b))
    assert not np.allclose(leaves(a), leaves(c))
