"""TFF's HDF5 EMNIST files: a tiny file in that format, written here, loads exactly."""

import numpy as np
import pytest

from fedpriv.data import load
from fedpriv.errors import ConfigError

h5py = pytest.importorskip("h5py")


def _write(path, clients):
    with h5py.File(path, "w") as f:
        ex = f.create_group("examples")
        for cid, (n, label0) in clients.items():
            g = ex.create_group(cid)
            g.create_dataset("pixels", data=np.full((n, 28, 28), label0 / 100, np.float32))
            g.create_dataset("label", data=(np.arange(n) + label0) % 62)


def test_emnist_tff_natural_clients(tmp_path):
    _write(
        tmp_path / "fed_emnist_train.h5",
        {"f0001_14": (3, 5), "f0000_02": (2, 10), "f0002_07": (4, 61)},
    )
    _write(tmp_path / "fed_emnist_test.h5", {"f0001_14": (1, 5), "f0000_02": (2, 10)})
    data = load({"name": "emnist_tff", "root": str(tmp_path)}, np.random.default_rng(0))
    assert data.train.num_clients == 3 and data.num_classes == 62
    np.testing.assert_array_equal(data.train.client_sizes, [2, 3, 4])  # sorted writer ids
    x0, y0 = data.train.client_data(0)  # f0000_02
    assert x0.shape == (2, 28, 28, 1) and np.allclose(x0, 0.10)
    np.testing.assert_array_equal(y0, [10, 11])
    np.testing.assert_array_equal(data.train.client_data(2)[1], [61, 0, 1, 2])
    assert len(data.test_y) == 3


def test_emnist_tff_bad_files_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="fed_emnist_train.h5"):
        load({"name": "emnist_tff", "root": str(tmp_path)}, np.random.default_rng(0))
    (tmp_path / "fed_emnist_train.h5").write_bytes(b"not an hdf5 file at all")
    with pytest.raises(ConfigError, match="fed_emnist_train.h5"):
        load({"name": "emnist_tff", "root": str(tmp_path)}, np.random.default_rng(0))
    with h5py.File(tmp_path / "fed_emnist_train.h5", "w") as f:
        g = f.create_group("examples").create_group("w1")
        g.create_dataset("pixels", data=np.zeros((2, 27, 28), np.float32))
        g.create_dataset("label", data=np.zeros(2, np.int32))
    with pytest.raises(ConfigError, match="28, 28"):
        load({"name": "emnist_tff", "root": str(tmp_path)}, np.random.default_rng(0))
