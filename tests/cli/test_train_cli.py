import json
from pathlib import Path

import pytest

from tests.conftest import run_cli

DEBUG = ["experiment=debug", "progress=false"]

BAD_INPUTS = [
    (["sampling.cohort_size=500"], "sampling.cohort_size", "larger than the population"),
    (["client.lr=0"], "client.lr", "(0, inf]"),
    (["client.lr=-0.5"], "client.lr", "(0, inf]"),
    (["client.batch_size=0"], "client.batch_size", "[1, inf]"),
    (["client.epochs=0"], "client.epochs", "[1, inf]"),
    (["model=resnet"], "model", "choose from ['cnn', 'logreg', 'mlp']"),
    (["model.name=transformer"], "model.name", "choose from"),
    (["dataset.partition.alpha=0"], "dataset.partition.alpha", "(0, inf]"),
    (["dataset.partition.alpha=-1"], "dataset.partition.alpha", "(0, inf]"),
    (["dataset.partition.kind=zipf"], "dataset.partition.kind", "choose from"),
    (["algorithm=fedfoo"], "algorithm", "choose from"),
    (["sampling=poisson", "sampling.rate=1.5"], "sampling.rate", "(0, 1]"),
    (["sampling=poisson", "sampling.rate=0"], "sampling.rate", "(0, 1]"),
    (["rounds=0"], "rounds", "[1, inf]"),
    (["rounds=ten"], "rounds", "must be an integer"),
    (["execution.chunk_size=0"], "execution.chunk_size", "[1, inf]"),
    (["dataset.name=imagenet"], "dataset.name", "choose from"),
]


@pytest.mark.parametrize("overrides,field,fragment", BAD_INPUTS)
def test_bad_config_is_one_line_and_exit_2(tmp_path, overrides, field, fragment):
    run_dir = tmp_path / "run"
    proc = run_cli("fedpriv.train", *DEBUG, *overrides, f"hydra.run.dir={run_dir}")
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert field in lines[0] and fragment in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not run_dir.exists()  # nothing was written


def test_bad_config_does_not_touch_an_earlier_run(tmp_path):
    run_dir = tmp_path / "run"
    ok = run_cli("fedpriv.train", *DEBUG, f"hydra.run.dir={run_dir}")
    assert ok.returncode == 0, ok.stderr
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    for extra in (["client.lr=-1"], []):  # a bad value, and a good one aimed at the same dir
        proc = run_cli("fedpriv.train", *DEBUG, *extra, f"hydra.run.dir={run_dir}")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "already holds a run" in proc.stderr
    after = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert before == after


def _metrics(run_dir: Path):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("seconds")  # wall-clock time is the one field that may differ
    return rows


def test_run_directory_and_determinism(tmp_path):
    dirs = [tmp_path / "a", tmp_path / "b"]
    for d in dirs:
        proc = run_cli("fedpriv.train", *DEBUG, "rounds=4", f"hydra.run.dir={d}")
        assert proc.returncode == 0, proc.stderr
        last = proc.stdout.strip().splitlines()[-1]
        assert "test accuracy" in last and str(d) in last
    for d in dirs:
        assert (d / ".hydra" / "config.yaml").exists()
        summary = json.loads((d / "summary.json").read_text())
        assert summary["rounds"] == 4 and "jax" in summary["versions"]
        assert 0.0 <= summary["final"]["test_accuracy"] <= 1.0
    a, b = _metrics(dirs[0]), _metrics(dirs[1])
    assert len(a) == 4 and [r["round"] for r in a] == [1, 2, 3, 4]
    assert a == b
    assert all("train_loss" in r and "test_accuracy" in r for r in a)


def test_multirun_sweep(tmp_path):
    proc = run_cli("fedpriv.train", "-m", *DEBUG, "algorithm=fedavg,fedadam", "seed=0,1",
                   f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    jobs = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert len(jobs) == 4
    for job in jobs:
        assert (job / "summary.json").exists() and (job / "metrics.jsonl").exists()


def test_sampling_and_models_from_the_shell(tmp_path):
    proc = run_cli("fedpriv.train", *DEBUG, "sampling=poisson", "sampling.rate=0.3",
                   "model=cnn", "algorithm=fedyogi", f"hydra.run.dir={tmp_path / 'r'}")
    assert proc.returncode == 0, proc.stderr
    rows = _metrics(tmp_path / "r")
    assert len({r["clients"] for r in rows}) >= 1 and all(r["clients"] >= 0 for r in rows)


@pytest.mark.slow
def test_default_run_reaches_90_percent(tmp_path):
    proc = run_cli("fedpriv.train", "progress=false", f"hydra.run.dir={tmp_path / 'r'}")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["final"]["test_accuracy"] >= 0.90
    assert summary["wall_seconds"] < 180
