"""The FedProx figure (Li et al. 2020, Figure 1), reduced: FedAvg dropping 90% stragglers
against FedProx (mu = 1) keeping their partial work, on the most heterogeneous synthetic set,
Synthetic(1, 1)."""

import pytest

from fedpriv.report import read_runs
from fedpriv.report.curves import read_records, series
from tests.experiments.test_figures import check_drawn, figure


@pytest.mark.slow
def test_fedprox_is_more_stable_and_lower_than_fedavg_under_heavy_stragglers(tmp_path):
    runs = tmp_path / "fedprox"
    record = check_drawn(figure("fedprox", runs), runs, "fedprox_synthetic.png")
    assert record["stragglers"] == [0.9] and set(record["methods"]) == {"fedavg", "fedprox_mu1"}
    curves = {}
    for run in read_runs([runs]):
        assert run.status == "finished", run.path
        assert run.config["compute"]["drop"] is (run.path.parent.name == "fedavg")
        key = (float(run.value("heterogeneity")), run.path.parent.name)
        xs, ys = series(read_records(run.path / "metrics.jsonl"), "round", "global_train_loss")[()]
        assert len(xs) == record["rounds"]
        curves[key] = ys
    assert set(curves) == {(1.0, m) for m in ("fedavg", "fedprox_mu1")}
    for h in (1.0,):
        avg, prox = curves[(h, "fedavg")], curves[(h, "fedprox_mu1")]
        half = len(avg) // 2
        # Li et al. 2020, Fig. 1: with 90% stragglers FedProx (mu > 0) reaches a lower
        # training loss than FedAvg and does not show its oscillations.
        assert sum(prox[-10:]) / 10 < sum(avg[-10:]) / 10, (h, prox[-10:], avg[-10:])
        assert max(prox[half:]) < max(avg[half:]), h
        jumps = lambda ys: sum(max(b - a, 0.0) for a, b in zip(ys[half:], ys[half + 1 :]))
        assert jumps(prox) < jumps(avg), h
