"""The Laplace mechanism (``privacy=user_dp_laplace``), checked against independent sources:
scipy's Laplace distribution, L1 norms of built neighbouring cohorts computed with numpy, and
the closed-form privacy profile of the Laplace mechanism."""

import json
import math
import re
import shlex
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dp_accounting.rdp import rdp_privacy_accountant
from scipy import stats

from fedpriv import accounting
from fedpriv.errors import ConfigError
from fedpriv.fl.aggregators import as_aggregator
from fedpriv.fl.sampling import build_sampler
from fedpriv.privacy import mechanisms
from fedpriv.privacy.mechanisms.user_dp_laplace import LaplaceDpFedAvg, laplace_fedavg
from fedpriv.privacy.plan import build_plan
from fedpriv.settings import LocalTraining
from tests.conftest import REPO, run_cli

ZERO_TREE = {"w": jnp.zeros((200, 100)), "b": jnp.zeros((50,))}
NO_STATS = {"clipped": 0.0, "norm": 0.0}
DOC = REPO / "docs" / "guides" / "writing-a-mechanism.md"


def _flat(tree):
    return np.concatenate([np.ravel(np.asarray(v, np.float64)) for v in jax.tree.leaves(tree)])


def _aggregator(clip_norm, z, m=1.0):
    return as_aggregator(laplace_fedavg(clip_norm, z, m))


def _noise(agg, key):
    mean, _, metrics = agg.finalize(ZERO_TREE, 0.0, NO_STATS, agg.init(), key)
    return _flat(mean), metrics


def _record(z, sampling="full", rnd=1, **extra):
    """A Laplace ledger record written out by hand (format 1)."""
    rec = {
        "format": 1,
        "round": rnd,
        "mechanism": "laplace",
        "unit": "user",
        "sampling": sampling,
        "population": 100,
        "noise_multiplier": z,
        "clip_norm": 1.0,
        "noise_std": math.sqrt(2.0) * z,
        "steps": 1,
        "example_sampling_rate": None,
    }
    rec.update(extra)
    return rec


@pytest.mark.parametrize("z,c", [(1.0, 1.0), (0.5, 3.0), (4.0, 0.2)])
def test_noise_is_laplace_with_scale_z_times_c(z, c):
    """KS test of the released noise against scipy's Laplace(0, z C), and its moments."""
    agg = _aggregator(c, z)
    draws, metrics = _noise(agg, jax.random.key(0))  # 20,050 coordinates
    scale = z * c
    assert stats.kstest(draws, stats.laplace(scale=scale).cdf).pvalue > 1e-3
    # The Laplace std is sqrt(2) b; 20,050 draws estimate it within about 1%.
    assert abs(draws.std() / (math.sqrt(2) * scale) - 1) < 0.04
    assert abs(np.mean(np.abs(draws)) / scale - 1) < 0.03  # E|X| = b
    np.testing.assert_allclose(float(metrics["noise_std"]), math.sqrt(2) * scale, rtol=1e-6)
    # And not Gaussian of the same std: the KS test tells the two apart.
    assert stats.kstest(draws / draws.std(), "norm").pvalue < 1e-6


def test_same_key_same_noise_different_key_different_noise():
    agg = _aggregator(1.0, 1.0)
    a, _ = _noise(agg, jax.random.key(3))
    b, _ = _noise(agg, jax.random.key(3))
    c, _ = _noise(agg, jax.random.key(4))
    np.testing.assert_array_equal(a, b)
    assert abs(np.corrcoef(a, c)[0, 1]) < 0.05


def _cohort_sum(agg, updates, mask):
    contrib, weight, stats_ = jax.vmap(agg.contribution, in_axes=(0, None, 0, None))(
        updates, jnp.asarray(1.0), mask, agg.init()
    )
    return _flat(jax.tree.map(lambda x: x.sum(0), contrib)), stats_


