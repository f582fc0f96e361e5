"""Loaders of the published formats: tiny files written here, loaded and checked exactly."""

from __future__ import annotations

import gzip
import json
import pickle

import numpy as np
import pytest

from fedpriv import data as data_lib
from fedpriv.data import formats
from fedpriv.errors import ConfigError
from tests.data import format_writers as fw


def _load(name: str, root, **cfg):
    return data_lib.load({"name": name, "root": str(root), **cfg}, np.random.default_rng(0))


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_loads_iid(tmp_path, name, gz):
    fw.write_mnist(tmp_path, 30, 10, gz=gz)
    d = _load(name, tmp_path, num_clients=3, partition={"kind": "iid"})
    assert d.train.name == name
    assert d.train.num_clients == 3
    assert d.train.client_sizes.tolist() == [10, 10, 10]
    assert d.train.x.shape == (30, 28, 28, 1) and d.train.x.dtype == np.float32
    assert d.example_shape == (28, 28, 1) and d.num_classes == 10
    value = np.rint(d.train.x[:, 0, 0, 0] * 255).astype(int)
    assert sorted(value.tolist()) == list(range(30))
    assert np.array_equal(d.train.y, value % 10)
    assert np.all(d.train.x == d.train.x[:, :1, :1, :])
    assert d.test_x.shape == (10, 28, 28, 1)
    assert d.test_y.tolist() == list(range(10))
    assert np.allclose(d.test_x[:, 5, 5, 0], np.arange(10) / 255.0)


def test_idx_shards_and_dirichlet(tmp_path):
    fw.write_mnist(tmp_path, 30, 10)
    d = _load(
        "mnist", tmp_path, num_clients=5, partition={"kind": "shards", "shards_per_client": 2}
    )
    assert d.train.num_clients == 5 and d.train.client_sizes.sum() == 30
    assert all(len(np.unique(d.train.client_data(k)[1])) <= 4 for k in range(5))
    d = _load("mnist", tmp_path, num_clients=4, partition={"kind": "dirichlet", "alpha": 0.5})
    assert d.train.num_clients == 4 and d.train.client_sizes.sum() == 30
    assert d.train.client_sizes.min() >= 1


def test_idx_missing_root_and_files(tmp_path):
    with pytest.raises(ConfigError, match=r"dataset\.root: is required for dataset=mnist"):
        data_lib.load({"name": "mnist"}, np.random.default_rng(0))
    paths = fw.write_mnist(tmp_path)
    paths[3].unlink()
    with pytest.raises(ConfigError) as err:
        _load("mnist", tmp_path, num_clients=3)
    msg = str(err.value)
    assert "t10k-labels-idx1-ubyte.gz" in msg and "train-images-idx3-ubyte" in msg


@pytest.mark.parametrize("gz", [True, False])
def test_idx_truncated_names_file(tmp_path, gz):
    paths = fw.write_mnist(tmp_path, gz=gz)
    paths[0].write_bytes(paths[0].read_bytes()[:-7])
    with pytest.raises(ConfigError) as err:
        _load("mnist", tmp_path, num_clients=3)
    assert str(paths[0]) in str(err.value)
    assert "truncated" in str(err.value)


def test_idx_bad_magic_and_mismatch(tmp_path):
    paths = fw.write_mnist(tmp_path, gz=False)
    raw = bytearray(paths[1].read_bytes())
    raw[2] = 0x0D  # float data type
    paths[1].write_bytes(bytes(raw))
    with pytest.raises(ConfigError, match="not an IDX file") as err:
        _load("mnist", tmp_path, num_clients=3)
    assert str(paths[1]) in str(err.value)
    paths[1].write_bytes(fw.idx_bytes(np.zeros(29, np.uint8)))
    with pytest.raises(ConfigError, match="29 labels but train-images-idx3-ubyte holds 30"):
        _load("mnist", tmp_path, num_clients=3)
    paths[1].write_bytes(fw.idx_bytes(np.full(30, 10, np.uint8)))
    with pytest.raises(ConfigError, match=r"labels must be in \[0, 9\], found 10"):
        _load("mnist", tmp_path, num_clients=3)
    paths[0].write_bytes(fw.idx_bytes(np.zeros((30, 784), np.uint8)))
    with pytest.raises(ConfigError, match="2-d array, expected 3-d"):
        _load("mnist", tmp_path, num_clients=3)


def test_idx_too_many_clients(tmp_path):
    fw.write_mnist(tmp_path, 30, 10)
    with pytest.raises(ConfigError, match="dataset.num_clients: 31 clients need at least 31"):
        _load("mnist", tmp_path, num_clients=31, partition={"kind": "iid"})


def test_cifar10_loads(tmp_path):
    fw.write_cifar10(tmp_path, per_batch=6, n_test=4)
    d = _load("cifar10", tmp_path, num_clients=3, partition={"kind": "iid"})
    assert d.train.num_clients == 3 and d.train.client_sizes.tolist() == [10, 10, 10]
    assert d.train.x.shape == (30, 32, 32, 3) and d.train.x.dtype == np.float32
    red = np.rint(d.train.x[:, 7, 9, 0] * 255).astype(int)
    assert sorted(red.tolist()) == list(range(30))
    assert np.array_equal(d.train.y, red % 10)
    assert np.allclose(d.train.x[..., 1], 100 / 255) and np.allclose(d.train.x[..., 2], 200 / 255)
    assert d.test_x.shape == (4, 32, 32, 3)
    assert d.test_y.tolist() == [0, 1, 2, 3]
    d = _load("cifar10", tmp_path / "cifar-10-batches-py", num_clients=2)  # folder itself
    assert d.train.client_sizes.sum() == 30


