"""Checkpoints, resume after SIGKILL and SIGTERM, and a run with a client that emits NaN."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from tests.conftest import REPO, run_cli

PRIVATE = [
    "experiment=debug",
    "progress=false",
    "privacy=user_dp",
    "privacy.noise_multiplier=1.0",
    "checkpoint.every=5",
]
ROUNDS = 60


def _lines(path: Path) -> list[dict]:
    """JSON lines, a metrics line's diagnostics merged into its top level."""
    from fedpriv.privacy.release import flatten

    return [flatten(json.loads(x)) for x in path.read_text().splitlines()] if path.exists() else []


def _params(run_dir: Path) -> dict[str, np.ndarray]:
    with np.load(run_dir / "final_params.npz") as z:
        return {k: z[k] for k in z.files}


def _assert_same_params(a: Path, b: Path) -> None:
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys() and pa
    for k in pa:
        assert pa[k].dtype == pb[k].dtype and np.array_equal(pa[k], pb[k]), k


def _start(run_dir: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, JAX_PLATFORMS="cpu", HYDRA_FULL_ERROR="0")
    args = [*PRIVATE, f"rounds={ROUNDS}", *extra, f"hydra.run.dir={run_dir}"]
    return subprocess.Popen(
        [sys.executable, "-m", "fedpriv.train", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_round(proc: subprocess.Popen, metrics: Path, rnd: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"run ended before round {rnd}: {proc.communicate()}")
        if metrics.exists() and any(r["round"] >= rnd for r in _lines_safe(metrics)):
            return
        time.sleep(0.002)
    raise AssertionError(f"round {rnd} never appeared")


def _lines_safe(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line being written
    return out


def _uninterrupted(tmp_path: Path) -> Path:
    ref = tmp_path / "reference"
    proc = run_cli("fedpriv.train", *PRIVATE, f"rounds={ROUNDS}", f"hydra.run.dir={ref}")
    assert proc.returncode == 0, proc.stderr
    return ref


def test_sigkill_then_resume_is_bit_identical_and_ledger_counts_every_round(tmp_path):
    ref = _uninterrupted(tmp_path)
    run_dir = tmp_path / "killed"
    kill_at = random.randint(3, 30)
    proc = _start(run_dir)
    _wait_for_round(proc, run_dir / "metrics.jsonl", kill_at)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"killed at round {kill_at}"

    ran_before = _lines(run_dir / "ledger.jsonl")
    # Killed before its first checkpoint, a run has no checkpoints directory yet.
    ckpts = run_dir / "checkpoints"
    found = ckpts.iterdir() if ckpts.is_dir() else ()
    steps = sorted(int(p.name) for p in found if p.name.isdigit())
    resumed_from = steps[-1] if steps else 0
    assert len(ran_before) >= kill_at > 0
    assert resumed_from <= len(ran_before) and len(steps) <= 2  # the last two are kept

    again = run_cli(
        "fedpriv.train", *PRIVATE, f"rounds={ROUNDS}", "resume=true", f"hydra.run.dir={run_dir}"
    )
    assert again.returncode == 0, again.stderr
    assert "Traceback" not in again.stderr

    _assert_same_params(ref, run_dir)
    ledger = _lines(run_dir / "ledger.jsonl")
    replayed = len(ran_before) - resumed_from
    assert len(ledger) == ROUNDS + replayed, (kill_at, resumed_from, len(ran_before))
    assert ledger[: len(ran_before)] == ran_before  # nothing that ran was dropped
    marked = [e for e in ledger if e.get("replay")]
    assert len(marked) == replayed
    assert sorted(e["round"] for e in marked) == list(range(resumed_from + 1, len(ran_before) + 1))
    assert sorted(e["round"] for e in ledger if not e.get("replay")) == list(range(1, ROUNDS + 1))

    summary = json.loads((run_dir / "summary.json").read_text())
    ref_summary = json.loads((ref / "summary.json").read_text())
    assert summary["resumed_from"] == resumed_from and summary["replayed_rounds"] == replayed
    assert summary["ledger_events"] == len(ledger)
    assert summary["epsilon"]["rdp"] >= ref_summary["epsilon"]["rdp"]
    if replayed:
        assert summary["epsilon"]["rdp"] > ref_summary["epsilon"]["rdp"]
    metrics = _lines(run_dir / "metrics.jsonl")
    assert [m["round"] for m in metrics] == list(range(1, ROUNDS + 1))
    assert metrics[-1]["epsilon"] == summary["epsilon_spent"]
    ref_metrics = _lines(ref / "metrics.jsonl")
    for m, r in zip(metrics, ref_metrics):
        assert m["train_loss"] == r["train_loss"] and m["test_accuracy"] == r["test_accuracy"]
        assert m["epsilon"] >= r["epsilon"]


def test_sigterm_writes_a_checkpoint_exits_143_and_resumes_identically(tmp_path):
    ref = _uninterrupted(tmp_path)
    run_dir = tmp_path / "term"
    proc = _start(run_dir, "checkpoint.every=0")  # only the checkpoint the signal asks for
    _wait_for_round(proc, run_dir / "metrics.jsonl", 4)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "interrupted by SIGTERM" in err and "resume=true" in err
    done = len(_lines(run_dir / "metrics.jsonl"))
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == [str(done)]
    assert len(_lines(run_dir / "ledger.jsonl")) == done  # checkpointed at the last round
    assert not (run_dir / "summary.json").exists()

    again = run_cli(
        "fedpriv.train",
        *PRIVATE,
        f"rounds={ROUNDS}",
        "checkpoint.every=0",
        "resume=true",
        f"hydra.run.dir={run_dir}",
    )
    assert again.returncode == 0, again.stderr
    _assert_same_params(ref, run_dir)
    ledger = _lines(run_dir / "ledger.jsonl")
    assert [e["round"] for e in ledger] == list(range(1, ROUNDS + 1))
    assert not any(e.get("replay") for e in ledger)
    eps = json.loads((run_dir / "summary.json").read_text())["epsilon"]["rdp"]
    assert eps == json.loads((ref / "summary.json").read_text())["epsilon"]["rdp"]


def test_resume_without_checkpoint_keeps_the_ledger_and_replays(tmp_path):
    run_dir = tmp_path / "r"
    first = run_cli("fedpriv.train", *PRIVATE, "rounds=4", f"hydra.run.dir={run_dir}")
    assert first.returncode == 0, first.stderr
    for p in sorted((run_dir / "checkpoints").iterdir()):  # as if killed before any checkpoint
        for f in sorted(p.rglob("*"), reverse=True):
            f.unlink() if f.is_file() else f.rmdir()
        p.rmdir()
    (run_dir / "summary.json").unlink()
    refused = run_cli("fedpriv.train", *PRIVATE, "rounds=4", f"hydra.run.dir={run_dir}")
    assert refused.returncode == 2 and "already holds a run" in refused.stderr
    again = run_cli(
        "fedpriv.train", *PRIVATE, "rounds=4", "resume=true", f"hydra.run.dir={run_dir}"
    )
    assert again.returncode == 0, again.stderr
    ledger = _lines(run_dir / "ledger.jsonl")
    assert [e["round"] for e in ledger] == [1, 2, 3, 4, 1, 2, 3, 4]
    assert [bool(e.get("replay")) for e in ledger] == [False] * 4 + [True] * 4
    assert len(_lines(run_dir / "metrics.jsonl")) == 4
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["replayed_rounds"] == 4 and summary["resumed_from"] == 0
    # Resuming a finished run runs nothing and changes no parameter.
    before = _params(run_dir)
    done = run_cli("fedpriv.train", *PRIVATE, "rounds=4", "resume=true", f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stderr
    assert len(_lines(run_dir / "ledger.jsonl")) == 8
    after = _params(run_dir)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_a_client_with_nan_data_is_dropped_every_round_and_does_not_poison_the_model(tmp_path):
    common = [
        "experiment=debug",
        "progress=false",
        "rounds=20",
        "sampling.cohort_size=20",
        "model=mlp",
    ]
    clean = run_cli("fedpriv.train", *common, f"hydra.run.dir={tmp_path / 'clean'}")
    faulty = run_cli(
        "fedpriv.train", *common, "faults.nan_clients=[3]", f"hydra.run.dir={tmp_path / 'nan'}"
    )
    assert clean.returncode == 0 and faulty.returncode == 0, faulty.stderr
    rows = _lines(tmp_path / "nan" / "metrics.jsonl")
    assert len(rows) == 20
    assert all(r["nonfinite_clients"] == 1 and r["clients"] == 20 for r in rows)
    assert all(r["train_loss"] is not None and np.isfinite(r["train_loss"]) for r in rows)
    assert all(np.all(np.isfinite(v)) for v in _params(tmp_path / "nan").values())
    acc_nan = json.loads((tmp_path / "nan" / "summary.json").read_text())["final"]
    acc_clean = json.loads((tmp_path / "clean" / "summary.json").read_text())["final"]
    assert acc_nan["test_accuracy"] > 0.5
    assert abs(acc_nan["test_accuracy"] - acc_clean["test_accuracy"]) < 0.1
    assert all(r["nonfinite_clients"] == 0 for r in _lines(tmp_path / "clean" / "metrics.jsonl"))
