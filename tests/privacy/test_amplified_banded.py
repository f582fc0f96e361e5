"""Banded matrix factorisation amplified by cyclic Poisson sampling (sampling=cyclic_poisson),
checked against jax_privacy's amplified_bandmf_event, dp_accounting's Poisson-subsampled
Gaussian composed directly, the sampler's draws over a whole run, and a run's audit."""

from __future__ import annotations

import json
import math

import dp_accounting
import jax
import pytest
import scipy.stats
from jax_privacy.experimental import accounting as jp_accounting

from fedpriv import accounting
from fedpriv.errors import ConfigError
from fedpriv.fl.sampling import CyclicPoisson, Participation
from fedpriv.privacy.plan import build_plan
from fedpriv.settings import LocalTraining
from tests.audit import runs


def _plan(sampler, rounds, **privacy):
    return build_plan(
        {"name": "dp_ftrl", "strategy": "banded", **privacy},
        sampler,
        LocalTraining(batch_size=2),
        rounds=rounds,
    )


def test_the_sampler_draws_each_client_only_in_its_groups_rounds_at_the_rate():
    sampler = CyclicPoisson(population=203, groups=5, rate=0.3)
    rounds = 400
    assert sampler.participation(rounds) == Participation(5, 80)
    joined: dict[int, list[int]] = {}
    for t in range(1, rounds + 1):
        ids, mask = sampler.sample(jax.random.fold_in(jax.random.key(4), t), t)
        assert len(ids) == sampler.capacity or mask.all()
        for cid in ids[mask].tolist():
            joined.setdefault(cid, []).append(t)
    for cid, when in joined.items():
        assert {(t - 1) % 5 for t in when} == {cid % 5}
        assert all(q - p >= 5 for p, q in zip(when, when[1:]))
    # Each of a client's 80 eligible rounds is an independent draw at rate 0.3: the total
    # count of joins over all clients is Binomial(203 * 80, 0.3).
    total = sum(len(w) for w in joined.values())
    assert scipy.stats.binomtest(total, 203 * 80, 0.3).pvalue > 1e-4


@pytest.mark.parametrize("rounds,groups,rate,z", [(100, 10, 0.2, 1.2), (37, 4, 0.05, 0.8)])
def test_the_ledger_is_jax_privacys_amplified_bandmf_event(rounds, groups, rate, z):
    plan = _plan(CyclicPoisson(1000, groups, rate), rounds, bands=groups, noise_multiplier=z)
    corr = plan.correlation
    assert corr.amplified and corr.run_sensitivity == pytest.approx(1.0, abs=1e-6)
    records = plan.mechanism.planned_records(plan)
    assert [r["round"] for r in records if r["sensitivity_increment"] > 0] == list(
        range(1, rounds + 1, groups)
    )
    assert all(r["sampling"] == "cyclic_poisson" and r["sampling_rate"] == rate for r in records)
    event = jp_accounting.amplified_bandmf_event(z, rounds, num_bands=groups, sampling_prob=rate)
    pld = dp_accounting.pld.PLDAccountant()
    pld.compose(event)
    assert accounting.epsilon(records, 1e-5, "pld") == pytest.approx(
        pld.get_epsilon(1e-5), rel=1e-3
    )
    # and the same, composed here by hand under RDP: ceil(n / b) subsampled Gaussians
    rdp = dp_accounting.rdp.RdpAccountant()
    gaussian = dp_accounting.GaussianDpEvent(z)
    rdp.compose(dp_accounting.PoissonSampledDpEvent(rate, gaussian), math.ceil(rounds / groups))
    assert accounting.epsilon(records, 1e-5, "rdp") == pytest.approx(
        rdp.get_epsilon(1e-5), rel=1e-3
    )
    # at the same noise, less than without amplification: k participations of sensitivity
    # 1 each are one Gaussian of multiplier z / sqrt(k)
    unamplified = dp_accounting.pld.PLDAccountant()
    unamplified.compose(dp_accounting.GaussianDpEvent(z / math.sqrt(math.ceil(rounds / groups))))
    assert accounting.epsilon(records, 1e-5, "pld") < unamplified.get_epsilon(1e-5)


def test_calibration_to_a_target_is_one_sided():
    plan = _plan(CyclicPoisson(1000, 10, 0.1), 60, bands=4, target_epsilon=2.0, delta=1e-5)
    records = plan.mechanism.planned_records(plan)
    assert 0.97 * 2.0 <= accounting.epsilon(records, 1e-5, "pld") <= 2.0


def test_amplification_is_refused_where_the_theorem_does_not_apply():
    with pytest.raises(ConfigError) as err:
        _plan(CyclicPoisson(100, 5, 0.2), 20, strategy="blt", noise_multiplier=1.0)
    assert err.value.field == "privacy.strategy"
    with pytest.raises(ConfigError) as err:
        _plan(CyclicPoisson(100, 5, 0.2), 20, bands=6, noise_multiplier=1.0)
    assert err.value.field == "privacy.bands"


def test_an_amplified_run_passes_its_audit_and_a_ledger_claiming_more_fails(tmp_path):
    from fedpriv.audit import audit_run

    run = runs.train(
        tmp_path / "run",
        "privacy=dp_ftrl",
        "privacy.strategy=banded",
        "privacy.bands=2",
        "privacy.noise_multiplier=1.0",
        "privacy.target_epsilon=null",
        "sampling=cyclic_poisson",
        "sampling.groups=3",
        "sampling.rate=0.3",
        "rounds=7",
    )
    assert audit_run(run).exit_status == 0
    ledger = runs.lines(run / "ledger.jsonl")
    assert [r["round"] for r in ledger if r["sensitivity_increment"] > 0] == [1, 4, 7]
    # A planted understatement: a release claimed on only one round of the three.
    for r in ledger:
        if r["round"] > 1:
            r["sensitivity_increment"] = 0.0
    (run / "ledger.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ledger))
    report = audit_run(run)
    assert report.exit_status == 1
    assert "sensitivity_increment" in json.dumps(report.to_dict())


def test_fedpriv_account_answers_for_amplified_banded_noise(capsys):
    from fedpriv.cli import account

    args = ["--strategy", "banded", "--bands", "3", "--min-separation", "5", "--rounds", "40"]
    account.main(
        ["--noise-multiplier", "1.5", *args, "--sampling-rate", "0.1", "--delta", "1e-5", "--json"]
    )
    got = json.loads(capsys.readouterr().out)
    event = jp_accounting.amplified_bandmf_event(1.5, 40, num_bands=5, sampling_prob=0.1)
    pld = dp_accounting.pld.PLDAccountant()
    pld.compose(event)
    assert got["pld"] == pytest.approx(pld.get_epsilon(1e-5), rel=1e-3)