def test_cifar10_missing_truncated_corrupt(tmp_path):
    folder = fw.write_cifar10(tmp_path)
    (folder / "data_batch_4").unlink()
    with pytest.raises(ConfigError, match="lacks data_batch_4"):
        _load("cifar10", tmp_path, num_clients=3)
    fw.write_cifar10(tmp_path)
    batch = folder / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:500])
    with pytest.raises(ConfigError, match="truncated or corrupt") as err:
        _load("cifar10", tmp_path, num_clients=3)
    assert str(batch) in str(err.value)
    with batch.open("wb") as f:
        pickle.dump({b"data": np.zeros((6, 3000), np.uint8), b"labels": [0] * 6}, f)
    with pytest.raises(ConfigError, match=r"data must be uint8 \[N, 3072\]"):
        _load("cifar10", tmp_path, num_clients=3)
    with batch.open("wb") as f:
        pickle.dump(gzip.GzipFile, f)  # any class other than numpy arrays is refused
    with pytest.raises(ConfigError, match="refusing to load gzip.GzipFile"):
        _load("cifar10", tmp_path, num_clients=3)


def test_cifar10_pickle_protocol_5(tmp_path):
    folder = fw.write_cifar10(tmp_path)
    with (folder / "test_batch").open("wb") as f:
        pickle.dump(fw.cifar_batch(0, 3), f, protocol=5)
    assert _load("cifar10", tmp_path, num_clients=2).test_y.tolist() == [0, 1, 2]


def test_femnist_natural_clients(tmp_path):
    sizes = fw.write_femnist(tmp_path)
    d = _load("femnist", tmp_path, partition={"kind": "natural"})
    assert d.train.num_clients == 3  # the writer without examples is dropped
    assert d.train.client_sizes.tolist() == list(sizes.values())
    assert d.num_classes == 62 and d.example_shape == (28, 28, 1)
    assert d.train.client_data(0)[1].tolist() == [0, 1, 2]
    assert d.train.client_data(1)[1].tolist() == [10, 11, 12, 13, 14]
    assert d.train.client_data(2)[1].tolist() == [60, 61]
    assert np.allclose(d.train.client_data(1)[0][:, 3, 4, 0], [0.0, 0.1, 0.2, 0.3, 0.4])
    assert d.test_x.shape == (4, 28, 28, 1)
    assert d.test_y.tolist() == [0, 10, 11, 60]


def test_femnist_bad_files(tmp_path):
    with pytest.raises(ConfigError, match=r"train holds no \.json files"):
        _load("femnist", tmp_path)
    fw.write_femnist(tmp_path)
    path = tmp_path / "train" / "all_data_1_niid_train.json"
    path.write_text(path.read_text()[:-40])
    with pytest.raises(ConfigError, match="truncated or corrupt") as err:
        _load("femnist", tmp_path)
    assert str(path) in str(err.value)
    doc = fw.leaf_doc({"u": fw.femnist_user(2, 0)})
    doc["num_samples"] = [3]
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="num_samples says 3, user_data has 2"):
        _load("femnist", tmp_path)
    doc = fw.leaf_doc({"u": ([[0.5] * 700], [1])})
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=r"x must be \[n, 784\] pixels"):
        _load("femnist", tmp_path)
    doc = fw.leaf_doc({"u": fw.femnist_user(1, 62)})
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=r"y must be integers in \[0, 61\]"):
        _load("femnist", tmp_path)


def test_shakespeare_natural_clients_and_vocabulary(tmp_path):
    sizes = fw.write_shakespeare(tmp_path)
    d = _load("shakespeare", tmp_path, partition={"kind": "natural"})
    assert d.train.num_clients == 3
    assert d.train.client_sizes.tolist() == list(sizes.values())
    assert d.train.x.shape == (12, 80) and d.train.x.dtype == np.int32
    assert d.train.y.dtype == np.int32 and d.num_classes == 81
    letters = formats.LEAF_LETTERS
    assert len(letters) == 80 and formats.LEAF_UNKNOWN == 80
    x0, y0 = d.train.client_data(0)
    assert "".join(letters[i] for i in x0[0]) == fw.SPEECH_A[:80]
    assert [letters[i] for i in y0] == list(fw.SPEECH_A[80:84])
    x2, _ = d.train.client_data(2)
    assert x2[0, :2].tolist() == [80, 80]  # "é" and "|" are unknown
    assert x2[0, 2] == letters.index("A")
    assert d.test_x.shape == (3, 80) and len(d.test_y) == 3
    assert d.test_y[0] == letters.index(fw.SPEECH_A[90])


def test_shakespeare_bad_entries(tmp_path):
    fw.write_shakespeare(tmp_path)
    path = tmp_path / "train" / "train.json"
    path.write_text(json.dumps(fw.leaf_doc({"R": (["short"], ["x"])})))
    with pytest.raises(ConfigError, match="must be a string of 80 characters, got 5") as err:
        _load("shakespeare", tmp_path)
    assert str(path) in str(err.value)
    path.write_text(json.dumps(fw.leaf_doc({"R": ([fw.SPEECH_A[:80]], ["ab"])})))
    with pytest.raises(ConfigError, match="y entry 0 must be one character"):
        _load("shakespeare", tmp_path)


def test_config_groups_compose_and_validate(tmp_path):
    from omegaconf import OmegaConf

    from fedpriv import config
    from fedpriv.cli import compose

    for name in ("mnist", "fashion_mnist", "cifar10", "femnist", "shakespeare"):
        composed = compose([f"dataset={name}", f"dataset.root={tmp_path}"])
        cfg = OmegaConf.to_container(composed, resolve=False)
        cfg.pop("hydra", None)
        config.validate(cfg)
        assert cfg["dataset"]["name"] == name
