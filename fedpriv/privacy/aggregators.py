"""User-level differentially private aggregation (DP-FedAvg) with optional adaptive clipping.

References:
    McMahan, Ramage, Talwar, Zhang. "Learning Differentially Private Recurrent Language
    Models." ICLR 2018 (DP-FedAvg, Algorithm 1).
    Andrew, Thakkar, McMahan, Ramaswamy. "Differentially Private Learning with Adaptive
    Clipping." NeurIPS 2021 (Algorithm 1 and Theorem 1, the noise split).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fedpriv.errors import ConfigError
from fedpriv.fl.aggregators import Aggregator
from fedpriv.privacy.clipping import clip
from fedpriv.privacy.noise import add_gaussian

PyTree = Any


class AdaptiveClip(NamedTuple):
    """Adaptive clipping settings (Andrew et al. 2021).

    Attributes:
        target_quantile: gamma in (0, 1), the fraction of updates that should be unclipped.
        learning_rate: eta_C of the geometric update ``C <- C * exp(-eta_C (b - gamma))``.
        count_noise_std: sigma_b, std of the noise on the sum of centred indicators (None
            in a plan until the default is resolved from the noise multiplier).
    """

    target_quantile: float
    learning_rate: float
    count_noise_std: float | None


def split_noise(noise_multiplier: float, count_noise_std: float) -> float:
    """Noise multiplier left for the update sum when the clip count is also noised.

    Releasing the update sum with noise multiplier ``z_delta`` and the sum of centred
    indicators ``b_i - 1/2`` (sensitivity 1/2) with std ``sigma_b`` is, by Andrew et al.
    2021 Theorem 1, equivalent to one Gaussian mechanism with
    ``z = (z_delta^-2 + (2 sigma_b)^-2)^-1/2``. Given the accounted ``z``, this returns
    ``z_delta = (z^-2 - (2 sigma_b)^-2)^-1/2``.

    Raises:
        ConfigError: ``2 * sigma_b <= z``: the count noise alone would exceed the budget.
    """
    if noise_multiplier == 0.0:
        return 0.0
    rest = noise_multiplier**-2 - (2.0 * count_noise_std) ** -2
    if rest <= 0:
        raise ConfigError(
            "privacy.adaptive.count_noise_std",
            f"{count_noise_std} leaves no budget for the update sum at noise multiplier "
            f"{noise_multiplier}; it must exceed noise_multiplier / 2 = {noise_multiplier / 2}",
        )
    return rest**-0.5


class DPState(NamedTuple):
    """Aggregator state: the current clip norm (float32 scalar)."""

    clip_norm: jax.Array


def dp_fedavg(
    clip_norm: float,
    noise_multiplier: float,
    expected_cohort: float,
    per_layer: bool = False,
    adaptive: AdaptiveClip | None = None,
) -> Aggregator:
    """DP-FedAvg aggregation: clip each update, sum, add Gaussian noise, divide by a constant.

    ``mean = (sum_i clip(update_i, C) + N(0, (z_delta * C)^2 I)) / m`` where ``m`` is the
    expected cohort size (a constant: with Poisson sampling never the realised count) and
    ``z_delta = z`` without adaptive clipping. The round's metrics report ``m`` as
    ``denominator``.

    With ``adaptive``, each client also reports ``b_i - 1/2`` with ``b_i = [||update_i|| <= C]``;
    the server noises their sum with ``sigma_b``, estimates the unclipped fraction
    ``b = (sum + noise) / m + 1/2`` and sets ``C <- C * exp(-eta (b - gamma))``.

    Args:
        clip_norm: C (the initial C when adaptive).
        noise_multiplier: z, the accounted noise multiplier; noise std on the sum is z * C.
        expected_cohort: m, the divisor (expected number of clients per round).
        per_layer: per-layer instead of flat clipping (same global bound C).
        adaptive: adaptive clipping settings, or None for a fixed clip.

    Privacy:
        Unit: one client (user-level). Each client's contribution has L2 norm <= C (and its
        centred indicator magnitude 1/2), so under adding or removing one client the
        released (sum, count) is a Gaussian mechanism with noise multiplier z (Andrew et al.
        2021, Thm. 1); under replacing one client (fixed-size cohorts) sensitivities double
        and the accountant uses z / 2. Sampling amplification depends on the sampler.
        Released (covered by the epsilon): the noised mean, and the metrics ``clip_norm``,
        ``noise_std``, ``denominator`` and ``unclipped_estimate`` (functions of public
        values and the noised count). ``clipped_fraction`` and ``mean_update_norm_preclip``
        are un-noised diagnostics (:mod:`fedpriv.privacy.release`).
    """
    if not clip_norm > 0:
        raise ConfigError("privacy.clip_norm", f"must be > 0, got {clip_norm}")
    if not noise_multiplier >= 0:
        raise ConfigError("privacy.noise_multiplier", f"must be >= 0, got {noise_multiplier}")
    z_update = noise_multiplier
    if adaptive is not None:
        z_update = split_noise(noise_multiplier, adaptive.count_noise_std)

    def init():
        return DPState(jnp.asarray(clip_norm, jnp.float32))

    def clip_stats(norm, mask, state):
        below = (norm <= state.clip_norm).astype(jnp.float32)
        return {
            "clipped": mask * (1.0 - below),
            "norm": mask * norm,
            "below_centred": mask * (below - 0.5),
        }

    def contribution(update, count, mask, state):
        del count
        clipped, norm = clip(update, state.clip_norm, per_layer)
        contrib = jax.tree.map(lambda u: mask * u, clipped)
        return contrib, mask, clip_stats(norm, mask, state)

    def client_scale(norm, count, mask, state):
        # Flat clipping is a scalar rescaling; clip_flat's factor, from the norm alone.
        del count
        scale = mask * jnp.minimum(1.0, state.clip_norm / jnp.maximum(norm, 1e-12))
        return scale, mask, clip_stats(norm, mask, state)

    def finalize(total, total_weight, stats, state, key):
        update_key, count_key = jax.random.split(key)
        c = state.clip_norm
        noised = add_gaussian(total, z_update * c, update_key)
        mean = jax.tree.map(lambda t: t / expected_cohort, noised)
        n = jnp.maximum(total_weight, 1.0)
        metrics = {
            "clip_norm": c,
            "noise_std": z_update * c,
            # What the noised sum was divided by, so an audit can check it from the run's
            # files: the expected cohort, never the realised count (total_weight).
            "denominator": jnp.asarray(expected_cohort, jnp.float32),
            "clipped_fraction": stats["clipped"] / n,
            "mean_update_norm_preclip": stats["norm"] / n,
        }
        new_state = state
        if adaptive is not None:
            noisy = stats["below_centred"] + adaptive.count_noise_std * jax.random.normal(
                count_key, ()
            )
            unclipped = noisy / expected_cohort + 0.5
            new_c = c * jnp.exp(-adaptive.learning_rate * (unclipped - adaptive.target_quantile))
            new_state = DPState(new_c.astype(jnp.float32))
            metrics["unclipped_estimate"] = unclipped
        return mean, new_state, metrics

    return Aggregator(init, contribution, finalize, None if per_layer else client_scale)


def default_count_noise_std(expected_cohort: float, noise_multiplier: float) -> float:
    """Andrew et al. 2021's suggestion sigma_b = m / 20, raised to at least ``z`` for small
    cohorts so the update sum keeps most of the budget (``z_delta <= 1.155 z``)."""
    return max(expected_cohort / 20.0, noise_multiplier, 1e-3)
