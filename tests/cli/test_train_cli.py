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
    (["model=resnet"], "model", "choose from ['char_lstm', 'cnn', 'cnn_cifar', 'logreg', 'mlp'"),
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
    (["privacy=user_dp", "privacy.noise_multiplier=-1"], "privacy.noise_multiplier", "[0, inf]"),
    (["privacy=user_dp", "privacy.clip_norm=0"], "privacy.clip_norm", "(0, inf]"),
    (["privacy=user_dp", "privacy.clip_norm=-2"], "privacy.clip_norm", "(0, inf]"),
    (
        ["privacy=user_dp_adaptive", "privacy.adaptive.target_quantile=1.5"],
        "privacy.adaptive.target_quantile",
        "(0, 1)",
    ),
    (
        ["privacy=user_dp_adaptive", "privacy.adaptive.target_quantile=0"],
        "privacy.adaptive.target_quantile",
        "(0, 1)",
    ),
    (["privacy=user_dp", "privacy.delta=1"], "privacy.delta", "(0, 1)"),
    (["privacy=user_dp", "privacy.target_epsilon=0"], "privacy.target_epsilon", "(0, inf]"),
    (["privacy=user_dp", "privacy.accountant=moments"], "privacy.accountant", "choose from"),
    (["privacy=dp"], "privacy", "choose from"),
    # A key no choice of a typed group has (a typo) is refused; see tests/test_settings.py.
    (["+client.lrr=0.1"], "client.lrr", "is not a setting of client"),
    (["+secagg.bitz=16"], "secagg.bitz", "is not a setting of secagg"),
    (["+sampling.size=5"], "sampling.size", "is not a setting of sampling"),
    # Participation the mechanism's accounting does not cover, or a setting it cannot run.
    (["privacy=user_dp", "sampling=cyclic", "sampling.groups=4"], "sampling.kind", "not 'cyclic'"),
    (
        ["sampling=cyclic", "sampling.groups=4", "sampling.cohort_size=6"],
        "sampling.cohort_size",
        "smallest group",
    ),
    (["privacy=dp_ftrl", "privacy.strategy=trees"], "privacy.strategy", "choose from"),
    (
        ["privacy=dp_ftrl", "privacy.strategy=blt", "sampling=cyclic_poisson"],
        "privacy.strategy",
        "strategy=banded only",
    ),
    (
        ["privacy=dp_ftrl", "privacy.bands=12", "sampling=cyclic_poisson"],
        "privacy.bands",
        "at most sampling.groups=10 bands",
    ),
    (["privacy=user_dp", "sampling=cyclic_poisson"], "sampling.kind", "not 'cyclic_poisson'"),
    (
        ["privacy=dp_ftrl", "sampling=min_separation", "sampling.rate=0.1"],
        "sampling.cohort_size",
        "exactly one of",
    ),
    (
        ["privacy=dp_ftrl", "sampling=min_separation", "sampling.separation=5"],
        "sampling.cohort_size",
        "dataset.num_clients / sampling.separation",
    ),
    (["privacy=dp_ftrl", "privacy.buffers=16"], "privacy.buffers", "[1, 15]"),
    (
        ["privacy=dp_ftrl", "sampling=cyclic", "sampling.groups=4", "secagg=fast"],
        "secagg.mode",
        "secagg=none",
    ),
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
    """The metrics lines with their diagnostics merged in, wall-clock time left out (the one
    field that may differ between identical runs)."""
    from fedpriv.privacy.release import flatten

    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    rows = [flatten(json.loads(line)) for line in lines]
    for row in rows:
        row.pop("seconds")
        row["diagnostics"].pop("seconds")
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


def test_compilation_cache_is_filled_and_a_cached_round_gives_the_same_run(tmp_path):
    cache = tmp_path / "xla"
    dirs = [tmp_path / "compiled", tmp_path / "loaded"]
    for d in dirs:
        proc = run_cli(
            "fedpriv.train",
            *DEBUG,
            "privacy=user_dp",
            "privacy.noise_multiplier=1.0",
            f"execution.compilation_cache={cache}",
            f"hydra.run.dir={d}",
        )
        assert proc.returncode == 0, proc.stderr
        assert any(cache.iterdir())  # the first run wrote its compiled programs
    assert _metrics(dirs[0]) == _metrics(dirs[1])
    assert (dirs[0] / "ledger.jsonl").read_text() == (dirs[1] / "ledger.jsonl").read_text()

    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    run_dir = tmp_path / "bad"
    proc = run_cli(
        "fedpriv.train",
        *DEBUG,
        f"execution.compilation_cache={not_a_dir}",
        f"hydra.run.dir={run_dir}",
    )
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "execution.compilation_cache" in lines[0] and "not a directory" in lines[0]
    assert not run_dir.exists() and not_a_dir.read_text() == "x"


