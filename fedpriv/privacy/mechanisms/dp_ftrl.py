"""``privacy=dp_ftrl``: user-level DP with correlated noise (the matrix mechanism).

Each client update is clipped to L2 norm ``clip_norm`` (C) as in DP-FedAvg, and the sum of
round ``t``'s clipped updates, ``x_t``, gets the noise ``(C^-1 Z)_t`` instead of independent
noise: ``Z_1, Z_2, ...`` are i.i.d. ``N(0, sigma^2 I)`` and ``C`` is a lower-triangular
Toeplitz *strategy* matrix, so the server's running sum of noised updates is
``A x + A C^-1 Z`` with ``A`` the prefix sum: the noise on the model is the correlated
``B Z`` of a factorisation ``A = B C`` (Denisov et al. 2022; Kairouz et al. 2021). The
noised sum is divided by the cohort size, a public constant, as DP-FedAvg does. Strategies
(``privacy.strategy``):

* ``independent``: ``C = I``, independent noise per round. The baseline is DP-FedAvg
  without amplification by sampling, with the sensitivity of every participation of a
  client.
* ``tree``: tree aggregation with the efficient (Honaker) estimator, streamed on the
  device (:mod:`fedpriv.privacy.tree_aggregation`, fedpriv's own code: jax_privacy has no
  tree). Its encoder is not Toeplitz; its sensitivity is Algorithm 4's bound of
  Choquette-Choo et al. 2023, and the prefix sensitivities ``s_t`` are bounds as well.
* ``banded``: a banded Toeplitz ``C`` with ``privacy.bands`` bands, optimised for the run's
  rounds (banded matrix factorisation; Choquette-Choo et al. 2023).
* ``blt``: a buffered linear Toeplitz ``C`` with ``privacy.buffers`` buffers, optimised for
  the run's rounds and participation (Dvijotham et al. 2024; McMahan et al. 2024).

The strategies are optimised with jax_privacy (``toeplitz.optimize_banded_toeplitz``,
``buffered_toeplitz.optimize``), and ``C^-1 Z`` comes from its streaming matrices. The
streaming state (band history, BLT buffers) is part of the server state on the device and is
checkpointed with it, and the noise is drawn inside the jit-compiled round from the round's
noise key. fedpriv's own code covers two things: the split of the run's sensitivity into
per-round increments (:func:`worst_case_participation`) and the aggregation transform.

Participation and sensitivity. The sampler that runs says which rounds one client can take
part in (:meth:`fedpriv.fl.sampling.CyclicCohorts.participation`). ``sampling=cyclic`` with
``b`` groups means at least ``b`` rounds apart and at most ``k = ceil(n / b)`` times.
``sampling=min_separation`` with separation ``b`` means the same pattern, with any rounds
that keep it. ``fixed`` and ``poisson`` mean any round, up to ``n`` times, and no
amplification is claimed. ``sampling=cyclic_poisson`` (the groups of ``cyclic``, each
client of the round's group joining with probability ``q``) with a banded strategy of at
most ``b`` bands is accounted with amplification (Choquette-Choo et al. 2023, the event of
jax_privacy's ``experimental.accounting.amplified_bandmf_event``): ``ceil(n / b)``
Poisson-subsampled Gaussian releases of sensitivity ``max_j ||C e_j||``, one on each round
of group 0.

Otherwise, for non-negative, non-increasing Toeplitz coefficients ``c``, the L2 sensitivity
of ``C x`` under the pattern is ``||sum_{i<k} C e_{i b}||``: the worst case participates as
early and as often as allowed (jax_privacy's ``toeplitz.minsep_sensitivity_squared``, exact
by Theorem 2 of Kalinin and Lampert 2024). The same holds for every prefix of ``t`` rounds,
whose sensitivity ``s_t`` is ``||u_{1..t}||``, where ``u = sum_{i<k} C e_{i b}``. A round's
ledger record carries the increment ``s_t^2 - s_{t-1}^2 = u_t^2``.

Accounting. Releasing the first ``t`` noised sums is one Gaussian mechanism with
sensitivity ``C s_t`` and noise ``sigma`` (adaptive inputs included, Denisov et al. 2022),
for zeroing out one client's updates (add/remove one client). With
``z = sigma / (C s_n)`` (``noise_multiplier``, over the planned ``n`` rounds), round ``t``'s
event is ``GaussianDpEvent(z s_n / u_t)``. Gaussian mechanisms compose exactly (the
noise-to-sensitivity ratios add as ``sum 1/z_t^2``), so the composition of the first ``t``
records is exactly the Gaussian mechanism of the prefix under RDP, PLD and PRV. Epsilon
remains a pure function of the ledger, and after ``n`` rounds it is the epsilon of
``GaussianDpEvent(z)``.

References:
    Kairouz, McMahan, Song, Thakkar, Thakurta, Xu. "Practical and Private (Deep) Learning
    without Sampling or Shuffling." ICML 2021 (DP-FTRL).
    Denisov, McMahan, Rush, Smith, Thakurta. "Improved Differential Privacy for SGD via
    Optimal Private Linear Operators on Adaptive Streams." NeurIPS 2022.
    Choquette-Choo, Ganesh, McKenna, McMahan, Rush, Thakurta, Xu. "(Amplified) Banded Matrix
    Factorization: A unified approach to private training." NeurIPS 2023.
    Dvijotham, McMahan, Pillutla, Steinke, Thakurta. "Efficient and Near-Optimal Noise
    Generation for Streaming Differential Privacy." FOCS 2024 (BLTs).
    McMahan, Xu, Zhang. "A Hassle-free Algorithm for Private Learning in Practice: Don't
    Use Tree Aggregation, Use BLTs." EMNLP 2024.
    Kalinin, Lampert. "Banded Square Root Matrix Factorization for Differentially Private
    Model Training." NeurIPS 2024, Theorem 2 (min-separation sensitivity of Toeplitz
    strategies).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
from jax_privacy.matrix_factorization import buffered_toeplitz, streaming_matrix, toeplitz

from fedpriv.accounting._search import smallest_noise
from fedpriv.accounting.events import MF_FIELDS
from fedpriv.errors import ConfigError
from fedpriv.fl.aggregators import (
    AggregationTransform,
    Aggregator,
    as_aggregator,
    chain,
    identity_client,
    identity_scale,
)
from fedpriv.fl.sampling import CyclicCohorts, CyclicPoisson, MinSeparation, Participation
from fedpriv.privacy import tree_aggregation
from fedpriv.privacy.aggregators import UPDATE_NOISE_SLOT, clip_transform, mean
from fedpriv.privacy.ledger import LEDGER_FORMAT
from fedpriv.privacy.mechanisms._registry import register
from fedpriv.privacy.mechanisms.base import (
    ADD_OR_REMOVE_ONE,
    DpMechanism,
    DpSettings,
    PrivacyPlan,
    choice,
    plan_common,
    record_cohort,
)
from fedpriv.privacy.noise import gaussian_like

if TYPE_CHECKING:
    from fedpriv.accounting.events import RoundEvent

PyTree = Any

STRATEGIES: tuple[str, ...] = ("independent", "tree", "banded", "blt")
#: The purpose id of the sampling keys in the documented key schedule (DESIGN.md rule 5).
SAMPLING_PURPOSE = 2
#: The most buffers jax_privacy's BLT optimiser takes.
MAX_BUFFERS = 15
#: Relative tolerance between fedpriv's worst-case participation and jax_privacy's
#: sensitivity (both float64).
_SENSITIVITY_RTOL = 1e-6


# --------------------------------------------------------------------------- the strategy


def worst_case_participation(coefficients: np.ndarray, participation: Participation) -> np.ndarray:
    """``u = sum_{i<k} C e_{i b}``: the column sum of the worst-case participation pattern
    of a lower-triangular Toeplitz ``C`` with first column ``coefficients`` (length ``n``),
    ``b`` rounds apart and at most ``k`` times.

    For non-negative, non-increasing coefficients the pattern ``0, b, 2b, ...`` attains the
    sensitivity of ``C`` and of every leading ``t x t`` block of it (Kalinin and Lampert
    2024, Theorem 2; each block is the same kind of Toeplitz matrix), so ``||u[:t]||`` is
    the sensitivity of the first ``t`` rounds. fedpriv's own code: jax_privacy computes the
    whole-run value (:func:`run_sensitivity` checks the two agree), not the prefixes.

    Raises:
        ValueError: coefficients that are negative or increasing (the theorem does not
            apply).
    """
    c = np.asarray(coefficients, np.float64)
    if np.any(c < 0) or np.any(np.diff(c) > 1e-12 * max(1.0, float(c[0]))):
        raise ValueError(
            "the strategy's Toeplitz coefficients must be non-negative and non-increasing"
        )
    n = len(c)
    b, k = int(participation.min_separation), int(participation.max_participations)
    u = np.zeros(n)
    for i in range(k):
        start = i * b
        if start >= n:
            break
        u[start:] += c[: n - start]
    return u


@dataclasses.dataclass(frozen=True)
class NoiseCorrelation:
    """A run's strategy matrix and what its accounting needs.

    Attributes:
        strategy: ``independent``, ``tree``, ``banded`` or ``blt``.
        coefficients: the first column of ``C`` over the planned rounds (float64); for
            ``tree``, the weight of each level's own noise in its estimate.
        noising: ``C^-1`` as a jax_privacy ``StreamingMatrix`` (float32); None for ``tree``.
        participation: the pattern the sensitivity covers.
        run_sensitivity: ``s_n``, the sensitivity of the whole run in units of the clip.
        increments: ``s_t^2 - s_{t-1}^2`` for ``t = 1..n``.
        bands, buffers, levels: the strategy's size (``banded``; ``blt``; ``tree``).
        amplified: accounted with amplification by cyclic Poisson sampling (``banded``):
            ``run_sensitivity`` is then the largest column norm of ``C``, and ``increments``
            hold its square on the rounds of group 0 (``1, 1 + b, ...``), zero elsewhere.
        digest: SHA-256 of the coefficients (what the ledger records of the strategy).
    """

    strategy: str
    coefficients: np.ndarray = dataclasses.field(repr=False)
    noising: Any = dataclasses.field(repr=False)
    participation: Participation
    run_sensitivity: float
    increments: np.ndarray = dataclasses.field(repr=False)
    bands: int | None = None
    buffers: int | None = None
    digest: str = ""
    levels: int | None = None
    amplified: bool = False

    def transform(self, std_per_clip: float) -> AggregationTransform:
        """The aggregation transform that adds this strategy's noise."""
        if self.strategy == "tree":
            return tree_aggregation.tree_gaussian(int(self.levels), std_per_clip)
        return correlated_gaussian(self.noising, std_per_clip)

    def describe(self) -> dict[str, Any]:
        """Plain values for ``summary.json``."""
        return {
            "strategy": self.strategy,
            "bands": self.bands,
            "buffers": self.buffers,
            "levels": self.levels,
            "amplified": self.amplified,
            "min_separation": self.participation.min_separation,
            "max_participations": self.participation.max_participations,
            "run_sensitivity": self.run_sensitivity,
            "strategy_digest": self.digest,
            "coefficients_head": [float(c) for c in self.coefficients[:8]],
        }


