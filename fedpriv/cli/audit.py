"""``fedpriv-audit``: is a run's privacy claim supported by what ran?

Examples::

    fedpriv-audit outputs/2025-01-01/12-00-00            # table; reports into the run dir
    fedpriv-audit RUN_DIR --out audits/run1               # reports elsewhere
    fedpriv-audit RUN_DIR --json                          # one JSON object on stdout

Reads only the run directory's files (``.hydra/config.yaml``, ``ledger.jsonl``,
``metrics.jsonl``, ``summary.json``, and ``canaries.json`` for the empirical audit), recomputes
epsilon with every accountant that supports the ledger, runs the consistency checks and writes
``audit.json``, ``audit.md`` and ``audit.html`` (``audit.png`` with canaries). It never changes
the run's own files.

Exit status: 0 when every check passes (or the run claims no differential privacy), 1 when a
check fails, 2 for bad input (one line on stderr, nothing written).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fedpriv import expose_cpu_devices
from fedpriv.audit import _render
from fedpriv.audit.verdict import audit_run
from fedpriv.errors import ConfigError, exit_on_config_error


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fedpriv-audit",
        description="Audit a run's privacy claim: recompute epsilon from its ledger with "
        "independent accountants, check that what ran is what was accounted, and compare with "
        "an empirical estimate when the run inserted canaries.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run directory fedpriv-train wrote")
    p.add_argument(
        "--out",
        metavar="DIR",
        help="write audit.json, audit.md and audit.html here (default: RUN_DIR)",
    )
    p.add_argument(
        "--json", action="store_true", help="print the report as one JSON object, not a table"
    )
    p.add_argument(
        "--confidence",
        type=float,
        default=0.95,
        metavar="C",
        help="confidence of the empirical lower bound, in (0, 1) (default %(default)g)",
    )
    return p


@exit_on_config_error
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fedpriv-audit``; returns (and exits with) the exit status."""
    expose_cpu_devices()
    args = _parser().parse_args(argv)
    if not 0.0 < args.confidence < 1.0:
        raise ConfigError("--confidence", f"must be in (0, 1), got {args.confidence!r}")
    out_dir = Path(args.out) if args.out else Path(args.run_dir)
    if args.out:
        _render.check_out_dir(out_dir)
    report = audit_run(args.run_dir, confidence=args.confidence)
    written = _render.write_reports(report, out_dir)
    if args.json:
        print(_render.json_report(report), end="", flush=True)
    else:
        text = _render.text_report(report)
        shown = ", ".join(p.name for p in written)
        print(f"{text}reports: {shown} in {out_dir}", flush=True)
    status = report.exit_status
    if argv is None:
        sys.exit(status)
    return status


if __name__ == "__main__":
    main()