def test_multirun_sweep(tmp_path):
    proc = run_cli(
        "fedpriv.train",
        "-m",
        *DEBUG,
        "algorithm=fedavg,fedadam",
        "seed=0,1",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr
    jobs = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert len(jobs) == 4
    for job in jobs:
        assert (job / "summary.json").exists() and (job / "metrics.jsonl").exists()


def test_sampling_and_models_from_the_shell(tmp_path):
    # The training guide's command (model, server optimizer, local epochs and batch) on the
    # debug preset's 20 clients, with Poisson sampling, for one round.
    proc = run_cli(
        "fedpriv.train",
        *DEBUG,
        "rounds=1",
        "sampling=poisson",
        "sampling.rate=0.3",
        "model=cnn",
        "algorithm=fedadam",
        "client.epochs=5",
        "client.batch_size=10",
        f"hydra.run.dir={tmp_path / 'r'}",
    )
    assert proc.returncode == 0, proc.stderr
    rows = _metrics(tmp_path / "r")
    assert len({r["clients"] for r in rows}) >= 1 and all(r["clients"] >= 0 for r in rows)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["rounds"] == 1 and summary["final"]["test_accuracy"] >= 0.0


@pytest.mark.slow
def test_default_run_is_private_and_reaches_90_percent(tmp_path):
    proc = run_cli("fedpriv.train", "progress=false", f"hydra.run.dir={tmp_path / 'r'}")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["final"]["test_accuracy"] >= 0.90
    assert summary["diagnostics"]["wall_seconds"] < 180
    # The default calibrates user-level DP-FedAvg to epsilon 4 (one-sided) under RDP.
    assert summary["privacy"]["unit"] == "user" and summary["sampling"]["kind"] == "poisson"
    assert 3.9 < summary["epsilon"]["rdp"] <= 4.0
    assert summary["epsilon"]["pld"] <= summary["epsilon"]["rdp"]
    assert summary["delta"] < 1 / summary["population"]
    # The population's statistics, as `fedpriv-data describe` prints them (a diagnostic).
    stats = summary["diagnostics"]["data"]
    assert stats["clients"] == summary["population"] == 1000
    assert stats["train_examples"] + stats["test_examples"] == 1797
    assert 1 <= stats["mean_classes_per_client"] <= 10 and 0 < stats["mean_tv_distance"] < 1
    last = proc.stdout.strip().splitlines()[-1]
    assert "test accuracy" in last and "epsilon 4.000" in last and "delta 1e-04" in last
    assert str(tmp_path / "r") in last and "seeded noise" in last


def test_noise_multiplier_on_the_command_line_replaces_the_target(tmp_path):
    proc = run_cli(
        "fedpriv.train",
        *DEBUG,
        "privacy=user_dp",
        "privacy.noise_multiplier=2.0",
        f"hydra.run.dir={tmp_path / 'r'}",
    )
    assert proc.returncode == 0, proc.stderr
    assert {e["noise_multiplier"] for e in _ledger(tmp_path / "r")} == {2.0}
    both = run_cli(
        "fedpriv.train",
        *DEBUG,
        "privacy=user_dp",
        "privacy.noise_multiplier=2.0",
        "privacy.target_epsilon=3",
        f"hydra.run.dir={tmp_path / 's'}",
    )
    assert both.returncode == 2 and "not both" in both.stderr


def test_target_epsilon_is_met_and_stop_at_epsilon_stops(tmp_path):
    proc = run_cli(
        "fedpriv.train",
        *DEBUG,
        "privacy=user_dp",
        "privacy.target_epsilon=6",
        "sampling=poisson",
        "sampling.rate=0.5",
        "rounds=6",
        "privacy.stop_at_epsilon=4",
        f"hydra.run.dir={tmp_path / 'r'}",
    )
    assert proc.returncode == 0, proc.stderr
    eps = [m["epsilon"] for m in _metrics(tmp_path / "r")]
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert eps[-1] >= 4 and all(e < 4 for e in eps[:-1]) and len(eps) < 6
    assert summary["rounds"] == len(eps) == len(_ledger(tmp_path / "r"))
    assert summary["privacy"]["target_epsilon"] == 6


@pytest.mark.parametrize(
    "overrides, field, words",
    [
        ((), "privacy.example_sampling_rate", "declared rate"),
        (("client.max_examples=4", "client.batch_size=5"), "client.batch_size", "max_examples"),
    ],
)
def test_example_dp_needs_a_declared_rate(tmp_path, overrides, field, words):
    """Example-level DP never derives its sampling rate from the loaded data (the smallest
    client's size is private): without a declared rate or cap the run stops."""
    proc = run_cli(
        "fedpriv.train",
        *DEBUG,
        "privacy=example_dp",
        *overrides,
        f"hydra.run.dir={tmp_path / 'r'}",
    )
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"fedpriv: error: {field}:"), proc.stderr
    assert words in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


