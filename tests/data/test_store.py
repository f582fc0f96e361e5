import numpy as np
import pytest

from fedpriv.data import PopulationStore, partition
from fedpriv.errors import ConfigError


def _store():
    x = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    y = np.arange(10, dtype=np.int32)
    client_of = np.array([2, 0, 1, 2, 2, 0, 1, 1, 2, 2])
    return PopulationStore.from_assignment(x, y, client_of, 10, "toy"), x, y, client_of


def test_store_keeps_each_clients_examples():
    store, x, y, client_of = _store()
    assert store.num_clients == 3
    np.testing.assert_array_equal(store.client_sizes, [2, 3, 5])
    for k in range(3):
        xk, yk = store.client_data(k)
        np.testing.assert_array_equal(np.sort(yk), np.flatnonzero(client_of == k))
        np.testing.assert_array_equal(xk, x[yk])


def test_gather_pads_examples_and_clients():
    store, x, y, _ = _store()
    batch = store.gather(np.array([2, 0, 7]), np.array([1, 1, 0]), n_cap=4)
    assert batch.x.shape == (3, 4, 3) and batch.y.shape == (3, 4)
    np.testing.assert_array_equal(batch.count, [4, 2, 0])  # client 2 has 5, capped at 4
    np.testing.assert_array_equal(batch.client_mask, [1, 1, 0])
    np.testing.assert_array_equal(batch.client_ids, [2, 0, -1])
    x0, y0 = store.client_data(0)
    np.testing.assert_array_equal(batch.x[1, :2], x0)
    np.testing.assert_array_equal(batch.y[1, :2], y0)
    assert not batch.x[1, 2:].any() and not batch.x[2].any() and not batch.y[2].any()


def test_iid_assigns_every_example_once_in_equal_shares():
    client_of = partition.iid(103, 10, np.random.default_rng(0))
    sizes = np.bincount(client_of, minlength=10)
    assert sizes.sum() == 103 and sizes.min() >= 10 and sizes.max() <= 11


def _class_entropy(labels, client_of, k):
    ent = []
    for c in range(k):
        counts = np.bincount(labels[client_of == c], minlength=10)
        p = counts / counts.sum()
        ent.append(-(p[p > 0] * np.log(p[p > 0])).sum())
    return np.mean(ent)


def test_dirichlet_alpha_extremes():
    labels = np.repeat(np.arange(10), 200)
    rng = np.random.default_rng(0)
    tiny = partition.dirichlet(labels, 20, 1e-4, rng)
    huge = partition.dirichlet(labels, 20, 1e4, rng)
    for client_of in (tiny, huge):
        assert len(client_of) == len(labels)
        assert np.bincount(client_of, minlength=20).min() >= 1
    # alpha -> 0: one class per client (entropy ~ 0); alpha -> inf: near-uniform labels (~log 10).
    classes_per_client = [len(np.unique(labels[tiny == c])) for c in range(20)]
    assert np.median(classes_per_client) == 1
    assert _class_entropy(labels, tiny, 20) < 0.2
    assert _class_entropy(labels, huge, 20) > 0.97 * np.log(10)


def test_dirichlet_rejects_non_positive_alpha():
    with pytest.raises(ConfigError, match="alpha"):
        partition.dirichlet(np.zeros(10, int), 2, 0.0, np.random.default_rng(0))


def test_shards_give_two_classes_to_most_clients():
    labels = np.repeat(np.arange(10), 100)
    client_of = partition.shards(labels, 50, 2, np.random.default_rng(1))
    sizes = np.bincount(client_of, minlength=50)
    assert (sizes == 20).all()
    classes = np.array([len(np.unique(labels[client_of == c])) for c in range(50)])
    assert (classes <= 2).all() and np.mean(classes) > 1.5


def test_natural_partition_groups_by_user():
    users = np.array(["b", "a", "b", "c", "a"])
    client_of = partition.natural(users)
    np.testing.assert_array_equal(client_of, [1, 0, 1, 2, 0])


def test_too_many_clients_is_a_config_error():
    with pytest.raises(ConfigError, match="num_clients"):
        partition.iid(5, 10, np.random.default_rng(0))
