"""``fedpriv-report``: a privacy-utility table and figures from run or multirun directories.

Examples::

    fedpriv-report multirun/2026-11-28/10-00-00           # writes into .../report/
    fedpriv-report multirun/a multirun/b --out report/     # several sweeps in one report

Reads only the files of the run directory contract; groups runs by the keys the sweep
varied, aggregates over seeds (mean and std), prints the table and writes ``report.md``,
``report.csv``, ``runs.csv`` and PNG/SVG figures. Runs that crashed or did not finish are
listed, not fatal. A path that is not a run or multirun directory exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fedpriv import expose_cpu_devices, validation
from fedpriv.errors import ConfigError, exit_on_config_error
from fedpriv.report import make_report
from fedpriv.report.runs import find_runs


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line and exit 2, as for other bad input
        raise ConfigError("fedpriv-report", message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="fedpriv-report",
        description="Privacy-utility table and figures from fedpriv run or multirun directories.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="run or multirun directories")
    p.add_argument(
        "--out",
        metavar="DIR",
        help="where to write the report (default: PATH/report for one PATH; required for more)",
    )
    return p


@exit_on_config_error
def main(argv: Sequence[str] | None = None) -> int:
    expose_cpu_devices()
    args = _parser().parse_args(argv)
    if args.out is None and len(args.paths) > 1:
        raise ConfigError("--out", "required when more than one PATH is given")
    out = Path(args.out) if args.out else Path(args.paths[0]) / "report"
    find_runs(args.paths)  # every path is checked before anything is written
    validation.check_output_dir(out, "--out")
    report = make_report(args.paths, out)
    print(report.markdown.split("\n## ")[0].rstrip())
    for run in report.problems:
        print(f"{run.status}: {run.path}: {run.reason}", file=sys.stderr)
    print(f"report written to {out}/ ({', '.join(f.name for f in report.files)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