def digest(coefficients: np.ndarray) -> str:
    """SHA-256 (hex, 16 characters) of the coefficients rounded to 9 significant digits."""
    text = ",".join(f"{float(c):.9g}" for c in np.asarray(coefficients, np.float64))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def strategy_matrix(
    strategy: str, rounds: int, participation: Participation, bands: int, buffers: int
) -> tuple[np.ndarray, Any]:
    """``(coefficients, C^-1 as a StreamingMatrix)`` of a strategy for ``rounds`` rounds.

    ``banded``: jax_privacy's ``toeplitz.optimize_banded_toeplitz(n, bands)`` (unit-norm
    coefficients minimising the mean squared error of the prefix sums). ``blt``:
    ``buffered_toeplitz.optimize(n, min_sep=b, max_participations=k, error="mean")`` with
    exactly ``buffers`` buffers (run in float64, then used in float32).

    Raises:
        ValueError: an unknown strategy.
    """
    n = int(rounds)
    if strategy == "banded":
        bands = min(int(bands), n)
    if strategy == "independent" or (strategy == "banded" and bands == 1):
        # One band is C = I (unit-norm coefficients); its streaming state would be empty
        # arrays, which a checkpoint cannot hold.
        coef = np.zeros(n)
        coef[0] = 1.0
        return coef, streaming_matrix.identity()
    if strategy == "banded":
        coef32 = toeplitz.optimize_banded_toeplitz(n=n, bands=bands)
        coef = np.zeros(n)
        coef[:bands] = np.asarray(coef32, np.float64)
        return coef, toeplitz.inverse_as_streaming_matrix(jnp.asarray(coef32, jnp.float32))
    if strategy == "blt":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            blt64 = buffered_toeplitz.optimize(
                n=n,
                min_sep=int(participation.min_separation),
                max_participations=int(participation.max_participations),
                error="mean",
                min_buffers=int(buffers),
                max_buffers=int(buffers),
            )
        with jax.enable_x64():
            coef = np.asarray(blt64.toeplitz_coefs(n), np.float64)
        blt32 = buffered_toeplitz.BufferedToeplitz.build(
            buf_decay=np.asarray(blt64.buf_decay),
            output_scale=np.asarray(blt64.output_scale),
            dtype=jnp.float32,
        )
        return coef, blt32.inverse_as_streaming_matrix()
    raise ValueError(f"strategy must be one of {list(STRATEGIES)}, got {strategy!r}")


