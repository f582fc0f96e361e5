"""Reading run directories for reports: what each run was, how far it got, what it reached.

Only the files of the run directory contract are read (``.hydra/config.yaml``,
``.hydra/overrides.yaml``, ``metrics.jsonl``, ``summary.json``), so runs made on any machine
can be reported together. A run that crashed or is still going is kept, with its status, and
never makes reading the others fail.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from fedpriv.errors import ConfigError
from fedpriv.privacy.release import flatten

#: Statuses of a run, from the files it left.
FINISHED, UNFINISHED, FAILED = "finished", "unfinished", "failed"
_RUN_MARKERS = (".hydra/config.yaml", "metrics.jsonl", "summary.json", "failed.json")
#: Overrides that name where or how a run is shown, not what it computes.
IGNORED_KEYS = frozenset({"progress", "resume", "hydra.run.dir", "hydra.sweep.dir"})


@dataclasses.dataclass
class Run:
    """One run directory, as read from its files.

    Attributes:
        path: the run directory.
        status: ``finished`` (``summary.json`` written), ``failed`` (``failed.json``: the run
            raised an error; or nothing usable was left) or ``unfinished`` (rounds logged but
            no summary: stopped, killed or still running).
        reason: for runs that did not finish, what the files show.
        overrides: ``key -> value`` from the command line (``.hydra/overrides.yaml``).
        choices: config group -> option chosen (``.hydra/hydra.yaml``), e.g. ``privacy``.
        config: the composed configuration (``.hydra/config.yaml``), or ``{}``.
        summary: ``summary.json`` or ``{}``.
        curve: ``(round, test_accuracy)`` for every evaluated round of ``metrics.jsonl``.
        rounds: rounds logged; ``planned_rounds``: rounds asked for.
        accuracy: final test accuracy (last evaluation for unfinished runs).
        epsilon: epsilon spent (main accountant), None without DP.
    """

    path: Path
    status: str
    reason: str = ""
    overrides: dict[str, str] = dataclasses.field(default_factory=dict)
    choices: dict[str, str] = dataclasses.field(default_factory=dict)
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)
    curve: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    rounds: int = 0
    planned_rounds: int | None = None
    accuracy: float | None = None
    epsilon: float | None = None
    delta: float | None = None

    def value(self, key: str) -> Any:
        """The run's value of a dotted config key (its override when it has one)."""
        if key in self.overrides:
            return self.overrides[key]
        if key in self.choices:
            return self.choices[key]
        node: Any = self.config
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return None
            node = node[part]
        return node


