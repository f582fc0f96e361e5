"""The typed run configuration: one frozen dataclass per configuration group.

``fedpriv-train`` composes its YAML presets (``fedpriv/conf``) and the command line with
Hydra, validates the result once (:func:`fedpriv.config.validate`), and turns it into a
:class:`RunConfig` (:meth:`RunConfig.from_mapping`). Everything below ``fedpriv.cli`` that
builds a run reads these objects: the run builders (:func:`fedpriv.fl.experiment.build`,
:func:`fedpriv.fl.fedbuff.build`), the host driver's settings, the edge and hierarchy
models and secure aggregation.

The same classes are the typed choices of the Python API (:func:`fedpriv.simulate`): there
a field left at ``None`` keeps the preset's value (:class:`~fedpriv.groups.ConfigGroup`),
so each default lives in one place, the preset file.

Two groups keep their block: ``dataset``, read by the loader its ``name`` selects
(:func:`fedpriv.data.load`), and ``privacy``, read by the mechanism its ``name`` selects
(:mod:`fedpriv.privacy.mechanisms`): each has one home per choice, with the fields that
choice has.

>>> from fedpriv.settings import RunConfig
>>> run = RunConfig.from_mapping({"seed": 1, "rounds": 5, "sampling": {"kind": "fixed"}})
>>> run.sampling.cohort_size, run.client.lr, run.algorithm.name
(20, 0.3, 'fedavg')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from fedpriv import algorithms
from fedpriv.errors import ConfigError, config_fields
from fedpriv.fl import sampling as sampling_lib
from fedpriv.groups import ConfigGroup

__all__ = [
    "Asynchronous",
    "Availability",
    "Canaries",
    "Checkpointing",
    "Compute",
    "Cyclic",
    "CyclicPoisson",
    "Execution",
    "Faults",
    "FixedCohort",
    "Hierarchy",
    "LocalTraining",
    "MinSeparation",
    "Model",
    "Poisson",
    "RunConfig",
    "SecureAggregation",
    "algorithm_from_block",
    "sampling_from_block",
]


@dataclasses.dataclass(frozen=True)
class Model(ConfigGroup):
    """A ``model`` preset (``logreg``, ``mlp``, ``cnn``, ``cnn_cifar``, ``resnet18_gn``,
    ``char_lstm``) with ``options`` replacing its fields (e.g. ``{"hidden": [64]}``)."""

    group = "model"

    name: str = "mlp"
    options: Mapping[str, Any] | None = None

    def selections(self) -> list[str]:
        return [f"model={self.name}"]

    def values(self) -> dict[str, Any]:
        return dict(self.options or {})


@dataclasses.dataclass(frozen=True, kw_only=True)
class LocalTraining(ConfigGroup):
    """Each client's local training: ``epochs`` epochs of mini-batches of ``batch_size``.

    Args:
        optimizer: ``sgd`` or ``adam``.
        lr: the client learning rate.
        momentum: the client SGD's momentum.
        epochs: local epochs per round.
        batch_size: examples per local step (under example-level DP: the expected batch).
        max_examples: the most examples a client trains on (None in the preset: all).
    """

    group = "client"
    preset = "sgd"
    preset_key = "preset"

    optimizer: str | None = None
    lr: float | None = None
    momentum: float | None = None
    epochs: int | None = None
    batch_size: int | None = None
    max_examples: int | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Poisson(ConfigGroup):
    """Poisson sampling: each client joins a round independently with probability ``rate``."""

    group = "sampling"
    preset = "poisson"
    preset_key = "kind"
    kind: ClassVar[str] = "poisson"

    rate: float | None = None

    def sampler(self, population: int) -> sampling_lib.PoissonCohort:
        """The sampler over ``population`` clients (or gateways).

        Raises:
            ConfigError: a bad rate, naming ``sampling.rate``.
        """
        with config_fields(sampling_lib.SAMPLING_FIELDS):
            return sampling_lib.build_sampler("poisson", population, None, self.rate)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FixedCohort(ConfigGroup):
    """Cohorts of ``cohort_size`` clients drawn uniformly without replacement."""

    group = "sampling"
    preset = "fixed"
    preset_key = "kind"
    kind: ClassVar[str] = "fixed"

    cohort_size: int | None = None

    def sampler(self, population: int) -> sampling_lib.FixedCohort:
        """The sampler over ``population`` clients (or gateways).

        Raises:
            ConfigError: a bad cohort size, naming ``sampling.cohort_size``.
        """
        with config_fields(sampling_lib.SAMPLING_FIELDS):
            return sampling_lib.build_sampler("fixed", population, self.cohort_size, None)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Cyclic(ConfigGroup):
    """Cyclic participation: the clients in ``groups`` fixed groups (client ``i`` in group
    ``i mod groups``), round ``t`` drawing ``cohort_size`` clients of group
    ``(t - 1) mod groups`` (:class:`fedpriv.fl.sampling.CyclicCohorts`). Each client takes
    part at most every ``groups``-th round, the pattern correlated-noise mechanisms
    (``privacy=dp_ftrl``) compute their sensitivity for."""

    group = "sampling"
    preset = "cyclic"
    preset_key = "kind"
    kind: ClassVar[str] = "cyclic"

    groups: int | None = None
    cohort_size: int | None = None

    def sampler(self, population: int) -> sampling_lib.CyclicCohorts:
        """The sampler over ``population`` clients.

        Raises:
            ConfigError: naming ``sampling.groups`` or ``sampling.cohort_size``.
        """
        with config_fields(sampling_lib.SAMPLING_FIELDS):
            return sampling_lib.build_sampler(
                "cyclic", population, self.cohort_size, None, self.groups
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class CyclicPoisson(ConfigGroup):
    """Cyclic participation with Poisson sampling in the group: the clients in ``groups``
    fixed groups, and in round ``t`` each client of group ``(t - 1) mod groups`` joining
    with probability ``rate`` (:class:`fedpriv.fl.sampling.CyclicPoisson`); the scheme
    amplified banded matrix factorisation (``privacy=dp_ftrl``, ``strategy=banded``) is
    accounted for."""

    group = "sampling"
    preset = "cyclic_poisson"
    preset_key = "kind"
    kind: ClassVar[str] = "cyclic_poisson"

    groups: int | None = None
    rate: float | None = None

    def sampler(self, population: int) -> sampling_lib.CyclicPoisson:
        """The sampler over ``population`` clients.

        Raises:
            ConfigError: naming ``sampling.groups`` or ``sampling.rate``.
        """
        with config_fields(sampling_lib.SAMPLING_FIELDS):
            return sampling_lib.build_sampler(
                "cyclic_poisson", population, None, self.rate, self.groups
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class MinSeparation(ConfigGroup):
    """b-min-separation: a client is eligible again ``separation`` rounds after it took
    part; each round draws ``cohort_size`` of the eligible clients, or each with
    probability ``rate`` (:class:`fedpriv.fl.sampling.MinSeparation`). The participation
    correlated-noise mechanisms (``privacy=dp_ftrl``) compute their sensitivity for,
    without fixing which rounds a client may take."""

    group = "sampling"
    preset = "min_separation"
    preset_key = "kind"
    kind: ClassVar[str] = "min_separation"

    separation: int | None = None
    cohort_size: int | None = None
    rate: float | None = None

    def sampler(self, population: int) -> sampling_lib.MinSeparation:
        """The sampler over ``population`` clients.

        Raises:
            ConfigError: naming ``sampling.separation``, ``sampling.cohort_size`` or
                ``sampling.rate``.
        """
        with config_fields(sampling_lib.SAMPLING_FIELDS):
            return sampling_lib.build_sampler(
                "min_separation",
                population,
                self.cohort_size,
                self.rate,
                separation=self.separation,
            )


_SAMPLINGS: dict[str, type[ConfigGroup]] = {
    "poisson": Poisson,
    "fixed": FixedCohort,
    "cyclic": Cyclic,
    "cyclic_poisson": CyclicPoisson,
    "min_separation": MinSeparation,
}


def sampling_from_block(block: Mapping[str, Any]) -> Poisson | FixedCohort | Cyclic:
    """The sampling a ``sampling`` block describes (its ``kind``).

    Raises:
        ConfigError: an unknown kind, naming ``sampling.kind``.
    """
    kind = block.get("kind")
    if kind not in _SAMPLINGS:
        raise ConfigError(
            "sampling.kind", f"unknown value {kind!r}; choose from {list(_SAMPLINGS)}"
        )
    return _SAMPLINGS[kind].from_block(block)


def algorithm_from_block(block: Mapping[str, Any]) -> algorithms.Algorithm:
    """The algorithm an ``algorithm`` block describes (its ``name``).

    Raises:
        ConfigError: an unknown name, naming ``algorithm.name``.
    """
    cls = algorithms.by_name().get(block.get("name"))
    if cls is None:
        raise ConfigError(
            "algorithm.name",
            f"unknown value {block.get('name')!r}; choose from {sorted(algorithms.by_name())}",
        )
    return cls.from_block(block)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Execution(ConfigGroup):
    """How the round is laid out on the machine.

    Args:
        chunk_size: clients per ``lax.map`` step (``"auto"``: the planner's choice).
        devices: devices the cohort is sharded over (``"auto"``: all).
        path: ``direct``, ``lowrank`` (the factored path for dense models) or ``auto``.
        compilation_cache: a directory for JAX's persistent compilation cache (None: none).
    """

    group = "execution"
    preset = "auto"
    preset_key = "preset"

    chunk_size: int | str | None = None
    devices: int | str | None = None
    path: str | None = None
    compilation_cache: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class SecureAggregation(ConfigGroup):
    """The ``secagg`` group: how client updates are summed (:mod:`fedpriv.privacy.secagg`).

    Args:
        mode: ``none``, ``fast`` (the exact simulation of the modular sum) or ``protocol``
            (the real-cryptography protocol).
        bits: the modulus ``2^bits``.
        rotation: a randomised Hadamard rotation before quantising.
        scale: integers per unit (None: chosen from bits, cohort, clip and noise).
        bound: the L2 bound of one contribution for the automatic scale without DP.
        masks: ``verify`` or ``expand`` (how the fast path treats the masks).
        threshold, neighbours, dropout, late_dropout: the protocol's settings.
        rounding: the stochastic-rounding uniforms (``hash``, ``threefry``, ``rbg``).
    """

    group = "secagg"
    preset_key = "mode"

    mode: str = "none"
    bits: int | None = None
    rotation: bool | None = None
    scale: float | None = None
    bound: float | None = None
    masks: str | None = None
    threshold: int | None = None
    neighbours: int | None = None
    dropout: float | None = None
    late_dropout: float | None = None
    rounding: str | None = None

    def selections(self) -> list[str]:
        return [f"secagg={self.mode}"]

    @property
    def enabled(self) -> bool:
        """Whether updates go through secure aggregation."""
        return self.mode not in (None, "none")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Availability(ConfigGroup):
    """The ``availability`` group: sampled clients that fail to report
    (:mod:`fedpriv.fl.edge`). ``kind`` is ``none``, ``bernoulli`` (``dropout``), ``diurnal``
    (``low``, ``high``, ``period``) or ``trace`` (``path``)."""

    group = "availability"
    preset_key = "kind"

    kind: str = "none"
    dropout: float | None = None
    low: float | None = None
    high: float | None = None
    period: float | None = None
    path: str | None = None
    round_duration: float | None = None

    def selections(self) -> list[str]:
        return [f"availability={self.kind}"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Compute(ConfigGroup):
    """The ``compute`` group: heterogeneous local work (:mod:`fedpriv.fl.edge`). ``kind`` is
    ``none``, ``uniform`` (``low_fraction``) or ``stragglers`` (``fraction`` of clients do
    ``steps_fraction`` of their work, or are dropped with ``drop``)."""

    group = "compute"
    preset_key = "kind"

    kind: str = "none"
    low_fraction: float | None = None
    fraction: float | None = None
    steps_fraction: float | None = None
    drop: bool | None = None

    def selections(self) -> list[str]:
        return [f"compute={self.kind}"]

    @property
    def drops_stragglers(self) -> bool:
        """Whether stragglers are dropped from their round."""
        return self.kind == "stragglers" and bool(self.drop)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Hierarchy(ConfigGroup):
    """The ``hierarchy`` group: clients under ``gateways`` gateways assigned by ``assign``
    (``modulo`` or ``blocks``), with DP at the ``dp_unit`` (``client`` or ``gateway``)."""

    group = "hierarchy"

    name: str = "none"
    gateways: int | None = None
    assign: str | None = None
    dp_unit: str | None = None

    def selections(self) -> list[str]:
        return [f"hierarchy={self.name}"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Asynchronous(ConfigGroup):
    """The ``async`` group: ``name: fedbuff`` runs buffered asynchronous aggregation
    (:mod:`fedpriv.fl.fedbuff`; its fields are documented there); ``none`` synchronous
    rounds."""

    group = "async"

    name: str = "none"
    buffer_size: int | None = None
    concurrency: int | None = None
    max_staleness: int | None = None
    staleness_exponent: float | None = None
    delay: Mapping[str, Any] | None = None
    accounting: str | None = None

    def selections(self) -> list[str]:
        return [f"async={self.name}"]


@dataclasses.dataclass(frozen=True)
class Checkpointing:
    """``checkpoint.every`` (0: only at the end and on a signal) and ``checkpoint.keep``."""

    every: int = 25
    keep: int = 2


@dataclasses.dataclass(frozen=True)
class Faults:
    """Fault injection: ``nan_clients`` hold NaN features; the run dies at
    ``crash_at_round``."""

    nan_clients: tuple[int, ...] = ()
    crash_at_round: int | None = None


@dataclasses.dataclass(frozen=True)
class Canaries:
    """Canary clients of the empirical audit: ``count`` inserted, ``unseen`` never inserted."""

    count: int = 0
    unseen: int = 0


def _canaries(block: Mapping[str, Any] | None) -> Canaries:
    block = block or {}
    count, unseen = block.get("count") or 0, block.get("unseen")
    for field, value in (("canaries.count", count), ("canaries.unseen", unseen)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 0
        ):
            raise ConfigError(field, f"must be an integer >= 0, got {value!r}")
    if not count:
        return Canaries()
    return Canaries(int(count), int(count if unseen is None else unseen))


def _block(cfg: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = cfg.get(key)
    return dict(value) if isinstance(value, Mapping) else {}


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A run, as the command line composed and validated it.

    Attributes:
        seed: the root seed (data, initialisation, sampling, rounds, secure aggregation).
        rounds: rounds (FedBuff: server steps).
        eval_every: evaluate every this many rounds (and after the last).
        eval_train: also evaluate the global model on the whole training population.
        progress: show a progress bar.
        resume: continue from the run directory's last checkpoint.
        dataset: the ``dataset`` block (read by its loader, :func:`fedpriv.data.load`).
        privacy: the ``privacy`` block (read by its mechanism).
        model, algorithm, client, sampling, execution, secagg, availability, compute,
        hierarchy, asynchronous: the typed groups.
        checkpoint, faults, canaries: run control.
        source: the composed configuration as plain data (what ``config.yaml`` records).
    """

    seed: int
    rounds: int
    eval_every: int
    dataset: dict[str, Any]
    privacy: dict[str, Any]
    model: Model
    algorithm: algorithms.Algorithm
    client: LocalTraining
    sampling: Poisson | FixedCohort | Cyclic
    execution: Execution
    secagg: SecureAggregation
    availability: Availability
    compute: Compute
    hierarchy: Hierarchy
    asynchronous: Asynchronous
    checkpoint: Checkpointing
    faults: Faults
    canaries: Canaries
    eval_train: bool = False
    progress: bool = True
    resume: bool = False
    source: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> RunConfig:
        """The typed form of a composed configuration (plain dicts, as
        :func:`fedpriv.config.validate` checked it). Blocks and keys left out take the
        defaults of ``fedpriv-train`` (``fedpriv/conf/config.yaml`` and the presets).

        Raises:
            ConfigError: a key a group does not have, or an unknown preset.
        """
        if "seed" not in cfg or "rounds" not in cfg:
            missing = "seed" if "seed" not in cfg else "rounds"
            raise ConfigError(missing, "is required")
        ck = _block(cfg, "checkpoint")
        faults = _block(cfg, "faults")
        every, keep = ck.get("every", 25), ck.get("keep", 2)
        privacy = _block(cfg, "privacy") or {"name": "none"}
        privacy.setdefault("name", "none")
        return cls(
            seed=int(cfg["seed"]),
            rounds=int(cfg["rounds"]),
            eval_every=int(cfg.get("eval_every") or 1),
            dataset=_block(cfg, "dataset") or {"name": "digits"},
            privacy=privacy,
            model=Model.from_block(_block(cfg, "model") or {"name": "mlp"}),
            algorithm=algorithm_from_block(_block(cfg, "algorithm") or {"name": "fedavg"}),
            client=LocalTraining.from_block(_block(cfg, "client")),
            sampling=sampling_from_block(_block(cfg, "sampling") or {"kind": "poisson"}),
            execution=Execution.from_block(_block(cfg, "execution")),
            secagg=SecureAggregation.from_block(_block(cfg, "secagg") or {"mode": "none"}),
            availability=Availability.from_block(_block(cfg, "availability") or {"kind": "none"}),
            compute=Compute.from_block(_block(cfg, "compute") or {"kind": "none"}),
            hierarchy=Hierarchy.from_block(_block(cfg, "hierarchy") or {"name": "none"}),
            asynchronous=Asynchronous.from_block(_block(cfg, "async") or {"name": "none"}),
            checkpoint=Checkpointing(
                every=0 if every is None else int(every), keep=2 if keep is None else int(keep)
            ),
            faults=Faults(
                nan_clients=tuple(int(c) for c in faults.get("nan_clients") or ()),
                crash_at_round=faults.get("crash_at_round"),
            ),
            canaries=_canaries(cfg.get("canaries")),
            eval_train=bool(cfg.get("eval_train", False)),
            progress=bool(cfg.get("progress", True)),
            resume=bool(cfg.get("resume", False)),
            source={k: v for k, v in cfg.items() if k != "hydra"},
        )

    @property
    def mechanism_name(self) -> str:
        """``privacy.name``."""
        return str(self.privacy.get("name") or "none")

    @property
    def is_async(self) -> bool:
        """Whether the run is FedBuff's asynchronous aggregation."""
        return self.asynchronous.name not in (None, "none")

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with ``changes`` (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)
