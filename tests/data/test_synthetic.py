"""FedProx Synthetic(alpha, beta) follows its definition (statistical checks)."""

import numpy as np
import pytest
from scipy.stats import norm

from fedpriv.data import load, synthetic
from fedpriv.errors import ConfigError


def test_device_sizes_are_lognormal_4_2_plus_50():
    sizes = synthetic.device_sizes(40_000, np.random.default_rng(0))
    extra = sizes - 50
    assert sizes.min() >= 50
    # floor(L) >= m  <=>  L >= m for integers m, with L ~ LogNormal(4, 2).
    for m in (3, 8, 55, 150, 404, 3000):
        expected = norm.sf((np.log(m) - 4.0) / 2.0)
        assert abs(np.mean(extra >= m) - expected) < 0.01, m


def test_features_have_device_means_and_the_stated_covariance():
    rng = np.random.default_rng(1)
    alpha, beta = 0.7, 1.5
    x, y, device_of, p = synthetic.generate(2_000, alpha, beta, rng, max_size=60)
    resid = x.astype(np.float64) - p["v"][device_of]
    var = resid.var(axis=0)
    expected = np.arange(1, 61) ** -1.2
    np.testing.assert_allclose(var, expected, rtol=0.03)
    assert np.all(np.abs(resid.mean(axis=0)) < 4 * np.sqrt(expected / len(x)))
    # v_k ~ N(B_k, 1) coordinate-wise; B_k ~ N(0, beta^2); u_k ~ N(0, alpha^2).
    shift = p["v"] - p["B"][:, None]
    assert abs(shift.mean()) < 0.01 and abs(shift.std() - 1.0) < 0.01
    assert abs(p["B"].std() / beta - 1) < 0.05 and abs(p["u"].std() / alpha - 1) < 0.05
    assert set(np.unique(y)) <= set(range(10))


def test_heterogeneity_grows_with_alpha_and_beta():
    def label_skew(a, b):
        x, y, device_of, _ = synthetic.generate(300, a, b, np.random.default_rng(2), max_size=200)
        overall = np.bincount(y, minlength=10) / len(y)
        tv = []
        for k in range(300):
            yk = y[device_of == k]
            tv.append(0.5 * np.abs(np.bincount(yk, minlength=10) / len(yk) - overall).sum())
        return np.mean(tv)

    assert label_skew(0.0, 0.0) < label_skew(1.0, 1.0)
    x, y, _, _ = synthetic.generate(50, 1.0, 1.0, np.random.default_rng(3), iid=True)
    assert len(np.unique(y)) > 1


def test_loader_splits_every_device_and_keeps_natural_clients():
    data = load(
        {
            "name": "synthetic",
            "num_clients": 40,
            "alpha": 0.5,
            "beta": 0.5,
            "max_size": 300,
            "test_fraction": 0.1,
        },
        np.random.default_rng(4),
    )
    assert data.train.num_clients == 40
    assert data.example_shape == (60,) and data.num_classes == 10
    total = data.train.client_sizes.sum() + len(data.test_y)
    assert abs(len(data.test_y) / total - 0.1) < 0.02
    with pytest.raises(ConfigError, match="alpha"):
        synthetic.generate(3, -1.0, 0.0, np.random.default_rng(0))


@pytest.mark.slow
def test_ten_thousand_devices_thousand_per_round_fit_in_4_gb(tmp_path):
    import resource

    from tests.conftest import run_cli

    proc = run_cli(
        "fedpriv.train",
        "dataset=synthetic",
        "dataset.num_clients=10000",
        "sampling=fixed",
        "sampling.cohort_size=1000",
        "model=logreg",
        "privacy=none",
        "rounds=2",
        "eval_every=2",
        "client.max_examples=500",
        "progress=false",
        f"hydra.run.dir={tmp_path / 'r'}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    assert peak_gb < 4.0
