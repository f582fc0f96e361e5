"""Protocol path (Bonawitz et al. 2017 / SecAgg+): equality with the fast path's modular sum,
dropout recovery, aborts, the server's view, Shamir secrecy."""

import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from fedpriv.errors import ConfigError
from fedpriv.privacy.secagg import shamir
from fedpriv.privacy.secagg.masks import modular_sum
from fedpriv.privacy.secagg.protocol import ProtocolAbort, prg, run_protocol, simulate

BITS = 20


def _inputs(n, d, seed=0):
    # The fast path's quantised inputs: stochastic rounding of scaled vectors, in Z_2^b.
    rng = np.random.default_rng(seed)
    q = np.round(rng.normal(0, 3000, (n, d))).astype(np.int64)
    return (q % 2**BITS).astype(np.uint32)


@pytest.mark.parametrize("dropout", [0.0, 0.1, 0.3])
def test_protocol_equals_fast_path_modular_sum(dropout):
    x = _inputs(100, 64)
    result = simulate(x, BITS, np.random.default_rng(1), threshold=50, dropout=dropout)
    assert len(result.included) == 100 - round(100 * dropout)
    fast = np.asarray(modular_sum(jnp.asarray(x[result.included]), BITS))
    np.testing.assert_array_equal(result.total, fast)
    assert (
        result.client_bytes["masked_input"] == np.ceil(BITS * 64 / 8) * len(result.included) / 100
    )
    assert all(v >= 0 for v in result.server_seconds.values())


def test_secagg_plus_graph_with_late_dropout():
    x = _inputs(100, 32, seed=2)
    result = simulate(
        x, BITS, np.random.default_rng(3), threshold=8, neighbours=20, dropout=0.1, late_dropout=0.1
    )
    assert len(result.included) == 90 and len(result.survivors) == 80
    fast = np.asarray(modular_sum(jnp.asarray(x[result.included]), BITS))
    np.testing.assert_array_equal(result.total, fast)
    full = simulate(x, BITS, np.random.default_rng(3), threshold=50)
    assert result.client_bytes["share_keys"] < full.client_bytes["share_keys"] / 4


def test_protocol_aborts_below_threshold():
    x = _inputs(20, 8)
    with pytest.raises(ProtocolAbort, match="below the threshold t=16"):
        run_protocol(x, BITS, threshold=16, drop_before_input=range(5))
    with pytest.raises(ProtocolAbort, match="threshold"):
        run_protocol(x, BITS, threshold=16, drop_after_input=range(6))
    with pytest.raises(ConfigError, match="secagg.threshold"):
        run_protocol(x, BITS, threshold=20)


def test_server_view_of_one_masked_input_is_uniform():
    # y_1 for a fixed input x_1, over fresh keys and seeds: uniform on Z_2^8.
    bits, d = 8, 256
    x = np.zeros((3, d), np.uint32)
    x[0] = np.arange(d, dtype=np.uint32) % 7  # any fixed input
    draws = []
    import fedpriv.privacy.secagg.protocol as proto

    orig = proto.prg

    for _ in range(40):
        result = run_protocol(x, bits, threshold=2)
        np.testing.assert_array_equal(result.total, x.sum(0) % 2**bits)
    # Rebuild one client's masked input the way the protocol does, from fresh seeds.
    for _ in range(40):
        b, s12, s13 = os.urandom(32), os.urandom(32), os.urandom(32)
        y = (x[0] + orig(b, d, bits) + orig(s12, d, bits) + orig(s13, d, bits)) & 0xFF
        draws.append(y)
    counts = np.bincount(np.concatenate(draws), minlength=2**bits)
    _, p = stats.chisquare(counts)
    assert p > 1e-3
    # The uniform test would catch an unmasked input.
    assert stats.chisquare(np.bincount(np.tile(x[0], 40), minlength=2**bits) + 1)[1] < 1e-6


def test_prg_is_deterministic_and_seed_dependent():
    a, b = prg(b"\1" * 32, 100, 16), prg(b"\1" * 32, 100, 16)
    c = prg(b"\2" * 32, 100, 16)
    assert np.array_equal(a, b) and not np.array_equal(a, c) and a.max() < 2**16


def test_shamir_reconstructs_from_any_t_shares():
    secret = os.urandom(32)
    xs = np.arange(1, 11)
    shares = shamir.share_secret(secret, xs, 4)
    for subset in ([0, 1, 2, 3], [9, 5, 3, 1], [2, 4, 6, 8]):
        assert shamir.reconstruct_secret(xs[subset], shares[subset]) == secret
    assert shamir.reconstruct_secret(xs[:3], shares[:3]) != secret  # t - 1 shares


def test_fewer_than_t_shares_are_consistent_with_every_secret_equally():
    # Exhaustive over GF(31), t = 3: fix two shares; every secret has exactly one polynomial
    # of degree <= 2 through them, so the shares say nothing about the secret.
    p, t = 31, 3
    rng = np.random.default_rng(0)
    secret = np.array([rng.integers(p)], np.uint64)
    xs = np.array([4, 9])
    shares = shamir.share_elements(secret, xs, t, prime=p)[:, 0]
    counts = np.zeros(p, int)
    for c0, c1, c2 in itertools.product(range(p), repeat=3):
        vals = [(c0 + c1 * x + c2 * x * x) % p for x in xs]
        if vals[0] == shares[0] and vals[1] == shares[1]:
            counts[c0] += 1
    assert np.all(counts == 1)


def test_jax_masks_and_protocol_agree_on_the_same_inputs():
    # Both paths: the same quantised vectors give the same modular sum.
    u = jax.random.bits(jax.random.key(0), (30, 50), jnp.uint32) & jnp.uint32(2**BITS - 1)
    result = run_protocol(np.asarray(u), BITS, threshold=10)
    np.testing.assert_array_equal(result.total, np.asarray(modular_sum(u, BITS)))
