"""Minimum-separation sampling (sampling=min_separation): the participation pattern over a
whole run, the Poisson variant's cohort against its stationary expectation, draws out of
order against draws in order, and a correlated-noise run that resumes bit-identically and
passes its audit (which re-draws every cohort from the seed)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from fedpriv.fl.sampling import MinSeparation, Participation
from tests.audit import runs


def _keys(seed: int):
    root = jax.random.key(seed)
    return lambda t: jax.random.fold_in(root, t)


def _run(sampler: MinSeparation, rounds: int, seed: int = 0):
    keys = _keys(seed)
    return [sampler.sample(keys(t), t) for t in range(1, rounds + 1)]


@pytest.mark.parametrize("size,rate", [(6, None), (None, 0.3)])
def test_no_client_takes_part_closer_than_the_separation_or_more_often(size, rate):
    population, b, rounds = 40, 5, 60
    sampler = MinSeparation(population, b, size, rate)
    assert sampler.participation(rounds) == Participation(5, 12)
    when: dict[int, list[int]] = {}
    for t, (ids, mask) in enumerate(_run(sampler, rounds), start=1):
        chosen = ids[mask].tolist()
        assert len(set(chosen)) == len(chosen)
        if size is not None:
            assert len(chosen) == size
        for cid in chosen:
            when.setdefault(cid, []).append(t)
    for cid, ts in when.items():
        assert all(q - p >= b for p, q in zip(ts, ts[1:])), (cid, ts)
        assert len(ts) <= 12
    # every client gets its turns: the sampler does not starve anyone
    assert len(when) == population


def test_the_poisson_cohort_matches_its_stationary_expectation():
    population, b, q, rounds = 400, 4, 0.2, 600
    sampler = MinSeparation(population, b, None, q)
    sizes = [int(mask.sum()) for _, mask in _run(sampler, rounds)][50:]  # past the warm-up
    expected = q * population / (1 + q * (b - 1))
    assert sampler.expected_size == pytest.approx(expected)
    # the round sizes are correlated over a few rounds; 3% of the mean is many std errors
    assert np.mean(sizes) == pytest.approx(expected, rel=0.03)
    assert max(sizes) <= sampler.capacity


def test_a_round_drawn_out_of_order_replays_the_earlier_rounds():
    sampler = MinSeparation(30, 3, 4, None)
    in_order = _run(sampler.bind(_keys(1)), 20, seed=1)
    fresh = sampler.bind(_keys(1))
    ids, mask = fresh.sample(_keys(1)(17), 17)
    np.testing.assert_array_equal(ids, in_order[16][0])
    again = fresh.sample(_keys(1)(3), 3)  # backwards: replayed from round 1
    np.testing.assert_array_equal(again[0], in_order[2][0])
    with pytest.raises(ValueError, match="MinSeparation.bind"):
        MinSeparation(30, 3, 4, None).sample(_keys(1)(5), 5)


def test_a_correlated_noise_run_resumes_bit_identically_and_passes_its_audit(tmp_path):
    from fedpriv.audit import audit_run

    common = (
        "privacy=dp_ftrl",
        "privacy.strategy=banded",
        "privacy.bands=2",
        "privacy.noise_multiplier=1.0",
        "privacy.target_epsilon=null",
        "sampling=min_separation",
        "sampling.separation=3",
        "sampling.cohort_size=4",
    )
    straight = runs.train(tmp_path / "a", *common, "rounds=7")
    resumed = runs.train_resumed(tmp_path / "b", *common, rounds=7, every=3)
    with np.load(straight / "final_params.npz") as a, np.load(resumed / "final_params.npz") as b:
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])
    report = audit_run(resumed)
    assert report.exit_status == 0, report.to_dict()
    ledger = runs.lines(resumed / "ledger.jsonl")
    assert {(r["sampling"], r["min_separation"], r["max_participations"]) for r in ledger} == {
        ("min_separation", 3, 3)
    }


def test_the_audit_fails_a_sampler_with_an_off_by_one_separation(tmp_path, monkeypatch):
    """A planted bug: a client eligible one round early. The ledger still claims separation
    3; the audit re-draws every cohort from the seed and finds two participations 2 apart."""
    from fedpriv.audit import audit_run

    def early(self, key, rnd):
        last = self._draws["last"]
        eligible = np.flatnonzero(last <= rnd - self.separation + 1)
        chosen = np.sort(
            np.random.default_rng(int(rnd)).choice(eligible, self.cohort_size, replace=False)
        )
        last[chosen] = rnd
        out = (chosen.astype(np.int64), np.ones(len(chosen), bool))
        self._draws.update(round=rnd, cohort=out)
        return out

    monkeypatch.setattr(MinSeparation, "_draw", early)
    run = runs.train(
        tmp_path / "run",
        "privacy=dp_ftrl",
        "privacy.noise_multiplier=1.0",
        "privacy.target_epsilon=null",
        "sampling=min_separation",
        "sampling.separation=3",
        "sampling.cohort_size=6",
        "rounds=8",
    )
    report = audit_run(run)
    assert report.exit_status == 1
    assert "closer than the claimed separation 3" in str(report.to_dict())
