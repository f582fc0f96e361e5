"""The host driver: one loop for every kind of training run.

A run is a sequence of steps (:class:`Steps`): the synchronous rounds of
:class:`fedpriv.fl.experiment.Experiment` (on the direct, factored, hierarchical or
secure-aggregation protocol path) and the server steps of buffered asynchronous aggregation
(:class:`fedpriv.fl.fedbuff.FedBuffExperiment`). The driver owns everything around the
jit-compiled step, the same way for all of them: prefetching the next step's inputs while
the device computes (JAX dispatch is asynchronous), the ledger (one DP event per executed
step, appended by the privacy plan that ran), ``metrics.jsonl`` with epsilon spent so far,
evaluation, checkpoints, SIGTERM/SIGINT, exact resume, the privacy-budget stop and
``summary.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import signal
import sys
import threading
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import jax
import numpy as np
from tqdm.auto import tqdm

from fedpriv import accounting
from fedpriv.accounting import RoundEvent
from fedpriv.errors import ConfigError
from fedpriv.fl import checkpoint as checkpoint_lib
from fedpriv.fl import fedbuff
from fedpriv.fl.experiment import build
from fedpriv.privacy import release
from fedpriv.privacy.ledger import LEDGER_FILE, LedgerWriter
from fedpriv.privacy.plan import PrivacyPlan
from fedpriv.settings import RunConfig
from fedpriv.validation import check_output_dir, read_jsonl


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """How the driver runs the steps: length, evaluation, checkpoints, stops, release.

    Attributes:
        rounds: steps to run (rounds, or FedBuff server steps).
        eval_every: evaluate every this many steps (and after the last).
        checkpoint_every: checkpoint every this many steps (0: only after the step before
            the last, at the end and on a signal).
        checkpoint_keep: how many of the newest checkpoints to keep.
        resume: continue from the newest checkpoint in the run directory.
        stop_at_epsilon: stop once the epsilon spent reaches this (None: never).
        release: ``diagnostics`` or ``strict`` (:mod:`fedpriv.privacy.release`).
        noise_source: ``seeded`` or ``secure`` (stated in the summary).
        crash_at_round: fail on purpose before this step (fault-injection tests; None).

    Raises:
        ValueError: a value out of range, naming the attribute.
    """

    rounds: int
    eval_every: int = 1
    checkpoint_every: int = 25
    checkpoint_keep: int = 2
    resume: bool = False
    stop_at_epsilon: float | None = None
    release: str = release.DIAGNOSTICS
    noise_source: str = "seeded"
    crash_at_round: int | None = None

    def __post_init__(self) -> None:
        for name, low in (
            ("rounds", 1),
            ("eval_every", 1),
            ("checkpoint_every", 0),
            ("checkpoint_keep", 1),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.release not in release.RELEASE_MODES:
            raise ValueError(f"release must be one of {list(release.RELEASE_MODES)}")
        if self.noise_source not in release.NOISE_SOURCES:
            raise ValueError(f"noise_source must be one of {list(release.NOISE_SOURCES)}")

    @classmethod
    def from_run(cls, run: RunConfig) -> RunSettings:
        """The settings of a run (``rounds``, ``eval_every``, ``checkpoint``, ``resume``,
        ``privacy.stop_at_epsilon``, ``privacy.release``, ``privacy.noise_source``,
        ``faults.crash_at_round``)."""
        stop_at = run.privacy.get("stop_at_epsilon")
        return cls(
            rounds=run.rounds,
            eval_every=run.eval_every,
            checkpoint_every=run.checkpoint.every,
            checkpoint_keep=run.checkpoint.keep,
            resume=run.resume,
            stop_at_epsilon=None if stop_at is None else float(stop_at),
            release=release.mode(run.privacy),
            noise_source=release.noise_source(run.privacy),
            crash_at_round=run.faults.crash_at_round,
        )


class Steps(Protocol):
    """What the driver runs. Step ``t`` (1-based) is ``state, metrics = step(state,
    inputs(t), key(t))``; everything else is host-side bookkeeping around it.

    Attributes:
        label: progress-bar label; unit: what a step is called (``round``, ``step``).
        state: the state before step 1 (also the template a checkpoint is restored into).
        privacy: the privacy plan whose ledger records :meth:`ledger_record` returns.
    """

    label: str
    unit: str
    state: Any
    privacy: PrivacyPlan

    def inputs(self, t: int) -> Any:
        """Gathers step ``t``'s inputs and starts their transfer to the device(s)."""

    def key(self, t: int) -> jax.Array:
        """Step ``t``'s key (a function of the seed and ``t``, or secure)."""

    def step(self, state: Any, inputs: Any, key: jax.Array) -> tuple[Any, Mapping]:
        """One step: ``(new_state, metrics)``."""

    def host_fields(self, t: int) -> dict[str, Any]:
        """Fields of step ``t``'s metrics line known on the host."""

    def ledger_record(self, t: int, record: Mapping[str, Any]) -> dict | None:
        """Step ``t``'s DP event as it ran (None without DP)."""

    def params(self, state: Any) -> Any:
        """The model parameters in ``state``."""

    def completed(self, state: Any) -> int:
        """Steps completed by ``state``."""

    def evaluate(self, params: Any) -> dict[str, float]:
        """Held-out (and optionally training-set) loss and accuracy."""

    def summary_fields(self, done: int) -> dict[str, Any]:
        """The steps' own part of ``summary.json``."""

    def finish(self, run_dir: Path, state: Any, done: int) -> None:
        """Writes the steps' own files at the end of a run (e.g. ``canaries.json``)."""