def find_runs(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Run directories under ``paths`` (each a run directory or a folder of them).

    Raises:
        ConfigError: a path does not exist or holds no run directory.
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise ConfigError(str(path), "does not exist; give run or multirun directories")
        if not path.is_dir():
            raise ConfigError(str(path), "is not a directory; give run or multirun directories")
        here = [path] if _is_run(path) else []
        if not here:
            for root, dirs, _ in os.walk(path):
                dirs[:] = sorted(d for d in dirs if d not in ("checkpoints", ".hydra", ".submitit"))
                if _is_run(Path(root)):
                    here.append(Path(root))
                    dirs[:] = []
        if not here:
            raise ConfigError(
                str(path),
                "holds no run directory (a run directory has .hydra/config.yaml or metrics.jsonl)",
            )
        found.extend(p for p in here if p not in found)
    return found


def _is_run(path: Path) -> bool:
    return any((path / m).is_file() for m in _RUN_MARKERS)


def read_run(path: Path) -> Run:
    """Reads one run directory; never raises for a damaged run (its status says so)."""
    run = Run(path=path, status=FAILED)
    run.config = _read_yaml(path / ".hydra" / "config.yaml") or {}
    run.overrides = _overrides(_read_yaml(path / ".hydra" / "overrides.yaml") or [])
    hydra_cfg = _read_yaml(path / ".hydra" / "hydra.yaml") or {}
    choices = ((hydra_cfg.get("hydra") or {}).get("runtime") or {}).get("choices") or {}
    run.choices = {str(k): str(v) for k, v in choices.items() if not str(k).startswith("hydra")}
    run.planned_rounds = _int(run.config.get("rounds"))
    lines, bad_line = _read_metrics(path / "metrics.jsonl")
    lines = [flatten(rec) for rec in lines]
    for rec in lines:
        if "test_accuracy" in rec and "round" in rec:
            run.curve.append((int(rec["round"]), float(rec["test_accuracy"])))
    run.rounds = max((int(r.get("round", 0)) for r in lines), default=0)
    eps_seen = [r["epsilon"] for r in lines if isinstance(r.get("epsilon"), (int, float))]
    summary = _read_json(path / "summary.json")
    if isinstance(summary, dict) and isinstance(summary.get("final"), dict):
        run.summary = flatten(summary)
        run.status = FINISHED
        run.rounds = int(summary.get("rounds", run.rounds))
        run.planned_rounds = _int(summary.get("planned_rounds")) or run.planned_rounds
        run.accuracy = _float(summary["final"].get("test_accuracy"))
        eps = summary.get("epsilon")
        if isinstance(eps, dict) and summary.get("accountant") in eps:
            run.epsilon = _float(eps[summary["accountant"]])
        run.delta = _float(summary.get("delta"))
        return run
    failure = _read_json(path / "failed.json")
    if run.curve:
        run.accuracy = run.curve[-1][1]
    if eps_seen:
        run.epsilon = float(eps_seen[-1])
    delta = (run.config.get("privacy") or {}).get("delta") if run.config else None
    run.delta = _float(delta)
    planned = f" of {run.planned_rounds}" if run.planned_rounds else ""
    if summary is not None:  # present, but not the summary of a finished run
        run.reason = "summary.json cannot be read"
    if isinstance(failure, dict) and failure.get("error"):
        run.reason = (
            f"{failure['error']}: {failure.get('message', '')} (after round {run.rounds}{planned})"
        )
    elif lines:
        run.status = UNFINISHED
        run.reason = run.reason or f"stopped after round {run.rounds}{planned} (no summary.json)"
    else:
        run.reason = run.reason or "no round finished (metrics.jsonl missing or empty)"
    if bad_line is not None:
        run.reason += f"; metrics.jsonl line {bad_line} is cut short"
    return run


def read_runs(paths: Sequence[str | os.PathLike]) -> list[Run]:
    """All runs under ``paths``, in directory order (see :func:`find_runs`)."""
    return [read_run(p) for p in find_runs(paths)]


def swept_keys(runs: Iterable[Run]) -> list[str]:
    """Overridden keys whose values differ between the runs (what the sweep varied).

    A key overridden in some runs only counts when the runs disagree about its value, with
    the composed configuration standing in where a run has no override.
    """
    runs = list(runs)
    keys = sorted({k for r in runs for k in r.overrides if k not in IGNORED_KEYS})
    return [k for k in keys if len({json.dumps(r.value(k), default=str) for r in runs}) > 1]


def _overrides(items: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    if not isinstance(items, list):
        return out
    for item in items:
        if isinstance(item, str) and "=" in item:
            key, value = item.split("=", 1)
            out[key.lstrip("+~")] = value
    return out


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception:  # noqa: BLE001 - a damaged file makes the run unreadable, not the report
        return None


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return {}


def _read_metrics(path: Path) -> tuple[list[dict], int | None]:
    """Complete lines of ``metrics.jsonl`` and the number of a cut-short line, if any."""
    out: list[dict] = []
    if not path.is_file():
        return out, None
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                return out, n
            if isinstance(rec, dict):
                out.append(rec)
    return out, None


def _int(x: Any) -> int | None:
    try:
        return int(x)
    except (TypeError, ValueError):
        return None


def _float(x: Any) -> float | None:
    try:
        return float(x)
    except (TypeError, ValueError):
        return None
