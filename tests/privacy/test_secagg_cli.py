"""``fedpriv-train`` with secure aggregation: accuracy against plain sums, distributed DP end
to end, and bad secagg settings (one line, exit 2)."""

import json

import pytest

from tests.audit import runs
from tests.conftest import run_cli

DEBUG = ["experiment=debug", "progress=false", "rounds=8", "eval_every=8"]


def _final(run_dir):
    return json.loads((run_dir / "summary.json").read_text())["final"]["test_accuracy"]


def test_fast_path_with_20_bits_matches_plain_aggregation(tmp_path):
    plain = run_cli("fedpriv.train", *DEBUG, f"hydra.run.dir={tmp_path / 'plain'}")
    secure = run_cli(
        "fedpriv.train", *DEBUG, "secagg=fast", "secagg.bits=20", f"hydra.run.dir={tmp_path / 's'}"
    )
    assert plain.returncode == 0, plain.stderr
    assert secure.returncode == 0, secure.stderr
    assert abs(_final(tmp_path / "s") - _final(tmp_path / "plain")) <= 0.01
    rows = runs.metrics(tmp_path / "s" / "metrics.jsonl")  # the counters are diagnostics
    assert all(r["secagg_sum_overflow"] == 0 and r["secagg_mask_residual"] == 0 for r in rows)


def test_distributed_dp_end_to_end_writes_its_mechanism_to_the_ledger(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(
        "fedpriv.train",
        "experiment=debug",
        "progress=false",
        "secagg=fast",
        "privacy=distributed_dp",
        "privacy.noise=discrete_gaussian",
        f"hydra.run.dir={run_dir}",
    )
    assert proc.returncode == 0, proc.stderr
    ledger = [json.loads(x) for x in (run_dir / "ledger.jsonl").read_text().splitlines()]
    assert ledger and all(r["mechanism"] == "discrete_gaussian" for r in ledger)
    # cohorts of 5 of 20 clients: accounted with amplification by sampling (the default)
    assert all(r["amplification"] == "sampling" for r in ledger)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert list(summary["epsilon"]) == ["rdp"] and summary["epsilon"]["rdp"] <= 4.0 + 1e-9


BAD = [
    (["secagg=fast", "secagg.bits=40"], "secagg.bits", "[2, 32]"),
    (["secagg=fast", "secagg.bits=1"], "secagg.bits", "[2, 32]"),
    (["secagg=protocol", "secagg.threshold=6"], "secagg.threshold", "cohort size"),
    (
        ["secagg=protocol", "secagg.neighbours=2", "secagg.threshold=3"],
        "secagg.threshold",
        "neighbours",
    ),
    (["secagg=protocol", "secagg.dropout=1"], "secagg.dropout", "[0, 1)"),
    (["secagg=protocol", "secagg.dropout=1.5"], "secagg.dropout", "[0, 1)"),
    (["secagg=fast", "secagg.masks=none"], "secagg.masks", "choose from"),
    (["privacy=distributed_dp"], "secagg.mode", "needs secure aggregation"),
    (
        ["secagg=fast", "privacy=distributed_dp", "privacy.noise=laplace"],
        "privacy.noise",
        "choose from",
    ),
    (
        ["secagg=fast", "privacy=distributed_dp", "privacy.amplification=poisson"],
        "privacy.amplification",
        "choose from",
    ),
    (
        ["secagg=fast", "privacy=distributed_dp", "privacy.accountant=pld"],
        "privacy.accountant",
        "rdp",
    ),
]


@pytest.mark.parametrize("overrides,field,fragment", BAD)
def test_bad_secagg_config_is_one_line_and_exit_2(tmp_path, overrides, field, fragment):
    run_dir = tmp_path / "run"
    proc = run_cli("fedpriv.train", "experiment=debug", *overrides, f"hydra.run.dir={run_dir}")
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert field in lines[0] and fragment in lines[0], lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not run_dir.exists()