class InjectedFault(RuntimeError):
    """The failure that ``faults.crash_at_round`` plants, standing in for a job that dies
    (a lost node, an out-of-memory kill) in tests of sweeps, reports and resumption."""


class Interrupted(Exception):
    """Training stopped by SIGTERM or SIGINT after a checkpoint was written.

    Attributes:
        signum: the signal received.
        round: the last completed round (the checkpoint's round).
        checkpoint: the checkpoint directory written.
    """

    def __init__(self, signum: int, rnd: int, checkpoint: Path):
        self.signum, self.round, self.checkpoint = signum, rnd, checkpoint
        name = signal.Signals(signum).name
        super().__init__(f"interrupted by {name} after round {rnd}; checkpoint {checkpoint}")


class _StopSignals:
    """Turns SIGTERM and SIGINT into a flag that the loop checks after every round."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclasses.dataclass
class _Start:
    """Where a run starts: round 0, or the state restored from a checkpoint."""

    round: int = 0
    state: Any = None
    ledger: list[dict] = dataclasses.field(default_factory=list)
    metrics_lines: int = 0
    last_eval: dict[str, float] = dataclasses.field(default_factory=dict)
    checkpoint: Path | None = None


def _resume_point(exp: Steps, run_dir: Path, ckpt: checkpoint_lib.Checkpointer) -> _Start:
    """Reads and checks what a resumed run continues from; writes nothing.

    The ledger is read whole: rounds that ran after the checkpoint consumed privacy and stay.

    Raises:
        ConfigError: naming the checkpoint, ledger or metrics file that is bad.
    """
    start = _Start()
    ledger = read_jsonl(run_dir / LEDGER_FILE)
    restored = ckpt.restore(exp.state)
    if restored is not None:
        state, meta = restored
        start = _Start(
            round=int(meta["round"]),
            state=state,
            metrics_lines=int(meta["metrics_lines"]),
            last_eval=dict(meta.get("last_eval") or {}),
            checkpoint=ckpt.root / str(meta["round"]),
        )
        if exp.completed(state) != start.round:
            raise ConfigError(
                str(start.checkpoint),
                f"holds server state after round {exp.completed(state)} but says "
                f"round {start.round}",
            )
        tracked = (meta.get("epsilon_tracker") or {}).get("events") or []
        if len(ledger) < int(meta["ledger_lines"]) or len(tracked) > len(ledger):
            raise ConfigError(
                str(run_dir / LEDGER_FILE),
                f"has {len(ledger)} records but checkpoint {start.checkpoint} was written "
                f"after {meta['ledger_lines']}; a ledger must never shrink",
            )
        for t, saved in enumerate(tracked):
            try:
                same = RoundEvent.from_dict(ledger[t]).to_dict() == saved
            except ConfigError:
                same = False
            if not same:
                raise ConfigError(
                    str(run_dir / LEDGER_FILE),
                    f"record {t} differs from the copy in checkpoint {start.checkpoint}; the "
                    "ledger was edited",
                )
    read_jsonl(run_dir / "metrics.jsonl", start.metrics_lines)
    start.ledger = ledger
    return start


def _truncate_lines(path: Path, lines: int) -> None:
    """Keeps the first ``lines`` lines of ``path`` (atomically; creates an empty file)."""
    kept: list[str] = []
    if path.exists() and lines:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if len(kept) == lines:
                    break
                if line.strip():
                    kept.append(line if line.endswith("\n") else line + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    os.replace(tmp, path)


def to_python(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """A step's metrics as JSON values: scalars as Python numbers, arrays as lists, float32
    precision kept, non-finite floats as None."""
    out = {}
    for k, v in metrics.items():
        v = np.asarray(v)
        out[k] = v.item() if v.ndim == 0 else v.tolist()
        if isinstance(out[k], float):
            out[k] = float(np.float32(out[k])) if np.isfinite(out[k]) else None
    return out


def package_versions() -> dict[str, str]:
    """Versions of Python and of the packages a run's numbers depend on."""
    versions = {"python": platform.python_version()}
    for name in (
        "fedpriv",
        "jax",
        "jaxlib",
        "flax",
        "optax",
        "numpy",
        "hydra-core",
        "dp-accounting",
        "opacus",
    ):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _final_epsilons(plan: PrivacyPlan, ledger: list[dict]) -> dict[str, float]:
    """Epsilon of the whole ledger under every accountant that supports it."""
    if not ledger:
        return {}
    out = {}
    for name in accounting.supported_accountants(ledger):
        out[name] = float(accounting.epsilon(ledger, plan.delta, name))
    return out


