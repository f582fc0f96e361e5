"""Computations behind the reproduced figures: rounds to a target, the FedAvg table, series."""

from pathlib import Path

import pytest

from fedpriv.errors import ConfigError
from fedpriv.report.curves import (
    epsilon_at,
    fedavg_setting,
    fedavg_table,
    format_rounds,
    linear_fit,
    read_records,
    rounds_to_target,
    series,
)
from fedpriv.report.runs import FINISHED, Run

SUMMARY = {
    "data": {
        "clients": 100,
        "train_examples": 1400,
        "examples_per_client": {"min": 14, "median": 14, "max": 15},
    }
}


def run(partition, epochs, batch, lr, accs, model="mlp"):
    return Run(
        path=Path(f"/runs/{partition}-{epochs}-{batch}-{lr}"),
        status=FINISHED,
        overrides={
            "dataset.partition.kind": partition,
            "client.epochs": str(epochs),
            "client.batch_size": str(batch),
            "client.lr": str(lr),
        },
        choices={"model": model},
        summary=SUMMARY,
        curve=[(i + 1, a) for i, a in enumerate(accs)],
    )


def test_rounds_to_target_is_the_first_evaluated_round_at_or_above_it():
    assert rounds_to_target([(2, 0.5), (4, 0.9), (6, 0.8)], 0.9) == 4
    assert rounds_to_target([(1, 0.5)], 0.9) is None
    assert rounds_to_target([], 0.5) is None


def test_fedavg_setting_recognises_fedsgd_and_computes_u():
    s = fedavg_setting(run("iid", 1, 16, 0.3, [0.1]))
    assert s.is_fedsgd and s.full_batch and s.label == "FedSGD" and s.updates_per_round == 1.0
    s = fedavg_setting(run("iid", 5, 10, 0.3, [0.1]))
    assert not s.is_fedsgd and s.label == "E=5, B=10" and s.updates_per_round == pytest.approx(7.0)
    assert fedavg_setting(run("iid", 5, 15, 0.3, [0.1])).label == "E=5, B=∞"


def test_fedavg_table_keeps_the_best_learning_rate_and_divides_by_fedsgd():
    runs = [
        run("iid", 1, 16, 0.3, [0.5, 0.7, 0.8, 0.9]),  # FedSGD: 4 rounds
        run("iid", 1, 16, 1.0, [0.5, 0.6, 0.7, 0.8]),  # never reaches
        run("iid", 5, 10, 0.1, [0.7, 0.9, 0.9, 0.9]),  # 2 rounds
        run("iid", 5, 10, 0.3, [0.9, 0.9, 0.9, 0.9]),  # 1 round: kept
        run("shards", 1, 16, 0.3, [0.5, 0.6, 0.7, 0.8]),  # FedSGD never reaches (4 rounds run)
        run("shards", 5, 10, 0.3, [0.5, 0.9, 0.9, 0.9]),
        run("iid", 1, 16, 0.3, [0.1], model="cnn"),  # no target for the CNN: left out
    ]
    rows = fedavg_table(runs, {"mlp": 0.9})
    by = {(r["partition"], r["setting"]): r for r in rows}
    assert len(rows) == 4
    assert by[("IID", "FedSGD")]["rounds"] == 4 and by[("IID", "FedSGD")]["lr"] == 0.3
    avg = by[("IID", "E=5, B=10")]
    assert avg["lr"] == 0.3 and avg["rounds"] == 1 and avg["speedup"] == 4.0
    assert format_rounds(avg) == "1 (4.0×)" and format_rounds(by[("IID", "FedSGD")]) == "4"
    non_iid = by[("non-IID", "E=5, B=10")]
    assert non_iid["speedup"] == 2.0 and non_iid["speedup_is_lower_bound"]
    assert format_rounds(non_iid) == "2 (≥ 2.0×)"
    assert format_rounds(by[("non-IID", "FedSGD")]) == "> 4"


def test_fedavg_setting_needs_population_statistics():
    bare = run("iid", 1, 16, 0.3, [0.1])
    bare.summary = {}
    with pytest.raises(ConfigError):
        fedavg_setting(bare)


def test_read_records_series_and_linear_fit(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(
        "\n".join(
            f'{{"n": {n}, "d": {d}, "kb": {0.5 + 2.5 * d / 1024 * (1 + n / 100)}}}'
            for n in (10, 20)
            for d in (1000, 100, 10000)
        )
        + "\n"
    )
    recs = read_records(path)
    lines = series(recs, "d", "kb", by=["n"])
    assert list(lines) == [(10,), (20,)]
    xs, ys = lines[(10,)]
    assert xs == [100, 1000, 10000]
    slope, intercept, r2 = linear_fit(xs, ys)
    assert slope * 1024 == pytest.approx(2.5 * 1.1) and intercept == pytest.approx(0.5)
    assert r2 == pytest.approx(1.0)
    assert series(recs, "d", "kb", where={"n": 20})[()][0] == [100, 1000, 10000]
    with pytest.raises(ConfigError):
        linear_fit([1, 1], [2, 3])
    with pytest.raises(ConfigError):
        read_records(tmp_path / "missing.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(ConfigError, match="bad.jsonl:2"):
        read_records(tmp_path / "bad.jsonl")


def test_epsilon_at_finds_the_record_or_says_which_is_missing():
    recs = [{"accountant": "rdp", "steps": 100, "epsilon": 0.5}]
    assert epsilon_at(recs, "rdp", 100) == 0.5
    with pytest.raises(ConfigError, match="pld"):
        epsilon_at(recs, "pld", 100)
