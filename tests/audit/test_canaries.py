"""Canary clients in training, and the empirical audit of honest and broken mechanisms."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hydra import compose, initialize_config_module
from jax.flatten_util import ravel_pytree
from omegaconf import OmegaConf

from fedpriv.audit import audit_run
from fedpriv.audit._render import write_reports
from fedpriv.audit.empirical import empirical_audit
from fedpriv.config import validate
from fedpriv.errors import ConfigError
from fedpriv.fl import loop
from fedpriv.fl.canaries import CanarySpec, direction
from fedpriv.fl.round import RoundInputs, init_server_state, make_round
from fedpriv.privacy import aggregators
from fedpriv.privacy.aggregators import dp_fedavg
from fedpriv.settings import RunConfig
from tests.conftest import run_cli
from tests.fl.helpers import toy_client_update, toy_model, toy_population


def compose_cfg(*overrides):
    """The composed ``fedpriv-train`` configuration (plain dicts), validated."""
    with initialize_config_module("fedpriv.conf", version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    cfg = OmegaConf.to_container(cfg, resolve=True)
    cfg.pop("hydra", None)
    validate(cfg)
    return cfg


def _lines(path):
    """JSON lines, a metrics line's diagnostics merged into its top level."""
    from fedpriv.privacy.release import flatten

    return [flatten(json.loads(x)) for x in path.read_text().splitlines()] if path.exists() else []


# --- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides,fragment",
    [
        (["canaries.count=-1"], "[0, inf]"),
        (["canaries.count=2.5"], "integer"),
        (["canaries.count=3", "canaries.unseen=-2"], "[0, inf]"),
        (["canaries.count=3", "privacy=none"], "one of ['user_dp', 'user_dp_adaptive']"),
        (["canaries.count=3", "privacy=example_dp"], "got privacy=example_dp"),
        (["canaries.count=3", "secagg=fast"], "secagg=none"),
        (["canaries.count=3", "execution.path=lowrank"], "execution.path"),
    ],
)
def test_bad_canary_settings_name_the_field(overrides, fragment):
    with pytest.raises(ConfigError) as err:
        compose_cfg("privacy=user_dp", *overrides)
    field = "canaries.unseen" if "canaries.unseen=-2" in overrides else "canaries.count"
    assert err.value.field == field and fragment in err.value.message