def run_sensitivity(coefficients: np.ndarray, participation: Participation) -> float:
    """``s_n``: jax_privacy's min-separation sensitivity of the Toeplitz strategy.

    Raises:
        ValueError: the coefficients are not non-negative and non-increasing, or
            :func:`worst_case_participation` disagrees with jax_privacy.
    """
    u = worst_case_participation(coefficients, participation)
    n = len(coefficients)
    with jax.enable_x64():
        squared = float(
            toeplitz.minsep_sensitivity_squared(
                jnp.asarray(coefficients, jnp.float64),
                min_sep=int(participation.min_separation),
                max_participations=int(participation.max_participations),
                n=n,
                skip_checks=True,
            )
        )
    ours = float(np.sum(u**2))
    if not math.isclose(ours, squared, rel_tol=_SENSITIVITY_RTOL):
        raise ValueError(
            f"worst-case participation gives sensitivity^2 {ours!r}, jax_privacy {squared!r}"
        )
    return math.sqrt(squared)


def build_correlation(
    strategy: str,
    rounds: int,
    participation: Participation,
    bands: int,
    buffers: int,
    *,
    amplified: bool = False,
) -> NoiseCorrelation:
    """The :class:`NoiseCorrelation` of a run (``amplified``: for cyclic Poisson sampling,
    banded strategies of at most ``participation.min_separation`` bands only).

    Raises:
        ConfigError: naming ``privacy.strategy`` when the optimised strategy's coefficients
            are not non-negative and non-increasing, or amplification is asked of a strategy
            it does not cover; ``privacy.bands`` when there are more bands than groups.
    """
    if amplified:
        return _amplified_correlation(int(rounds), participation, int(bands))
    if strategy == "tree":
        return _tree_correlation(int(rounds), participation)
    coef, noising = strategy_matrix(strategy, rounds, participation, bands, buffers)
    try:
        sens = run_sensitivity(coef, participation)
        u = worst_case_participation(coef, participation)
    except ValueError as err:
        raise ConfigError("privacy.strategy", f"{strategy}: {err}") from None
    return NoiseCorrelation(
        strategy=strategy,
        coefficients=coef,
        noising=noising,
        participation=participation,
        run_sensitivity=sens,
        increments=u**2,
        bands=int(bands) if strategy == "banded" else None,
        buffers=int(buffers) if strategy == "blt" else None,
        digest=digest(coef),
    )