def test_l1_sensitivity_on_built_neighbouring_cohorts():
    """Adding (or replacing) one client with an enormous update moves the pre-noise sum by at
    most C (2C) in L1 norm, measured with numpy on the built cohorts."""
    c = 0.7
    agg = _aggregator(c, 1.0, 10.0)
    rng = np.random.default_rng(0)
    base = rng.normal(size=(11, 40)).astype(np.float32) * 0.01
    huge = rng.normal(size=40).astype(np.float32) * 1e4
    mask_d = jnp.asarray([1.0] * 10 + [0.0])  # slot 10 empty: D
    with_extra = base.copy()
    with_extra[10] = huge
    mask_d1 = jnp.asarray([1.0] * 11)  # D plus one client
    replaced = base.copy()
    replaced[3] = -huge  # one client replaced by another enormous one
    s_d, _ = _cohort_sum(agg, {"u": jnp.asarray(base)}, mask_d)
    s_add, st = _cohort_sum(agg, {"u": jnp.asarray(with_extra)}, mask_d1)
    s_rep, _ = _cohort_sum(agg, {"u": jnp.asarray(replaced)}, mask_d)
    add = np.abs(s_add - s_d).sum()
    assert float(st["norm"][10]) > 1000 * c  # the added update really was huge
    assert 0.99 * c < add <= c * (1 + 1e-5)  # clipped to C in L1, not dropped
    rep = np.abs(s_rep - s_d).sum()
    assert rep <= 2 * c * (1 + 1e-5)
    mech = mechanisms.get("user_dp_laplace")
    assert mech.sensitivity(mechanisms.ADD_OR_REMOVE_ONE, c) == pytest.approx(c)
    assert mech.sensitivity(mechanisms.REPLACE_ONE, c) == pytest.approx(2 * c)
    # Clipping leaves small updates alone.
    np.testing.assert_allclose(s_d, base[:10].sum(0), rtol=1e-5, atol=1e-7)


def _rdp_slack(delta: float) -> float:
    """What converting pure DP through RDP at dp_accounting's largest order can add:
    ``log(1 / delta) / (alpha_max - 1)`` (Mironov 2017, Proposition 3)."""
    alpha_max = max(rdp_privacy_accountant.DEFAULT_RDP_ORDERS)
    return math.log(1.0 / delta) / (alpha_max - 1.0)


def _exact_laplace_epsilon(eps0: float, delta: float) -> float:
    """The tight epsilon at delta of one Laplace mechanism with pure epsilon ``eps0``:
    its privacy profile is ``delta(eps) = 1 - exp((eps - eps0) / 2)`` on ``[0, eps0]``
    (the hockey-stick divergence of two Laplace distributions one sensitivity apart)."""
    return max(0.0, eps0 + 2.0 * math.log1p(-delta))


@pytest.mark.parametrize("z", [0.5, 1.0, 2.0])
def test_one_full_round_epsilon_is_the_closed_form(z):
    delta = 1e-5
    exact = _exact_laplace_epsilon(1.0 / z, delta)
    pld = accounting.epsilon([_record(z)], delta, "pld")
    # PLD is pessimistic: at least the exact value, above by at most its discretisation.
    assert exact - 1e-9 <= pld <= exact + 1e-3
    rdp = accounting.epsilon([_record(z)], delta, "rdp")
    # An upper bound; above the pure epsilon by at most the RDP-to-DP conversion's slack.
    assert exact - 1e-9 <= rdp <= 1.0 / z + _rdp_slack(delta)


def test_full_participation_epsilon_is_at_most_rounds_over_z():
    z, rounds, delta = 2.0, 20, 1e-5
    ledger = [_record(z, rnd=r) for r in range(1, rounds + 1)]
    pure = rounds / z  # basic composition of pure DP
    assert 0 < accounting.epsilon(ledger, delta, "pld") <= pure * (1 + 1e-6)
    assert 0 < accounting.epsilon(ledger, delta, "rdp") <= pure + _rdp_slack(delta)
    # More rounds cost more; sampling clients at rate q costs less (amplification).
    poisson = [_record(z, "poisson", r, sampling_rate=0.1) for r in range(1, rounds + 1)]
    assert accounting.epsilon(poisson, delta, "pld") < accounting.epsilon(ledger, delta, "pld")


def test_unsupported_accountants_say_so():
    poisson = [_record(1.0, "poisson", sampling_rate=0.1)]
    assert accounting.supported_accountants(poisson) == ["pld"]
    assert accounting.supported_accountants([_record(1.0)]) == ["rdp", "pld"]
    fixed = [_record(1.0, "fixed", cohort_size=10)]
    assert accounting.supported_accountants(fixed) == ["rdp"]
    for ledger, name in ((poisson, "rdp"), (poisson, "prv"), ([_record(1.0)], "opacus_rdp")):
        with pytest.raises(ConfigError) as err:
            accounting.epsilon(ledger, 1e-5, name)
        assert err.value.field == "accountant" and "Laplace" in err.value.message
    tracker = accounting.EpsilonTracker(1e-5, "prv")
    with pytest.raises(ConfigError, match="Laplace"):
        tracker.add(_record(1.0))


