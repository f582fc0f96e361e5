"""Grouping runs by what a sweep varied, and the privacy-utility table.

Runs that differ only in the seed form one group; a group's accuracy and epsilon are the mean
and standard deviation over its finished runs (sample standard deviation, ``ddof=1``; 0 for a
single seed).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Sequence
from typing import Any

from fedpriv.report.runs import FINISHED, Run

#: Keys that repeat a setting rather than change it: aggregated over.
REPEAT_KEYS = ("seed",)
#: Keys that set the privacy budget: the x axis of the privacy-utility curve.
BUDGET_KEYS = ("privacy.target_epsilon", "privacy.noise_multiplier", "privacy.stop_at_epsilon")


@dataclasses.dataclass
class Group:
    """Runs with the same setting of the swept keys, seeds aside.

    Attributes:
        setting: ``key -> value`` for the swept keys (seeds excluded).
        runs: the group's runs, finished or not.
    """

    setting: dict[str, Any]
    runs: list[Run]

    @property
    def finished(self) -> list[Run]:
        return [r for r in self.runs if r.status == FINISHED]

    def stat(self, field: str) -> tuple[float | None, float | None]:
        """Mean and standard deviation of ``field`` over finished runs (None if none)."""
        vals = [getattr(r, field) for r in self.finished if getattr(r, field) is not None]
        if not vals:
            return None, None
        mean = math.fsum(vals) / len(vals)
        if len(vals) == 1:
            return mean, 0.0
        var = math.fsum((v - mean) ** 2 for v in vals) / (len(vals) - 1)
        return mean, math.sqrt(var)

    def wall_seconds(self) -> float | None:
        vals = [r.summary.get("wall_seconds") for r in self.finished]
        vals = [float(v) for v in vals if isinstance(v, (int, float))]
        return math.fsum(vals) / len(vals) if vals else None


def group_runs(runs: Sequence[Run], keys: Sequence[str]) -> list[Group]:
    """Groups ``runs`` by their values of ``keys`` (minus :data:`REPEAT_KEYS`), in order of
    first appearance, sorted by numeric value where the values are numbers."""
    group_keys = [k for k in keys if k not in REPEAT_KEYS]
    groups: dict[tuple, Group] = {}
    for run in runs:
        setting = {k: run.value(k) for k in group_keys}
        ident = tuple(str(setting[k]) for k in group_keys)
        groups.setdefault(ident, Group(setting, [])).runs.append(run)
    return sorted(groups.values(), key=lambda g: tuple(_sort_key(v) for v in g.setting.values()))


def _sort_key(value: Any) -> tuple:
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def table_rows(groups: Sequence[Group]) -> list[dict[str, Any]]:
    """One row per group: the setting, seeds, accuracy and epsilon (mean, std)."""
    rows = []
    for g in groups:
        acc, acc_sd = g.stat("accuracy")
        eps, eps_sd = g.stat("epsilon")
        deltas = {r.delta for r in g.finished if r.delta is not None}
        rounds = {r.rounds for r in g.finished}
        rows.append(
            {
                **{k: v for k, v in g.setting.items()},
                "runs": len(g.runs),
                "finished": len(g.finished),
                "accuracy_mean": acc,
                "accuracy_std": acc_sd,
                "epsilon_mean": eps,
                "epsilon_std": eps_sd,
                "delta": deltas.pop() if len(deltas) == 1 else None,
                "rounds": rounds.pop() if len(rounds) == 1 else None,
                "wall_seconds": g.wall_seconds(),
            }
        )
    return rows


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as CSV text, numbers at full precision, empty cells for missing values."""
    if not rows:
        return ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buf.getvalue()


def to_markdown(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> str:
    """The rows as a Markdown table: accuracy and epsilon as ``mean ± std``."""
    if not rows:
        return "(no runs)\n"
    keys = [k for k in keys if k not in REPEAT_KEYS]
    head = [*keys, "seeds", "test accuracy", "epsilon", "delta", "rounds", "time (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for row in rows:
        seeds = (
            f"{row['finished']}/{row['runs']}" if row["finished"] != row["runs"] else row["runs"]
        )
        cells = [
            *(_cell(row[k]) for k in keys),
            str(seeds),
            _pm(row["accuracy_mean"], row["accuracy_std"], 4),
            _pm(row["epsilon_mean"], row["epsilon_std"], 3),
            "-" if row["delta"] is None else f"{row['delta']:.0e}",
            "-" if row["rounds"] is None else str(row["rounds"]),
            "-" if row["wall_seconds"] is None else f"{row['wall_seconds']:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    """A setting as a table cell: numbers to 4 significant digits, missing as ``-``."""
    if value is None:
        return "-"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return str(value) if number.is_integer() and "." not in str(value) else f"{number:.4g}"


def _pm(mean: float | None, sd: float | None, digits: int) -> str:
    if mean is None:
        return "-"
    shown = f"{mean:.{digits}f}"
    return f"{shown} ± {sd:.{digits}f}" if sd and round(sd, digits) > 0 else shown
