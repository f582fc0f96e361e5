"""Tree aggregation (the binary-tree mechanism) for correlated-noise DP, streamed on the
device.

Round ``t``'s sum ``x_t`` is a leaf of a binary tree over the rounds. Every *complete*
dyadic node, the block of rounds ``(m 2^l, (m + 1) 2^l]`` once round ``(m + 1) 2^l`` has
run, is released with its own i.i.d. ``N(0, sigma^2 I)`` noise: the encoder ``C`` has one
0/1 row per node. The server needs the prefix sums ``x_1 + ... + x_t``; the nodes of the
binary decomposition of ``t`` cover them, one node per set bit of ``t``. Two estimators
(decoders ``B`` with ``B C = A``, ``A`` the prefix-sum matrix):

* ``plain``: each node's noised sum as released (Dwork et al. 2010; Chan et al. 2011).
* ``efficient`` (what the mechanism runs): each node's estimate is the inverse-variance
  weighted mean of its own noised sum and the sum of its children's estimates (Honaker
  2015, in the online, bottom-up form of Kairouz et al. 2021, Appendix: only the node's
  own subtree, which is complete when the node is). In units of ``sigma^2`` the variance
  of a level-``l`` estimate is ``v_0 = 1``, ``v_l = 2 v_{l-1} / (1 + 2 v_{l-1})``, and the
  weight of the node's own noise is ``v_l``.

The round adds to ``x_t`` the increment ``(B Z)_t - (B Z)_{t-1}`` of the prefix noise, so the
server's running sum of noised updates is ``A x + B Z``. The state on the device is one
estimate per level (the latest complete node of that level, which is the one the
decomposition of ``t`` uses when bit ``l`` of ``t`` is set, and the left child its sibling
waits for otherwise), the previous prefix noise and the round counter: ``levels + 1``
copies of the model. The node completed at round ``t`` on level ``l`` draws its noise from
``fold_in(key_t, l)``, ``key_t`` the round's noise key.

Sensitivity. All entries of ``C`` are non-negative, so the worst case adds every
participation in the same direction, and ``||C u||^2 = u^T X u`` with ``X = C^T C``
(``X_ij`` the number of complete nodes that contain rounds ``i`` and ``j``).
:func:`sensitivity` bounds its maximum over the participation patterns (rounds at least
``b`` apart, at most ``k``) with Algorithm 4 of Choquette-Choo et al. 2023 (an upper bound,
exact for ``k = 1`` and for ``b = 1``), whose value for the whole run jax_privacy's
``sensitivity.get_min_sep_sensitivity_upper_bound_for_X`` computes; fedpriv's own code runs
the algorithm's second stage left to right, which gives the bound of every prefix of rounds
at once (for the ledger's per-round increments) and is checked against jax_privacy's value.

jax_privacy has no tree aggregation (its strategies are Toeplitz or dense), so this module
is fedpriv's own code.

References:
    Honaker. "Efficient Use of Differentially Private Binary Trees." TPDP 2015.
    Kairouz, McMahan, Song, Thakkar, Thakurta, Xu. "Practical and Private (Deep) Learning
    without Sampling or Shuffling." ICML 2021.
    Choquette-Choo, Ganesh, McKenna, McMahan, Rush, Thakurta, Xu. "(Amplified) Banded Matrix
    Factorization: A unified approach to private training." NeurIPS 2023, Algorithm 4.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax_privacy.matrix_factorization import sensitivity as jp_sensitivity

from fedpriv.fl.aggregators import AggregationTransform, identity_client, identity_scale
from fedpriv.privacy.aggregators import UPDATE_NOISE_SLOT
from fedpriv.privacy.noise import gaussian_like

PyTree = Any
ESTIMATORS: tuple[str, ...] = ("efficient", "plain")


def levels(rounds: int) -> int:
    """The levels of the tree over ``rounds`` leaves (leaves are level 0)."""
    return max(1, int(rounds).bit_length())


def nodes(rounds: int) -> list[tuple[int, int]]:
    """The complete nodes ``(level, m)`` (rounds ``m 2^l + 1 .. (m + 1) 2^l``), in the order
    they complete: by round, then by level."""
    n = int(rounds)
    return [
        (lv, t // 2**lv - 1) for t in range(1, n + 1) for lv in range(levels(n)) if t % 2**lv == 0
    ]


def level_variances(num_levels: int, estimator: str = "efficient") -> np.ndarray:
    """``v_l``, the variance of a level-``l`` node estimate in units of ``sigma^2``."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {list(ESTIMATORS)}, got {estimator!r}")
    v = np.ones(int(num_levels))
    if estimator == "efficient":
        for lv in range(1, len(v)):
            v[lv] = 2 * v[lv - 1] / (1 + 2 * v[lv - 1])
    return v