def test_canaries_on_the_command_line_are_checked_before_anything_is_written(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(
        "fedpriv.train", "experiment=debug", "canaries.count=4", f"hydra.run.dir={run_dir}"
    )
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "canaries.count" in lines[0] and "user_dp" in lines[0]
    assert not run_dir.exists()


# --- the round ----------------------------------------------------------------------------------

CLIP = 0.5


def _setup(per_layer=False, noise=0.0, slots=4):
    store = toy_population(20, seed=1)
    model, params = toy_model(store)
    n_cap = int(store.client_sizes.max())
    cu = toy_client_update(model, n_cap)
    agg = dp_fedavg(CLIP, noise, float(slots), per_layer=per_layer)
    sopt = optax.sgd(1.0)
    state = init_server_state(params, sopt, agg)
    spec = CanarySpec(
        first_id=store.num_clients,
        count=5,
        unseen=5,
        key=jax.random.key(11),
        per_layer=per_layer,
    )
    return store, params, cu, agg, sopt, state, spec, n_cap


def _inputs(store, ids, real, n_cap):
    """A cohort batch as the loop builds it: canary slots hold no data."""
    ids, real = np.asarray(ids), np.asarray(real, bool)
    batch = RoundInputs(*store.gather(ids, real, n_cap))
    mask = (ids >= 0).astype(np.float32)
    return batch._replace(client_mask=mask, client_ids=np.where(ids >= 0, ids, -1).astype(np.int32))


@pytest.mark.parametrize("noise", [0.0, 1.0])
def test_round_without_canaries_in_the_cohort_is_bit_equal(noise):
    store, params, cu, agg, sopt, state, spec, n_cap = _setup(noise=noise)
    inputs = _inputs(store, [3, 7, 12, -1], [1, 1, 1, 0], n_cap)
    key = jax.random.key(4)
    plain = jax.jit(make_round(cu, agg, sopt, 2))(state, inputs, key)
    with_spec = jax.jit(make_round(cu, agg, sopt, 2, canaries=spec))(state, inputs, key)
    for a, b in zip(jax.tree.leaves(plain[0]), jax.tree.leaves(with_spec[0])):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    for name in ("train_loss", "clients", "local_steps", "update_norm", "clipped_fraction"):
        assert np.array_equal(plain[1][name], with_spec[1][name]), name
    assert int(with_spec[1]["canaries"]) == 0


@pytest.mark.parametrize("per_layer", [False, True])
def test_canary_slots_contribute_their_direction_at_the_clip_norm(per_layer):
    store, params, cu, agg, sopt, state, spec, n_cap = _setup(per_layer=per_layer)
    n = store.num_clients
    key = jax.random.key(4)
    both = _inputs(store, [3, 7, n, n + 2], [1, 1, 0, 0], n_cap)
    only_real = _inputs(store, [3, 7, -1, -1], [1, 1, 0, 0], n_cap)
    round_fn = jax.jit(make_round(cu, agg, sopt, 2, canaries=spec))
    new, metrics = round_fn(state, both, key)
    real, real_metrics = round_fn(state, only_real, key)
    # Mean update = (sum of clipped real updates + C u_0 + C u_2) / 4.
    planted = (ravel_pytree(new.params)[0] - ravel_pytree(real.params)[0]) * 4
    u = [ravel_pytree(direction(spec.key, j, params, per_layer))[0] for j in (0, 2)]
    np.testing.assert_allclose(planted, CLIP * (u[0] + u[1]), atol=2e-6)
    for j in (0, 2):
        assert float(jnp.linalg.norm(u[j if j == 0 else 1])) == pytest.approx(1.0, rel=1e-5)
    assert int(metrics["clients"]) == 4 and int(metrics["canaries"]) == 2
    # Canaries do not train: the loss and steps are those of the real clients.
    assert float(metrics["train_loss"]) == pytest.approx(float(real_metrics["train_loss"]))
    assert float(metrics["local_steps"]) == pytest.approx(float(real_metrics["local_steps"]))


def test_directions_are_unit_distinct_and_per_layer_balanced():
    _, params, *_ = _setup()
    key = jax.random.key(0)
    flat = [np.asarray(ravel_pytree(direction(key, j, params, False))[0]) for j in range(3)]
    assert all(np.linalg.norm(f) == pytest.approx(1.0, rel=1e-5) for f in flat)
    assert abs(flat[0] @ flat[1]) < 0.5
    layered = direction(key, 0, params, True)
    leaves = jax.tree.leaves(layered)
    norms = [float(jnp.linalg.norm(x)) for x in leaves]
    assert norms == pytest.approx([1 / np.sqrt(len(leaves))] * len(leaves), rel=1e-5)


# --- training runs ------------------------------------------------------------------------------

DEBUG_DP = (
    "experiment=debug",
    "privacy=user_dp",
    "privacy.noise_multiplier=1.0",
    "privacy.target_epsilon=null",
)


def _final_params(run_dir):
    with np.load(run_dir / "final_params.npz") as z:
        return {k: z[k] for k in z.files}


def _metrics(run_dir):
    rows = _lines(run_dir / "metrics.jsonl")
    for row in rows:
        row.pop("seconds")
        row.pop("diagnostics")
    return rows


def test_zero_canaries_change_nothing(tmp_path):
    cfg = compose_cfg(*DEBUG_DP, "canaries.count=0")
    without = {k: v for k, v in cfg.items() if k != "canaries"}
    s_with = loop.run(RunConfig.from_mapping(cfg), tmp_path / "a", progress=False)
    s_without = loop.run(RunConfig.from_mapping(without), tmp_path / "b", progress=False)
    pa, pb = _final_params(tmp_path / "a"), _final_params(tmp_path / "b")
    assert pa.keys() == pb.keys()
    assert all(np.array_equal(pa[k], pb[k]) for k in pa)
    assert _metrics(tmp_path / "a") == _metrics(tmp_path / "b")
    assert _lines(tmp_path / "a" / "ledger.jsonl") == _lines(tmp_path / "b" / "ledger.jsonl")
    assert not (tmp_path / "a" / "canaries.json").exists() and "canaries" not in s_with
    assert s_with["epsilon"] == s_without["epsilon"]


@pytest.mark.parametrize("sampling", ["fixed", "poisson"])
def test_canaries_join_the_population_and_the_accounting(tmp_path, sampling):
    k = 12
    extra = ["sampling=poisson", "sampling.rate=0.25"] if sampling == "poisson" else []
    cfg = compose_cfg(*DEBUG_DP, *extra, f"canaries.count={k}", "canaries.unseen=7", "rounds=4")
    summary = loop.run(RunConfig.from_mapping(cfg), tmp_path, progress=False)
    n_real = 20  # the debug preset's population
    record = json.loads((tmp_path / "canaries.json").read_text())
    assert record["format"] == 1 and record["count"] == k and record["unseen"] == 7
    assert record["observation"] == "final_delta"
    assert len(record["inserted_cosines"]) == k and len(record["unseen_cosines"]) == 7
    assert all(-1 <= c <= 1 for c in record["inserted_cosines"] + record["unseen_cosines"])
    assert record["dimension"] == sum(v.size for v in _final_params(tmp_path).values())
    metrics = _metrics(tmp_path)
    assert sum(record["participations"]) == sum(m["canaries"] for m in metrics)
    assert all(0 <= p <= 4 for p in record["participations"])
    ledger = _lines(tmp_path / "ledger.jsonl")
    assert {e["population"] for e in ledger} == {n_real + k}
    assert not any("realised_cohort" in e for e in ledger)  # private: a diagnostic
    if sampling == "fixed":
        assert {e["sampling_rate"] for e in ledger} == {5 / (n_real + k)}
    else:
        assert {e["sampling_rate"] for e in ledger} == {0.25}
        assert summary["sampling"]["expected_cohort"] == pytest.approx(0.25 * (n_real + k))
    assert summary["canaries"] == k and summary["privacy"]["population"] == n_real + k
    assert summary["population"] == n_real


# --- the audit of honest and broken mechanisms ---------------------------------------------------

# Every client, canaries included, takes part in both rounds (Poisson rate 1), so the final
# model's canary cosines see the whole composed Gaussian mechanism; the 2NN has d = 55,210
# parameters, so canary directions are nearly orthogonal to each other and to the data.
AUDIT = (
    "dataset=digits",
    "dataset.num_clients=100",
    "model=mlp",
    "sampling=poisson",
    "sampling.rate=1.0",
    "privacy=user_dp",
    "privacy.target_epsilon=null",
    "rounds=2",
    "eval_every=2",
    "client.max_examples=16",
    "client.batch_size=16",
    "client.lr=0.05",
)


def _audited_run(run_dir, noise, canaries):
    cfg = compose_cfg(*AUDIT, f"privacy.noise_multiplier={noise}", f"canaries.count={canaries}")
    summary = loop.run(RunConfig.from_mapping(cfg), run_dir, progress=False)
    return summary, empirical_audit(run_dir, summary["delta"])


def test_honest_runs_stay_below_the_analytical_epsilon(tmp_path):
    estimates = []
    for noise in (1.0, 2.0, 4.0):
        summary, audit = _audited_run(tmp_path / str(noise), noise, 200)
        claimed = min(summary["epsilon"].values())  # the tightest accountant (PLD)
        assert audit["num_inserted"] == audit["num_unseen"] == 200
        assert 0.0 <= audit["epsilon_lower_bound"] <= claimed, (noise, audit, summary["epsilon"])
        estimates.append(audit["epsilon_estimate"])
    assert estimates[0] > estimates[1] > estimates[2] > 0, estimates

    # 200 + 200 canaries refute claims up to about 3.28 at confidence 0.95: the claim of the
    # run with z = 4 is within reach, and its audit passes.
    report = audit_run(tmp_path / "4.0")
    check = next(c for c in report.checks if c.name == "empirical")
    assert check.status == "pass" and report.verdict == "PASS", report.failed
    assert check.evidence["can_refute"] and check.evidence["refutable_epsilon"] < 3.3
    # The claim of the run with z = 1 is above it: the check is inconclusive, not a pass,
    # and the verdict and a warning say so.
    weak = audit_run(tmp_path / "1.0")
    weak_check = next(c for c in weak.checks if c.name == "empirical")
    assert weak_check.status == "n/a" and weak_check.detail.startswith("inconclusive")
    assert weak.verdict == "PASS" and "could not have refuted" in weak.verdict_line
    needed = weak_check.evidence["canaries_needed"]
    assert needed > 400 and f"canaries.count={needed}" in " ".join(weak.warnings)

    # The whole audit shows the empirical epsilon and draws the canary cosine histograms.
    written = {p.name for p in write_reports(report, tmp_path / "out")}
    assert written == {"audit.json", "audit.md", "audit.html", "audit.png"}
    assert (tmp_path / "out" / "audit.png").read_bytes().startswith(b"\x89PNG")
    assert "data:image/png;base64," in (tmp_path / "out" / "audit.html").read_text()
    assert "![canary cosines](audit.png)" in (tmp_path / "out" / "audit.md").read_text()
    saved = json.loads((tmp_path / "out" / "audit.json").read_text())
    assert saved["empirical"]["num_inserted"] == 200


def test_planted_noise_bug_is_caught(tmp_path, monkeypatch):
    # The aggregator adds noise of std 0.1 * z * C while its metrics, and so the ledger,
    # still report z * C: the accounted epsilon (about 1.3) is far from what ran.
    add_gaussian = aggregators.add_gaussian

    def tenth_of_the_noise(tree, std, key):
        return add_gaussian(tree, 0.1 * std, key)

    monkeypatch.setattr(aggregators, "add_gaussian", tenth_of_the_noise)
    summary, audit = _audited_run(tmp_path, 4.0, 500)
    assert {e["noise_std"] for e in _lines(tmp_path / "ledger.jsonl")} == {4.0}
    claimed = max(summary["epsilon"].values())
    assert claimed < 1.5
    assert audit["epsilon_lower_bound"] > 1.5 * claimed, (audit["epsilon_lower_bound"], claimed)
    assert audit["epsilon_estimate"] > 5 * claimed
    # Only the empirical audit can see this bug: the ledger is consistent with itself.
    report = audit_run(tmp_path)
    assert {c.name for c in report.failed} == {"empirical"}, report.failed
    assert "exceeds the analytical epsilon" in report.failed[0].detail
    assert report.exit_status == 1
