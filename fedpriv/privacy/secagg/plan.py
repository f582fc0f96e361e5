"""Resolving the ``secagg`` config group (and ``privacy=distributed_dp``) into a privacy plan."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from fedpriv.accounting.events import AMPLIFICATIONS
from fedpriv.errors import ConfigError
from fedpriv.privacy.distributed import NOISE_KINDS, DistributedNoise, max_scale_for_sampler
from fedpriv.privacy.secagg import graph
from fedpriv.privacy.secagg.fast import MASK_MODES, MODES, SecAggSpec
from fedpriv.privacy.secagg.protocol import check_threshold, default_threshold
from fedpriv.privacy.secagg.quantize import (
    MAX_BITS,
    MIN_BITS,
    ROUNDING_RNGS,
    auto_scale,
    padded_dim,
)


def _opt(cfg: Mapping[str, Any], key: str, default: Any) -> Any:
    value = cfg.get(key, default)
    return default if value is None else value


def distributed_events(plan: Any, noise: DistributedNoise, rounds: int) -> list[Any]:
    """The ledger a distributed-DP plan will write (``rounds`` identical records)."""
    from fedpriv.accounting import RoundEvent

    event = RoundEvent(
        round=0,
        unit="user",
        sampling=plan.sampling,
        population=plan.population,
        cohort_size=int(round(plan.expected_cohort)),
        noise_multiplier=noise.noise_multiplier,
        clip_norm=noise.clip_norm,
        **noise.record(),
    )
    return [event] * max(int(rounds), 1)


def build_secure_plan(
    base: Any,
    privacy_cfg: Mapping[str, Any],
    secagg_cfg: Mapping[str, Any],
    num_params: int | None,
) -> Any:
    """Adds secure aggregation (and, for ``distributed_dp``, its noise) to a privacy plan.

    Args:
        base: the plan without secure aggregation (for ``distributed_dp``: the ``none`` plan,
            which holds the sampling).
        privacy_cfg: the ``privacy`` group. secagg_cfg: the ``secagg`` group.
        num_params: number of model parameters.

    Raises:
        ConfigError: naming the field of a setting that cannot work.

    Privacy:
        ``distributed_dp``: unit one client; every client adds integer noise of variance
        ``(z C s)^2 / n`` for ``n`` the fewest clients whose noise is in a released sum (the
        cohort, or the Shamir threshold when clients may drop before their masked input), so
        the securely summed noise has standard deviation at least ``z C`` in model units.
        Fixed cohorts only: with Poisson sampling the realised cohort, and so the noise, could
        fall below what was accounted. Accounted by :mod:`fedpriv.accounting.distributed`,
        with amplification by sampling the cohort without replacement unless
        ``privacy.amplification=none`` (the amplification assumes the cohort is drawn
        uniformly and kept secret, as central DP's accounting of fixed cohorts does).
    """
    from fedpriv import accounting
    from fedpriv.privacy.plan import PrivacyPlan, resolve_delta

    mode = str(_opt(secagg_cfg, "mode", "none"))
    name = privacy_cfg.get("name", "none")
    if mode not in MODES:
        raise ConfigError("secagg.mode", f"unknown mode {mode!r}; choose from {list(MODES)}")
    if mode == "none":
        raise ConfigError(
            "secagg",
            "privacy=distributed_dp needs secure aggregation: set secagg=fast or secagg=protocol",
        )
    if num_params is None:
        raise ValueError("secure aggregation needs the number of model parameters")
    bits = int(_opt(secagg_cfg, "bits", 20))
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ConfigError("secagg.bits", f"must be in [{MIN_BITS}, {MAX_BITS}], got {bits}")
    masks = str(_opt(secagg_cfg, "masks", "verify"))
    if masks not in MASK_MODES:
        raise ConfigError(
            "secagg.masks", f"unknown value {masks!r}; choose from {list(MASK_MODES)}"
        )
    rotation = bool(_opt(secagg_cfg, "rotation", True))
    rounding = str(_opt(secagg_cfg, "rounding", "hash"))
    if rounding not in ROUNDING_RNGS:
        raise ConfigError(
            "secagg.rounding", f"unknown value {rounding!r}; choose from {list(ROUNDING_RNGS)}"
        )
    neighbours = secagg_cfg.get("neighbours")
    dropout = float(_opt(secagg_cfg, "dropout", 0.0))
    late = float(_opt(secagg_cfg, "late_dropout", 0.0))
    dim = padded_dim(num_params)
    m = max(int(math.ceil(base.expected_cohort)), 1)
    k = graph.degree(m, None if neighbours is None else int(neighbours))
    threshold = secagg_cfg.get("threshold")
    if threshold is not None and int(threshold) > m:
        raise ConfigError(
            "secagg.threshold", f"must be at most the cohort size {m}, got {int(threshold)}"
        )
    t = None
    if mode == "protocol":
        if m < 2:
            raise ConfigError("sampling.cohort_size", "secure aggregation needs at least 2 clients")
        t = check_threshold(default_threshold(k) if threshold is None else int(threshold), k)
    explicit_scale = secagg_cfg.get("scale")
    if explicit_scale is not None and not float(explicit_scale) > 0:
        raise ConfigError("secagg.scale", f"must be > 0, got {explicit_scale}")
    common = dict(
        mode=mode,
        bits=bits,
        rotation=rotation,
        rounding=rounding,
        num_params=int(num_params),
        dimension=dim,
        cohort=m,
        masks=masks,
        neighbours=None if neighbours is None else int(neighbours),
        threshold=t,
        dropout=dropout if mode == "protocol" else 0.0,
        late_dropout=late if mode == "protocol" else 0.0,
    )

    if name != "distributed_dp":
        bound = base.clip_norm if base.unit == "user" else float(_opt(secagg_cfg, "bound", 1000.0))
        scale = (
            float(explicit_scale)
            if explicit_scale is not None
            else auto_scale(bits, m, bound, dim, rotation)
        )
        return dataclasses.replace(base, secagg=SecAggSpec(scale=scale, **common))

    if base.sampling != "fixed":
        raise ConfigError(
            "sampling.kind",
            f"privacy=distributed_dp needs fixed-size cohorts (sampling=fixed), got "
            f"{base.sampling!r}: the noise is summed over the clients that take part",
        )
    kind = str(_opt(privacy_cfg, "noise", "skellam"))
    if kind not in NOISE_KINDS:
        raise ConfigError(
            "privacy.noise", f"unknown value {kind!r}; choose from {list(NOISE_KINDS)}"
        )
    clip = float(_opt(privacy_cfg, "clip_norm", 1.0))
    if not clip > 0:
        raise ConfigError("privacy.clip_norm", f"must be > 0, got {clip}")
    accountant = str(_opt(privacy_cfg, "accountant", "rdp"))
    if accountant != "rdp":
        raise ConfigError(
            "privacy.accountant",
            f"{accountant!r} cannot analyse distributed DP; it is supported by rdp only",
        )
    noise_clients = t if (mode == "protocol" and dropout > 0) else m
    amplification = str(_opt(privacy_cfg, "amplification", "sampling"))
    if amplification not in AMPLIFICATIONS:
        raise ConfigError(
            "privacy.amplification",
            f"unknown value {amplification!r}; choose from {list(AMPLIFICATIONS)}",
        )
    if base.population is None or m >= int(base.population):
        amplification = "none"  # every client takes part: nothing to amplify

    def noise_for(z: float) -> DistributedNoise:
        if explicit_scale is not None:
            scale = float(explicit_scale)
        else:
            scale = min(
                auto_scale(bits, m, clip, dim, rotation, z),
                max_scale_for_sampler(kind, z, clip, noise_clients),
            )
        return DistributedNoise(kind, z, clip, scale, int(noise_clients), dim, bits, amplification)

    delta = resolve_delta(privacy_cfg, base.population)
    target = privacy_cfg.get("target_epsilon")
    rounds = max(int(base.rounds), 1)
    if target is None:
        z = float(_opt(privacy_cfg, "noise_multiplier", 0.0))
        if not z >= 0:
            raise ConfigError("privacy.noise_multiplier", f"must be >= 0, got {z}")
    else:
        target = float(target)
        if not target > 0:
            raise ConfigError("privacy.target_epsilon", f"must be > 0, got {target}")

        def eps(z: float) -> float:
            return accounting.epsilon(distributed_events(base, noise_for(z), rounds), delta, "rdp")

        from fedpriv.accounting.distributed import calibrate

        z = calibrate(target, delta, eps)
    noise = noise_for(z)
    noise.check()
    spec = SecAggSpec(scale=noise.scale, noise=noise, **common)
    return PrivacyPlan(
        name="distributed_dp",
        unit="user",
        sampling=base.sampling,
        sampling_rate=base.sampling_rate,
        population=base.population,
        expected_cohort=base.expected_cohort,
        clip_norm=clip,
        noise_multiplier=z,
        delta=delta,
        target_epsilon=target,
        accountant="rdp",
        rounds=base.rounds,
        secagg=spec,
    )
