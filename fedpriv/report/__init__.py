"""Reports over run and multirun directories: a privacy-utility table and figures.

>>> from fedpriv.report import make_report          # doctest: +SKIP
>>> report = make_report(["multirun/2026-11-28/10-00-00"], "report")  # doctest: +SKIP
>>> print(report.markdown)                           # doctest: +SKIP

Only the files of the run directory contract are read; runs that crashed or did not finish
are listed in the report, never a reason for it to fail.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

from fedpriv.report import plots
from fedpriv.report.runs import FAILED, FINISHED, UNFINISHED, Run, read_runs, swept_keys
from fedpriv.report.tables import Group, group_runs, table_rows, to_csv, to_markdown

__all__ = [
    "FAILED",
    "FINISHED",
    "UNFINISHED",
    "Group",
    "Report",
    "Run",
    "group_runs",
    "make_report",
    "read_runs",
    "swept_keys",
    "table_rows",
]


@dataclasses.dataclass
class Report:
    """What :func:`make_report` found and wrote.

    Attributes:
        runs: every run read; ``keys``: the swept keys; ``groups``: runs grouped by setting;
        rows: the table (one dict per group); ``markdown``: the Markdown text of the report;
        files: the files written.
    """

    runs: list[Run]
    keys: list[str]
    groups: list[Group]
    rows: list[dict]
    markdown: str
    files: list[Path]

    @property
    def problems(self) -> list[Run]:
        """Runs that did not finish (crashed, killed, or still running)."""
        return [r for r in self.runs if r.status != FINISHED]


def make_report(paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> Report:
    """Reads the runs under ``paths`` and writes the report into ``out_dir``.

    Writes ``report.md``, ``report.csv`` (one row per setting: accuracy and epsilon as mean
    and std over seeds), ``runs.csv`` (one row per run with its status),
    ``privacy_utility.{png,svg}`` (accuracy vs epsilon, when runs are private) and
    ``accuracy_vs_round.{png,svg}``.

    Raises:
        ConfigError: a path does not exist or holds no run directory.
    """
    runs = read_runs(paths)
    keys = swept_keys(runs)
    groups = group_runs(runs, keys)
    rows = table_rows(groups)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [*plots.privacy_utility(groups, keys, out / "privacy_utility")]
    files += plots.accuracy_vs_round(runs, groups, keys, out / "accuracy_vs_round")
    text = _markdown(runs, keys, rows, [f for f in files if f.suffix == ".png"])
    for name, content in (
        ("report.md", text),
        ("report.csv", to_csv(rows)),
        ("runs.csv", to_csv([_run_row(r, keys) for r in runs])),
    ):
        (out / name).write_text(content, encoding="utf-8")
        files.append(out / name)
    return Report(runs, keys, groups, rows, text, files)


def _run_row(run: Run, keys: Sequence[str]) -> dict:
    return {
        "path": str(run.path),
        "status": run.status,
        **{k: run.value(k) for k in keys},
        "rounds": run.rounds,
        "planned_rounds": run.planned_rounds,
        "test_accuracy": run.accuracy,
        "epsilon": run.epsilon,
        "reason": run.reason,
    }


def _markdown(runs: Sequence[Run], keys: Sequence[str], rows: list[dict], pngs: list[Path]) -> str:
    done = sum(r.status == FINISHED for r in runs)
    swept = ", ".join(f"`{k}`" for k in keys) or "nothing (a single setting)"
    lines = [
        "# fedpriv report",
        "",
        f"{len(runs)} runs, {done} finished. Swept: {swept}. Accuracy and epsilon are the "
        "mean ± std over seeds of finished runs.",
        "",
        to_markdown(rows, keys),
    ]
    problems = [r for r in runs if r.status != FINISHED]
    if problems:
        lines += ["## Runs that did not finish", ""]
        lines += [f"- {r.status}: `{r.path}`: {r.reason}" for r in problems]
        lines.append("")
    for png in pngs:
        lines += [f"![{png.stem}]({png.name})", ""]
    return "\n".join(lines)
