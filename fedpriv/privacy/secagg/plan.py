"""Resolving the ``secagg`` config group into a privacy plan's secure aggregation.

:func:`resolve` checks the group and sizes the fields and integer ring for a plan;
:func:`build_secure_plan` adds plain secure aggregation to a plan. Distributed DP
(``privacy=distributed_dp``, :mod:`fedpriv.privacy.mechanisms.distributed_dp`) builds its
noise on top of :func:`resolve`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from fedpriv.errors import ConfigError
from fedpriv.privacy.mechanisms.base import PrivacyPlan
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
from fedpriv.settings import SecureAggregation


def _opt(value: Any, default: Any) -> Any:
    return default if value is None else value


@dataclasses.dataclass(frozen=True)
class SecAggSettings:
    """The checked ``secagg`` group, sized for a cohort.

    Attributes:
        mode: ``fast`` or ``protocol``.
        bits: bits of the integer ring.
        rotation: randomised Hadamard rotation before quantising.
        explicit_scale: ``secagg.scale`` when set (else None: chosen automatically).
        dropout: the protocol's dropout rate (0 for the fast path).
        dimension: the padded length of a flattened update.
        cohort: m, the (expected) cohort size, at least 1.
        threshold: the Shamir threshold (protocol only).
        common: the :class:`~fedpriv.privacy.secagg.fast.SecAggSpec` fields other than
            the scale and the noise.
    """

    mode: str
    bits: int
    rotation: bool
    explicit_scale: float | None
    dropout: float
    dimension: int
    cohort: int
    threshold: int | None
    common: dict[str, Any]


def resolve(
    base: PrivacyPlan,
    secagg: SecureAggregation,
    num_params: int | None,
) -> SecAggSettings:
    """Checks the ``secagg`` group for ``base``'s cohort and sizes the ring.

    Raises:
        ConfigError: naming the field of a setting that cannot work.
        ValueError: no ``num_params``.
    """
    mode = str(_opt(secagg.mode, "none"))
    if mode not in MODES:
        raise ConfigError("secagg.mode", f"unknown mode {mode!r}; choose from {list(MODES)}")
    if mode == "none":
        raise ConfigError(
            "secagg",
            "privacy=distributed_dp needs secure aggregation: set secagg=fast or secagg=protocol",
        )
    if num_params is None:
        raise ValueError("secure aggregation needs the number of model parameters")
    bits = int(_opt(secagg.bits, 20))
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ConfigError("secagg.bits", f"must be in [{MIN_BITS}, {MAX_BITS}], got {bits}")
    masks = str(_opt(secagg.masks, "verify"))
    if masks not in MASK_MODES:
        raise ConfigError(
            "secagg.masks", f"unknown value {masks!r}; choose from {list(MASK_MODES)}"
        )
    rotation = bool(_opt(secagg.rotation, True))
    rounding = str(_opt(secagg.rounding, "hash"))
    if rounding not in ROUNDING_RNGS:
        raise ConfigError(
            "secagg.rounding", f"unknown value {rounding!r}; choose from {list(ROUNDING_RNGS)}"
        )
    neighbours = secagg.neighbours
    dropout = float(_opt(secagg.dropout, 0.0))
    late = float(_opt(secagg.late_dropout, 0.0))
    dim = padded_dim(num_params)
    m = max(int(math.ceil(base.expected_cohort)), 1)
    k = graph.degree(m, None if neighbours is None else int(neighbours))
    threshold = secagg.threshold
    if threshold is not None and int(threshold) > m:
        raise ConfigError(
            "secagg.threshold", f"must be at most the cohort size {m}, got {int(threshold)}"
        )
    t = None
    if mode == "protocol":
        if m < 2:
            raise ConfigError("sampling.cohort_size", "secure aggregation needs at least 2 clients")
        t = check_threshold(default_threshold(k) if threshold is None else int(threshold), k)
    explicit_scale = secagg.scale
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

    return SecAggSettings(
        mode=mode,
        bits=bits,
        rotation=rotation,
        explicit_scale=None if explicit_scale is None else float(explicit_scale),
        dropout=dropout,
        dimension=dim,
        cohort=m,
        threshold=t,
        common=common,
    )


def build_secure_plan(
    base: PrivacyPlan,
    secagg: SecureAggregation,
    num_params: int | None,
) -> PrivacyPlan:
    """Adds secure aggregation of plain (or centrally noised) sums to a privacy plan.

    Args:
        base: the plan without secure aggregation.
        secagg: the ``secagg`` group.
        num_params: number of model parameters.

    Raises:
        ConfigError: naming the field of a setting that cannot work.

    Privacy:
        Secure aggregation reveals only the sum to the server; the plan's guarantee is the
        base plan's (the ring's rounding of clipped updates does not change their bound:
        the scale keeps the sum of ``m`` updates of norm ``C`` inside the ring).
    """
    s = resolve(base, secagg, num_params)
    bound = base.clip_norm if base.unit == "user" else float(_opt(secagg.bound, 1000.0))
    scale = (
        s.explicit_scale
        if s.explicit_scale is not None
        else auto_scale(s.bits, s.cohort, bound, s.dimension, s.rotation)
    )
    return dataclasses.replace(base, secagg=SecAggSpec(scale=scale, **s.common))
