"""Ledger records: one DP event per training round, and their dp_accounting events.

Each training round appends one JSON object to ``ledger.jsonl``, written by the mechanism
that ran (DESIGN.md section 4, rules 3 and 4). :class:`RoundEvent` is that record as a typed,
validated, immutable value; :func:`to_dp_event` maps a ledger to the ``dp_accounting`` event
that the accountants read. Epsilon is a pure function of the ledger.

Format 1 of a record::

    {"format": 1, "round": 7, "mechanism": "gaussian", "unit": "user",
     "sampling": "poisson", "sampling_rate": 0.01, "population": 1000, "cohort_size": 10,
     "noise_multiplier": 1.1, "clip_norm": 1.0, "noise_std": 1.1, "steps": 1,
     "example_sampling_rate": null}

``noise_multiplier`` is the standard deviation of the Gaussian noise divided by the L2 norm
bound (clip) of one contribution, i.e. by the add/remove-one sensitivity of the noised sum.
``realised_cohort`` and ``dropped`` (optional) are informational and never used for
accounting. fedpriv no longer writes them (a ledger holds public values only, and with Poisson
sampling the realised cohort size is itself private: it is a diagnostic of ``metrics.jsonl``);
ledgers of older runs may hold them, and the audit fills them in from the metrics'
diagnostics.

With adaptive clipping (Andrew et al. 2021) a record also holds ``count_noise_std``
(``sigma_b``, the noise on the sum of centred clip indicators ``b_i - 1/2``); then
``noise_std / clip_norm`` is the update's own multiplier ``z_update`` and ``noise_multiplier``
is the accounted multiplier of the pair, ``z = (z_update^-2 + (2 sigma_b)^-2)^-1/2``
(Andrew et al. 2021, Theorem 1), which the record must satisfy.

Each record is read by the :class:`LedgerKind` that claims it (:func:`ledger_kind`): the kind
checks the record's redundant fields, names its neighbouring relation, knows the sensitivity
of the released sum under it, and builds its ``dp_accounting`` event. The mechanisms of
:mod:`fedpriv.privacy.mechanisms` are ledger kinds and register themselves
(:func:`register_ledger_kind`) when that package is imported, so a mechanism added in one
module is read here without a change; the kinds of the format-1 records fedpriv has always
written (:class:`GaussianSumKind`, :class:`DistributedKind`) are built in, so a ledger of
them is read without importing the mechanisms. The mapping of those rounds to
``dp_accounting`` events (``z`` is ``noise_multiplier``) is:

==========  ==========  ===================================================================
unit        sampling    event, neighbouring relation
==========  ==========  ===================================================================
``user``    ``poisson`` ``PoissonSampledDpEvent(q, GaussianDpEvent(z))``, add/remove one
                        client
``user``    ``fixed``   ``SampledWithoutReplacementDpEvent(n, m, GaussianDpEvent(z / 2))``,
                        replace one client (population size ``n`` public)
``user``    ``full``    ``GaussianDpEvent(z)``, add/remove one client
``example`` any         ``SelfComposedDpEvent(PoissonSampledDpEvent(q_ex,
                        GaussianDpEvent(z)), steps)``, add/remove one example
``gateway`` any         as ``user``, with gateways in place of clients: ``q`` is the
                        probability that a gateway takes part, ``n`` and ``m`` count
                        gateways; add/remove (or replace) one gateway with all its clients
==========  ==========  ===================================================================

Unit ``"gateway"`` is hierarchical aggregation (:mod:`fedpriv.fl.hierarchy`) with
gateway-level DP: each gateway's aggregate of its clients is clipped to ``clip_norm`` as one
contribution and gateways, not clients, are sampled (every client of a drawn gateway takes
part). A gateway record is mapped exactly like a user record, with ``population`` the number
of gateways, ``cohort_size`` the (expected) number of gateways per round and
``realised_cohort`` the gateways that took part; the guarantee protects one gateway's whole
data, and hence any one client in it.

Distributed DP on secure aggregation (``mechanism`` ``"skellam"`` or ``"discrete_gaussian"``)
adds the fields of :class:`fedpriv.privacy.distributed.DistributedNoise`: ``scale`` (integers
per model unit), ``local_variance`` (each client's noise variance, or discrete Gaussian
``sigma^2``, in integer units), ``noise_clients`` (the fewest clients whose noise is in every
released sum), ``bits``, ``dimension`` (padded length) and ``l1_sensitivity`` /
``l2_sensitivity`` (in integer units, rounding included), and optionally ``amplification``
(``"none"``, the default, or ``"sampling"``: fixed cohorts accounted with amplification by
sampling without replacement). Such rounds are accounted by
:mod:`fedpriv.accounting.distributed` under the ``"rdp"`` accountant only; ``noise_multiplier``
is then ``sqrt(noise_clients * local_variance) / (scale * clip_norm)``.

Runs of consecutive rounds with the same accounting parameters are grouped into one
``SelfComposedDpEvent`` so that a 10,000-round ledger costs the accountants one event.

References:
    Abadi et al., "Deep Learning with Differential Privacy", CCS 2016 (DP-SGD).
    McMahan et al., "Learning Differentially Private Recurrent Language Models", ICLR 2018
    (DP-FedAvg, user-level privacy).
    Andrew et al., "Differentially Private Learning with Adaptive Clipping", NeurIPS 2021,
    Theorem 1.
    Mironov, "Renyi Differential Privacy", CSF 2017, Proposition 7 (Gaussian RDP).
    Mironov, Talwar, Zhang, "Renyi Differential Privacy of the Sampled Gaussian Mechanism",
    arXiv:1908.10530, 2019 (Poisson subsampling).
    Wang, Balle, Kasiviswanathan, "Subsampled Renyi Differential Privacy and Analytical
    Moments Accountant", AISTATS 2019, arXiv:1808.00087, Theorem 27 (sampling without
    replacement).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import dp_accounting

from fedpriv.accounting import _checks
from fedpriv.errors import ConfigError

#: The ledger format this module reads and writes.
LEDGER_FORMAT = 1
UNITS: tuple[str, ...] = ("user", "example", "gateway")
#: Units accounted like user-level DP (one clipped contribution per unit per round).
_USER_LIKE: tuple[str, ...] = ("user", "gateway")
SAMPLINGS: tuple[str, ...] = (
    "poisson",
    "fixed",
    "full",
    "cyclic",
    "cyclic_poisson",
    "min_separation",
)
DISTRIBUTED_MECHANISMS: tuple[str, ...] = ("skellam", "discrete_gaussian")
#: Accounting of the sampling of a distributed-DP round (see the module docstring).
AMPLIFICATIONS: tuple[str, ...] = ("none", "sampling")
#: Fields of distributed-DP rounds only (absent from Gaussian records).
_DISTRIBUTED_FIELDS: tuple[str, ...] = (
    "scale",
    "local_variance",
    "noise_clients",
    "bits",
    "dimension",
    "l1_sensitivity",
    "l2_sensitivity",
)
#: Optional fields of distributed-DP rounds (omitted from the JSON when unset).
_DISTRIBUTED_OPTIONAL: tuple[str, ...] = ("amplification",)
#: Fields of correlated-noise (matrix mechanism) rounds only, ``mechanism: gaussian_mf``
#: (:mod:`fedpriv.privacy.mechanisms.dp_ftrl`); omitted from the JSON of other records.
MF_FIELDS: tuple[str, ...] = (
    "strategy",
    "strategy_digest",
    "min_separation",
    "max_participations",
    "run_sensitivity",
    "sensitivity_increment",
)

#: Neighbouring relations, as names used in messages.
ADD_REMOVE = "add/remove-one"
REPLACE_ONE = "replace-one"
_RELATION_NAMES = {
    dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE: ADD_REMOVE,
    dp_accounting.NeighboringRelation.REPLACE_ONE: REPLACE_ONE,
}

_FIELDS: tuple[str, ...] = (
    "format",
    "round",
    "mechanism",
    "unit",
    "sampling",
    "sampling_rate",
    "population",
    "cohort_size",
    "noise_multiplier",
    "clip_norm",
    "noise_std",
    "steps",
    "example_sampling_rate",
    "realised_cohort",
    "dropped",
    "count_noise_std",
    *_DISTRIBUTED_FIELDS,
    *_DISTRIBUTED_OPTIONAL,
    *MF_FIELDS,
    "replay",
)
_REQUIRED: tuple[str, ...] = (
    "format",
    "round",
    "mechanism",
    "unit",
    "sampling",
    "noise_multiplier",
)
# Relative tolerance of the consistency checks between redundant fields; clip norms and noise
# standard deviations reported by the round are float32.
_RTOL = 1e-5


@dataclasses.dataclass(frozen=True, kw_only=True)
class RoundEvent:
    """The DP event of one training round, as written to ``ledger.jsonl``.

    Construction validates every field and the consistency of redundant ones (``noise_std``
    against ``noise_multiplier * clip_norm``; ``sampling_rate`` against
    ``cohort_size / population`` for fixed cohorts), raising :class:`ConfigError` naming the
    field. Use :meth:`from_dict` / :meth:`to_dict` for the JSON form.

    Attributes:
        round: Round index (informational).
        sampling: ``"poisson"``, ``"fixed"`` (exactly ``cohort_size`` of ``population``
            clients, without replacement) or ``"full"`` (every client every round).
        noise_multiplier: Noise standard deviation over the L2 clip of one contribution.
        unit: Unit of privacy, ``"user"`` (one client's whole data), ``"example"`` or
            ``"gateway"`` (one gateway's clients, hierarchical aggregation; then
            ``population``, ``cohort_size``, ``sampling_rate`` and ``realised_cohort``
            count gateways).
        sampling_rate: Poisson: client sampling probability in (0, 1]. Fixed: ``m / n``
            (optional, checked). Full: 1 (optional, checked).
        population: Number of clients ``n``; required for fixed cohorts.
        cohort_size: Fixed: exact cohort size ``m``. Poisson: expected size (informational).
        clip_norm: L2 clip ``C`` of one contribution (informational, checked).
        noise_std: Standard deviation of the noise added to the sum (informational, checked).
        steps: ``unit="user"`` or ``"gateway"``: 1. ``unit="example"``: local DP-SGD steps per
            client per round.
        example_sampling_rate: ``unit="example"``: Poisson rate of examples per local step.
        realised_cohort: Realised cohort size; never used for accounting.
        dropped: Sampled clients that did not report (unavailable or dropped stragglers);
            informational, never used for accounting.
        count_noise_std: Adaptive clipping only: std ``sigma_b`` of the noise on the sum of
            centred clip indicators (checked against ``noise_multiplier``, see the module
            docstring).
        scale, local_variance, noise_clients, bits, dimension, l1_sensitivity,
            l2_sensitivity: distributed DP only (see the module docstring).
        amplification: distributed DP only: ``"sampling"`` to account fixed cohorts with
            amplification by sampling without replacement; unset means ``"none"``.
        strategy, strategy_digest, min_separation, max_participations, run_sensitivity,
            sensitivity_increment: correlated noise (``mechanism: gaussian_mf``) only; see
            :mod:`fedpriv.privacy.mechanisms.dp_ftrl`.
        mechanism: ``"gaussian"``, ``"skellam"`` or ``"discrete_gaussian"``.
        format: Ledger format, 1.
        replay: True when the round ran again after a resume because its earlier run came
            after the last checkpoint; accounted like any other round (never skipped).

    Privacy:
        A record states what ran; see :meth:`dp_event` for the guarantee it is accounted as.
    """

    round: int
    sampling: str
    noise_multiplier: float
    unit: str = "user"
    sampling_rate: float | None = None
    population: int | None = None
    cohort_size: float | None = None
    clip_norm: float | None = None
    noise_std: float | None = None
    steps: int = 1
    example_sampling_rate: float | None = None
    realised_cohort: int | None = None
    dropped: int | None = None
    count_noise_std: float | None = None
    scale: float | None = None
    local_variance: float | None = None
    noise_clients: int | None = None
    bits: int | None = None
    dimension: int | None = None
    l1_sensitivity: float | None = None
    l2_sensitivity: float | None = None
    amplification: str | None = None
    strategy: str | None = None
    strategy_digest: str | None = None
    min_separation: int | None = None
    max_participations: int | None = None
    run_sensitivity: float | None = None
    sensitivity_increment: float | None = None
    mechanism: str = "gaussian"
    format: int = LEDGER_FORMAT
    replay: bool = False

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        fmt = _checks.integer("format", self.format, 1)
        if fmt != LEDGER_FORMAT:
            raise ConfigError(
                "format",
                f"must be {LEDGER_FORMAT} (the format this version reads), got {self.format!r}",
            )
        put("format", fmt)
        put("round", _checks.integer("round", self.round, 0))
        _checks.choice("mechanism", self.mechanism, ledger_mechanisms())
        _checks.choice("unit", self.unit, UNITS)
        _checks.choice("sampling", self.sampling, SAMPLINGS)
        put("noise_multiplier", _checks.nonnegative("noise_multiplier", self.noise_multiplier))
        put("steps", _checks.integer("steps", self.steps, 1))
        if not isinstance(self.replay, bool):
            raise ConfigError("replay", f"must be true or false, got {self.replay!r}")
        if self.population is not None:
            put("population", _checks.integer("population", self.population, 1))
        if self.realised_cohort is not None:
            put("realised_cohort", _checks.integer("realised_cohort", self.realised_cohort, 0))
        if self.dropped is not None:
            put("dropped", _checks.integer("dropped", self.dropped, 0))
        if self.clip_norm is not None:
            put("clip_norm", _checks.positive("clip_norm", self.clip_norm))
        if self.noise_std is not None:
            put("noise_std", _checks.nonnegative("noise_std", self.noise_std))
        if self.count_noise_std is not None:
            put("count_noise_std", _checks.positive("count_noise_std", self.count_noise_std))
        self._check_sampling(put)
        self._check_unit(put)
        self._check_distributed(put)
        if self.mechanism != "gaussian_mf":
            for name in MF_FIELDS:
                if getattr(self, name) is not None:
                    raise ConfigError(
                        name, f"is only for correlated noise (gaussian_mf), not {self.mechanism!r}"
                    )
        # The mechanism that wrote the record checks what its fields must satisfy together.
        mechanism_of(self).check_record(self)

    @property
    def is_distributed(self) -> bool:
        """Whether this round is distributed DP (Skellam or discrete Gaussian)."""
        return self.mechanism in DISTRIBUTED_MECHANISMS

    def _check_distributed(self, put: Any) -> None:
        if not self.is_distributed:
            for name in (*_DISTRIBUTED_FIELDS, *_DISTRIBUTED_OPTIONAL):
                if getattr(self, name) is not None:
                    raise ConfigError(
                        name, f"is only for distributed mechanisms, not {self.mechanism!r}"
                    )
            return
        for name in _DISTRIBUTED_FIELDS:
            if getattr(self, name) is None:
                raise ConfigError(name, f"is required for mechanism={self.mechanism!r}")
        if self.unit != "user":
            raise ConfigError("unit", f"must be 'user' for mechanism={self.mechanism!r}")
        if self.count_noise_std is not None:
            raise ConfigError("count_noise_std", f"must be null for mechanism={self.mechanism!r}")
        put("scale", _checks.positive("scale", self.scale))
        put("local_variance", _checks.nonnegative("local_variance", self.local_variance))
        put("noise_clients", _checks.integer("noise_clients", self.noise_clients, 1))
        bits = _checks.integer("bits", self.bits, 2)
        if bits > 32:
            raise ConfigError("bits", f"must be an integer in [2, 32], got {bits}")
        put("bits", bits)
        put("dimension", _checks.integer("dimension", self.dimension, 1))
        put("l1_sensitivity", _checks.positive("l1_sensitivity", self.l1_sensitivity))
        put("l2_sensitivity", _checks.positive("l2_sensitivity", self.l2_sensitivity))
        if self.amplification is not None:
            _checks.choice("amplification", self.amplification, AMPLIFICATIONS)
            if self.amplification == "sampling" and (
                self.sampling != "fixed" or self.population is None or self.cohort_size is None
            ):
                raise ConfigError(
                    "amplification",
                    "'sampling' needs fixed cohorts (sampling 'fixed' with population and "
                    f"cohort_size), got sampling={self.sampling!r}",
                )
        if self.clip_norm is not None:
            z = math.sqrt(self.noise_clients * self.local_variance) / (self.scale * self.clip_norm)
            if not math.isclose(self.noise_multiplier, z, rel_tol=_RTOL, abs_tol=1e-12):
                raise ConfigError(
                    "noise_multiplier",
                    f"is {self.noise_multiplier!r} but sqrt(noise_clients * local_variance) / "
                    f"(scale * clip_norm) = {z!r}; the record does not describe one mechanism",
                )

    def _check_sampling(self, put: Any) -> None:
        if self.sampling in ("poisson", "cyclic_poisson", "min_separation"):
            if self.sampling_rate is None:
                raise ConfigError("sampling_rate", f"is required for sampling={self.sampling!r}")
            put("sampling_rate", _checks.probability("sampling_rate", self.sampling_rate))
            if self.cohort_size is not None:
                put("cohort_size", _checks.nonnegative("cohort_size", self.cohort_size))
        elif self.sampling in ("fixed", "cyclic"):
            # Exactly cohort_size clients a round: of the population (fixed), or of the
            # round's group (cyclic); cohort_size / population is the rate either way.
            for name in ("population", "cohort_size"):
                if getattr(self, name) is None:
                    raise ConfigError(name, f"is required for sampling={self.sampling!r}")
            m = _checks.integer("cohort_size", self.cohort_size, 1)
            if m > self.population:
                raise ConfigError(
                    "cohort_size",
                    f"must be <= population ({self.population}) for "
                    f"sampling={self.sampling!r}, got {m}",
                )
            put("cohort_size", m)
            if self.sampling_rate is not None:
                rate = _checks.probability("sampling_rate", self.sampling_rate)
                if not math.isclose(rate, m / self.population, rel_tol=_RTOL):
                    raise ConfigError(
                        "sampling_rate",
                        f"is {rate!r} but cohort_size / population = {m / self.population!r}",
                    )
                put("sampling_rate", rate)
        else:  # full participation
            if self.sampling_rate is not None:
                rate = _checks.probability("sampling_rate", self.sampling_rate)
                if rate != 1.0:
                    raise ConfigError(
                        "sampling_rate", f"must be 1 for sampling='full', got {rate!r}"
                    )
                put("sampling_rate", rate)
            if self.cohort_size is not None:
                m = _checks.integer("cohort_size", self.cohort_size, 1)
                if self.population is not None and m != self.population:
                    raise ConfigError(
                        "cohort_size",
                        f"must equal population ({self.population}) for sampling='full', got {m}",
                    )
                put("cohort_size", m)

    def _check_unit(self, put: Any) -> None:
        if self.unit in _USER_LIKE:
            if self.steps != 1:
                raise ConfigError("steps", f"must be 1 for unit={self.unit!r}, got {self.steps}")
            if self.example_sampling_rate is not None:
                raise ConfigError(
                    "example_sampling_rate",
                    f"must be null for unit={self.unit!r}, got {self.example_sampling_rate!r}",
                )
        else:
            if self.example_sampling_rate is None:
                raise ConfigError("example_sampling_rate", "is required for unit='example'")
            put(
                "example_sampling_rate",
                _checks.probability("example_sampling_rate", self.example_sampling_rate),
            )

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> RoundEvent:
        """Reads one ledger record (a parsed JSON object).

        Raises:
            ConfigError: a required field is missing, a field is unknown to format 1, or a
                value is invalid.
        """
        if not isinstance(record, Mapping):
            raise ConfigError("record", f"must be a JSON object, got {type(record).__name__}")
        unknown = sorted(set(record) - set(_FIELDS))
        if unknown:
            raise ConfigError(
                unknown[0],
                f"is not a field of ledger format {LEDGER_FORMAT} (fields: {', '.join(_FIELDS)})",
            )
        for name in _REQUIRED:
            if name not in record:
                raise ConfigError(name, "is required in every ledger record")
        kwargs = {k: v for k, v in record.items() if v is not None}
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, with every field of format 1 in ledger order (``count_noise_std``
        and ``dropped`` only when set, ``replay`` only when true)."""
        out = {name: getattr(self, name) for name in _FIELDS}
        if out["count_noise_std"] is None:
            del out["count_noise_std"]
        if not self.is_distributed:
            for name in _DISTRIBUTED_FIELDS:
                del out[name]
        for name in (*_DISTRIBUTED_OPTIONAL, *MF_FIELDS):
            if out[name] is None:
                del out[name]
        if not out["replay"]:
            del out["replay"]
        if out["dropped"] is None:
            del out["dropped"]
        return out

    @property
    def neighboring_relation(self) -> str:
        """The relation the record is accounted under, as named in messages:
        :data:`REPLACE_ONE` for user- or gateway-level fixed cohorts, else
        :data:`ADD_REMOVE` (the mechanism's :meth:`relation`)."""
        return _RELATION_NAMES[self.relation]

    @property
    def relation(self) -> dp_accounting.NeighboringRelation:
        """The ``dp_accounting`` neighbouring relation of the record (its mechanism's)."""
        return mechanism_of(self).relation(self)

    def accountants(self) -> tuple[str, ...]:
        """The accountant backends that analyse this round (its mechanism says which)."""
        return tuple(mechanism_of(self).supported_accountants(self))

    def accounting_key(self) -> tuple[Any, ...]:
        """The parameters the privacy cost depends on; equal keys mean equal events."""
        return mechanism_of(self).accounting_key(self)

    def dp_event(self) -> dp_accounting.DpEvent:
        """The ``dp_accounting`` event of this round.

        Returns:
            See the table in the module docstring.

        Privacy:
            * ``unit="user"``, ``sampling="poisson"``: each client joins with probability
              ``q``; the sum of updates clipped to ``C`` gets ``N(0, (z C)^2)`` noise. Under
              add/remove-one-client adjacency the sum's sensitivity is ``C``, so the round is
              the Poisson subsampled Gaussian mechanism with noise multiplier ``z``
              (Mironov, Talwar, Zhang 2019; McMahan et al. 2018).
            * ``unit="user"``, ``sampling="fixed"``: ``m`` of ``n`` clients uniformly without
              replacement. Sampling without replacement is analysed under replace-one-client
              adjacency with ``n`` public (Wang, Balle, Kasiviswanathan 2019, Theorem 27).
              That theorem takes the RDP of the base mechanism under replace-one; replacing
              one client's update ``u`` by ``u'``, both clipped to ``C``, moves the sum by up
              to ``||u - u'|| <= 2C``, so the base Gaussian's RDP is
              ``alpha (2C)^2 / (2 (zC)^2) = alpha / (2 (z/2)^2)`` (Mironov 2017, Prop. 7): the
              RDP of ``GaussianDpEvent(z / 2)`` in dp_accounting's units of sensitivity 1.
              dp_accounting's ``_compute_rdp_sample_wor_gaussian_int`` builds the bound from
              the Gaussian cumulant ``x (x + 1) / (2 sigma^2)``, i.e. from
              ``sigma = z / 2``. Only the ``rdp`` accountant analyses this event.
            * ``unit="user"``, ``sampling="full"``: every client every round; the Gaussian
              mechanism with noise multiplier ``z`` under add/remove-one-client adjacency.
            * Adaptive clipping (``count_noise_std`` set): the update sum and the noised
              clip count together are one Gaussian mechanism with multiplier ``z``
              (Andrew et al. 2021, Theorem 1); under replace-one both sensitivities double,
              so the ``z / 2`` reading above holds for the pair too.
            * ``unit="gateway"``: each of the three cases above, read with "gateway" for
              "client": a gateway's clipped aggregate is one contribution of norm ``<= C``,
              gateways are sampled (all clients of a drawn gateway take part), and the
              neighbouring relation adds/removes (or, for fixed cohorts, replaces) one
              gateway with all its clients.
            * ``unit="example"``: ``steps`` local DP-SGD steps, each Poisson-sampling examples
              with rate ``q_ex`` and adding ``N(0, (z C)^2)`` to the sum of per-example
              gradients clipped to ``C`` (Abadi et al. 2016), under add/remove-one-example
              adjacency. The amplification by client sampling is conservatively ignored:
              the bound holds as if the example's client took part in every round.
        """
        return mechanism_of(self).dp_event(self)

    def unsupported(self, backend: str) -> ConfigError:
        """The error for a backend that cannot analyse this round."""
        return mechanism_of(self).unsupported(self, backend)

    def opacus_steps(self) -> tuple[float, float, int]:
        """This round as opacus accountant history ``(noise_multiplier, sample_rate, steps)``.

        Opacus accountants analyse only Poisson subsampled Gaussian steps under add/remove
        adjacency; full participation is Poisson sampling with rate 1.

        Raises:
            ConfigError: for fixed-size cohorts (replace-one adjacency).
        """
        return mechanism_of(self).opacus_steps(self)


EventLike = RoundEvent | Mapping[str, Any]


# --------------------------------------------------------------------------- ledger kinds

ADD_OR_REMOVE_ONE = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
#: ``dp_accounting``'s replace-one relation (:data:`REPLACE_ONE` is its name in messages).
REPLACE_ONE_RELATION = dp_accounting.NeighboringRelation.REPLACE_ONE


def relation_of(sampling: str, unit: str | None = "user") -> dp_accounting.NeighboringRelation:
    """The neighbouring relation a round with this sampling and unit is accounted under.

    Fixed-size cohorts of user-like units are analysed by sampling without replacement
    with the population public, which needs replace-one adjacency (Wang, Balle,
    Kasiviswanathan 2019); Poisson sampling, full participation and example-level DP-SGD add
    or remove one unit.
    """
    if unit in _USER_LIKE and sampling == "fixed":
        return REPLACE_ONE_RELATION
    return ADD_OR_REMOVE_ONE


def amplify(event: RoundEvent, base: dp_accounting.DpEvent) -> dp_accounting.DpEvent:
    """``base`` (one round on the whole cohort) under the sampling that ran.

    * ``poisson``: ``PoissonSampledDpEvent(q, base)`` (add/remove one unit);
    * ``fixed``: ``SampledWithoutReplacementDpEvent(n, m, base)`` (replace one unit, ``n``
      public; ``base`` must then be the replace-one event);
    * ``full``: ``base``.

    Privacy:
        Amplification by subsampling: Mironov, Talwar, Zhang 2019 (Poisson); Wang, Balle,
        Kasiviswanathan 2019, Theorem 27 (without replacement). The sample must be secret.
    """
    if event.sampling == "poisson":
        return dp_accounting.PoissonSampledDpEvent(event.sampling_rate, base)
    if event.sampling == "fixed":
        return dp_accounting.SampledWithoutReplacementDpEvent(
            event.population, int(event.cohort_size), base
        )
    return base


def split_noise(noise_multiplier: float, count_noise_std: float) -> float:
    """Noise multiplier left for the update sum when the clip count is also noised.

    Releasing the update sum with noise multiplier ``z_update`` and the sum of centred
    indicators ``b_i - 1/2`` (sensitivity 1/2) with std ``sigma_b`` is, by Andrew et al.
    2021 Theorem 1, equivalent to one Gaussian mechanism with
    ``z = (z_update^-2 + (2 sigma_b)^-2)^-1/2``. Given the accounted ``z``, this returns
    ``z_update = (z^-2 - (2 sigma_b)^-2)^-1/2``. This is the one implementation of the split:
    the aggregator (:mod:`fedpriv.privacy.aggregators`), the ledger's checks and the audit
    all call it.

    Args:
        noise_multiplier: z, the accounted multiplier of the (update sum, count) pair.
        count_noise_std: sigma_b, the std of the noise on the count.

    Returns:
        ``z_update`` (0 when ``z`` is 0).

    Raises:
        ValueError: ``2 * sigma_b <= z``: the count noise alone would exceed the budget.

    Privacy:
        Under adding or removing one client the pair is a Gaussian mechanism with
        multiplier ``z``; under replacing one both sensitivities double, the same for both
        parts, so the split is the same.
    """
    if noise_multiplier == 0.0:
        return 0.0
    rest = noise_multiplier**-2 - (2.0 * count_noise_std) ** -2
    if rest <= 0:
        raise ValueError(
            f"count_noise_std {count_noise_std} leaves no budget for the update sum at noise "
            f"multiplier {noise_multiplier}; it must exceed noise_multiplier / 2 = "
            f"{noise_multiplier / 2}"
        )
    return rest**-0.5


class LedgerKind:
    """What a kind of ledger record means for accounting.

    The defaults describe a noised sum of clipped contributions whose round is one event
    under the sampling that ran (:func:`amplify`). Subclasses set :attr:`ledger_mechanism`
    (the record's ``mechanism`` field) and override what differs.

    Attributes:
        ledger_mechanism: the ``mechanism`` field of its records (None: it writes none).
        accountants: the accountants that analyse its rounds at all, in table order.

    Privacy:
        Each subclass states its guarantee and neighbouring relation.
    """

    ledger_mechanism: str | None = None
    accountants: tuple[str, ...] = _checks.ACCOUNTANTS

    def ledger_names(self) -> tuple[str, ...]:
        """The values of the ``mechanism`` field of the records it reads."""
        return () if self.ledger_mechanism is None else (self.ledger_mechanism,)

    def claims(self, event: RoundEvent) -> bool:
        """Whether a ledger record is of this kind."""
        return self.ledger_mechanism is not None and event.mechanism == self.ledger_mechanism

    def sensitivity(
        self, relation: dp_accounting.NeighboringRelation, clip_norm: float = 1.0
    ) -> float:
        """Sensitivity of the released sum in the norm its noise is calibrated to: ``C``
        under adding or removing one contribution bounded by ``C``, ``2C`` under replacing
        one (the triangle inequality: ``||u - u'|| <= ||u|| + ||u'||``).

        Raises:
            ValueError: an unknown relation.
        """
        if relation == ADD_OR_REMOVE_ONE:
            return clip_norm
        if relation == REPLACE_ONE_RELATION:
            return 2.0 * clip_norm
        raise ValueError(f"relation must be a dp_accounting.NeighboringRelation, got {relation!r}")

    def relation(self, event: RoundEvent) -> dp_accounting.NeighboringRelation:
        """The neighbouring relation ``event`` is accounted under (:func:`relation_of`)."""
        return relation_of(event.sampling, event.unit)

    def relation_name(self, event: RoundEvent) -> str:
        """:meth:`relation` as the ledger names it."""
        return _RELATION_NAMES[self.relation(event)]

    def dp_event(self, event: RoundEvent) -> dp_accounting.DpEvent:
        """The ``dp_accounting`` event of one round."""
        raise self.unsupported(event, "dp_accounting event")

    def supported_accountants(self, event: RoundEvent) -> tuple[str, ...]:
        """The accountants that analyse ``event``."""
        return self.accountants

    def unsupported_reason(self, accountant: str, event: RoundEvent) -> str | None:
        """Why ``accountant`` cannot analyse ``event`` (None when it can)."""
        ok = self.supported_accountants(event)
        if accountant in ok:
            return None
        return (
            f"{self.describe_record(event)} is analysed by {', '.join(ok) or 'no accountant'} only"
        )

    def describe_record(self, event: RoundEvent) -> str:
        """A few words for messages: what kind of round ``event`` is."""
        return f"{event.mechanism} noise with {event.sampling} sampling"

    def accounting_key(self, event: RoundEvent) -> tuple[Any, ...]:
        """What the round's privacy cost depends on; equal keys mean equal events."""
        z = event.noise_multiplier
        if event.sampling == "poisson":
            return (event.mechanism, event.unit, "poisson", event.sampling_rate, z)
        if event.sampling == "fixed":
            return (
                event.mechanism,
                event.unit,
                "fixed",
                event.population,
                int(event.cohort_size),
                z,
            )
        return (event.mechanism, event.unit, "full", z)

    def opacus_steps(self, event: RoundEvent) -> tuple[float, float, int]:
        """The round as opacus history ``(noise_multiplier, sample_rate, steps)``.

        Raises:
            ConfigError: naming ``accountant`` when opacus cannot analyse it.
        """
        raise self.unsupported(event, "opacus")

    def unsupported(self, event: RoundEvent, backend: str) -> ConfigError:
        """The error for a backend that cannot analyse ``event``."""
        return ConfigError(
            "accountant",
            f"{self.describe_record(event)} is not analysed by the {backend} backend; it is "
            f"supported by {', '.join(self.supported_accountants(event)) or 'no accountant'}",
        )

    def check_record(self, event: RoundEvent) -> None:
        """Checks the record's redundant fields describe one mechanism.

        Raises:
            ConfigError: naming the field.
        """
        expected = self.expected_noise_std(event)
        if expected is None or event.noise_std is None:
            return
        if not math.isclose(event.noise_std, expected, rel_tol=_RTOL, abs_tol=1e-12):
            raise ConfigError(
                "noise_std",
                f"is {event.noise_std!r} but {self.noise_std_formula(event)} = {expected!r}; "
                "the record does not describe one mechanism",
            )

    def expected_noise_std(self, event: RoundEvent) -> float | None:
        """The noise std the record's multiplier and clip imply (None: not checkable)."""
        if event.clip_norm is None:
            return None
        return event.noise_multiplier * event.clip_norm

    def noise_std_formula(self, event: RoundEvent) -> str:
        """How :meth:`expected_noise_std` is computed, in words."""
        return "noise_multiplier * clip_norm"


class GaussianSumKind(LedgerKind):
    """Gaussian noise of std ``z C`` on a sum of contributions of L2 norm at most ``C``
    (records with ``mechanism: gaussian``): user-, gateway- and example-level DP.

    Privacy:
        The sum has L2 sensitivity ``C`` under adding or removing one contribution and
        ``2C`` under replacing one (:meth:`sensitivity`), so a user-level round is the
        Gaussian mechanism with multiplier ``noise_std / sensitivity``: ``z`` (add/remove),
        ``z / 2`` (replace-one), before sampling amplification (:func:`amplify`). With
        adaptive clipping (``count_noise_std`` set) the update sum and the noised clip count
        are one Gaussian mechanism with multiplier ``z`` (Andrew et al. 2021, Theorem 1);
        under replace-one both sensitivities double, so the ``z / 2`` reading holds for the
        pair. Example level: ``steps`` DP-SGD steps, each
        ``PoissonSampledDpEvent(q_ex, GaussianDpEvent(z))`` under add/remove-one-example
        adjacency (Abadi et al. 2016), without credit for client sampling.
    """

    ledger_mechanism = "gaussian"

    def base_multiplier(self, event: RoundEvent) -> float:
        """The unit-sensitivity multiplier of one round: ``z / sensitivity(relation, 1)``."""
        return event.noise_multiplier / self.sensitivity(self.relation(event), 1.0)

    def dp_event(self, event: RoundEvent) -> dp_accounting.DpEvent:
        """``GaussianDpEvent(z / k)`` under the sampling that ran (``k`` 1 or 2); for
        example-level DP, ``steps`` Poisson-sampled DP-SGD steps."""
        if event.unit == "example":
            step = dp_accounting.PoissonSampledDpEvent(
                event.example_sampling_rate, dp_accounting.GaussianDpEvent(event.noise_multiplier)
            )
            return dp_accounting.SelfComposedDpEvent(step, event.steps)
        return amplify(event, dp_accounting.GaussianDpEvent(self.base_multiplier(event)))

    def supported_accountants(self, event: RoundEvent) -> tuple[str, ...]:
        if self.relation(event) == REPLACE_ONE_RELATION:
            return ("rdp",)
        return self.accountants

    def unsupported_reason(self, accountant: str, event: RoundEvent) -> str | None:
        if accountant in self.supported_accountants(event):
            return None
        return (
            "sampling without replacement (fixed cohorts, replace-one adjacency) is analysed "
            "only by dp_accounting's RDP accountant"
        )

    def accounting_key(self, event: RoundEvent) -> tuple[Any, ...]:
        z = event.noise_multiplier
        if event.unit == "example":
            return ("example", z, event.steps, event.example_sampling_rate)
        return super().accounting_key(event)

    def opacus_steps(self, event: RoundEvent) -> tuple[float, float, int]:
        """Opacus analyses Poisson subsampled Gaussian steps under add/remove adjacency; full
        participation is Poisson sampling with rate 1.

        Raises:
            ConfigError: for fixed-size cohorts (replace-one adjacency).
        """
        z = event.noise_multiplier
        if event.unit == "example":
            return (z, event.example_sampling_rate, event.steps)
        if event.sampling == "poisson":
            return (z, event.sampling_rate, 1)
        if event.sampling == "full":
            return (z, 1.0, 1)
        raise ConfigError(
            "sampling",
            "'fixed' (sampling without replacement, replace-one adjacency) is not supported "
            "by the opacus accountants; accountants that support it: rdp",
        )

    def update_multiplier(self, event: RoundEvent) -> float:
        """The update sum's own multiplier (:func:`split_noise` with adaptive clipping).

        Raises:
            ValueError: the count noise leaves nothing for the update sum.
        """
        if event.count_noise_std is None:
            return event.noise_multiplier
        return split_noise(event.noise_multiplier, event.count_noise_std)

    def expected_noise_std(self, event: RoundEvent) -> float | None:
        if event.clip_norm is None:
            return None
        try:
            return self.update_multiplier(event) * event.clip_norm
        except ValueError:
            raise ConfigError(
                "count_noise_std",
                f"{event.count_noise_std!r} is at most noise_multiplier / 2 = "
                f"{event.noise_multiplier / 2!r}: the clip-count noise alone exceeds the "
                "accounted noise",
            ) from None

    def noise_std_formula(self, event: RoundEvent) -> str:
        if event.count_noise_std is None:
            return "noise_multiplier * clip_norm"
        return "z_update * clip_norm with z_update from noise_multiplier and count_noise_std"


class DistributedKind(LedgerKind):
    """Distributed DP on secure aggregation (``mechanism`` ``skellam`` or
    ``discrete_gaussian``), accounted by fedpriv's own RDP bounds
    (:mod:`fedpriv.accounting.distributed`) under the ``rdp`` accountant only.

    Privacy:
        See :mod:`fedpriv.accounting.distributed`; fixed cohorts, replace-one adjacency.
    """

    ledger_mechanism = "skellam"
    accountants = ("rdp",)

    def ledger_names(self) -> tuple[str, ...]:
        return DISTRIBUTED_MECHANISMS

    def claims(self, event: RoundEvent) -> bool:
        return event.mechanism in DISTRIBUTED_MECHANISMS

    def unsupported(self, event: RoundEvent, backend: str) -> ConfigError:
        return ConfigError(
            "accountant",
            f"mechanism {event.mechanism!r} is not analysed by the {backend} backend; it is "
            "supported by rdp only (fedpriv.accounting.distributed)",
        )

    def unsupported_reason(self, accountant: str, event: RoundEvent) -> str | None:
        if accountant == "rdp":
            return None
        return (
            "distributed DP (Skellam / distributed discrete Gaussian) is analysed by no "
            "library; only fedpriv's own RDP bound (rdp) covers it"
        )

    def accounting_key(self, event: RoundEvent) -> tuple[Any, ...]:
        return (
            event.mechanism,
            event.neighboring_relation,
            event.noise_multiplier,
            *(getattr(event, name) for name in _DISTRIBUTED_FIELDS),
            event.amplification or "none",
            event.population if event.amplification == "sampling" else None,
            event.cohort_size if event.amplification == "sampling" else None,
        )


#: The kinds of the records fedpriv has always written (read without importing mechanisms).
_BUILTIN_KINDS: tuple[LedgerKind, ...] = (GaussianSumKind(), DistributedKind())
#: Kinds registered by the mechanisms (:mod:`fedpriv.privacy.mechanisms`), consulted first.
_REGISTERED_KINDS: list[LedgerKind] = []


def register_ledger_kind(kind: LedgerKind) -> LedgerKind:
    """Adds a kind of record (a mechanism registers itself here when it is imported).

    Registered kinds are consulted before the built-in ones, in registration order.
    """
    if not any(k is kind for k in _REGISTERED_KINDS):
        _REGISTERED_KINDS.append(kind)
    return kind


def ledger_kind(event: RoundEvent) -> LedgerKind:
    """The kind that reads ``event`` (its mechanism, when registered).

    Raises:
        ConfigError: naming ``mechanism`` when no kind claims the record.
    """
    for kind in (*_REGISTERED_KINDS, *_BUILTIN_KINDS):
        if kind.claims(event):
            return kind
    raise ConfigError(
        "mechanism",
        f"no registered mechanism writes records with mechanism={event.mechanism!r}, "
        f"unit={event.unit!r}; known: {list(ledger_mechanisms())} (the mechanisms of "
        "fedpriv.privacy.mechanisms register when that package is imported)",
    )


def ledger_mechanisms() -> tuple[str, ...]:
    """The values of a record's ``mechanism`` field that a known kind reads."""
    names = (n for k in (*_BUILTIN_KINDS, *_REGISTERED_KINDS) for n in k.ledger_names())
    return tuple(dict.fromkeys(names))


#: Alias of :func:`ledger_kind`: the mechanism that wrote a record.
mechanism_of = ledger_kind


def as_events(events: Iterable[EventLike]) -> list[RoundEvent]:
    """Reads a ledger (records or :class:`RoundEvent`s) into validated :class:`RoundEvent`s.

    Also checks that the ledger accounts one unit of privacy under one neighbouring relation.

    Raises:
        ConfigError: naming ``ledger[i].<field>`` for a bad record, or ``events`` for a ledger
            that mixes units or neighbouring relations.
    """
    if isinstance(events, (str, bytes, Mapping)):
        raise ConfigError("events", "must be a sequence of ledger records")
    out: list[RoundEvent] = []
    for i, rec in enumerate(events):
        if isinstance(rec, RoundEvent):
            out.append(rec)
            continue
        try:
            out.append(RoundEvent.from_dict(rec))
        except ConfigError as err:
            raise ConfigError(f"ledger[{i}].{err.field}", err.message) from None
        except TypeError as err:  # wrong argument types that dataclass init rejects
            raise ConfigError(f"ledger[{i}]", str(err)) from None
    check_homogeneous(out)
    return out


def check_homogeneous(events: Sequence[RoundEvent]) -> None:
    """Raises :class:`ConfigError` if a ledger mixes units of privacy or relations.

    An epsilon is a statement about one neighbouring relation; add/remove-one and
    replace-one guarantees do not compose into either without a further argument.
    """
    if not events:
        return
    first = events[0]
    for i, ev in enumerate(events):
        if ev.unit != first.unit:
            raise ConfigError(
                "events",
                f"ledger[{i}] has unit={ev.unit!r} but ledger[0] has unit={first.unit!r}; "
                "one ledger accounts one unit of privacy",
            )
        if ev.neighboring_relation != first.neighboring_relation:
            raise ConfigError(
                "events",
                f"ledger[{i}] (sampling={ev.sampling!r}, {ev.neighboring_relation} adjacency) "
                f"mixes with ledger[0] (sampling={first.sampling!r}, "
                f"{first.neighboring_relation} adjacency); account them separately",
            )


def group_events(events: Iterable[EventLike]) -> list[tuple[RoundEvent, int]]:
    """Groups consecutive rounds with equal :meth:`RoundEvent.accounting_key`.

    Returns:
        ``[(first event of the run, run length), ...]`` in ledger order.
    """
    groups: list[tuple[RoundEvent, int]] = []
    last_key = None
    for ev in as_events(events):
        key = ev.accounting_key()
        if groups and key == last_key:
            groups[-1] = (groups[-1][0], groups[-1][1] + 1)
        else:
            groups.append((ev, 1))
            last_key = key
    return groups


def groups_to_dp_event(groups: Sequence[tuple[RoundEvent, int]]) -> dp_accounting.DpEvent:
    """The composition of grouped rounds as one ``dp_accounting`` event."""
    parts = [dp_accounting.SelfComposedDpEvent(ev.dp_event(), count) for ev, count in groups]
    if not parts:
        return dp_accounting.NoOpDpEvent()
    if len(parts) == 1:
        return parts[0]
    return dp_accounting.ComposedDpEvent(parts)


def to_dp_event(events: Iterable[EventLike]) -> dp_accounting.DpEvent:
    """The ``dp_accounting`` event of a whole ledger (grouped, see :func:`group_events`).

    Privacy:
        The composition of the rounds' events (:meth:`RoundEvent.dp_event`) under the
        ledger's neighbouring relation (:func:`neighboring_relation`).
    """
    return groups_to_dp_event(group_events(events))


def neighboring_relation(events: Iterable[EventLike]) -> dp_accounting.NeighboringRelation:
    """The ``dp_accounting`` neighbouring relation a ledger is accounted under."""
    evs = as_events(events)
    if evs:
        return evs[0].relation
    return dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE


# --------------------------------------------------------------------------- plan builders


def _repeat(template: RoundEvent, rounds: int, first_round: int) -> list[RoundEvent]:
    # The template is validated once; copies differ only in the round index.
    out = []
    for r in range(first_round, first_round + rounds):
        ev = copy.copy(template)
        object.__setattr__(ev, "round", r)
        out.append(ev)
    return out


def plan_events(
    noise_multiplier: float,
    rounds: int,
    *,
    sampling: str = "poisson",
    sampling_rate: float | None = None,
    population: int | None = None,
    cohort_size: int | None = None,
    steps: int = 1,
    example_sampling_rate: float | None = None,
    unit: str = "user",
    clip_norm: float | None = None,
    first_round: int = 0,
) -> list[RoundEvent]:
    """The ledger a training plan will write: ``rounds`` identical rounds.

    Args:
        noise_multiplier: Noise standard deviation over the clip norm.
        rounds: Number of rounds ``T >= 1``.
        sampling: ``"poisson"``, ``"fixed"`` or ``"full"``.
        sampling_rate: Poisson client sampling probability in (0, 1].
        population: Number of clients ``n`` (required for ``"fixed"``).
        cohort_size: Cohort size ``m`` (required for ``"fixed"``).
        steps: Local DP-SGD steps per round (``unit="example"``).
        example_sampling_rate: Poisson rate of examples per local step (``unit="example"``).
        unit: ``"user"``, ``"example"`` or ``"gateway"`` (then ``population`` and
            ``cohort_size`` count gateways).
        clip_norm: Clip ``C``; when given, ``noise_std = noise_multiplier * C`` is recorded.
        first_round: Index of the first round.

    Returns:
        A list of ``rounds`` :class:`RoundEvent`.

    Raises:
        ConfigError: naming the argument that is invalid.

    Privacy:
        See :meth:`RoundEvent.dp_event`.
    """
    rounds = _checks.integer("rounds", rounds, 1)
    first_round = _checks.integer("first_round", first_round, 0)
    _checks.choice("sampling", sampling, SAMPLINGS)
    _checks.choice("unit", unit, UNITS)
    if sampling == "poisson" and sampling_rate is not None and population is not None:
        cohort = _checks.probability("sampling_rate", sampling_rate) * _checks.integer(
            "population", population, 1
        )
    elif sampling == "full" and population is not None:
        cohort = population
    else:
        cohort = cohort_size
    if sampling == "fixed" and population is not None and cohort_size is not None:
        # Validate cohort_size before the derived sampling rate to name the right field.
        m = _checks.integer("cohort_size", cohort_size, 1)
        n = _checks.integer("population", population, 1)
        rate = m / n if m <= n else None
    elif sampling == "full":
        rate = 1.0
    else:
        rate = sampling_rate
    noise_std = None
    if clip_norm is not None:
        noise_std = _checks.nonnegative("noise_multiplier", noise_multiplier) * _checks.positive(
            "clip_norm", clip_norm
        )
    template = RoundEvent(
        round=first_round,
        sampling=sampling,
        noise_multiplier=noise_multiplier,
        unit=unit,
        sampling_rate=rate,
        population=population,
        cohort_size=cohort,
        clip_norm=clip_norm,
        noise_std=noise_std,
        steps=steps,
        example_sampling_rate=example_sampling_rate if unit == "example" else None,
    )
    return _repeat(template, rounds, first_round)


def poisson_events(
    sampling_rate: float,
    noise_multiplier: float,
    rounds: int,
    *,
    population: int | None = None,
    clip_norm: float | None = None,
) -> list[RoundEvent]:
    """``rounds`` user-level rounds of Poisson client sampling with rate ``sampling_rate``.

    Privacy:
        ``PoissonSampledDpEvent(q, GaussianDpEvent(z))`` per round, add/remove one client.
    """
    return plan_events(
        noise_multiplier,
        rounds,
        sampling="poisson",
        sampling_rate=sampling_rate,
        population=population,
        clip_norm=clip_norm,
    )


def fixed_cohort_events(
    population: int,
    cohort_size: int,
    noise_multiplier: float,
    rounds: int,
    *,
    clip_norm: float | None = None,
) -> list[RoundEvent]:
    """``rounds`` user-level rounds of ``cohort_size`` of ``population`` clients without
    replacement.

    Privacy:
        ``SampledWithoutReplacementDpEvent(n, m, GaussianDpEvent(z / 2))`` per round,
        replace one client; see :meth:`RoundEvent.dp_event` for the factor 1/2.
    """
    return plan_events(
        noise_multiplier,
        rounds,
        sampling="fixed",
        population=population,
        cohort_size=cohort_size,
        clip_norm=clip_norm,
    )


def full_participation_events(
    noise_multiplier: float,
    rounds: int,
    *,
    population: int | None = None,
    clip_norm: float | None = None,
) -> list[RoundEvent]:
    """``rounds`` user-level rounds in which every client takes part.

    Privacy:
        ``GaussianDpEvent(z)`` per round, add/remove one client.
    """
    return plan_events(
        noise_multiplier, rounds, sampling="full", population=population, clip_norm=clip_norm
    )


def example_dp_events(
    noise_multiplier: float,
    steps: int,
    example_sampling_rate: float,
    rounds: int,
    *,
    sampling: str = "full",
    sampling_rate: float | None = None,
    population: int | None = None,
    cohort_size: int | None = None,
    clip_norm: float | None = None,
) -> list[RoundEvent]:
    """``rounds`` rounds of example-level DP-SGD inside each client (``steps`` local steps).

    The client sampling arguments are recorded but do not enter the accounting.

    Privacy:
        ``SelfComposedDpEvent(PoissonSampledDpEvent(q_ex, GaussianDpEvent(z)), steps)`` per
        round, add/remove one example, ignoring amplification by client sampling
        (conservative).
    """
    return plan_events(
        noise_multiplier,
        rounds,
        sampling=sampling,
        sampling_rate=sampling_rate,
        population=population,
        cohort_size=cohort_size,
        steps=steps,
        example_sampling_rate=example_sampling_rate,
        unit="example",
        clip_norm=clip_norm,
    )
