"""User-level differentially private aggregation (DP-FedAvg) with optional adaptive clipping,
built from composable transforms.

The transforms (:class:`~fedpriv.fl.aggregators.AggregationTransform`) compose with
:func:`~fedpriv.fl.aggregators.chain`:

>>> from fedpriv.fl.aggregators import as_aggregator, chain
>>> from fedpriv.privacy.aggregators import clip_transform, gaussian, mean
>>> agg = as_aggregator(chain(clip_transform(1.0), gaussian(1.1), mean(10.0)))
>>> float(agg.init().clip_norm)
1.0

:func:`dp_fedavg` is that chain (with :func:`adaptive_clip` in place of the fixed clip for
adaptive clipping) as the :class:`~fedpriv.fl.aggregators.Aggregator` the round runs.

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

from fedpriv.accounting.events import split_noise
from fedpriv.fl.aggregators import (
    AggregationTransform,
    Aggregator,
    as_aggregator,
    chain,
    identity_client,
    identity_scale,
)
from fedpriv.privacy.clipping import clip
from fedpriv.privacy.noise import add_gaussian

PyTree = Any

__all__ = [
    "COUNT_NOISE_SLOT",
    "UPDATE_NOISE_SLOT",
    "AdaptiveClip",
    "DPState",
    "adaptive_clip",
    "clip_transform",
    "default_count_noise_std",
    "dp_fedavg",
    "dp_fedavg_transform",
    "gaussian",
    "mean",
    "split_noise",
]

#: Key slots of the round key (see :func:`fedpriv.fl.aggregators.chain`): the noise on the
#: update sum and the noise on the clip count of adaptive clipping.
UPDATE_NOISE_SLOT = 0
COUNT_NOISE_SLOT = 1


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


def default_count_noise_std(expected_cohort: float, noise_multiplier: float) -> float:
    """Andrew et al. 2021's suggestion sigma_b = m / 20, raised to at least ``z`` for small
    cohorts so the update sum keeps most of the budget (``z_update <= 1.155 z``)."""
    return max(expected_cohort / 20.0, noise_multiplier, 1e-3)


class DPState(NamedTuple):
    """Clip state: the current clip norm (float32 scalar)."""

    clip_norm: jax.Array


def _check_clip(clip_norm: float) -> None:
    if not clip_norm > 0:
        raise ValueError(f"clip_norm must be > 0, got {clip_norm}")


def _clip_stats(norm, mask, state):
    below = (norm <= state.clip_norm).astype(jnp.float32)
    return {
        "clipped": mask * (1.0 - below),
        "norm": mask * norm,
        "below_centred": mask * (below - 0.5),
    }


def _clip_client(per_layer: bool):
    def client(update, count, mask, state):
        del count
        clipped, norm = clip(update, state.clip_norm, per_layer)
        contrib = jax.tree.map(lambda u: mask * u, clipped)
        return contrib, mask, _clip_stats(norm, mask, state)

    return client


def _clip_scale(norm, count, mask, state):
    # Flat clipping is a scalar rescaling; clip_flat's factor, from the norm alone.
    del count
    scale = mask * jnp.minimum(1.0, state.clip_norm / jnp.maximum(norm, 1e-12))
    return scale, mask, _clip_stats(norm, mask, state)


def _clip_metrics(state, info):
    n = jnp.maximum(info["total_weight"], 1.0)
    return {
        "clip_norm": state.clip_norm,
        "clipped_fraction": info["clipped"] / n,
        "mean_update_norm_preclip": info["norm"] / n,
    }


def clip_transform(clip_norm: float, per_layer: bool = False) -> AggregationTransform:
    """Clips each client update to L2 norm ``clip_norm`` (flat or per layer) and masks it.

    Args:
        clip_norm: C > 0.
        per_layer: per-layer budgets ``C / sqrt(L)`` (:func:`fedpriv.privacy.clip_per_layer`).

    Returns:
        A transform with state :class:`DPState`; its server step publishes ``clip_norm`` and
        the diagnostics ``clipped_fraction`` and ``mean_update_norm_preclip``.

    Raises:
        ValueError: ``clip_norm <= 0``.

    Privacy:
        Every client's contribution has L2 norm at most C: the sum has sensitivity C under
        adding or removing one client and 2C under replacing one. The clip count statistics
        are un-noised diagnostics.
    """
    _check_clip(clip_norm)

    def init(params):
        del params
        return DPState(jnp.asarray(clip_norm, jnp.float32))

    def update(total, state, key, info):
        del key
        return total, state, _clip_metrics(state, info)

    return AggregationTransform(
        init, _clip_client(per_layer), update, None if per_layer else _clip_scale
    )


def adaptive_clip(
    clip_norm: float,
    adaptive: AdaptiveClip,
    expected_cohort: float,
    per_layer: bool = False,
) -> AggregationTransform:
    """Clipping whose bound follows a quantile of the update norms (Andrew et al. 2021).

    Each client reports ``b_i - 1/2`` with ``b_i = [||update_i|| <= C]``; the server noises
    their sum with ``sigma_b``, estimates the unclipped fraction ``b = (sum + noise) / m +
    1/2`` and sets ``C <- C * exp(-eta (b - gamma))`` for the next round. This round's clip
    is the one published (``clip_norm``), so the noise transform after it scales by it.

    Args:
        clip_norm: the initial C > 0.
        adaptive: the quantile, learning rate and count noise (resolved, not None).
        expected_cohort: m, the divisor of the noised count.
        per_layer: per-layer clipping.

    Raises:
        ValueError: ``clip_norm <= 0`` or no count noise.

    Privacy:
        The count has sensitivity 1/2 under adding or removing one client (1 under replacing
        one) and is noised with std ``sigma_b`` (key slot :data:`COUNT_NOISE_SLOT`);
        together with the update sum noised with multiplier ``z_update`` it is one Gaussian
        mechanism with the multiplier of :func:`split_noise` (Andrew et al. 2021, Thm. 1).
    """
    _check_clip(clip_norm)
    if adaptive.count_noise_std is None or not adaptive.count_noise_std > 0:
        raise ValueError(f"count_noise_std must be > 0, got {adaptive.count_noise_std}")

    def init(params):
        del params
        return DPState(jnp.asarray(clip_norm, jnp.float32))

    def update(total, state, key, info):
        c = state.clip_norm
        metrics = _clip_metrics(state, info)
        noisy = info["below_centred"] + adaptive.count_noise_std * jax.random.normal(key, ())
        unclipped = noisy / expected_cohort + 0.5
        new_c = c * jnp.exp(-adaptive.learning_rate * (unclipped - adaptive.target_quantile))
        metrics["unclipped_estimate"] = unclipped
        return total, DPState(new_c.astype(jnp.float32)), metrics

    return AggregationTransform(
        init,
        _clip_client(per_layer),
        update,
        None if per_layer else _clip_scale,
        key_slot=COUNT_NOISE_SLOT,
    )


def gaussian(noise_multiplier: float) -> AggregationTransform:
    """Adds ``N(0, (z C)^2 I)`` to the sum, with C the ``clip_norm`` a clipping transform
    before it published this round.

    Args:
        noise_multiplier: z >= 0.

    Raises:
        ValueError: ``noise_multiplier < 0``.

    Privacy:
        With the sum's L2 sensitivity C (add/remove one contributor), the Gaussian mechanism
        with noise multiplier z; under replace-one (sensitivity 2C), multiplier z / 2.
        Draws from key slot :data:`UPDATE_NOISE_SLOT`.
    """
    if not noise_multiplier >= 0:
        raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")

    def init(params):
        del params
        return ()

    def update(total, state, key, info):
        std = noise_multiplier * info["clip_norm"]
        return add_gaussian(total, std, key), state, {"noise_std": std}

    return AggregationTransform(
        init, identity_client, update, identity_scale, key_slot=UPDATE_NOISE_SLOT
    )


def mean(expected_cohort: float) -> AggregationTransform:
    """Divides the (noised) sum by the expected cohort ``m``, a public constant, and
    publishes it as ``denominator``.

    Raises:
        ValueError: ``expected_cohort <= 0``.

    Privacy:
        Post-processing of the noised sum. Dividing by the realised count instead would
        release a function of it, which with Poisson sampling is private.
    """
    if not expected_cohort > 0:
        raise ValueError(f"expected_cohort must be > 0, got {expected_cohort}")

    def init(params):
        del params
        return ()

    def update(total, state, key, info):
        del key, info
        out = jax.tree.map(lambda t: t / expected_cohort, total)
        # What the noised sum was divided by, so an audit can check it from the run's
        # files: the expected cohort, never the realised count (total_weight).
        return out, state, {"denominator": jnp.asarray(expected_cohort, jnp.float32)}

    return AggregationTransform(init, identity_client, update, identity_scale)


def dp_fedavg_transform(
    clip_norm: float,
    noise_multiplier: float,
    expected_cohort: float,
    per_layer: bool = False,
    adaptive: AdaptiveClip | None = None,
) -> AggregationTransform:
    """DP-FedAvg as a chain: ``chain(clip, gaussian(z_update), mean(m))``, with
    :func:`adaptive_clip` for the clip when ``adaptive`` is given and ``z_update`` from
    :func:`split_noise`. See :func:`dp_fedavg` for the arguments and the guarantee.

    Privacy:
        As :func:`dp_fedavg`.
    """
    if not noise_multiplier >= 0:
        raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    if adaptive is None:
        return chain(
            clip_transform(clip_norm, per_layer),
            gaussian(noise_multiplier),
            mean(expected_cohort),
        )
    z_update = split_noise(noise_multiplier, adaptive.count_noise_std)
    return chain(
        adaptive_clip(clip_norm, adaptive, expected_cohort, per_layer),
        gaussian(z_update),
        mean(expected_cohort),
    )


def dp_fedavg(
    clip_norm: float,
    noise_multiplier: float,
    expected_cohort: float,
    per_layer: bool = False,
    adaptive: AdaptiveClip | None = None,
) -> Aggregator:
    """DP-FedAvg aggregation: clip each update, sum, add Gaussian noise, divide by a constant.

    ``mean = (sum_i clip(update_i, C) + N(0, (z_update * C)^2 I)) / m`` where ``m`` is the
    expected cohort size (a constant: with Poisson sampling never the realised count) and
    ``z_update = z`` without adaptive clipping. The round's metrics report ``m`` as
    ``denominator``. Built as :func:`dp_fedavg_transform`, a chain of transforms, run by
    :func:`~fedpriv.fl.aggregators.as_aggregator`; its state is :class:`DPState`.

    Args:
        clip_norm: C (the initial C when adaptive).
        noise_multiplier: z, the accounted noise multiplier; noise std on the sum is z * C.
        expected_cohort: m, the divisor (expected number of clients per round).
        per_layer: per-layer instead of flat clipping (same global bound C).
        adaptive: adaptive clipping settings, or None for a fixed clip.

    Raises:
        ValueError: naming the argument that is out of range, or a count noise that leaves
            no budget for the update sum.

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
    return as_aggregator(
        dp_fedavg_transform(clip_norm, noise_multiplier, expected_cohort, per_layer, adaptive)
    )
