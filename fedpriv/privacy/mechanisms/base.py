"""What a privacy mechanism is: the :class:`Mechanism` base class and the :class:`PrivacyPlan`.

A mechanism is one object in one module (:mod:`fedpriv.privacy.mechanisms`). It

* validates its ``privacy`` config block (:meth:`Mechanism.validate`; the one place for each
  default and range check, raising :class:`~fedpriv.errors.ConfigError` naming
  ``privacy.<field>``) and builds the run's :class:`PrivacyPlan` (:meth:`Mechanism.build`);
* provides the aggregation (:meth:`Mechanism.aggregator`, built from the composable transforms
  of :mod:`fedpriv.fl.aggregators`) and the client update;
* writes its ledger record (:meth:`Mechanism.ledger_record`) and says which records are its
  own (:meth:`Mechanism.claims`);
* knows its sensitivity under a named neighbouring relation (:meth:`Mechanism.sensitivity`,
  with ``dp_accounting.NeighboringRelation``) and builds the ``dp_accounting`` event of a
  record from the sampling that ran (:meth:`Mechanism.dp_event`, :func:`amplify`);
* states which accountants analyse it, and what the audit checks (:meth:`Mechanism.audit`).

The ledger reader (:mod:`fedpriv.accounting.events`) and the audit dispatch every record to
the mechanism that claims it, so nothing outside the mechanism's module maps its records.
"""

from __future__ import annotations

import dataclasses
import numbers
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import dp_accounting
import optax

from fedpriv.accounting._checks import ACCOUNTANTS
from fedpriv.accounting._search import smallest_noise
from fedpriv.accounting.delta import DeltaWarning, default_delta, warn_if_delta_too_large
from fedpriv.accounting.events import (
    ADD_OR_REMOVE_ONE,
    REPLACE_ONE_RELATION,
    LedgerKind,
    amplify,
    relation_of,
)
from fedpriv.errors import ConfigError, check_range
from fedpriv.fl.aggregators import WEIGHTINGS, Aggregator
from fedpriv.fl.client import make_client_update
from fedpriv.groups import ConfigGroup
from fedpriv.privacy.secagg.fast import secure_aggregator, with_client_key
from fedpriv.settings import LocalTraining, SecureAggregation

if TYPE_CHECKING:
    from fedpriv.accounting.events import RoundEvent

REPLACE_ONE = REPLACE_ONE_RELATION
#: The names of the relations in ledgers and messages.
RELATION_NAMES: dict[dp_accounting.NeighboringRelation, str] = {
    ADD_OR_REMOVE_ONE: "add/remove-one",
    REPLACE_ONE: "replace-one",
}
#: Units of privacy accounted like user-level DP (one clipped contribution per unit).
USER_LIKE: tuple[str, ...] = ("user", "gateway")

__all__ = [
    "ACCOUNTANTS",
    "ADD_OR_REMOVE_ONE",
    "RELATION_NAMES",
    "REPLACE_ONE",
    "USER_LIKE",
    "AccountingTools",
    "DpMechanism",
    "DpSettings",
    "Mechanism",
    "PrivacyPlan",
    "amplify",
    "choice",
    "number",
    "plan_common",
    "record_cohort",
    "relation_of",
    "resolve_delta",
]


# --------------------------------------------------------------------------- accounting


class AccountingTools(NamedTuple):
    """The accountants a mechanism calibrates with, handed to :meth:`Mechanism.build` by
    the dispatcher (:func:`fedpriv.privacy.plan.build_plan`): the accounting reads ledgers
    through the mechanisms, so the mechanisms receive the accountants rather than import
    them.

    Attributes:
        epsilon: :func:`fedpriv.accounting.epsilon` (records, delta, accountant).
        calibrate_noise: :func:`fedpriv.accounting.calibrate_noise`.
        calibrate_distributed: :func:`fedpriv.accounting.distributed.calibrate`.
    """

    epsilon: Callable[..., float]
    calibrate_noise: Callable[..., float]
    calibrate_distributed: Callable[..., float]


# --------------------------------------------------------------------------- config helpers


