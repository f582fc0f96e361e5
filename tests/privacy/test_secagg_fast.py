"""Fast path of secure aggregation: encoding, masks, the Aggregator, noise samplers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from fedpriv.fl.aggregators import weighted_mean
from fedpriv.privacy.distributed import DistributedNoise, discrete_gaussian, skellam
from fedpriv.privacy.secagg import graph
from fedpriv.privacy.secagg.fast import SecAggSpec, secure_aggregator
from fedpriv.privacy.secagg.masks import mask_inputs, modular_sum
from fedpriv.privacy.secagg.quantize import (
    centred_lift,
    fwht,
    modulus_mask,
    padded_dim,
    random_signs,
    rotate,
    stochastic_round,
    to_modular,
    unrotate,
)


@pytest.mark.parametrize("bits", [2, 8, 16, 20, 31, 32])
def test_modular_encoding_and_centred_lift_are_inverse(bits):
    half = 2 ** (bits - 1)
    q = jnp.asarray([-half, -1, 0, 1, half - 1], jnp.int32)
    u = to_modular(q, bits)
    assert int(jnp.max(u)) < 2**bits
    np.testing.assert_array_equal(centred_lift(u, bits), q)
    # Wrap-around: half wraps to -half.
    assert int(centred_lift(to_modular(jnp.asarray([half - 1], jnp.int32) + 1, bits), bits)[0]) == (
        -half
    )


def test_uint32_sums_are_exact_modulo_2_to_the_b():
    rng = np.random.default_rng(0)
    for bits in (16, 24, 32):
        x = rng.integers(0, 2**bits, (500, 64), dtype=np.uint64)
        got = np.asarray(modular_sum(jnp.asarray(x.astype(np.uint32)), bits))
        np.testing.assert_array_equal(got, x.sum(axis=0) % 2**bits)


def test_rotation_is_orthonormal_and_invertible():
    h = fwht(jnp.eye(16))
    np.testing.assert_allclose(h @ h.T, np.eye(16), atol=1e-6)
    x = jax.random.normal(jax.random.key(0), (4, 256))
    s = random_signs(jax.random.key(1), 256)
    y = rotate(x, s)
    np.testing.assert_allclose(jnp.linalg.norm(y, axis=1), jnp.linalg.norm(x, axis=1), rtol=1e-5)
    np.testing.assert_allclose(unrotate(y, s), x, atol=1e-5)
    assert padded_dim(1000) == 1024 and padded_dim(1024) == 1024 and padded_dim(1) == 1


def test_stochastic_rounding_is_unbiased():
    x = jnp.linspace(-3.0, 3.0, 97)
    keys = jax.random.split(jax.random.key(0), 4000)
    q = jax.vmap(lambda k: stochastic_round(x, k))(keys)
    assert bool(jnp.all(jnp.abs(q - x) < 1.0))
    err = jnp.mean(q - x, axis=0)  # per-coordinate std of the mean <= 0.5 / sqrt(4000)
    assert float(jnp.max(jnp.abs(err))) < 5 * 0.5 / np.sqrt(4000)


@pytest.mark.parametrize("neighbours", [None, 4, 7])
def test_masked_sum_equals_unmasked_modular_sum_bit_for_bit(neighbours):
    bits, n = 20, 13
    u = jax.random.bits(jax.random.key(0), (n, 300), jnp.uint32) & modulus_mask(bits)
    nbr = jnp.asarray(graph.harary(n, neighbours))
    y = mask_inputs(u, jax.random.key(1), jnp.arange(n) * 7 + 3, nbr, bits)
    assert bool(jnp.all(modular_sum(y, bits) == modular_sum(u, bits)))
    assert float(jnp.mean(y != u)) > 0.99  # every input is actually masked


def test_harary_graph_is_regular_and_symmetric():
    perm = np.random.default_rng(0).permutation(30)
    for k in (2, 3, 6, 29):
        nbr = graph.harary(30, k, perm)
        assert nbr.shape == (30, min(k, 29))
        for i in range(30):
            assert i not in nbr[i]
            assert all(i in nbr[j] for j in nbr[i])


def _secure_mean(updates, bits, scale, rotation, noise=None, pad=0, key=0):
    n, p = updates.shape
    params = {"w": jnp.zeros((p,))}
    spec = SecAggSpec(
        mode="fast",
        bits=bits,
        rotation=rotation,
        scale=scale,
        num_params=p,
        dimension=padded_dim(p),
        cohort=n + pad,
        masks="expand",
        noise=noise,
    )
    agg = secure_aggregator(weighted_mean("uniform"), spec, jax.random.key(5), params)
    state = agg.init()
    ups = jnp.concatenate([updates, jnp.full((pad, p), 123.0)])
    keys = jax.random.split(jax.random.key(key), n + pad)
    packed = jax.vmap(lambda k: jax.random.key_data(k).reshape(-1))(keys)
    halves = jnp.stack([packed & 0xFFFF, packed >> 16], -1).reshape(n + pad, -1)
    mask = jnp.concatenate([jnp.ones(n), jnp.zeros(pad)])
    count = jnp.concatenate([jnp.ones(n, jnp.int32), jnp.zeros(pad, jnp.int32)])
    contrib, w, st = jax.jit(
        jax.vmap(
            lambda u, k, c, m: agg.contribution(({"w": u}, k.astype(jnp.float32)), c, m, state)
        )
    )(ups, halves, count, mask)
    total = jax.tree.map(lambda c: jnp.sum(c, axis=0, dtype=c.dtype), contrib)
    st = {k: jnp.sum(v) for k, v in st.items()}
    mean, _, metrics = jax.jit(agg.finalize)(total, jnp.sum(w), st, state, jax.random.key(9))
    return mean["w"], metrics


@pytest.mark.parametrize("rotation", [False, True])
def test_secure_aggregator_recovers_the_mean_and_ignores_padding(rotation):
    updates = jax.random.normal(jax.random.key(3), (20, 100))
    mean, metrics = _secure_mean(updates, 20, 1000.0, rotation, pad=4)
    np.testing.assert_allclose(mean, updates.mean(0), atol=2e-3)
    assert int(metrics["secagg_sum_overflow"]) == 0
    assert int(metrics["secagg_mask_residual"]) == 0


def test_overflow_is_counted():
    updates = jnp.ones((10, 8)) * 5.0
    _, metrics = _secure_mean(updates, 8, 10.0, False)  # sum 500 > 2^7
    assert int(metrics["secagg_sum_overflow"]) == 8


def test_distributed_noise_in_the_sum_has_the_configured_std():
    n, p = 10, 2000
    noise = DistributedNoise("skellam", 1.0, 1.0, 100.0, n, padded_dim(p), 24)
    updates = jnp.zeros((n, p))
    mean, _ = _secure_mean(updates, 24, 100.0, True, noise=noise)
    std = float(jnp.std(mean * n))  # noise of the sum in model units: z * C = 1
    assert abs(std - 1.0) < 0.06


@pytest.mark.parametrize("var", [0.5, 30.0, 5000.0, 1e5, 2.5e6])
def test_skellam_moments(var):
    z = skellam(jax.random.key(0), var, (200_000,)).astype(jnp.float32)
    assert abs(float(z.mean())) < 5 * np.sqrt(var / 200_000)
    assert abs(float(jnp.var(z)) / var - 1.0) < 0.03


@pytest.mark.parametrize("sigma", [0.7, 3.0, 40.0, 2000.0])
def test_discrete_gaussian_matches_its_pmf(sigma):
    z = np.asarray(discrete_gaussian(jax.random.key(1), sigma, (100_000,)))
    if sigma <= 3:
        support = np.arange(-12 * int(np.ceil(sigma)), 12 * int(np.ceil(sigma)) + 1)
        pmf = np.exp(-(support**2) / (2 * sigma**2))
        pmf /= pmf.sum()
        observed = np.array([(z == v).sum() for v in support])
        keep = pmf * len(z) > 5
        exp = pmf[keep] * len(z)
        obs = observed[keep]
        _, p = stats.chisquare(obs, exp * obs.sum() / exp.sum())
        assert p > 1e-4
    else:  # large sigma: the discrete Gaussian is close to N(0, sigma^2)
        assert stats.kstest(z / sigma, "norm").pvalue > 1e-4 or abs(np.std(z) / sigma - 1) < 0.01


def test_same_key_same_noise_different_keys_differ():
    a = skellam(jax.random.key(0), 10.0, (100,))
    b = skellam(jax.random.key(0), 10.0, (100,))
    c = skellam(jax.random.key(1), 10.0, (100,))
    assert bool(jnp.all(a == b)) and bool(jnp.any(a != c))


def test_hash_uniforms_are_uniform_and_key_dependent():
    from scipy import stats as sps

    from fedpriv.privacy.secagg.quantize import hash_uniform

    a = np.asarray(hash_uniform(jax.random.key(1), (200_000,)), np.float64)
    b = np.asarray(hash_uniform(jax.random.key(2), (200_000,)), np.float64)
    assert sps.kstest(a, "uniform").pvalue > 1e-3
    assert 0.0 <= a.min() and a.max() < 1.0
    assert abs(np.corrcoef(a[:-1], a[1:])[0, 1]) < 0.01  # neighbouring coordinates
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.01  # different keys
    np.testing.assert_array_equal(a, np.asarray(hash_uniform(jax.random.key(1), (200_000,))))


def test_noise_beyond_what_the_sampler_draws_faithfully_names_the_scale():
    from fedpriv.errors import ConfigError
    from fedpriv.privacy.distributed import MAX_LOCAL_VARIANCE, DistributedNoise

    for kind in ("skellam", "discrete_gaussian"):
        ok = DistributedNoise(kind, 5.0, 1.0, 4000.0, 100, 1024, 20)
        ok.check()  # local variance 4e6, below 2^22
        too_much = DistributedNoise(kind, 5.0, 1.0, 5000.0, 100, 1024, 20)
        assert too_much.local_variance > MAX_LOCAL_VARIANCE[kind]
        with pytest.raises(ConfigError, match="secagg.scale"):
            too_much.check()
