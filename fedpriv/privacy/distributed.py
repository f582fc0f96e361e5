"""Distributed DP: integer noise added by every client before secure aggregation.

Each client adds noise to its quantised update; the secure sum then carries the sum of the
noises, which is again a Skellam variable (sums of independent Poissons are Poisson) or, for
discrete Gaussians, close to one (Kairouz, Liu, Steinke 2021, Theorem 1 and Proposition 14).
The server never sees an individual noised update, only the sum.

Noise is drawn with JAX's PRNG and float32 arithmetic: simulation-grade, suitable for research
simulations, not for a deployment (which needs a cryptographic generator and exact samplers).

References:
    Canonne, Kamath, Steinke. "The Discrete Gaussian for Differential Privacy." NeurIPS 2020
    (Algorithm 3: discrete Gaussian by rejection from a discrete Laplace).
    Agarwal, Kairouz, Liu. "The Skellam Mechanism for Differentially Private Federated
    Learning." NeurIPS 2021 (Definition 3.1, Theorem 3.5).
    Kairouz, Liu, Steinke. "The Distributed Discrete Gaussian Mechanism for Federated Learning
    with Secure Aggregation." ICML 2021.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from fedpriv.errors import ConfigError

NOISE_KINDS: tuple[str, ...] = ("skellam", "discrete_gaussian")
#: How a distributed-DP round's sampling is accounted: ``none``, or ``sampling`` (fixed
#: cohorts, amplification by sampling without replacement).
AMPLIFICATIONS: tuple[str, ...] = ("none", "sampling")

#: Largest per-client noise variance each float32 sampler reproduces (checked statistically in
#: the tests). Skellam: ``jax.random.poisson`` drifts above a mean of about 1e5 in float32, so
#: a larger variance is drawn as the sum of independent Skellam variables of variance at most
#: :data:`SKELLAM_DRAW_VARIANCE` each (sums of independent Poissons are Poisson: the sum is
#: exactly ``Sk(0, mu)``), at most ``2^22 / 1e5`` (42) draws; the discrete Gaussian's proposals
#: stay exact integers up to ``sigma^2 = 2^22``.
MAX_LOCAL_VARIANCE: dict[str, float] = {"skellam": float(2**22), "discrete_gaussian": float(2**22)}
#: Largest variance of one Skellam draw (two ``jax.random.poisson`` draws of mean 5e4).
SKELLAM_DRAW_VARIANCE = 1e5


def skellam(key: jax.Array, variance: float, shape: tuple[int, ...]) -> jax.Array:
    """Symmetric Skellam noise ``Poisson(mu/2) - Poisson(mu/2)`` with variance ``mu`` (int32).

    Agarwal et al. 2021, Definition 3.1 (``Sk(0, mu)``). A variance above
    :data:`SKELLAM_DRAW_VARIANCE` is the sum of ``k = ceil(mu / 1e5)`` independent draws of
    ``Sk(0, mu / k)``, accumulated in a loop (memory of one draw). Simulation-grade (JAX PRNG).
    """
    mu = float(variance)
    draws = max(1, math.ceil(mu / SKELLAM_DRAW_VARIANCE))
    lam = jnp.float32(mu / draws / 2.0)

    def one(k: jax.Array) -> jax.Array:
        k1, k2 = jax.random.split(k)
        a = jax.random.poisson(k1, lam, shape, dtype=jnp.int32)
        b = jax.random.poisson(k2, lam, shape, dtype=jnp.int32)
        return a - b

    if draws == 1:
        return one(key)
    keys = jax.random.split(key, draws)
    return jax.lax.fori_loop(
        0, draws, lambda i, acc: acc + one(keys[i]), jnp.zeros(shape, jnp.int32)
    )


def discrete_gaussian(
    key: jax.Array, sigma: float | jax.Array, shape: tuple[int, ...]
) -> jax.Array:
    """Discrete Gaussian ``N_Z(0, sigma^2)`` (int32), Canonne et al. 2020, Algorithm 3.

    Propose ``Y`` from the discrete Laplace with scale ``t = floor(sigma) + 1`` (a difference
    of two geometric variables, each the floor of an exponential with mean ``t``) and accept
    with probability ``exp(-(|Y| - sigma^2 / t)^2 / (2 sigma^2))``; every coordinate repeats
    until accepted (a ``while_loop`` over the coordinates still rejected). Float32 arithmetic
    and JAX's PRNG: simulation-grade, not the paper's exact integer arithmetic.
    """
    sigma = jnp.asarray(sigma, jnp.float32)
    t = jnp.floor(sigma) + 1.0

    def body(state):
        key, out, done = state
        key, ke1, ke2, ku = jax.random.split(key, 4)
        g1 = jnp.floor(t * jax.random.exponential(ke1, shape))
        g2 = jnp.floor(t * jax.random.exponential(ke2, shape))
        y = g1 - g2
        accept = jax.random.uniform(ku, shape) < jnp.exp(
            -jnp.square(jnp.abs(y) - sigma**2 / t) / (2.0 * sigma**2)
        )
        take = accept & ~done
        return key, jnp.where(take, y, out), done | accept

    init = (key, jnp.zeros(shape, jnp.float32), jnp.zeros(shape, bool))
    _, out, _ = jax.lax.while_loop(lambda s: ~jnp.all(s[2]), body, init)
    return out.astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class DistributedNoise:
    """The per-client noise of distributed DP and the sensitivities it is accounted with.

    All quantities are in integer units (after scaling by ``scale``).

    Attributes:
        kind: ``"skellam"`` or ``"discrete_gaussian"``.
        noise_multiplier: z; the summed noise has standard deviation ``z * clip_norm`` in model
            units (``z * clip_norm * scale`` in integer units).
        clip_norm: C, the L2 bound of one client's update before scaling.
        scale: s, integers per model unit.
        noise_clients: n, the fewest clients whose noise is in every released sum.
        dimension: d, the padded dimension of the quantised vector.
        bits: b, the modulus is ``2^b``.
        amplification: ``"none"`` or ``"sampling"`` (fixed cohorts accounted with
            amplification by sampling without replacement,
            :func:`fedpriv.accounting.distributed.subsampled_rdp`).

    Privacy:
        Unit: one client. The sum of ``noise_clients`` clients' noise has variance
        ``(z C s)^2`` per coordinate; one client's quantised update moves the sum by at most
        :attr:`l2_sensitivity` in L2 and :attr:`l1_sensitivity` in L1 under adding or removing
        its update (twice that under replacing it), which
        :func:`fedpriv.accounting.distributed.round_rdp` turns into RDP. The epsilon covers
        the dequantised sum and what is computed from it (the model); the secure-aggregation
        counters in the metrics are diagnostics. Simulation-grade noise (JAX PRNG, float32
        samplers).
    """

    kind: str
    noise_multiplier: float
    clip_norm: float
    scale: float
    noise_clients: int
    dimension: int
    bits: int
    amplification: str = "none"

    @property
    def local_variance(self) -> float:
        """Per-client variance ``(z C s)^2 / n`` (Skellam variance; the discrete Gaussian's
        ``sigma^2`` parameter), so that ``n`` clients' noises sum to variance ``(z C s)^2``."""
        return (self.noise_multiplier * self.clip_norm * self.scale) ** 2 / self.noise_clients

    @property
    def l2_sensitivity(self) -> float:
        """``Delta_2 = C s + sqrt(d)``: scaling, an orthogonal rotation and stochastic rounding
        (each coordinate moves by less than 1) bound one client's integer vector's L2 norm."""
        return self.clip_norm * self.scale + math.sqrt(self.dimension)

    @property
    def l1_sensitivity(self) -> float:
        """``Delta_1 = min(Delta_2^2, sqrt(d) Delta_2)``: for an integer vector
        ``||v||_1 <= ||v||_2^2``, and ``||v||_1 <= sqrt(d) ||v||_2`` (Cauchy-Schwarz)."""
        d2 = self.l2_sensitivity
        return min(d2 * d2, math.sqrt(self.dimension) * d2)

    def sample(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        """One client's noise (int32; simulation-grade)."""
        if self.kind == "skellam":
            return skellam(key, self.local_variance, shape)
        return discrete_gaussian(key, math.sqrt(self.local_variance), shape)

    def check(self) -> None:
        """Raises :class:`ConfigError` when the samplers cannot represent the noise."""
        if self.kind not in NOISE_KINDS:
            raise ConfigError(
                "privacy.noise", f"choose from {list(NOISE_KINDS)}, got {self.kind!r}"
            )
        var, cap = self.local_variance, MAX_LOCAL_VARIANCE[self.kind]
        if var > cap * (1.0 + 1e-9):
            raise ConfigError(
                "secagg.scale",
                f"{self.scale:.6g} gives per-client noise variance {var:.4g} in integer units, "
                f"above what the float32 {self.kind} sampler draws faithfully ({cap:.4g}); use "
                f"a scale <= {self.scale * math.sqrt(cap / var):.6g}",
            )

    def record(self) -> dict[str, float | int | str]:
        """The ledger fields of this mechanism (see :class:`fedpriv.accounting.RoundEvent`)."""
        return {
            "mechanism": self.kind,
            "scale": float(self.scale),
            "local_variance": float(self.local_variance),
            "noise_clients": int(self.noise_clients),
            "bits": int(self.bits),
            "dimension": int(self.dimension),
            "l1_sensitivity": float(self.l1_sensitivity),
            "l2_sensitivity": float(self.l2_sensitivity),
            "amplification": self.amplification,
        }


def max_scale_for_sampler(
    kind: str, noise_multiplier: float, clip_norm: float, noise_clients: int
) -> float:
    """The largest scale whose per-client variance the ``kind`` sampler draws faithfully."""
    if noise_multiplier <= 0:
        return math.inf
    return math.sqrt(MAX_LOCAL_VARIANCE[kind] * noise_clients) / (noise_multiplier * clip_norm)