def _read(block: Mapping[str, Any], key: str) -> Any:
    node: Any = block
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def number(
    block: Mapping[str, Any],
    key: str,
    default: float | None = None,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float | None:
    """``privacy.<key>`` as a float in the stated range (``default`` when unset).

    Raises:
        ConfigError: naming ``privacy.<key>``: not a number, or out of range (the message
            states the allowed range, as :func:`fedpriv.config.number` does).
    """
    raw = _read(block, key)
    if raw is None:
        return default
    path = f"privacy.{key}"
    if isinstance(raw, bool) or not isinstance(raw, numbers.Real | str):
        raise ConfigError(path, f"must be a number, got {raw!r}")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ConfigError(path, f"must be a number, got {raw!r}") from None
    check_range(path, value, raw, low=low, high=high, low_open=low_open, high_open=high_open)
    return value


def choice(block: Mapping[str, Any], key: str, allowed: Sequence[str], default: str) -> str:
    """``privacy.<key>`` as one of ``allowed`` (``default`` when unset).

    Raises:
        ConfigError: naming ``privacy.<key>``, with the allowed values.
    """
    value = _read(block, key)
    if value is None:
        return default
    if value not in allowed:
        raise ConfigError(f"privacy.{key}", f"unknown value {value!r}; choose from {list(allowed)}")
    return str(value)


@dataclasses.dataclass(frozen=True)
class DpSettings:
    """The settings every DP mechanism's block shares, read in one place.

    Attributes:
        clip_norm: C > 0 (default 1).
        noise_multiplier: z >= 0 (default 0; replaced by calibration with a target).
        target_epsilon: calibrate the noise to spend this epsilon (None: use ``z``).
        delta: the claim's delta in (0, 1) (None: the default below 1/population).
        accountant: the accountant of calibration and per-round epsilon.
        stop_at_epsilon: stop training once this epsilon is spent (None: never).
    """

    clip_norm: float
    noise_multiplier: float
    target_epsilon: float | None
    delta: float | None
    accountant: str
    stop_at_epsilon: float | None

    @classmethod
    def read(
        cls,
        block: Mapping[str, Any],
        accountants: Sequence[str] = ACCOUNTANTS,
        strict: bool = False,
    ) -> DpSettings:
        """Reads and checks the shared fields of ``block`` (the ``privacy`` group).

        Args:
            block: the ``privacy`` group.
            accountants: the accountants this mechanism is analysed by.
            strict: also refuse both a noise multiplier and a target (the command line's
                rule; a library caller with both gets the calibrated noise).

        Raises:
            ConfigError: naming ``privacy.<field>``.
        """
        noise = _read(block, "noise_multiplier")
        target = _read(block, "target_epsilon")
        if strict and noise is not None and target is not None:
            raise ConfigError(
                "privacy.noise_multiplier",
                f"set either a noise multiplier ({noise}) or privacy.target_epsilon ({target}), "
                "not both",
            )
        if strict and noise is None and target is None:
            raise ConfigError("privacy.noise_multiplier", "is required")
        clip_norm = number(block, "clip_norm", 1.0, low=0, low_open=True)
        noise_multiplier = number(block, "noise_multiplier", 0.0, low=0)
        target_epsilon = number(block, "target_epsilon", low=0, low_open=True)
        delta = number(block, "delta", low=0, high=1, low_open=True, high_open=True)
        stop = number(block, "stop_at_epsilon", low=0, low_open=True)
        accountant = choice(block, "accountant", ACCOUNTANTS, "rdp")
        if accountant not in accountants:
            raise ConfigError(
                "privacy.accountant",
                f"{accountant!r} cannot analyse privacy={_read(block, 'name')}; it is "
                f"supported by {', '.join(accountants)} only",
            )
        return cls(clip_norm, noise_multiplier, target_epsilon, delta, accountant, stop)


def resolve_delta(cfg: Mapping[str, Any], population: int) -> float:
    """``privacy.delta``, or the default below 1/population; warns when a given delta is not
    below 1/population. ``population`` counts units of privacy (clients, or examples for
    example-level DP).

    Raises:
        ConfigError: a delta outside (0, 1).
    """
    delta = number(cfg, "delta", low=0, high=1, low_open=True, high_open=True)
    if delta is None:
        return default_delta(population)
    warn_if_delta_too_large(delta, population)
    return delta


# --------------------------------------------------------------------------- the plan


@dataclasses.dataclass(frozen=True)
class PrivacyPlan:
    """Sampling, clipping, noise and unit of privacy of every round of a run.

    Built by :func:`fedpriv.privacy.plan.build_plan` through the mechanism registry; its
    methods delegate to :attr:`mechanism`, so the object that builds the mechanism also
    describes it and the ledger cannot drift from what ran.

    Attributes:
        name: the mechanism's registry name (``none``, ``user_dp``, ...).
        unit: ``user``, ``example``, ``gateway`` (hierarchical aggregation with
            gateway-level DP, :mod:`fedpriv.fl.hierarchy`: population, rate and expected
            cohort count gateways) or None (no DP).
        sampling: ``fixed`` or ``poisson`` (or ``full``): the client sampling that runs.
        sampling_rate: Poisson rate q, or cohort / population for fixed cohorts.
        population: number of clients N.
        expected_cohort: m, the aggregation divisor.
        clip_norm: C (initial C with adaptive clipping; per-example C for example DP; the
            bound in the norm the mechanism clips in).
        noise_multiplier: z, the accounted noise multiplier (noise scale over the
            add/remove sensitivity).
        per_layer: per-layer clipping.
        adaptive: adaptive clipping settings, if any.
        steps: local DP-SGD steps per round (example DP): ``epochs * ceil(1 / q)``.
        example_sampling_rate: q, the Poisson rate of examples per DP-SGD step (example
            DP), declared in the configuration.
        expected_batch_size: B, the divisor of each DP-SGD step's noised sum (example DP):
            ``client.batch_size``, a public constant.
        delta: target delta of the run's (epsilon, delta) claim.
        target_epsilon: the epsilon the noise was calibrated to, if any.
        accountant: accountant used for calibration and per-round epsilon.
        rounds: planned number of rounds.
        secagg: secure-aggregation settings (None: plain floating-point sums); for
            ``distributed_dp`` they include the per-client noise.
        correlation: correlated noise (``dp_ftrl``): the strategy, its sensitivity and the
            participation it covers (None: independent noise per round).
        mechanism: the :class:`Mechanism` object that builds and describes every part.
    """

    name: str
    unit: str | None
    sampling: str
    sampling_rate: float
    population: int
    expected_cohort: float
    clip_norm: float = 0.0
    noise_multiplier: float = 0.0
    per_layer: bool = False
    adaptive: Any = None
    steps: int = 1
    example_sampling_rate: float | None = None
    expected_batch_size: float | None = None
    delta: float | None = None
    target_epsilon: float | None = None
    accountant: str = "rdp"
    rounds: int = 0
    secagg: Any = None
    correlation: Any = None
    mechanism: Mechanism | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def is_private(self) -> bool:
        return self.mechanism is not None and self.mechanism.private

    def aggregator(
        self, weighting: str = "count", key: Any = None, params: Any = None
    ) -> Aggregator:
        """The server-side aggregation this plan requires (:meth:`Mechanism.aggregator`).

        With secure aggregation that aggregator is wrapped by
        :func:`~fedpriv.privacy.secagg.fast.secure_aggregator` (``key``: the
        secure-aggregation purpose key; ``params``: a parameter tree of the model), unless
        the mechanism builds its own secure aggregation (distributed DP).

        Raises:
            ConfigError: naming ``algorithm.weighting`` for an unknown weighting.
            ValueError: secure aggregation without its key and parameters.
        """
        if weighting not in WEIGHTINGS:
            raise ConfigError(
                "algorithm.weighting",
                f"unknown weighting {weighting!r}; choose 'count' or 'uniform'",
            )
        if self.secagg is not None:
            if key is None or params is None:
                raise ValueError("secure aggregation needs the secagg key and the parameters")
            if self.mechanism.owns_secagg:
                return self.mechanism.aggregator(self, weighting, key, params)
            plain = dataclasses.replace(self, secagg=None)
            inner = self.mechanism.aggregator(plain, weighting, None, params)
            return secure_aggregator(inner, self.secagg, key, params)
        return self.mechanism.aggregator(self, weighting, key, params)

    def client_update(
        self,
        apply_fn: Callable,
        optimizer: optax.GradientTransformation,
        epochs: int,
        batch_size: int,
        n_cap: int,
        **local: Any,
    ) -> Callable:
        """The client update (:meth:`Mechanism.client_update`); with secure aggregation it
        also carries the client's secure-aggregation key. ``local``: options of
        :func:`~fedpriv.fl.client.make_client_update` (FedProx, heterogeneous compute,
        FedNova; see :func:`fedpriv.fl.edge.local_options`).

        Raises:
            ConfigError: ``local`` options the mechanism cannot run with.
        """
        if self.secagg is not None:
            inner = dataclasses.replace(self, secagg=None)
            return with_client_key(
                inner.client_update(apply_fn, optimizer, epochs, batch_size, n_cap, **local)
            )
        return self.mechanism.client_update(
            self, apply_fn, optimizer, epochs, batch_size, n_cap, **local
        )

    def ledger_record(self, rnd: int, metrics: Mapping[str, Any]) -> dict[str, Any] | None:
        """The DP event of round ``rnd`` as it ran (None without DP); see
        :meth:`Mechanism.ledger_record`."""
        if not self.is_private:
            return None
        return self.mechanism.ledger_record(self, rnd, metrics)

    def describe(self) -> dict[str, Any]:
        """The plan as plain values (``summary.json``'s ``privacy``)."""
        d = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("secagg", "mechanism", "correlation")
        }
        d["adaptive"] = self.adaptive._asdict() if self.adaptive else None
        d["secagg"] = None if self.secagg is None else self.secagg.describe()
        if self.correlation is not None:
            d["correlation"] = self.correlation.describe()
        return d


