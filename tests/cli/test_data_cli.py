"""``fedpriv-data``: describe counts, downloads from a fake local source, one-line errors."""

from __future__ import annotations

import functools
import gzip
import http.server
import json
import tarfile
import threading

import numpy as np
import pytest

from fedpriv import data as data_lib
from fedpriv.cli import data as data_cli
from tests.data import format_writers as fw


def _describe(capsys, *argv: str) -> dict:
    data_cli.main(["describe", *argv, "--json"])
    return json.loads(capsys.readouterr().out)


def test_describe_mnist_counts(tmp_path, capsys):
    fw.write_mnist(tmp_path, 30, 10)
    d = _describe(
        capsys,
        "mnist",
        f"dataset.root={tmp_path}",
        "dataset.num_clients=3",
        "dataset.partition.kind=iid",
    )
    assert d["clients"] == 3 and d["train_examples"] == 30 and d["test_examples"] == 10
    assert d["examples_per_client"] == {"min": 10, "median": 10.0, "p90": 10.0, "max": 10}
    assert d["example_shape"] == [28, 28, 1] and d["num_classes"] == 10


def test_describe_femnist_label_skew(tmp_path, capsys):
    fw.write_femnist(tmp_path)
    d = _describe(capsys, "femnist", f"root={tmp_path}")
    assert d["clients"] == 3 and d["train_examples"] == 10
    assert d["examples_per_client"] == {"min": 2, "median": 3.0, "p90": 4.6, "max": 5}
    # every client's labels are distinct and disjoint from the others': 3, 5 and 2 classes.
    assert d["mean_classes_per_client"] == pytest.approx(10 / 3)
    # TV distance of a client holding n of the 10 examples, each label once: 1 - n / 10.
    assert d["mean_tv_distance"] == pytest.approx(np.mean([0.7, 0.5, 0.8]))


def test_describe_text_output(tmp_path, cli):
    fw.write_shakespeare(tmp_path)
    r = cli("fedpriv.cli.data", "describe", "shakespeare", f"dataset.root={tmp_path}")
    assert r.returncode == 0, r.stderr
    assert "clients             3" in r.stdout
    assert "examples per client min 2, median 4, p90 5.6, max 6" in r.stdout


def test_errors_are_one_line_exit_2(tmp_path, cli):
    r = cli("fedpriv.cli.data", "describe", "cifar10", f"dataset.root={tmp_path}")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "lacks data_batch_1" in r.stderr
    r = cli("fedpriv.cli.data", "download", "shakespeare", "--root", str(tmp_path))
    assert r.returncode == 2 and "not a direct download" in r.stderr


def test_describe_unknown_name_and_bad_override(capsys):
    with pytest.raises(SystemExit) as err:
        data_cli.main(["describe", "nope"])
    assert err.value.code == 2
    assert "unknown data set 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        data_cli.main(["describe", "digits", "num_clients"])
    assert "must be dataset.KEY=VALUE" in capsys.readouterr().err


def test_download_mnist_from_file_url(tmp_path, capsys):
    source = tmp_path / "mirror"
    fw.write_mnist(source, 30, 10, gz=True)
    root = tmp_path / "data"
    data_cli.main(["download", "mnist", "--root", str(root), "--source", source.as_uri()])
    assert "4 files" in capsys.readouterr().out
    assert sorted(p.name for p in root.iterdir()) == sorted(f"{s}.gz" for s in fw.IDX_STEMS)
    d = data_lib.load(
        {"name": "mnist", "root": str(root), "num_clients": 3, "partition": {"kind": "iid"}},
        np.random.default_rng(0),
    )
    assert d.train.client_sizes.tolist() == [10, 10, 10]


def test_download_missing_or_corrupt_source(tmp_path, capsys):
    source = tmp_path / "mirror"
    paths = fw.write_mnist(source, gz=True)
    paths[2].write_bytes(gzip.compress(b"\x00\x00\x08\x03junk"))
    with pytest.raises(SystemExit):
        data_cli.main(
            ["download", "mnist", "--root", str(tmp_path / "d"), "--source", str(source.as_uri())]
        )
    assert "t10k-images-idx3-ubyte.gz: truncated" in capsys.readouterr().err
    paths[0].unlink()
    with pytest.raises(SystemExit):
        data_cli.main(
            ["download", "mnist", "--root", str(tmp_path / "e"), "--source", source.as_uri()]
        )
    err = capsys.readouterr().err
    assert "--source: cannot fetch" in err and "train-images-idx3-ubyte.gz" in err
    assert not any((tmp_path / "e").glob("*.part"))


@pytest.fixture
def http_dir(tmp_path):
    """A directory served on 127.0.0.1 by a background http.server."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_cifar10_over_http(tmp_path, http_dir, capsys):
    served, url = http_dir
    fw.write_cifar10(tmp_path / "build")
    with tarfile.open(served / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "build" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    root = tmp_path / "data"
    data_cli.main(
        ["download", "cifar10", "--root", str(root), "--source", f"{url}/cifar-10-python.tar.gz"]
    )
    assert "6 files" in capsys.readouterr().out
    assert not (root / "cifar-10-python.tar.gz").exists()
    d = _describe(capsys, "cifar10", f"dataset.root={root}", "dataset.num_clients=3")
    assert d["clients"] == 3 and d["train_examples"] == 30 and d["test_examples"] == 4
    assert d["example_shape"] == [32, 32, 3]
