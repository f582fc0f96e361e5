"""The cohort sharded over 8 (forced) CPU devices gives the same round as one device."""

import json
import os
import subprocess
import sys
import textwrap

from tests.conftest import REPO

SCRIPT = textwrap.dedent(
    """
    import json
    import jax, numpy as np
    from fedpriv.fl import planner
    from fedpriv.fl.aggregators import weighted_mean
    from fedpriv.fl.round import init_server_state, make_round
    from fedpriv.fl.server import server_optimizer
    from fedpriv.privacy import dp_fedavg
    from tests.fl.helpers import cohort, toy_client_update, toy_model, toy_population

    assert jax.local_device_count() == 8
    store = toy_population(100)
    model, params = toy_model(store)
    n_cap = int(store.client_sizes.max())
    cu = toy_client_update(model, n_cap)
    out = {}
    for name, agg in (("fedavg", weighted_mean()), ("dp", dp_fedavg(0.5, 1.0, 40.0))):
        sopt = server_optimizer("fedavg")
        state = init_server_state(params, sopt, agg)
        inputs = cohort(store, np.arange(37), n_cap, pad_to=48)
        key = jax.random.key(3)
        flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)])
        one = jax.jit(make_round(cu, agg, sopt, 4))(state, inputs, key)
        mesh = planner.make_mesh(8)
        sharded_fn = jax.jit(make_round(cu, agg, sopt, 3, mesh))
        sharded = sharded_fn(state, inputs, key)
        out[name] = {
            "max_abs_diff": float(np.max(np.abs(flat(one[0].params) - flat(sharded[0].params)))),
            "scale": float(np.max(np.abs(flat(one[0].params)))),
            "clients": [int(one[1]["clients"]), int(sharded[1]["clients"])],
            "loss": [float(one[1]["train_loss"]), float(sharded[1]["train_loss"])],
            "devices": len(sharded[0].params["params"]["Dense_0"]["kernel"].devices()),
        }
    plan = planner.plan(1000, 10_000, 100, 10, "auto", num_devices="auto", backend="cpu")
    out["plan"] = [plan.num_devices, plan.slots >= 1000, plan.slots % 8 == 0]
    print(json.dumps(out))
    """
)


def test_sharded_round_equals_single_device():
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"
    )
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in ("fedavg", "dp"):
        r = out[name]
        assert r["clients"] == [37, 37]
        assert r["max_abs_diff"] <= 1e-5 * max(r["scale"], 1.0), r
        assert abs(r["loss"][0] - r["loss"][1]) < 1e-5
    assert out["plan"] == [8, True, True]