def plan_common(name: str, sampler: Any, rounds: int) -> dict[str, Any]:
    """The fields of a plan that come from the sampler that runs."""
    return dict(
        name=name,
        sampling=sampler.kind,
        sampling_rate=float(sampler.rate),
        population=int(sampler.population),
        expected_cohort=float(sampler.expected_size),
        rounds=int(rounds),
    )


def record_cohort(plan: PrivacyPlan) -> float | int:
    """The ledger's ``cohort_size``: exact for fixed and cyclic cohorts, expected for
    Poisson."""
    if plan.sampling in ("fixed", "cyclic"):
        return int(round(plan.expected_cohort))
    return plan.expected_cohort


# --------------------------------------------------------------------------- mechanisms


@dataclasses.dataclass(frozen=True, kw_only=True)
class Mechanism(LedgerKind, ConfigGroup):
    """A privacy mechanism: config, aggregation, ledger record, event and audit, in one.

    A mechanism object is also the typed choice of the ``privacy`` configuration group
    (:class:`~fedpriv.groups.ConfigGroup`): its dataclass fields are the fields of its preset
    (``fedpriv/conf/privacy/<name>.yaml``), ``None`` keeping the preset's value, so
    ``DpFedAvg(clip_norm=0.5)`` passed to :func:`fedpriv.simulate` runs what
    ``privacy=user_dp privacy.clip_norm=0.5`` runs from the shell. The registry holds the
    instance with every field ``None``; the run is built from the validated, composed block
    (:meth:`build`), so each default and range check lives in one place.

    Subclasses set the class attributes and override what differs. A mechanism is the
    :class:`~fedpriv.accounting.events.LedgerKind` of its records, so its sensitivity
    (:meth:`sensitivity`), neighbouring relation (:meth:`relation`), event (:meth:`dp_event`)
    and accountants (:meth:`supported_accountants`) are what the ledger reader and the audit
    use; the defaults describe a noised sum of clipped contributions whose round is one
    event under the sampling that ran (:func:`amplify`).

    Attributes:
        name: the registry (and ``privacy.name``) name.
        unit: the unit of privacy (None: no DP).
        ledger_mechanism: the ``mechanism`` field of its ledger records (None: no records).
        accountants: the accountants that analyse its rounds, in table order.
        private: whether the mechanism makes a DP claim.
        owns_secagg: whether it builds its own secure aggregation (distributed DP).
        gaussian_fedavg: whether a round is DP-FedAvg's: every client update clipped to the
            clip norm, Gaussian noise on the sum, divided by the expected cohort (what
            canary clients, gateway-level DP and the audit's reference replay build on).
        adaptive_clip: whether the clip norm adapts (a noised count is released too).

    Privacy:
        Each subclass states its guarantee and neighbouring relation.
    """

    name: ClassVar[str] = ""
    unit: ClassVar[str | None] = None
    ledger_mechanism: ClassVar[str | None] = None
    accountants: ClassVar[tuple[str, ...]] = ACCOUNTANTS
    private: ClassVar[bool] = True
    owns_secagg: ClassVar[bool] = False
    gaussian_fedavg: ClassVar[bool] = False
    adaptive_clip: ClassVar[bool] = False
    samplings: ClassVar[tuple[str, ...]] = ("fixed", "poisson")
    secagg_modes: ClassVar[tuple[str, ...]] = ("none", "fast", "protocol")
    group: ClassVar[str] = "privacy"

    #: ``seeded`` (noise keys from the seed) or ``secure`` (the OS CSPRNG).
    noise_source: str | None = None
    #: ``diagnostics`` or ``strict`` (only what epsilon covers is written).
    release: str | None = None

    def selections(self) -> list[str]:
        """The overrides that select this mechanism's preset (``["privacy=<name>"]``)."""
        return [f"privacy={self.name}"]

    # ----------------------------------------------------------------- config and plan

    def validate(self, privacy_cfg: Mapping[str, Any]) -> None:
        """Checks the ``privacy`` block as the command line composed it.

        Raises:
            ConfigError: naming ``privacy.<field>``.
        """
        DpSettings.read(privacy_cfg, self.accountants, strict=True)

    def validate_sampling(
        self, privacy_cfg: Mapping[str, Any], sampling_cfg: Mapping[str, Any]
    ) -> None:
        """Checks what the ``privacy`` block needs of the ``sampling`` block, beyond its
        kind (:attr:`samplings`); nothing by default.

        Raises:
            ConfigError: naming the field.
        """
        del privacy_cfg, sampling_cfg

    def build(
        self,
        privacy_cfg: Mapping[str, Any],
        sampler: Any,
        client: LocalTraining,
        rounds: int,
        secagg: SecureAggregation,
        num_params: int | None = None,
        *,
        tools: AccountingTools,
    ) -> PrivacyPlan:
        """The plan of a run (before secure aggregation, which the dispatcher adds) from the
        mechanism's ``privacy`` block; ``client`` and ``secagg`` are the run's resolved
        groups, ``tools`` the accountants to calibrate with.

        Raises:
            ConfigError: a bad setting, naming ``privacy.<field>``.
        """
        raise NotImplementedError

    def calibrated(
        self, plan: PrivacyPlan, settings: DpSettings, units: int, tools: AccountingTools
    ) -> PrivacyPlan:
        """``plan`` with its delta and, with a target epsilon, the smallest noise multiplier
        whose epsilon over the planned rounds meets it (one-sided, :func:`smallest_noise` on
        the ledger the plan will write, with the plan's accountant).

        Privacy:
            The plan run with the returned noise multiplier is ``(target, delta)``-DP
            under the plan's accountant, for the relation of its records.
        """
        delta = resolve_delta({"delta": settings.delta}, units)
        if settings.target_epsilon is None:
            return dataclasses.replace(plan, delta=delta)

        def eps(z: float) -> float:
            records = self.planned_records(dataclasses.replace(plan, noise_multiplier=z))
            with warnings.catch_warnings():
                # resolve_delta warned once already; the search evaluates many ledgers.
                warnings.simplefilter("ignore", DeltaWarning)
                return tools.epsilon(records, delta, plan.accountant)

        z = smallest_noise(eps, settings.target_epsilon, context=f" under {plan.accountant!r}")
        return dataclasses.replace(
            plan, delta=delta, noise_multiplier=z, target_epsilon=settings.target_epsilon
        )

    def planned_records(self, plan: PrivacyPlan) -> list[dict[str, Any]]:
        """The ledger ``plan`` writes over its planned rounds when they run as planned
        (the same record every round, unless a mechanism's rounds differ)."""
        return [self.planned_record(plan)] * max(int(plan.rounds), 1)

    def planned_record(self, plan: PrivacyPlan) -> dict[str, Any]:
        """The ledger record a round of ``plan`` writes when it runs as planned."""
        return self.ledger_record(
            plan,
            0,
            {"clip_norm": plan.clip_norm, "noise_std": self.noise_std(plan, plan.clip_norm)},
        )

    # ----------------------------------------------------------------- what runs

    def aggregator(self, plan: PrivacyPlan, weighting: str, key: Any, params: Any) -> Aggregator:
        """The aggregation of ``plan`` (plain sums; the plan adds secure aggregation)."""
        raise NotImplementedError

    def client_update(
        self,
        plan: PrivacyPlan,
        apply_fn: Callable,
        optimizer: optax.GradientTransformation,
        epochs: int,
        batch_size: int,
        n_cap: int,
        **local: Any,
    ) -> Callable:
        """The client update: local training (:func:`fedpriv.fl.client.make_client_update`)."""
        return make_client_update(apply_fn, optimizer, epochs, batch_size, n_cap, **local)

    def noise_std(self, plan: PrivacyPlan, clip_norm: float) -> float:
        """The standard deviation of the noise on the sum at clip ``clip_norm``."""
        return plan.noise_multiplier * clip_norm

    def ledger_record(
        self, plan: PrivacyPlan, rnd: int, metrics: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """The record of round ``rnd`` (format 1 of :mod:`fedpriv.accounting.events`)."""
        return None

    # ----------------------------------------------------------------- the audit

    def unamplified_gaussian_multiplier(self, event: RoundEvent) -> float | None:
        """The multiplier of the Gaussian mechanism a round is exactly (no sampling
        amplification, add/remove adjacency), for the audit's closed form; else None."""
        return None

    def server_reports_noise(self, event: RoundEvent) -> bool:
        """Whether the round's metrics report the server's clip and noise for this record."""
        return event.unit in USER_LIKE

    def audit_noise(
        self, event: RoundEvent, record: Mapping[str, Any]
    ) -> tuple[float | None, str, list[str]]:
        """The noise std a record implies, how it is computed, and problems found.

        Returns:
            ``(expected, formula, problems)``; ``expected`` is None when the record cannot
            be checked (no clip) or is already wrong (``problems``).
        """
        clip = record.get("clip_norm")
        if clip is None:
            return None, "", []
        z = event.noise_multiplier
        return z * clip, f"noise_multiplier {z:.6g} x clip_norm {clip:.6g}", []

    def audit(self, run: Any, events: Sequence[RoundEvent]) -> list[str]:
        """Mechanism-specific problems of a run's records (the consistency audit's
        ``mechanism`` check)."""
        return []


@dataclasses.dataclass(frozen=True, kw_only=True)
class DpMechanism(Mechanism):
    """A mechanism with the fields every DP preset shares (:class:`DpSettings`).

    Give ``noise_multiplier`` or ``target_epsilon``, not both; a noise multiplier replaces
    the preset's target, as ``privacy.noise_multiplier=Z`` does on the command line.

    Raises:
        ValueError: both ``noise_multiplier`` and ``target_epsilon`` are given.
    """

    #: C > 0: the L2 bound of one contribution.
    clip_norm: float | None = None
    #: z >= 0: a fixed noise multiplier (clears the preset's target epsilon).
    noise_multiplier: float | None = None
    #: Calibrate the noise to spend this epsilon over the run's rounds.
    target_epsilon: float | None = None
    #: The claim's delta (None: the preset's, by default below 1/population).
    delta: float | None = None
    #: The accountant of calibration and per-round epsilon (``rdp``, ``pld``, ...).
    accountant: str | None = None
    #: Stop training once this epsilon is spent.
    stop_at_epsilon: float | None = None

    def __post_init__(self) -> None:
        if self.noise_multiplier is not None and self.target_epsilon is not None:
            raise ValueError(
                "noise_multiplier and target_epsilon: give one of them, got "
                f"{self.noise_multiplier!r} and {self.target_epsilon!r}"
            )

    def values(self) -> dict[str, Any]:
        out = super().values()
        if self.noise_multiplier is not None:
            out["target_epsilon"] = None
        return out
