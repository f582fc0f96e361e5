"""The privacy ledger: one DP event per round, appended by the mechanism that ran.

``ledger.jsonl`` in the run directory holds one JSON object per round (format 1, see
:mod:`fedpriv.accounting.events`). The file is append-only and flushed after every round, so
a crash loses no round that consumed privacy.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

LEDGER_FILE = "ledger.jsonl"
LEDGER_FORMAT = 1


class LedgerWriter:
    """Appends ledger records to ``run_dir/ledger.jsonl``, flushing each one."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LEDGER_FILE
        self._file = open(self.path, "a", encoding="utf-8")

    def append(self, record: Mapping[str, Any]) -> None:
        self._file.write(json.dumps(dict(record), sort_keys=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> LedgerWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_ledger(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Reads every record of a run's ledger (empty list when the run has none)."""
    path = Path(run_dir) / LEDGER_FILE
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
