"""Runs from Python, without Hydra's command line: :func:`simulate` and its typed settings.

A run is described by typed choices of the configuration groups
(:class:`~fedpriv.groups.ConfigGroup`): a :class:`Population` (the ``dataset`` group), a
:class:`Model`, an algorithm (:mod:`fedpriv.algorithms`), :class:`LocalTraining` (the
``client`` group), the sampling (:class:`Poisson`, :class:`FixedCohort`, :class:`Cyclic`,
:class:`CyclicPoisson` or :class:`MinSeparation`) and a privacy
mechanism (:mod:`fedpriv.mechanisms`). Each selects a preset of ``fedpriv/conf`` and
replaces the fields that are set; :func:`simulate` composes them, validates the result once
(:func:`fedpriv.config.validate`, the same checks as ``fedpriv-train``) and runs it with the
host driver (:func:`fedpriv.fl.loop.drive`) into a run directory that ``fedpriv-audit`` and
``fedpriv-report`` read as they read a command-line run.

>>> import fedpriv
>>> from fedpriv import algorithms, mechanisms
>>> result = fedpriv.simulate(  # doctest: +SKIP
...     fedpriv.Population("digits", num_clients=200),
...     algorithm=algorithms.FedAvg(),
...     sampling=fedpriv.Poisson(rate=0.1),
...     mechanism=mechanisms.DpFedAvg(clip_norm=1.0, noise_multiplier=1.0),
...     rounds=10,
... )
>>> result.epsilon(delta=1e-4)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from fedpriv import accounting
from fedpriv import data as data_lib
from fedpriv.cli import compose
from fedpriv.config import validate
from fedpriv.fl import loop
from fedpriv.fl.experiment import data_rng
from fedpriv.groups import ConfigGroup, merge
from fedpriv.privacy.mechanisms.base import Mechanism, PrivacyPlan
from fedpriv.settings import (
    Cyclic,
    CyclicPoisson,
    FixedCohort,
    LocalTraining,
    MinSeparation,
    Model,
    Poisson,
    RunConfig,
)
from fedpriv.validation import read_jsonl

__all__ = [
    "Cyclic",
    "CyclicPoisson",
    "FixedCohort",
    "LocalTraining",
    "MinSeparation",
    "Model",
    "Poisson",
    "Population",
    "RunResult",
    "configure",
    "simulate",
]


@dataclasses.dataclass(frozen=True)
class Population(ConfigGroup):
    """The clients and their data: a ``dataset`` preset, partitioned into clients.

    Args:
        name: the preset (``digits``, ``mnist``, ``femnist``, ``synthetic``, ...: the files of
            ``fedpriv/conf/dataset``).
        num_clients: how many clients the examples are split into.
        partition: ``iid``, ``dirichlet``, ``shards`` or ``natural`` (the data set's own
            clients).
        alpha: the Dirichlet label skew (small: few classes per client).
        shards_per_client: label-sorted shards per client (``partition="shards"``).
        min_size: the fewest examples a client holds.
        test_fraction: the share held out as the central test set.
        root: where a downloaded data set lives.
        options: further keys of the preset (e.g. ``{"download": True}``).

    Fields left at ``None`` keep the preset's values.

    Example:
        >>> Population("digits", num_clients=200, partition="iid").values()
        {'num_clients': 200, 'partition': {'kind': 'iid'}}
    """

    group = "dataset"

    name: str = "digits"
    _: dataclasses.KW_ONLY
    num_clients: int | None = None
    partition: str | None = None
    alpha: float | None = None
    shards_per_client: int | None = None
    min_size: int | None = None
    test_fraction: float | None = None
    root: str | None = None
    options: Mapping[str, Any] | None = None

    def selections(self) -> list[str]:
        return [f"dataset={self.name}"]

    def values(self) -> dict[str, Any]:
        out = super().values()
        out.pop("name")
        part = {
            "kind": out.pop("partition", None),
            "alpha": out.pop("alpha", None),
            "shards_per_client": out.pop("shards_per_client", None),
            "min_size": out.pop("min_size", None),
        }
        part = {k: v for k, v in part.items() if v is not None}
        if part:
            out["partition"] = merge(out.get("partition") or {}, part)
        return out

    def load(self, seed: int = 0) -> data_lib.FederatedData:
        """The population and test set a run with ``seed`` trains and evaluates on.

        Raises:
            ConfigError: a bad field, naming ``dataset.<field>``.
        """
        cfg = configure(self, seed=seed)
        return data_lib.load(cfg["dataset"], data_rng(seed))


def configure(
    *groups: ConfigGroup | None,
    seed: int | None = None,
    rounds: int | None = None,
    eval_every: int | None = None,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """The validated run configuration (plain dicts) the typed choices describe.

    The presets the ``groups`` select are composed with ``overrides`` (Hydra's syntax, as on
    the command line: ``["secagg=fast", "execution.chunk_size=64"]``), then each group's set
    fields replace the preset's values, then the whole is validated once.

    Raises:
        ConfigError: an unknown preset or a bad value, naming the field.
    """
    chosen = [g for g in groups if g is not None]
    selections = [s for g in chosen for s in g.selections()]
    composed = compose([*selections, *overrides])
    cfg = OmegaConf.to_container(composed, resolve=False)
    cfg.pop("hydra", None)
    for g in chosen:
        cfg[g.group] = merge(cfg.get(g.group) or {}, g.values())
    top = {"seed": seed, "rounds": rounds, "eval_every": eval_every}
    cfg.update({k: v for k, v in top.items() if v is not None})
    cfg = OmegaConf.to_container(OmegaConf.create(cfg), resolve=True)
    validate(cfg)
    return cfg


@dataclasses.dataclass
class RunResult:
    """What a run wrote and ended with.

    Attributes:
        run_dir: the run directory (``metrics.jsonl``, ``ledger.jsonl``, ``summary.json``,
            checkpoints, ``.hydra/config.yaml``).
        config: the configuration that ran.
        summary: ``summary.json``.
        history: the metrics lines, one per round.
        ledger: the DP events, one per round (empty without DP).
        params: the final model parameters.
        plan: the privacy plan that ran (the calibrated noise multiplier, the expected
            cohort, the delta and accountant of the claim).
    """

    run_dir: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    history: list[dict[str, Any]]
    ledger: list[dict[str, Any]]
    params: Any
    plan: PrivacyPlan

    @property
    def mechanism(self) -> Mechanism | None:
        """The mechanism that ran (None without DP)."""
        return self.plan.mechanism

    @property
    def final(self) -> dict[str, float]:
        """The last evaluation (``test_loss``, ``test_accuracy``)."""
        return dict(self.summary["final"])

    def epsilon(self, delta: float | None = None, accountant: str | None = None) -> float:
        """The epsilon spent, accounted from the run's own ledger.

        Each ledger record is turned into a ``dp_accounting`` event by the mechanism that
        wrote it (its sensitivity, neighbouring relation and the sampling that ran) and
        composed by the accountant (:func:`fedpriv.accounting.epsilon`).

        Args:
            delta: the delta (default: the run's).
            accountant: ``rdp``, ``pld``, ``prv`` or ``opacus_rdp`` (default: the run's).

        Raises:
            ValueError: the run made no DP claim.
        """
        if not self.plan.is_private:
            raise ValueError("epsilon: the run had no differential privacy (privacy=none)")
        return accounting.epsilon(
            self.ledger,
            self.plan.delta if delta is None else delta,
            self.plan.accountant if accountant is None else accountant,
        )


def simulate(
    population: Population | None = None,
    *,
    model: Model | str | None = None,
    algorithm: ConfigGroup | None = None,
    local: LocalTraining | None = None,
    sampling: Poisson | FixedCohort | Cyclic | CyclicPoisson | MinSeparation | None = None,
    mechanism: Mechanism | None = None,
    rounds: int | None = None,
    seed: int = 0,
    eval_every: int | None = None,
    overrides: Sequence[str] = (),
    run_dir: str | Path | None = None,
    progress: bool = False,
) -> RunResult:
    """Trains a federated model from Python, as ``fedpriv-train`` would from the shell.

    Every argument left at ``None`` keeps the default of ``fedpriv-train`` (digits over 1,000
    clients, an MLP, FedAvg, Poisson sampling, DP-FedAvg at epsilon 4).

    Args:
        population: the clients (:class:`Population`).
        model: a :class:`Model` or a model preset's name.
        algorithm: an algorithm of :mod:`fedpriv.algorithms`.
        local: the clients' local training (:class:`LocalTraining`).
        sampling: :class:`Poisson`, :class:`FixedCohort`, :class:`Cyclic`,
            :class:`CyclicPoisson` or :class:`MinSeparation` (the last three for correlated
            noise: ``mechanisms.DpFtrl``).
        mechanism: a mechanism of :mod:`fedpriv.mechanisms` (``NoPrivacy()`` for
            none).
        rounds: training rounds.
        seed: the root seed of data partition, initialisation, sampling and noise.
        eval_every: evaluate the test set every this many rounds (and after the last).
        overrides: further settings in Hydra's command-line syntax (``secagg``,
            ``execution``, ``availability``, ``checkpoint``, ...).
        run_dir: where the run is written (created; default a new temporary directory,
            kept after the call).
        progress: show a progress bar.

    Returns:
        The :class:`RunResult`.

    Raises:
        ConfigError: a bad setting, naming the field; nothing has been written.
    """
    if isinstance(model, str):
        model = Model(model)
    cfg = configure(
        population,
        model,
        algorithm,
        local,
        sampling,
        mechanism,
        seed=seed,
        rounds=rounds,
        eval_every=eval_every,
        overrides=overrides,
    )
    cfg["progress"] = bool(progress)
    if run_dir is None:
        run_dir = tempfile.mkdtemp(prefix="fedpriv-run-")
    run_dir = Path(run_dir)
    exp, summary = loop.run_experiment(RunConfig.from_mapping(cfg), run_dir, progress=progress)
    hydra_dir = run_dir / ".hydra"
    hydra_dir.mkdir(exist_ok=True)
    OmegaConf.save(OmegaConf.create(cfg), hydra_dir / "config.yaml")
    return RunResult(
        run_dir=run_dir,
        config=cfg,
        summary=summary,
        history=read_jsonl(run_dir / "metrics.jsonl"),
        ledger=read_jsonl(run_dir / "ledger.jsonl"),
        params=exp.params(exp.state),
        plan=exp.privacy,
    )
