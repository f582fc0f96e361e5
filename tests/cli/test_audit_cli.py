"""``fedpriv-audit`` from the shell: the table, the reports, exit statuses, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.audit import runs
from tests.conftest import run_cli

AUDIT = "fedpriv.cli.audit"
RUN_FILES = ("ledger.jsonl", "metrics.jsonl", "summary.json", ".hydra/config.yaml")


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """A private and a non-private run made by ``fedpriv-train`` itself."""
    root = tmp_path_factory.mktemp("cli_runs")
    made = {}
    for name, privacy in (
        ("private", ["privacy=user_dp", "privacy.noise_multiplier=1.0"]),
        ("none", ["privacy=none"]),
    ):
        proc = run_cli(
            "fedpriv.train",
            "experiment=debug",
            "progress=false",
            "sampling=poisson",
            "sampling.rate=0.3",
            *privacy,
            f"hydra.run.dir={root / name}",
        )
        assert proc.returncode == 0, proc.stderr
        made[name] = root / name
    return made


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    return {name: (run_dir / name).read_bytes() for name in RUN_FILES if (run_dir / name).exists()}


def test_honest_run_passes_prints_the_table_and_writes_reports(cli_runs, tmp_path):
    run_dir = runs.copy_run(cli_runs["private"], tmp_path / "r")
    before = _snapshot(run_dir)
    proc = run_cli(AUDIT, str(run_dir))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for name in ("rdp", "pld", "prv", "opacus_rdp", "dp_accounting RDP", "opacus PRV"):
        assert name in out
    for check in ("sampling", "noise", "denominator", "rounds", "delta", "replay"):
        assert check in out
    assert "PASS: the run's privacy claim" in out and "FAIL" not in out
    assert "Traceback" not in proc.stderr
    report = json.loads((run_dir / "audit.json").read_text())
    assert report["verdict"] == "PASS" and report["exit_status"] == 0
    assert {c["name"] for c in report["checks"]} >= {"denominator", "reported_epsilon"}
    assert "<html" in (run_dir / "audit.html").read_text()
    assert "# Privacy audit: PASS" in (run_dir / "audit.md").read_text()
    assert _snapshot(run_dir) == before  # the run's own files are never touched


def test_json_prints_one_object_and_out_writes_elsewhere(cli_runs, tmp_path):
    run_dir = runs.copy_run(cli_runs["private"], tmp_path / "r")
    out_dir = tmp_path / "reports" / "r"
    proc = run_cli(AUDIT, str(run_dir), "--json", "--out", str(out_dir))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["verdict"] == "PASS"
    rows = {r["accountant"]: r for r in report["accounting"]["accountants"]}
    assert rows["rdp"]["agrees"] and rows["pld"]["recomputed"] <= rows["rdp"]["recomputed"]
    assert sorted(p.name for p in out_dir.iterdir()) == ["audit.html", "audit.json", "audit.md"]
    assert not list(run_dir.glob("audit.*"))


def test_a_broken_run_exits_1_and_names_the_check(cli_runs, tmp_path):
    run_dir = runs.copy_run(cli_runs["private"], tmp_path / "r")
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["epsilon"]["rdp"] = 0.1
    (run_dir / "summary.json").write_text(json.dumps(summary))
    proc = run_cli(AUDIT, str(run_dir))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL" in proc.stdout and "failed reported_epsilon" in proc.stdout
    assert json.loads((run_dir / "audit.json").read_text())["exit_status"] == 1


def test_a_run_without_privacy_has_nothing_to_audit(cli_runs, tmp_path):
    run_dir = runs.copy_run(cli_runs["none"], tmp_path / "r")
    proc = run_cli(AUDIT, str(run_dir))
    assert proc.returncode == 0, proc.stderr
    assert "no differential privacy claimed" in proc.stdout
    assert json.loads((run_dir / "audit.json").read_text())["verdict"] == "NO DP"


def _truncate_ledger(run_dir: Path) -> None:
    text = (run_dir / "ledger.jsonl").read_text()
    (run_dir / "ledger.jsonl").write_text(text[: len(text) - 40])


def _newer_format(run_dir: Path) -> None:
    ledger = runs.lines(run_dir / "ledger.jsonl")
    ledger[-1]["format"] = 2
    ledger[-1]["privacy_unit_v2"] = "user"
    runs.write_lines(run_dir / "ledger.jsonl", ledger)


def _bad_summary_json(run_dir: Path) -> None:
    (run_dir / "summary.json").write_text('{"rounds": 3, "epsilon": {"rdp": 1.0')


def _bad_summary_field(run_dir: Path) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["epsilon"] = [1.0, 2.0]
    (run_dir / "summary.json").write_text(json.dumps(summary))


def _not_a_run(run_dir: Path) -> None:
    shutil.rmtree(run_dir / ".hydra")
    (run_dir / "metrics.jsonl").unlink()


BAD_INPUTS = [
    ("missing", None, "RUN_DIR", "does not exist"),
    ("not a run", _not_a_run, "RUN_DIR", "is not a run directory"),
    ("truncated ledger", _truncate_ledger, "ledger.jsonl line 3", "cut short mid-record"),
    ("newer ledger format", _newer_format, "ledger.jsonl line 3 (format)", "newer ledger format"),
    ("summary not JSON", _bad_summary_json, "summary.json", "is not valid JSON"),
    ("summary field", _bad_summary_field, "summary.json (epsilon)", "accountant names"),
]


@pytest.mark.parametrize("case,edit,field,fragment", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    cli_runs, tmp_path, case, edit, field, fragment
):
    run_dir = tmp_path / "r"
    if edit is not None:
        runs.copy_run(cli_runs["private"], run_dir)
        edit(run_dir)
    before = _snapshot(run_dir) if run_dir.exists() else {}
    proc = run_cli(AUDIT, str(run_dir))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("fedpriv: error: ") and field in lines[0] and fragment in lines[0]
    assert "Traceback" not in proc.stderr and not proc.stdout
    if run_dir.exists():
        assert not list(run_dir.glob("audit.*")) and _snapshot(run_dir) == before


def test_the_console_script_is_installed(tmp_path):
    # pip puts console scripts next to the interpreter; the venv need not be on PATH.
    beside = Path(sys.executable).parent / "fedpriv-audit"
    script = str(beside) if beside.exists() else shutil.which("fedpriv-audit")
    assert script is not None
    proc = subprocess.run(
        [script, str(tmp_path / "nowhere")], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and proc.stderr.startswith("fedpriv: error: RUN_DIR: ")
