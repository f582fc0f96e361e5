"""Checkpoint save/restore: round trip, keeping the newest two, crashed writes, bad files."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedpriv.accounting import EpsilonTracker, RoundEvent
from fedpriv.errors import ConfigError
from fedpriv.fl import checkpoint
from fedpriv.fl.aggregators import weighted_mean
from fedpriv.fl.round import ServerState, init_server_state


def _state(hidden: int = 4, seed: int = 0) -> ServerState:
    k = jax.random.key(seed)
    params = {"params": {"Dense_0": {"kernel": jax.random.normal(k, (3, hidden))}}}
    return init_server_state(params, optax.adam(0.1), weighted_mean("count"))


def _advance(state: ServerState, rnd: int) -> ServerState:
    opt = optax.adam(0.1)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.1 * rnd), state.params)
    updates, opt_state = opt.update(grads, state.opt_state, state.params)
    return ServerState(
        optax.apply_updates(state.params, updates), opt_state, state.agg_state, state.round + 1
    )


def _equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(x, y) for x, y in zip(la, lb)
    )


def test_round_trip_keeps_the_newest_two_and_ignores_a_crashed_write(tmp_path):
    ck = checkpoint.Checkpointer(tmp_path, keep=2)
    state, saved = _state(), {}
    for rnd in (1, 2, 3):
        state = _advance(state, rnd)
        ck.save(rnd, state, {"metrics_lines": rnd, "ledger_lines": rnd, "config": {"seed": 0}})
        saved[rnd] = state
    assert [s for s, _ in checkpoint.step_dirs(tmp_path)] == [2, 3]
    # A write cut short leaves only orbax's temporary directory behind.
    (tmp_path / "checkpoints" / "4.orbax-checkpoint-tmp-99").mkdir()
    restored, meta = checkpoint.Checkpointer(tmp_path).restore(_state())
    assert meta["round"] == 3 and meta["metrics_lines"] == 3
    assert _equal(restored, saved[3]) and not _equal(restored, saved[2])
    assert isinstance(restored, ServerState) and int(restored.round) == 3
    ck.close()


def test_no_checkpoint_restores_none(tmp_path):
    assert checkpoint.Checkpointer(tmp_path).restore(_state()) is None


def test_wrong_shaped_or_corrupt_checkpoint_names_the_file(tmp_path):
    ck = checkpoint.Checkpointer(tmp_path)
    ck.save(5, _state(), {"metrics_lines": 0, "ledger_lines": 0, "config": {}})
    ck.close()
    with pytest.raises(ConfigError, match=r"checkpoints/5/state.*shape \(3, 4\).*needs \(3, 8\)"):
        checkpoint.Checkpointer(tmp_path).restore(_state(hidden=8))
    # Metadata that agrees with the template but arrays that do not: the arrays are checked.
    meta_path = tmp_path / "checkpoints" / "5" / checkpoint.META_FILE
    meta = json.loads(meta_path.read_text())
    meta["leaves"] = checkpoint.describe(_state(hidden=8))
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=r"checkpoints/5/state: array .* has shape"):
        checkpoint.Checkpointer(tmp_path).restore(_state(hidden=8))
    for f in (tmp_path / "checkpoints" / "5" / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"junk")
    with pytest.raises(ConfigError, match=r"checkpoints/5/state: cannot be read"):
        checkpoint.Checkpointer(tmp_path).restore(_state(hidden=8))
    shutil.rmtree(tmp_path / "checkpoints" / "5" / "meta")
    with pytest.raises(ConfigError, match=r"meta/metadata: is missing"):
        checkpoint.latest_meta(tmp_path)


def test_final_params_file_round_trips(tmp_path):
    params = _state().params
    checkpoint.save_final_params(tmp_path, params)
    back = checkpoint.load_final_params(tmp_path)
    assert list(back) == ["params.Dense_0.kernel"]
    assert np.array_equal(back["params.Dense_0.kernel"], params["params"]["Dense_0"]["kernel"])


def test_replayed_rounds_are_ledger_events_that_count():
    base = {
        "format": 1,
        "round": 3,
        "mechanism": "gaussian",
        "unit": "user",
        "sampling": "poisson",
        "sampling_rate": 0.1,
        "noise_multiplier": 1.0,
    }
    replay = RoundEvent.from_dict({**base, "replay": True})
    assert (
        replay.to_dict()["replay"] is True and "replay" not in RoundEvent.from_dict(base).to_dict()
    )
    plain, with_replay = EpsilonTracker(1e-5), EpsilonTracker(1e-5)
    plain.extend([base] * 3)
    with_replay.extend([base] * 3 + [{**base, "replay": True}])
    assert with_replay.epsilon > plain.epsilon
    restored = EpsilonTracker.from_state_dict(with_replay.state_dict())
    assert restored.epsilon == with_replay.epsilon
    with pytest.raises(ConfigError, match="replay"):
        RoundEvent.from_dict({**base, "replay": "yes"})


def test_fault_injection_makes_only_the_chosen_clients_nan():
    from fedpriv.data import load
    from fedpriv.fl.experiment import inject_faults
    from fedpriv.settings import Faults

    data = load(
        {"name": "digits", "num_clients": 10, "partition": {"kind": "iid"}},
        np.random.default_rng(0),
    )
    faulty = inject_faults(data, Faults(nan_clients=(2,)))
    for k in range(10):
        x, _ = faulty.train.client_data(k)
        assert np.all(np.isnan(x)) if k == 2 else np.all(np.isfinite(x))
    assert np.all(np.isfinite(data.train.x))  # the loaded data is not modified
    with pytest.raises(ConfigError, match=r"faults.nan_clients.*\[0, 9\]"):
        inject_faults(data, Faults(nan_clients=(10,)))
