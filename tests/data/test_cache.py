"""The memory-mapped population cache returns the same data, read from disk."""

import json

import numpy as np
import pytest

from fedpriv.data import cache, load
from fedpriv.errors import ConfigError
from tests.audit import runs
from tests.conftest import run_cli

CFG = {
    "name": "synthetic",
    "num_clients": 30,
    "alpha": 1.0,
    "beta": 1.0,
    "max_size": 200,
    "test_fraction": 0.1,
}


def test_cache_builds_once_then_memory_maps(tmp_path):
    built = []

    def build():
        built.append(1)
        return load(CFG, np.random.default_rng(0))

    key = cache.cache_key(CFG, 0)
    first = cache.load_cached(tmp_path, key, build)
    second = cache.load_cached(tmp_path, key, build)
    assert len(built) == 1
    assert isinstance(second.train.x, np.memmap)
    fresh = load(CFG, np.random.default_rng(0))
    for a, b in (
        (first.train.x, fresh.train.x),
        (second.train.y, fresh.train.y),
        (second.train.offsets, fresh.train.offsets),
        (second.test_x, fresh.test_x),
    ):
        np.testing.assert_array_equal(a, b)
    ids = np.array([3, 7, 11])
    np.testing.assert_array_equal(
        second.train.gather(ids, np.ones(3, bool), 50).x,
        fresh.train.gather(ids, np.ones(3, bool), 50).x,
    )
    assert cache.cache_key(CFG, 1) != key and cache.cache_key({**CFG, "alpha": 0.5}, 0) != key


def test_unreadable_cache_is_a_config_error(tmp_path):
    key = cache.cache_key(CFG, 0)
    (tmp_path / key).mkdir()
    (tmp_path / key / "meta.json").write_text("{not json")
    with pytest.raises(ConfigError, match="dataset.cache_dir"):
        cache.load_cached(tmp_path, key, lambda: load(CFG, np.random.default_rng(0)))


def test_training_from_the_cache_matches_training_without_it(tmp_path):
    common = [
        "dataset=synthetic",
        "dataset.num_clients=30",
        "dataset.max_size=200",
        "model=logreg",
        "privacy=none",
        "sampling=fixed",
        "sampling.cohort_size=5",
        "rounds=2",
        "eval_every=1",
        "progress=false",
    ]
    rows = []
    for name, extra in (
        ("plain", []),
        ("c1", [f"dataset.cache_dir={tmp_path / 'cache'}"]),
        ("c2", [f"dataset.cache_dir={tmp_path / 'cache'}"]),
    ):
        proc = run_cli("fedpriv.train", *common, *extra, f"hydra.run.dir={tmp_path / name}")
        assert proc.returncode == 0, proc.stderr[-2000:]
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        rows.append(runs.without_seconds([json.loads(x) for x in lines]))
    assert rows[0] == rows[1] == rows[2]
    assert len(list((tmp_path / "cache").iterdir())) == 1