def test_fixed_cohorts_are_accounted_without_amplification_under_replace_one():
    """Replace-one doubles the L1 sensitivity: one round of a fixed cohort costs what a full
    round with half the noise multiplier costs, the pure bound 2 / z."""
    z, delta = 2.0, 1e-5
    fixed = accounting.epsilon([_record(z, "fixed", cohort_size=10)], delta, "rdp")
    half = accounting.epsilon([_record(z / 2, "full")], delta, "rdp")
    assert fixed == pytest.approx(half, rel=1e-12)
    assert fixed <= 2 / z + _rdp_slack(delta)


def test_a_bad_record_names_the_field():
    with pytest.raises(ConfigError, match="noise_std"):
        accounting.as_events([_record(1.0, noise_std=1.0)])  # the Gaussian std, not sqrt(2) z C


def _plan(**privacy):
    cfg = {"name": "user_dp_laplace", **privacy}
    return build_plan(
        cfg, build_sampler("fixed", 20, 5, None), LocalTraining(batch_size=2), rounds=3
    )


def test_calibration_is_one_sided():
    plan = _plan(target_epsilon=2.0, delta=1e-3)
    record = plan.mechanism.planned_record(plan)
    spent = accounting.epsilon([record] * 3, 1e-3, "rdp")
    assert spent <= 2.0
    smaller = {**record, "noise_multiplier": plan.noise_multiplier * 0.99}
    smaller["noise_std"] *= 0.99
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert accounting.epsilon([smaller] * 3, 1e-3, "rdp") > 2.0
    assert isinstance(plan.mechanism, LaplaceDpFedAvg)


def test_config_errors_name_the_privacy_field():
    with pytest.raises(ConfigError) as err:
        _plan(clip_norm=-1.0, noise_multiplier=1.0)
    assert err.value.field == "privacy.clip_norm"
    with pytest.raises(ConfigError) as err:
        _plan(noise_multiplier=1.0, accountant="prv")
    assert err.value.field == "privacy.accountant"
    poisson = build_sampler("poisson", 20, None, 0.5)
    with pytest.raises(ConfigError) as err:
        build_plan({"name": "user_dp_laplace", "noise_multiplier": 1.0}, poisson, rounds=1)
    assert err.value.field == "privacy.accountant" and "pld" in err.value.message
    with pytest.raises(ValueError, match="clip_norm must be > 0"):
        laplace_fedavg(-1.0, 1.0, 1.0)


def test_ledger_record_is_format_one_and_round_trips():
    plan = _plan(noise_multiplier=1.5)
    agg = plan.aggregator("count")
    _, _, metrics = agg.finalize(ZERO_TREE, 0.0, NO_STATS, agg.init(), jax.random.key(0))
    record = plan.ledger_record(2, metrics)
    event = accounting.RoundEvent.from_dict(json.loads(json.dumps(record)))
    assert event.mechanism == "laplace" and event.neighboring_relation == "replace-one"
    assert mechanisms.for_record(event) is plan.mechanism
    assert event.noise_std == pytest.approx(math.sqrt(2) * 1.5, rel=1e-6)


def _doc_commands() -> list[str]:
    """The shell commands of the guide's ``bash`` blocks, in order."""
    text = DOC.read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    lines = [ln.strip() for block in blocks for ln in block.splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def test_documented_commands_train_and_audit_a_laplace_run(tmp_path):
    """Runs every shell command docs/guides/writing-a-mechanism.md shows, as shown (the run
    directory relative to a fresh work directory)."""
    commands = _doc_commands()
    assert commands == [
        "fedpriv-train experiment=debug privacy=user_dp_laplace hydra.run.dir=runs/laplace",
        "fedpriv-audit runs/laplace",
    ]
    modules = {"fedpriv-train": "fedpriv.cli.train", "fedpriv-audit": "fedpriv.cli.audit"}
    outputs = []
    for command in commands:
        script, *args = shlex.split(command)
        extra = ["progress=false"] if script == "fedpriv-train" else []
        proc = run_cli(modules[script], *args, *extra, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout + proc.stderr)
    run_dir = tmp_path / "runs" / "laplace"
    ledger = [json.loads(x) for x in (run_dir / "ledger.jsonl").read_text().splitlines()]
    assert len(ledger) == 3 and {r["mechanism"] for r in ledger} == {"laplace"}
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epsilon"]["rdp"] <= 4.0 and summary["privacy"]["name"] == "user_dp_laplace"
    assert "PASS" in outputs[1]
    audit = json.loads((run_dir / "audit.json").read_text())
    assert audit["verdict"] == "PASS"
