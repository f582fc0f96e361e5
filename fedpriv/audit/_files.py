"""Reading a run directory for an audit: the files only, checked before anything is computed.

An audit reads what a run wrote (DESIGN.md section 5) and nothing else: ``.hydra/config.yaml``
(the composed configuration), ``ledger.jsonl`` (one DP event per executed round),
``metrics.jsonl`` (one line per round) and ``summary.json`` (written when the run ends). Every
problem that makes the files unreadable raises :class:`~fedpriv.errors.ConfigError` naming the
file (and line or key), so the command line reports it in one line with exit status 2 before
anything is written.

Ledger records are validated with :meth:`fedpriv.accounting.RoundEvent.from_dict`, except for
the redundant fields that the consistency audit examines itself (``noise_std``; ``clip_norm``
of distributed-DP rounds; ``sampling_rate`` of fixed cohorts): a record whose noise does not
match its noise multiplier is a failed check with its numbers, not unreadable input.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedpriv.accounting.events import DISTRIBUTED_MECHANISMS, LEDGER_FORMAT, RoundEvent
from fedpriv.errors import ConfigError
from fedpriv.privacy.release import flatten

CONFIG_FILE = Path(".hydra") / "config.yaml"
LEDGER_FILE = "ledger.jsonl"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


@dataclasses.dataclass(frozen=True)
class RunFiles:
    """The files of one run directory, parsed and checked.

    Attributes:
        path: The run directory.
        config: The composed configuration (``.hydra/config.yaml``), or None when absent (a
            run made through the library rather than ``fedpriv-train``).
        ledger: The ledger records as written, or None when there is no ``ledger.jsonl``.
        events: The ledger records as validated :class:`~fedpriv.accounting.RoundEvent`
            (their checked redundant fields left out; see the module docstring).
        metrics: The rows of ``metrics.jsonl``, or None when absent.
        summary: ``summary.json``, or None when absent (the run did not finish).
    """

    path: Path
    config: dict[str, Any] | None
    ledger: list[dict[str, Any]] | None
    events: list[RoundEvent]
    metrics: list[dict[str, Any]] | None
    summary: dict[str, Any] | None

    def config_get(self, dotted: str, default: Any = None) -> Any:
        """A value of the configuration by dotted path (``default`` when missing)."""
        return get(self.config, dotted, default)

    def summary_get(self, dotted: str, default: Any = None) -> Any:
        """A value of ``summary.json`` by dotted path (``default`` when missing)."""
        return get(self.summary, dotted, default)


def get(tree: Mapping[str, Any] | None, dotted: str, default: Any = None) -> Any:
    """``tree["a"]["b"]`` for ``"a.b"``; ``default`` when a key is missing or null."""
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or node.get(part) is None:
            return default
        node = node[part]
    return node


def read_run(run_dir: str | Path) -> RunFiles:
    """Reads and checks the files of a run directory.

    Args:
        run_dir: The run directory (Hydra's output directory of a ``fedpriv-train`` run).

    Returns:
        The parsed files.

    Raises:
        ConfigError: the path does not exist or is not a run directory (it has neither
            ``.hydra/config.yaml`` nor ``metrics.jsonl``); a file is not valid JSON / YAML or
            was cut short; a ledger record is from a newer format or invalid; a field of
            ``summary.json`` has the wrong type.
    """
    path = Path(run_dir)
    if not path.exists():
        raise ConfigError(
            "RUN_DIR", f"{str(path)!r} does not exist; give the directory of a fedpriv-train run"
        )
    if not path.is_dir():
        raise ConfigError("RUN_DIR", f"{str(path)!r} is not a directory; give a run directory")
    if not (path / CONFIG_FILE).is_file() and not (path / METRICS_FILE).is_file():
        raise ConfigError(
            "RUN_DIR",
            f"{str(path)!r} is not a run directory: it has neither {CONFIG_FILE} nor "
            f"{METRICS_FILE}; give the directory a fedpriv-train run wrote",
        )
    config = _read_config(path / CONFIG_FILE)
    ledger_rows = _read_jsonl(path / LEDGER_FILE, "ledger")
    metrics_rows = _read_jsonl(path / METRICS_FILE, "metrics")
    ledger = events = None
    if ledger_rows is not None:
        ledger = [rec for _, rec in ledger_rows]
        events = [_event(rec, f"{path / LEDGER_FILE} line {n}") for n, rec in ledger_rows]
    metrics = None
    if metrics_rows is not None:
        metrics = [
            _metrics_row(flatten(rec), f"{path / METRICS_FILE} line {n}") for n, rec in metrics_rows
        ]
    summary = _read_summary(path / SUMMARY_FILE)
    return RunFiles(path, config, ledger, _with_cohorts(events or [], metrics), metrics, summary)


def _with_cohorts(events: list[RoundEvent], metrics: list[dict[str, Any]] | None):
    """Events with the realised cohort (and dropped clients) of their round filled in from the
    metrics' diagnostics, where the ledger does not hold them (it holds public values only;
    a run written with ``privacy.release=strict`` has no such diagnostics)."""
    if not metrics:
        return events
    by_round = {int(row["round"]): row for row in metrics}
    out = []
    for ev in events:
        row = by_round.get(int(ev.round)) if ev.round is not None else None
        if ev.realised_cohort is None and row is not None:
            count = row.get("gateways" if ev.unit == "gateway" else "clients")
            if _is_int(count) or (_is_number(count) and float(count).is_integer()):
                dropped = row.get("dropped")
                ev = dataclasses.replace(
                    ev,
                    realised_cohort=int(count),
                    dropped=int(dropped) if _is_number(dropped) else ev.dropped,
                )
        out.append(ev)
    return out


def _read_config(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    import yaml

    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(str(path), f"cannot be read ({err})") from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(
            str(path), f"is not valid YAML{at}; it must hold the run's composed configuration"
        ) from None
    if not isinstance(cfg, dict):
        raise ConfigError(str(path), "must hold a mapping (the run's composed configuration)")
    for group in ("privacy", "sampling"):
        if cfg.get(group) is not None and not isinstance(cfg[group], dict):
            raise ConfigError(f"{path} ({group})", "must be a mapping")
    return cfg


def _read_jsonl(path: Path, what: str) -> list[tuple[int, dict[str, Any]]] | None:
    """``[(line number, record), ...]``, or None when the file does not exist."""
    if not path.exists():
        return None
    if not path.is_file():
        raise ConfigError(str(path), "is not a regular file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(str(path), f"cannot be read ({err})") from None
    lines = text.split("\n")
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            if n == len(lines):  # the last line, with no newline after it
                raise ConfigError(
                    f"{path} line {n}",
                    f"is cut short mid-record ({err.msg}); the file was truncated, so the "
                    f"run's {what} is incomplete. Every line must be one complete JSON object",
                ) from None
            raise ConfigError(
                f"{path} line {n}",
                f"is not valid JSON ({err.msg}, column {err.colno}); every line must be one "
                "JSON object",
            ) from None
        if not isinstance(rec, dict):
            raise ConfigError(
                f"{path} line {n}", f"must be a JSON object, got {type(rec).__name__}"
            )
        out.append((n, rec))
    return out


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _event(record: dict[str, Any], where: str) -> RoundEvent:
    """One ledger record as a validated event (see the module docstring for what is left out)."""
    fmt = record.get("format")
    if fmt != LEDGER_FORMAT or not _is_int(fmt):
        if _is_int(fmt) and fmt > LEDGER_FORMAT:
            message = (
                f"is {fmt}, a newer ledger format than this fedpriv reads (format "
                f"{LEDGER_FORMAT}); audit the run with the fedpriv version that wrote it or a "
                "newer one"
            )
        else:
            message = f"must be {LEDGER_FORMAT}, got {fmt!r}"
        raise ConfigError(f"{where} (format)", message)
    checked = dict(record)
    _optional_number(checked.pop("noise_std", None), f"{where} (noise_std)", low=0.0)
    if record.get("mechanism") in DISTRIBUTED_MECHANISMS:
        _optional_number(checked.pop("clip_norm", None), f"{where} (clip_norm)", low=0.0)
    if record.get("sampling") == "fixed":
        _optional_number(checked.pop("sampling_rate", None), f"{where} (sampling_rate)", low=0.0)
    try:
        return RoundEvent.from_dict(checked)
    except ConfigError as err:
        raise ConfigError(f"{where} ({err.field})", err.message) from None
    except TypeError as err:
        raise ConfigError(where, f"is not a ledger record ({err})") from None


def _optional_number(value: Any, field: str, low: float | None = None) -> None:
    if value is None:
        return
    if not _is_number(value) or not math.isfinite(value):
        raise ConfigError(field, f"must be a finite number, got {value!r}")
    if low is not None and value < low:
        raise ConfigError(field, f"must be >= {low:g}, got {value!r}")


_METRIC_NUMBERS = ("clients", "clip_norm", "noise_std", "denominator")


def _metrics_row(row: dict[str, Any], where: str) -> dict[str, Any]:
    if not _is_int(row.get("round")) or row["round"] < 0:
        raise ConfigError(f"{where} (round)", f"must be an integer >= 0, got {row.get('round')!r}")
    for key in _METRIC_NUMBERS:
        _optional_number(row.get(key), f"{where} ({key})")
    eps = row.get("epsilon")
    if eps is not None and (not _is_number(eps) or math.isnan(eps) or eps < 0):
        raise ConfigError(f"{where} (epsilon)", f"must be a number >= 0, got {eps!r}")
    if not isinstance(row.get("replay", False), bool):
        raise ConfigError(f"{where} (replay)", f"must be true or false, got {row['replay']!r}")
    return row


def _read_summary(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    if not path.is_file():
        raise ConfigError(str(path), "is not a regular file")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(str(path), f"cannot be read ({err})") from None
    except json.JSONDecodeError as err:
        raise ConfigError(
            str(path),
            f"is not valid JSON ({err.msg}, line {err.lineno}); it must be the one JSON object "
            "fedpriv-train writes when a run ends",
        ) from None
    if not isinstance(summary, dict):
        raise ConfigError(str(path), f"must be a JSON object, got {type(summary).__name__}")

    def bad(key: str, what: str) -> ConfigError:
        value = summary.get(key) if "." not in key else get(summary, key)
        return ConfigError(f"{path} ({key})", f"must be {what}, got {value!r}")

    for key in (
        "rounds",
        "planned_rounds",
        "ledger_events",
        "replayed_rounds",
        "resumed_from",
        "canaries",
    ):
        if key in summary and not (_is_int(summary[key]) and summary[key] >= 0):
            raise bad(key, "an integer >= 0")
    if "population" in summary and not (
        _is_int(summary["population"]) and summary["population"] >= 1
    ):
        raise bad("population", "an integer >= 1")
    if "delta" in summary and not (_is_number(summary["delta"]) and 0.0 < summary["delta"] < 1.0):
        raise bad("delta", "a number in (0, 1)")
    if "accountant" in summary and not isinstance(summary["accountant"], str):
        raise bad("accountant", "the name of an accountant")
    if "epsilon" in summary:
        eps = summary["epsilon"]
        if not isinstance(eps, dict) or not all(
            isinstance(k, str) and (v is None or (_is_number(v) and not math.isnan(v) and v >= 0))
            for k, v in eps.items()
        ):
            raise ConfigError(
                f"{path} (epsilon)",
                "must be an object of accountant names to numbers >= 0 (null or Infinity: no "
                f"finite guarantee), got {eps!r}",
            )
    spent = summary.get("epsilon_spent")
    if spent is not None and not (_is_number(spent) and not math.isnan(spent) and spent >= 0):
        raise bad("epsilon_spent", "a number >= 0 or null")
    for key in ("sampling", "privacy", "data", "versions"):
        if summary.get(key) is not None and not isinstance(summary[key], dict):
            raise bad(key, "a JSON object")
    kind = get(summary, "sampling.kind")
    if kind is not None and not isinstance(kind, str):
        raise bad("sampling.kind", "a string")
    return summary