def _check_amplified(strategy: str, bands: int, groups: int) -> None:
    """Amplification by cyclic Poisson sampling covers banded strategies of at most
    ``groups`` bands.

    Raises:
        ConfigError: naming ``privacy.strategy`` or ``privacy.bands``.
    """
    if strategy != "banded":
        raise ConfigError(
            "privacy.strategy",
            f"sampling=cyclic_poisson is accounted with amplification for strategy=banded "
            f"only; run strategy={strategy} with sampling=cyclic",
        )
    if bands > groups:
        raise ConfigError(
            "privacy.bands",
            f"amplified banded noise needs at most sampling.groups={groups} bands, got {bands}",
        )


def _amplified_correlation(
    rounds: int, participation: Participation, bands: int
) -> NoiseCorrelation:
    """Banded MF amplified by cyclic Poisson sampling (Choquette-Choo et al. 2023,
    Section 4): with ``bands <= b`` the rows of ``C x`` that two participations of a client
    touch are disjoint, so the run is ``ceil(n / b)`` Poisson-subsampled Gaussian releases
    of sensitivity ``max_j ||C e_j||`` (jax_privacy's
    ``experimental.accounting.amplified_bandmf_event``). Each group-0 round (``1, 1 + b,
    ...``) carries one release; a client of another group has as many or fewer by then."""
    b = int(participation.min_separation)
    _check_amplified("banded", bands, b)
    coef, noising = strategy_matrix("banded", rounds, participation, bands, 1)
    column = float(np.linalg.norm(coef))  # the first column is the longest
    increments = np.zeros(int(rounds))
    increments[::b] = column**2
    return NoiseCorrelation(
        strategy="banded",
        coefficients=coef,
        noising=noising,
        participation=participation,
        run_sensitivity=column,
        increments=increments,
        bands=min(bands, int(rounds)),
        digest=digest(coef),
        amplified=True,
    )


def _tree_correlation(rounds: int, participation: Participation) -> NoiseCorrelation:
    """Tree aggregation with the efficient estimator over ``rounds`` rounds
    (:mod:`fedpriv.privacy.tree_aggregation`): the prefix bounds ``S_t`` give the
    increments."""
    levels = tree_aggregation.levels(rounds)
    weights = tree_aggregation.level_variances(levels, "efficient")
    prefixes = tree_aggregation.sensitivity(
        rounds, participation.min_separation, participation.max_participations
    )
    return NoiseCorrelation(
        strategy="tree",
        coefficients=weights,
        noising=None,
        participation=participation,
        run_sensitivity=math.sqrt(float(prefixes[-1])),
        increments=np.diff(prefixes, prepend=0.0),
        levels=levels,
        digest=digest(np.concatenate([[float(rounds)], weights])),
    )


# --------------------------------------------------------------------------- the round


