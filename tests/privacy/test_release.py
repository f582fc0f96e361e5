"""What the run directory publishes: released values at the top level, diagnostics apart,
and with ``privacy.release=strict`` only what the epsilon covers."""

from __future__ import annotations

import json

import pytest

from fedpriv.privacy import release
from tests.audit import runs

OVERRIDES = (
    "privacy=user_dp_adaptive",
    "privacy.noise_multiplier=1.0",
    "privacy.target_epsilon=null",
    "sampling=poisson",
    "sampling.rate=0.3",
    "rounds=3",
    "+eval_train=true",
)
#: Statistics of the clients' data without noise: never at the top level of a metrics line.
UNNOISED = ("train_loss", "clipped_fraction", "mean_update_norm_preclip", "clients", "local_steps")


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("release")
    return runs.train(tmp / "full", *OVERRIDES), runs.train(
        tmp / "strict", *OVERRIDES, "privacy.release=strict"
    )


def test_diagnostics_are_kept_apart_from_the_release(both):
    full, _ = both
    lines = _lines(full / "metrics.jsonl")
    for line in lines:
        assert set(line) - {"diagnostics"} <= release.RELEASED
        assert all(key in line["diagnostics"] for key in UNNOISED)
        assert "epsilon" in line and "clip_norm" in line and "unclipped_estimate" in line
    ledger = _lines(full / "ledger.jsonl")
    assert not any("realised_cohort" in rec or "dropped" in rec for rec in ledger)
    summary = json.loads((full / "summary.json").read_text())
    assert summary["release"] == "diagnostics"
    assert {"train_loss", "data", "execution", "wall_seconds"} <= set(summary["diagnostics"])
    assert not {"train_loss", "data", "execution", "wall_seconds"} & set(summary)


def test_strict_release_writes_only_what_epsilon_covers(both):
    full, strict = both
    full_lines, strict_lines = _lines(full / "metrics.jsonl"), _lines(strict / "metrics.jsonl")
    text = (strict / "metrics.jsonl").read_text() + (strict / "summary.json").read_text()
    assert "diagnostics" not in text.replace('"release": "strict"', "")
    for key in UNNOISED:
        assert f'"{key}"' not in (strict / "metrics.jsonl").read_text()
    # The same run otherwise: strict leaves out the diagnostics and nothing else.
    assert [{k: v for k, v in x.items() if k != "diagnostics"} for x in full_lines] == strict_lines
    summary = json.loads((strict / "summary.json").read_text())
    assert summary["release"] == "strict" and "diagnostics" not in summary
    assert summary["epsilon"] == json.loads((full / "summary.json").read_text())["epsilon"]


def test_unknown_metrics_are_diagnostics():
    line = release.metrics_line({"round": 1, "epsilon": 0.5, "a_new_statistic": 3.0}, "diagnostics")
    assert line == {"round": 1, "epsilon": 0.5, "diagnostics": {"a_new_statistic": 3.0}}
    assert release.metrics_line({"round": 1, "a_new_statistic": 3.0}, "strict") == {"round": 1}


def test_strict_release_keeps_training_set_evaluation_out(both):
    """``eval_train`` measures the model on the clients' data without noise: a diagnostic of
    the final evaluation and of the checkpoints' last evaluation too."""
    full, strict = both
    summary = json.loads((full / "summary.json").read_text())
    assert set(summary["final"]) == {"test_loss", "test_accuracy"}
    assert "global_train_loss" in summary["diagnostics"]["final"]
    for path in strict.rglob("*"):
        if path.is_file() and path.suffix != ".npz":
            assert "global_train" not in path.read_text(errors="replace"), path


def test_distributed_dp_reports_the_noise_that_the_clients_add(tmp_path):
    run_dir = runs.train(
        tmp_path / "d",
        "privacy=distributed_dp",
        "secagg=fast",
        "privacy.noise_multiplier=2",
        "privacy.target_epsilon=null",
    )
    ledger = _lines(run_dir / "ledger.jsonl")
    metrics = _lines(run_dir / "metrics.jsonl")
    assert [m["noise_std"] for m in metrics] == pytest.approx([r["noise_std"] for r in ledger])
    assert ledger[0]["noise_std"] == pytest.approx(2.0)