def _ledger(run_dir):
    path = run_dir / "ledger.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize("privacy", ["user_dp", "user_dp_adaptive", "example_dp"])
def test_private_runs_write_one_ledger_line_per_round(tmp_path, privacy):
    run_dir = tmp_path / "r"
    extra = ["client.batch_size=2", "client.max_examples=4"] if privacy == "example_dp" else []
    proc = run_cli(
        "fedpriv.train",
        *DEBUG,
        f"privacy={privacy}",
        "privacy.noise_multiplier=1.0",
        "rounds=4",
        *extra,
        f"hydra.run.dir={run_dir}",
    )
    assert proc.returncode == 0, proc.stderr
    ledger = _ledger(run_dir)
    assert [e["round"] for e in ledger] == [1, 2, 3, 4]
    unit = "example" if privacy == "example_dp" else "user"
    assert all(e["unit"] == unit and e["noise_multiplier"] == 1.0 for e in ledger)
    assert all(e["sampling"] == "fixed" and e["population"] == 20 for e in ledger)
    metrics = _metrics(run_dir)
    eps = [m["epsilon"] for m in metrics]
    assert all(b >= a for a, b in zip(eps, eps[1:])) and eps[0] > 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epsilon"]["rdp"] == pytest.approx(eps[-1], rel=1e-9)


def test_no_privacy_writes_no_ledger(tmp_path):
    proc = run_cli("fedpriv.train", *DEBUG, "privacy=none", f"hydra.run.dir={tmp_path / 'r'}")
    assert proc.returncode == 0, proc.stderr
    assert _ledger(tmp_path / "r") == []
    assert "epsilon" not in _metrics(tmp_path / "r")[0]


def test_shakespeare_trains_the_char_lstm_end_to_end(tmp_path):
    from tests.data.format_writers import write_shakespeare

    write_shakespeare(tmp_path / "leaf")
    proc = run_cli(
        "fedpriv.train",
        "dataset=shakespeare",
        f"dataset.root={tmp_path / 'leaf'}",
        "model=char_lstm",
        "model.hidden=16",
        "privacy=none",
        "sampling=fixed",
        "sampling.cohort_size=2",
        "rounds=2",
        "eval_every=1",
        "progress=false",
        f"hydra.run.dir={tmp_path / 'r'}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["population"] == 3 and summary["diagnostics"]["data"]["num_classes"] == 81
    assert 0.0 <= summary["final"]["test_accuracy"] <= 1.0


@pytest.mark.parametrize(
    "command",
    [
        # The privacy guide's (docs/guides/privacy.md) example-level DP command, for 2 rounds.
        "privacy=example_dp privacy.example_sampling_rate=0.5 client.batch_size=2 "
        "sampling=fixed sampling.cohort_size=50",
        # The privacy guide's run directory to share.
        "privacy.noise_source=secure privacy.release=strict",
    ],
)
def test_readme_privacy_commands(tmp_path, command):
    run_dir = tmp_path / "r"
    # Shrunk: 2 rounds of the logistic model over 100 clients.
    proc = run_cli(
        "fedpriv.train",
        *command.split(),
        "rounds=2",
        "model=logreg",
        "dataset.num_clients=100",
        "progress=false",
        f"hydra.run.dir={run_dir}",
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    last = proc.stdout.strip().splitlines()[-1]
    assert "test accuracy" in last and summary["rounds"] == 2
    if "secure" in command:
        assert summary["noise_source"] == "secure" and summary["release"] == "strict"
        assert "seeded noise" not in last and "diagnostics" not in summary
    else:
        assert summary["privacy"]["unit"] == "example" and "seeded noise" in last