def correlated_gaussian(noising: Any, std_per_clip: float) -> AggregationTransform:
    """Adds ``(C^-1 Z)_t`` to round ``t``'s sum, with ``Z_t ~ N(0, (s C)^2 I)`` drawn from the
    round's noise key and C the ``clip_norm`` a clipping transform before it published
    (``s = std_per_clip``).

    The transform's state is the streaming state of ``noising`` (jax_privacy's
    ``StreamingMatrix``: band history or BLT buffers, shaped like the model), so it lives in
    the server state and in every checkpoint.

    Privacy:
        See the module docstring. Draws from key slot ``UPDATE_NOISE_SLOT``.
    """

    def init(params):
        return noising.init_multiply(params)

    def update(total, state, key, info):
        std = std_per_clip * info["clip_norm"]
        z = gaussian_like(total, std, key)
        noise, state = noising.multiply_next(z, state)
        noised = jax.tree.map(lambda t, e: t + e.astype(t.dtype), total, noise)
        return noised, state, {"noise_std": std}

    return AggregationTransform(
        init, identity_client, update, identity_scale, key_slot=UPDATE_NOISE_SLOT
    )


# --------------------------------------------------------------------------- the mechanism


def _positive_int(block: Mapping[str, Any], key: str, default: int, high: int | None = None) -> int:
    value = block.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"privacy.{key}", f"must be an integer >= 1, got {value!r}")
    if high is not None and value > high:
        raise ConfigError(f"privacy.{key}", f"must be an integer in [1, {high}], got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class DpFtrl(DpMechanism):
    """User-level DP with correlated noise: clip to C, sum, add ``(C^-1 Z)_t``, divide by
    the cohort size.

    Privacy:
        Unit one client; add/remove one client (zeroing out its updates). The first ``t``
        rounds are the Gaussian mechanism with sensitivity ``C s_t`` under the
        participation of the sampler that runs, with no amplification by sampling. See the
        module docstring.
    """

    name = "dp_ftrl"
    unit = "user"
    ledger_mechanism = "gaussian_mf"
    accountants = ("rdp", "pld", "prv", "opacus_rdp")
    samplings = ("cyclic", "cyclic_poisson", "min_separation", "fixed", "poisson")
    secagg_modes = ("none",)

    #: ``independent``, ``tree``, ``banded`` or ``blt``.
    strategy: str | None = None
    #: Bands of the banded strategy.
    bands: int | None = None
    #: Buffers of the BLT strategy (at most 15).
    buffers: int | None = None

    def validate(self, privacy_cfg: Mapping[str, Any]) -> None:
        DpSettings.read(privacy_cfg, self.accountants, strict=True)
        choice(privacy_cfg, "strategy", STRATEGIES, "banded")
        _positive_int(privacy_cfg, "bands", 4)
        _positive_int(privacy_cfg, "buffers", 3, MAX_BUFFERS)

    def validate_sampling(self, privacy_cfg, sampling_cfg) -> None:
        """Amplification by ``sampling=cyclic_poisson`` is claimed for banded strategies of
        at most ``sampling.groups`` bands only.

        Raises:
            ConfigError: naming ``privacy.strategy`` or ``privacy.bands``.
        """
        if sampling_cfg.get("kind") == "cyclic_poisson":
            _check_amplified(
                choice(privacy_cfg, "strategy", STRATEGIES, "banded"),
                _positive_int(privacy_cfg, "bands", 4),
                int(sampling_cfg.get("groups") or 1),
            )

    def build(self, privacy_cfg, sampler, client, rounds, secagg, num_params=None, *, tools):
        """The plan: the strategy for the sampler's participation over ``rounds`` rounds,
        and with a target epsilon the smallest noise multiplier that meets it.

        Raises:
            ConfigError: naming ``privacy.<field>``, or ``secagg.mode`` with secure
                aggregation (not supported with correlated noise).
        """
        settings = DpSettings.read(privacy_cfg, self.accountants)
        if secagg is not None and secagg.enabled:
            raise ConfigError("secagg.mode", "privacy=dp_ftrl runs with secagg=none")
        strategy = choice(privacy_cfg, "strategy", STRATEGIES, "banded")
        bands = _positive_int(privacy_cfg, "bands", 4)
        buffers = _positive_int(privacy_cfg, "buffers", 3, MAX_BUFFERS)
        participation = sampler.participation(int(rounds))
        amplified = sampler.kind == "cyclic_poisson"
        if amplified:
            _check_amplified(strategy, bands, int(sampler.groups))
        correlation = build_correlation(
            strategy, int(rounds), participation, bands, buffers, amplified=amplified
        )
        plan = PrivacyPlan(
            unit=self.unit,
            clip_norm=settings.clip_norm,
            noise_multiplier=settings.noise_multiplier,
            accountant=settings.accountant,
            correlation=correlation,
            mechanism=self,
            **plan_common(self.name, sampler, rounds),
        )
        return self.calibrated(plan, settings, plan.population, tools)

    def planned_records(self, plan: PrivacyPlan) -> list[dict[str, Any]]:
        """The ledger of the planned rounds, as they will run: each round's record has its
        own sensitivity increment, so calibration (:meth:`calibrated`, one-sided) accounts
        the whole run as one Gaussian mechanism."""
        std = self.noise_std(plan, plan.clip_norm)
        return [
            self.ledger_record(plan, t, {"clip_norm": plan.clip_norm, "noise_std": std})
            for t in range(1, int(plan.rounds) + 1)
        ]

    def planned_record(self, plan: PrivacyPlan) -> dict[str, Any]:
        return self.planned_records(plan)[0]

    def aggregator(self, plan: PrivacyPlan, weighting: str, key: Any, params: Any) -> Aggregator:
        """``chain(clip(C), correlated_gaussian(C^-1, z s_n), mean(m))`` (``weighting`` is
        ignored: every clipped update counts once)."""
        corr = plan.correlation
        return as_aggregator(
            chain(
                clip_transform(plan.clip_norm),
                corr.transform(plan.noise_multiplier * corr.run_sensitivity),
                mean(plan.expected_cohort),
            ),
            params,
        )

    def noise_std(self, plan: PrivacyPlan, clip_norm: float) -> float:
        return plan.noise_multiplier * clip_norm * plan.correlation.run_sensitivity

    def ledger_record(self, plan: PrivacyPlan, rnd: int, metrics: Mapping[str, Any]):
        """Format 1 with ``mechanism: gaussian_mf``: ``noise_std`` is sigma (the std of
        each ``Z_t``), ``run_sensitivity`` ``s_n`` and ``sensitivity_increment`` ``u_t^2``."""
        corr = plan.correlation
        t = int(rnd)
        increment = float(corr.increments[t - 1]) if 1 <= t <= len(corr.increments) else 0.0
        return {
            "format": LEDGER_FORMAT,
            "round": t,
            "mechanism": "gaussian_mf",
            "unit": plan.unit,
            "sampling": plan.sampling,
            "sampling_rate": plan.sampling_rate,
            "population": plan.population,
            "cohort_size": record_cohort(plan),
            "noise_multiplier": plan.noise_multiplier,
            "clip_norm": float(metrics["clip_norm"]),
            "noise_std": float(metrics["noise_std"]),
            "steps": 1,
            "example_sampling_rate": None,
            "strategy": corr.strategy,
            "strategy_digest": corr.digest,
            "min_separation": int(corr.participation.min_separation),
            "max_participations": int(corr.participation.max_participations),
            "run_sensitivity": float(corr.run_sensitivity),
            "sensitivity_increment": increment,
        }

    # ----------------------------------------------------------------- ledger records

    def relation(self, event: RoundEvent) -> dp_accounting.NeighboringRelation:
        return ADD_OR_REMOVE_ONE

    def dp_event(self, event: RoundEvent) -> dp_accounting.DpEvent:
        """``GaussianDpEvent(z s_n / u_t)``, Poisson-subsampled at the record's rate under
        ``sampling=cyclic_poisson``; a round that adds no sensitivity (``u_t = 0``) is
        ``NoOpDpEvent``."""
        increment = float(event.sensitivity_increment)
        if increment <= 0:
            return dp_accounting.NoOpDpEvent()
        gaussian = dp_accounting.GaussianDpEvent(
            event.noise_multiplier * float(event.run_sensitivity) / math.sqrt(increment)
        )
        if event.sampling == "cyclic_poisson":
            return dp_accounting.PoissonSampledDpEvent(float(event.sampling_rate), gaussian)
        return gaussian

    def opacus_steps(self, event: RoundEvent) -> tuple[float, float, int]:
        """The round for opacus: one unsampled Gaussian step of multiplier
        ``z s_n / u_t`` (no step when ``u_t = 0``)."""
        increment = float(event.sensitivity_increment)
        if increment <= 0:
            return 1.0, 1.0, 0
        z = event.noise_multiplier * float(event.run_sensitivity) / math.sqrt(increment)
        q = float(event.sampling_rate) if event.sampling == "cyclic_poisson" else 1.0
        return z, q, 1

    def accounting_key(self, event: RoundEvent) -> tuple[Any, ...]:
        return (
            event.mechanism,
            event.sampling,
            event.sampling_rate if event.sampling == "cyclic_poisson" else None,
            event.noise_multiplier,
            event.run_sensitivity,
            event.sensitivity_increment,
        )

    def describe_record(self, event: RoundEvent) -> str:
        return f"correlated Gaussian noise ({event.strategy} strategy)"

    def check_record(self, event: RoundEvent) -> None:
        """The correlated-noise fields are all set and consistent; ``noise_std`` is
        ``noise_multiplier * clip_norm * run_sensitivity``.

        Raises:
            ConfigError: naming the field.
        """
        for name in MF_FIELDS:
            if getattr(event, name) is None:
                raise ConfigError(name, "is required for mechanism='gaussian_mf'")
        if event.strategy not in STRATEGIES:
            raise ConfigError(
                "strategy", f"unknown strategy {event.strategy!r}; choose from {list(STRATEGIES)}"
            )
        for name in ("min_separation", "max_participations"):
            value = getattr(event, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(name, f"must be an integer >= 1, got {value!r}")
        if not float(event.run_sensitivity) > 0:
            raise ConfigError("run_sensitivity", f"must be > 0, got {event.run_sensitivity!r}")
        increment = float(event.sensitivity_increment)
        if not 0 <= increment <= float(event.run_sensitivity) ** 2 * (1 + 1e-9):
            raise ConfigError(
                "sensitivity_increment",
                f"must be in [0, run_sensitivity^2], got {event.sensitivity_increment!r}",
            )
        if event.sampling == "cyclic_poisson" and event.strategy != "banded":
            raise ConfigError(
                "strategy",
                f"amplification by cyclic Poisson sampling covers banded strategies only, got "
                f"{event.strategy!r}",
            )
        super().check_record(event)

    def expected_noise_std(self, event: RoundEvent) -> float | None:
        if event.clip_norm is None or event.run_sensitivity is None:
            return None
        return event.noise_multiplier * event.clip_norm * float(event.run_sensitivity)

    def noise_std_formula(self, event: RoundEvent) -> str:
        return "noise_multiplier * clip_norm * run_sensitivity"

    def audit_noise(self, event: RoundEvent, record: Mapping[str, Any]):
        clip = record.get("clip_norm")
        if clip is None:
            return None, "", []
        z, s = event.noise_multiplier, float(event.run_sensitivity)
        return (
            z * clip * s,
            f"noise_multiplier {z:.6g} x clip_norm {clip:.6g} x run_sensitivity {s:.6g}",
            [],
        )

    def server_reports_noise(self, event: RoundEvent) -> bool:
        return True

    def audit(self, run: Any, events: Any) -> list[str]:
        """The records are all correlated noise of one strategy, and their increments add up
        to at most the run's squared sensitivity (amplified: at most ``max_participations``
        rounds carry a release)."""
        problems = []
        kinds = sorted({ev.mechanism for ev in events} - {"gaussian_mf"})
        if kinds:
            problems.append(f"privacy={self.name} adds correlated Gaussian noise; ledger: {kinds}")
        mf = [ev for ev in events if ev.mechanism == "gaussian_mf"]
        digests = sorted({ev.strategy_digest for ev in mf})
        if len(digests) > 1:
            problems.append(f"the ledger records {len(digests)} strategies: {digests}")
        amplified = [ev for ev in mf if ev.sampling == "cyclic_poisson" and not ev.replay]
        releases = sum(1 for ev in amplified if float(ev.sensitivity_increment) > 0)
        if amplified and releases > int(amplified[0].max_participations):
            problems.append(
                f"{releases} rounds carry a release of a client, more than the "
                f"{amplified[0].max_participations} participations the ledger claims"
            )
        if mf and not amplified:
            total = sum(float(ev.sensitivity_increment) for ev in mf if not ev.replay)
            bound = float(mf[0].run_sensitivity) ** 2
            if total > bound * (1 + 1e-6):
                problems.append(
                    f"the rounds' sensitivity increments add up to {total:.6g}, more than the "
                    f"run's squared sensitivity {bound:.6g}"
                )
        if mf:
            problems += self._recompute(run, mf)
        return problems

    def _recompute(self, run: Any, events: list) -> list[str]:
        """Rebuilds the strategy from the run's configuration and checks the records
        against it: the strategy digest, the participation the sampler enforces, the run's
        sensitivity (jax_privacy's) and every round's increment."""
        config = getattr(run, "config", None)
        if not config:
            return []
        rounds = int(config.get("rounds", 0))
        block = dict(config.get("privacy") or {})
        sampling = dict(config.get("sampling") or {})
        first = events[0]
        if sampling.get("kind") in ("cyclic", "cyclic_poisson", "min_separation"):
            b = int(sampling.get("groups") or sampling.get("separation"))
            expected = Participation(b, math.ceil(rounds / b))
        else:
            expected = Participation(1, rounds)
        recorded = Participation(int(first.min_separation), int(first.max_participations))
        if recorded != expected:
            return [
                f"the ledger claims participation every {recorded.min_separation} rounds at "
                f"most {recorded.max_participations} times, but sampling={sampling.get('kind')} "
                f"over {rounds} rounds allows every {expected.min_separation} rounds up to "
                f"{expected.max_participations} times"
            ]
        problems = self._check_cohorts(config, first, rounds, expected)
        corr = build_correlation(
            str(block.get("strategy", "banded")),
            rounds,
            expected,
            int(block.get("bands") or 4),
            int(block.get("buffers") or 3),
            amplified=sampling.get("kind") == "cyclic_poisson",
        )
        if corr.digest != first.strategy_digest:
            problems.append(
                f"the strategy rebuilt from the configuration has digest {corr.digest}, the "
                f"ledger {first.strategy_digest}"
            )
        if not math.isclose(corr.run_sensitivity, float(first.run_sensitivity), rel_tol=1e-6):
            problems.append(
                f"run_sensitivity {float(first.run_sensitivity):.9g} in the ledger; jax_privacy "
                f"gives {corr.run_sensitivity:.9g} for the strategy and participation"
            )
        for ev in events:
            t = int(ev.round)
            want = float(corr.increments[t - 1]) if 1 <= t <= rounds else 0.0
            if not math.isclose(float(ev.sensitivity_increment), want, rel_tol=1e-6, abs_tol=1e-12):
                problems.append(
                    f"round {t}: sensitivity_increment {float(ev.sensitivity_increment):.9g}, "
                    f"the strategy gives {want:.9g}"
                )
                break
        return problems

    @staticmethod
    def _check_cohorts(config: Mapping[str, Any], first: Any, rounds: int, claimed) -> list[str]:
        """Re-draws every round's cohort from the seed by the documented schedule (the
        sampling key of round ``t`` is ``fold_in(fold_in(key(seed), 2), t)``) and checks
        that no client took part more often, or closer together, than the ledger claims."""
        sampling = dict(config.get("sampling") or {})
        kind = sampling.get("kind")
        if kind not in ("cyclic", "cyclic_poisson", "min_separation") or first.population is None:
            return []
        root = jax.random.fold_in(jax.random.key(int(config.get("seed", 0))), SAMPLING_PURPOSE)
        if kind == "min_separation":
            size, rate = sampling.get("cohort_size"), sampling.get("rate")
            sampler = MinSeparation(
                int(first.population),
                int(sampling["separation"]),
                None if size is None else int(size),
                None if rate is None else float(rate),
            ).bind(lambda t: jax.random.fold_in(root, t))
        elif kind == "cyclic":
            sampler = CyclicCohorts(
                int(first.population), int(sampling["groups"]), int(sampling["cohort_size"])
            )
        else:
            sampler = CyclicPoisson(
                int(first.population), int(sampling["groups"]), float(sampling["rate"])
            )
        last: dict[int, int] = {}
        count: dict[int, int] = {}
        for t in range(1, rounds + 1):
            ids, mask = sampler.sample(jax.random.fold_in(root, t), t)
            for cid in ids[np.asarray(mask, bool)].tolist():
                if cid in last and t - last[cid] < claimed.min_separation:
                    return [
                        f"client {cid} takes part in rounds {last[cid]} and {t}, closer than "
                        f"the claimed separation {claimed.min_separation}"
                    ]
                last[cid] = t
                count[cid] = count.get(cid, 0) + 1
        most = max(count.values(), default=0)
        if most > claimed.max_participations:
            return [
                f"a client takes part {most} times, more than the claimed "
                f"{claimed.max_participations}"
            ]
        return []


MECHANISM = register(DpFtrl())


def plan_for(
    strategy: str,
    rounds: int,
    participation: Participation,
    *,
    bands: int = 4,
    buffers: int = 3,
    noise_multiplier: float = 1.0,
    delta: float,
    accountant: str = "pld",
    sampling_rate: float | None = None,
) -> PrivacyPlan:
    """A plan of ``rounds`` correlated-noise rounds on its own, for accounting questions
    (``fedpriv-account --strategy``): one client, clip 1, no sampling; with
    ``sampling_rate`` (banded only), cyclic Poisson sampling in
    ``participation.min_separation`` groups, amplified.

    Raises:
        ConfigError: a bad strategy size, or amplification asked of another strategy.
    """
    if strategy not in STRATEGIES:
        raise ConfigError("strategy", f"must be one of {list(STRATEGIES)}, got {strategy!r}")
    amplified = sampling_rate is not None
    if amplified:
        _check_amplified(strategy, int(bands), int(participation.min_separation))
    corr = build_correlation(
        strategy, int(rounds), participation, bands, buffers, amplified=amplified
    )
    return PrivacyPlan(
        name=MECHANISM.name,
        unit="user",
        sampling="cyclic_poisson" if amplified else "full",
        sampling_rate=float(sampling_rate) if amplified else 1.0,
        population=1,
        expected_cohort=1.0,
        clip_norm=1.0,
        noise_multiplier=float(noise_multiplier),
        delta=float(delta),
        accountant=accountant,
        rounds=int(rounds),
        correlation=corr,
        mechanism=MECHANISM,
    )


def calibrate(plan: PrivacyPlan, target_epsilon: float, epsilon_of, max_noise: float) -> float:
    """The smallest noise multiplier whose planned ledger meets ``target_epsilon`` under
    ``epsilon_of(records, delta, accountant)`` (one-sided)."""

    def eps(z: float) -> float:
        trial = dataclasses.replace(plan, noise_multiplier=z)
        return epsilon_of(MECHANISM.planned_records(trial), plan.delta, plan.accountant)

    return smallest_noise(eps, target_epsilon, max_noise=max_noise)