def drive(
    exp: Steps,
    settings: RunSettings,
    run_dir: str | os.PathLike,
    config: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> dict:
    """Runs ``exp`` as ``settings`` say and writes the run directory.

    Writes ``metrics.jsonl`` (a line per step, with ``epsilon`` spent so far under DP;
    released values at the top level, un-noised diagnostics apart, none with
    ``release=strict``: :mod:`fedpriv.privacy.release`), ``ledger.jsonl`` (one DP event per
    executed step, appended by the privacy plan that ran; absent without DP),
    ``checkpoints/`` (every ``checkpoint_every`` steps, after the step before the last, at
    the end, and on SIGTERM/SIGINT), ``final_params.npz`` and ``summary.json``, plus what
    ``exp.finish`` writes.

    With ``settings.resume`` the run continues from the newest checkpoint in ``run_dir``
    (from step 0 when there is none). The ledger is kept whole: steps that ran after that
    checkpoint stay in it, and when they run again their records carry ``"replay": true``,
    so epsilon, computed over the whole ledger, never under-counts. ``metrics.jsonl`` is cut
    back to the checkpoint's step. Keys and inputs depend only on the seed and the step, so
    a resumed run ends with the same parameters as one that was never interrupted.

    Args:
        exp: the steps to run.
        settings: the run settings.
        run_dir: the run directory (created; must not hold a finished run unless resuming).
        config: the configuration record stored in every checkpoint (JSON-serialisable).
        progress: show a progress bar on stderr.

    Returns:
        The summary dict (also written to ``summary.json``).

    Raises:
        ConfigError: bad checkpoint, ledger or metrics file; nothing has been written.
        Interrupted: SIGTERM or SIGINT arrived; the checkpoint of the last step is written.
        InjectedFault: ``settings.crash_at_round`` was reached.
    """
    start_time = time.time()
    run_dir = Path(run_dir)
    ckpt = checkpoint_lib.Checkpointer(run_dir, settings.checkpoint_keep)
    plan = exp.privacy
    rounds, eval_every = settings.rounds, settings.eval_every
    stop_at = settings.stop_at_epsilon
    config = dict(config or {})

    # Everything is read and checked before anything in the run directory changes.
    begin = _resume_point(exp, run_dir, ckpt) if settings.resume else _Start()
    tracker = accounting.EpsilonTracker(plan.delta, plan.accountant) if plan.is_private else None
    if begin.ledger:
        if tracker is None:
            raise ConfigError(
                str(run_dir / LEDGER_FILE),
                "holds DP events but this configuration has privacy=none; resume with the "
                "privacy setting the run was made with",
            )
        try:
            tracker.extend(begin.ledger)  # rebuilt from the ledger file itself, every line
        except ConfigError as err:
            raise ConfigError(f"{run_dir / LEDGER_FILE}: {err.field}", err.message) from None
    ledger_records = list(begin.ledger)
    recorded_rounds = {int(r.get("round", -1)) for r in ledger_records}
    replayed = sum(bool(r.get("replay")) for r in ledger_records)

    run_dir.mkdir(parents=True, exist_ok=True)
    _truncate_lines(run_dir / "metrics.jsonl", begin.metrics_lines)
    ledger = LedgerWriter(run_dir) if plan.is_private else None
    state = exp.state if begin.state is None else begin.state
    done = begin.round
    metrics_lines = begin.metrics_lines
    last_eval: dict[str, float] = dict(begin.last_eval)
    saved_at: int | None = begin.round if begin.checkpoint is not None else None
    compile_start = time.time()
    compile_s = 0.0
    record: dict[str, Any] = {}
    epsilon = tracker.epsilon if tracker is not None and tracker.rounds else None
    stopped = stop_at is not None and epsilon is not None and epsilon >= stop_at

    def save(rnd: int) -> Path:
        meta = {
            "metrics_lines": metrics_lines,
            "ledger_lines": len(ledger_records),
            "epsilon_tracker": tracker.state_dict() if tracker is not None else None,
            "config": config,
            "last_eval": release.released(last_eval) if settings.release == "strict" else last_eval,
        }
        return ckpt.save(rnd, state, meta)

    bar = tqdm(
        total=rounds,
        initial=min(done, rounds),
        desc=exp.label,
        unit=exp.unit,
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    with _StopSignals() as signals, open(run_dir / "metrics.jsonl", "a") as metrics_file:
        batch = exp.inputs(done + 1) if done < rounds and not stopped else None
        while done < rounds and not stopped and signals.received is None:
            rnd = done + 1
            if rnd == settings.crash_at_round:
                raise InjectedFault(
                    f"faults.crash_at_round: the run was made to fail at round {rnd}"
                )
            t0 = time.time()
            state, metrics = exp.step(state, batch, exp.key(rnd))
            if rnd < rounds:  # gathered while the device computes this step
                batch = exp.inputs(rnd + 1)
            record = {"round": rnd, **to_python(metrics), **exp.host_fields(rnd)}
            event = exp.ledger_record(rnd, record)
            if event is not None:
                if rnd in recorded_rounds:  # ran before, after the checkpoint we resumed from
                    event = {**event, "replay": True}
                    record["replay"] = True
                    replayed += 1
                ledger.append(event)
                ledger_records.append(event)
                record["epsilon"] = tracker.add(event)
            if rnd % eval_every == 0 or rnd == rounds:
                last_eval = exp.evaluate(exp.params(state))
                record.update(last_eval)
            record["seconds"] = round(time.time() - t0, 6)
            metrics_file.write(json.dumps(release.metrics_line(record, settings.release)) + "\n")
            metrics_file.flush()
            metrics_lines += 1
            done = rnd
            if rnd == begin.round + 1:
                compile_s = time.time() - compile_start
            bar.update(1)
            loss = record.get("train_loss")
            post = {"loss": f"{loss:.3f}" if loss else "nan"}
            if last_eval:
                post["acc"] = f"{last_eval['test_accuracy']:.3f}"
            if "epsilon" in record:
                post["eps"] = f"{record['epsilon']:.2f}"
            bar.set_postfix(post)
            if stop_at is not None and record.get("epsilon", 0.0) >= stop_at:
                if rnd % eval_every and rnd != rounds:
                    last_eval = exp.evaluate(exp.params(state))
                stopped = True
            # The step before the last is always checkpointed too, so the audit can replay
            # the last round from the state before it (fedpriv.audit.replay).
            periodic = bool(settings.checkpoint_every) and rnd % settings.checkpoint_every == 0
            if (periodic or rnd == rounds - 1) and signals.received is None:
                save(rnd)
                saved_at = rnd
        bar.close()
        if signals.received is not None:
            path = save(done) if saved_at != done else ckpt.root / str(done)
            if ledger is not None:
                ledger.close()
            ckpt.close()
            raise Interrupted(signals.received, done, path)
    if ledger is not None:
        ledger.close()
    if not last_eval or done == begin.round:
        last_eval = exp.evaluate(exp.params(state))
    if saved_at != done:
        save(done)
    ckpt.close()
    checkpoint_lib.save_final_params(run_dir, exp.params(state))
    exp.finish(run_dir, state, done)
    exp.state = state
    wall = time.time() - start_time
    executed = done - begin.round
    summary = {
        "rounds": int(done),
        "planned_rounds": rounds,
        "final": last_eval,
        "train_loss": record.get("train_loss"),
        "wall_seconds": round(wall, 3),
        "compile_seconds": round(compile_s, 3),
        "rounds_per_second": round(executed / max(wall, 1e-9), 3),
        **exp.summary_fields(done),
        "privacy": plan.describe(),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "versions": package_versions(),
    }
    if settings.resume:
        summary["resumed_from"] = int(begin.round)
    if plan.is_private:
        summary["epsilon"] = _final_epsilons(plan, ledger_records)
        summary["delta"] = plan.delta
        summary["accountant"] = plan.accountant
        summary["epsilon_spent"] = tracker.epsilon if tracker.rounds else None
        summary["ledger_events"] = len(ledger_records)
        summary["replayed_rounds"] = replayed
        summary["noise_source"] = settings.noise_source
        summary["guarantee"] = release.statement(settings.noise_source)
    summary = release.summary(summary, settings.release)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def run(run: RunConfig, run_dir: str | os.PathLike, progress: bool = True) -> dict:
    """Builds the run a configuration describes and drives it (:func:`drive`).

    ``async.name: fedbuff`` builds buffered asynchronous aggregation
    (:func:`fedpriv.fl.fedbuff.build`: a metrics line and a ledger record per server step);
    otherwise synchronous rounds (:func:`fedpriv.fl.experiment.build`).

    Args:
        run: the run (:class:`~fedpriv.settings.RunConfig`, as
            :func:`fedpriv.config.validate` returns it).
        run_dir: the run directory (Hydra's output directory).
        progress: show a progress bar on stderr.

    Returns:
        The summary dict (also written to ``summary.json``).

    Raises:
        ConfigError: bad configuration, data, checkpoint, ledger or metrics file; nothing
            has been written.
        Interrupted: SIGTERM or SIGINT arrived; the checkpoint of the last step is written.
    """
    return run_experiment(run, run_dir, progress)[1]


def run_experiment(
    run: RunConfig, run_dir: str | os.PathLike, progress: bool = True
) -> tuple[Steps, dict]:
    """:func:`run`, returning the experiment as well (its ``state`` is the final one)."""
    run_dir = Path(run_dir)
    check_output_dir(run_dir)
    settings = RunSettings.from_run(run)
    exp: Steps = fedbuff.build(run) if run.is_async else build(run)
    config = {k: v for k, v in run.source.items() if k != "resume"}
    return exp, drive(exp, settings, run_dir, config, progress)


__all__ = [
    "InjectedFault",
    "Interrupted",
    "RunSettings",
    "Steps",
    "drive",
    "package_versions",
    "run",
    "run_experiment",
    "to_python",
]