def encoder(rounds: int) -> np.ndarray:
    """``C``: one 0/1 row per complete node (in :func:`nodes` order), one column per round."""
    n = int(rounds)
    rows = np.zeros((len(nodes(n)), n))
    for i, (lv, m) in enumerate(nodes(n)):
        rows[i, m * 2**lv : (m + 1) * 2**lv] = 1.0
    return rows


def decoder(rounds: int, estimator: str = "efficient") -> np.ndarray:
    """``B`` (rounds x nodes): row ``t`` maps the nodes' noised sums to the estimate of the
    prefix sum of rounds ``1..t``; ``B @ encoder(n)`` is the prefix-sum matrix."""
    n = int(rounds)
    order = nodes(n)
    index = {node: i for i, node in enumerate(order)}
    v = level_variances(levels(n), estimator)
    estimate: dict[tuple[int, int], np.ndarray] = {}
    for node in order:
        lv, m = node
        own = np.zeros(len(order))
        own[index[node]] = 1.0
        if lv == 0 or estimator == "plain":
            estimate[node] = own
        else:
            children = estimate[(lv - 1, 2 * m)] + estimate[(lv - 1, 2 * m + 1)]
            estimate[node] = v[lv] * own + (1 - v[lv]) * children
    rows = np.zeros((n, len(order)))
    for t in range(1, n + 1):
        start = 0
        for lv in reversed(range(levels(n))):
            if t >> lv & 1:
                rows[t - 1] += estimate[(lv, start // 2**lv)]
                start += 2**lv
    return rows


# --------------------------------------------------------------------------- sensitivity


def _row_maxima(gram: np.ndarray, b: int, k: int) -> np.ndarray:
    """Stage 1 of Algorithm 4: for each row ``x`` of ``gram``, the largest ``<x, u>`` over
    patterns ``u`` (right to left dynamic programme, all rows at once)."""
    n = gram.shape[1]
    f = np.zeros((gram.shape[0], n + b))
    for _ in range(k):
        f[:, :n] = gram + f[:, b : n + b]
        f = np.maximum.accumulate(f[:, ::-1], axis=1)[:, ::-1]
    return f[:, 0]


def _prefix_maxima(values: np.ndarray, b: int, k: int) -> np.ndarray:
    """Stage 2, left to right: entry ``t - 1`` is the largest sum of ``values`` over
    patterns inside rounds ``1..t``."""
    n = len(values)
    prev = np.zeros(n)  # the best with one participation fewer, within rounds 1..t
    for _ in range(k):
        earlier = np.concatenate([np.zeros(min(b, n)), prev[: max(n - b, 0)]])
        prev = np.maximum.accumulate(values + earlier)
    return prev


def sensitivity(rounds: int, min_separation: int, max_participations: int) -> np.ndarray:
    """``S_t`` for ``t = 1..rounds``: a bound on the squared L2 sensitivity of the nodes
    released by round ``t``, over patterns ``min_separation`` rounds apart and at most
    ``max_participations`` times, in units of the clip. Non-decreasing; ``S_n`` is
    Algorithm 4's bound for the whole run. A prefix's bound uses the whole run's ``X``
    (nodes not yet complete included), so it is valid but looser than the whole run's.

    Raises:
        ValueError: when the whole-run bound disagrees with jax_privacy's.
    """
    n, b = int(rounds), int(min_separation)
    k = min(int(max_participations), math.ceil(n / b))
    c = encoder(n)
    gram = c.T @ c
    if k >= n:
        # Every round may take part: all of them at once is the worst case (X >= 0).
        return np.cumsum(gram.sum(axis=1))
    prefixes = _prefix_maxima(_row_maxima(gram, b, k), b, k)
    with jax.enable_x64():
        squared = float(
            jp_sensitivity.get_min_sep_sensitivity_upper_bound_for_X(
                jnp.asarray(gram, jnp.float64), min_sep=b, max_participations=k
            )
            ** 2
        )
    if not math.isclose(prefixes[-1], squared, rel_tol=1e-9):
        raise ValueError(
            f"tree sensitivity^2: fedpriv's bound {prefixes[-1]!r}, jax_privacy's {squared!r}"
        )
    return prefixes


# --------------------------------------------------------------------------- streaming


class TreeState(NamedTuple):
    """The tree's streaming state: ``estimates`` (one model-shaped tree per level, stacked
    on a leading axis), the previous prefix noise and the rounds done."""

    estimates: PyTree
    previous: PyTree
    rounds: jax.Array


def tree_gaussian(
    num_levels: int, std_per_clip: float, estimator: str = "efficient"
) -> AggregationTransform:
    """Adds the tree's prefix-noise increment to round ``t``'s sum, with node noise
    ``N(0, (s C)^2 I)`` (``C`` the ``clip_norm`` a clipping transform before it published,
    ``s = std_per_clip``).

    Privacy:
        See the module docstring. Draws from key slot ``UPDATE_NOISE_SLOT``.
    """
    v = level_variances(num_levels, estimator)
    lv_count = int(num_levels)

    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        stacked = jax.tree.map(lambda x: jnp.zeros((lv_count, *x.shape), x.dtype), params)
        return TreeState(stacked, zeros, jnp.zeros((), jnp.int32))

    def update(total, state, key, info):
        std = std_per_clip * info["clip_norm"]
        t = state.rounds + 1
        old = state.estimates
        level_of = lambda tree, lv: jax.tree.map(lambda x: x[lv], tree)  # noqa: E731
        new = []
        for lv in range(lv_count):
            own_key = jax.random.fold_in(key, lv)
            if lv == 0:
                new.append(gaussian_like(total, std, own_key))
                continue

            def complete(args, lv=lv, own_key=own_key):
                left, right = args
                own = gaussian_like(total, std, own_key)
                if estimator == "plain":
                    return own
                w = float(v[lv])
                return jax.tree.map(lambda o, a, c: w * o + (1 - w) * (a + c), own, left, right)

            new.append(
                jax.lax.cond(
                    t % (2**lv) == 0,
                    complete,
                    lambda args, lv=lv: level_of(old, lv),
                    (level_of(old, lv - 1), new[lv - 1]),
                )
            )
        prefix = jax.tree.map(jnp.zeros_like, total)
        for lv in range(lv_count):
            bit = ((t >> lv) & 1).astype(jnp.float32)
            prefix = jax.tree.map(
                lambda p, e, bit=bit: p + bit.astype(e.dtype) * e, prefix, new[lv]
            )
        noise = jax.tree.map(jnp.subtract, prefix, state.previous)
        noised = jax.tree.map(lambda x, e: x + e.astype(x.dtype), total, noise)
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *new)
        return noised, TreeState(stacked, prefix, t), {"noise_std": std}

    return AggregationTransform(
        init, identity_client, update, identity_scale, key_slot=UPDATE_NOISE_SLOT
    )
