"""Writers of tiny, valid files in the published data set formats, for the loader tests."""

from __future__ import annotations

import gzip
import json
import pickle
import struct
from pathlib import Path

import numpy as np

IDX_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def idx_bytes(arr: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes holding ``arr``."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.tobytes()


def mnist_arrays(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 28x28 images, image ``i`` filled with the value ``i``, label ``i % 10``."""
    x = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None], (n, 28, 28)).copy()
    return x, (np.arange(n) % 10).astype(np.uint8)


def write_mnist(root: Path, n_train: int = 30, n_test: int = 10, gz: bool = True) -> list[Path]:
    """Writes the four MNIST IDX files (gzipped or plain) into ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    x, y = mnist_arrays(n_train)
    xt, yt = mnist_arrays(n_test)
    paths = []
    for stem, arr in zip(IDX_STEMS, (x, y, xt, yt)):
        data = idx_bytes(arr)
        path = root / (stem + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(data) if gz else data)
        paths.append(path)
    return paths


def cifar_batch(start: int, n: int) -> dict[bytes, object]:
    """A CIFAR batch: image ``i`` has red ``start + i``, green 100, blue 200; label ``i % 10``."""
    img = np.zeros((n, 3, 32, 32), dtype=np.uint8)
    img[:, 0] = (start + np.arange(n))[:, None, None]
    img[:, 1] = 100
    img[:, 2] = 200
    labels = [int(v) % 10 for v in range(start, start + n)]
    return {b"batch_label": b"test", b"labels": labels, b"data": img.reshape(n, -1)}


def write_cifar10(root: Path, per_batch: int = 6, n_test: int = 4) -> Path:
    """Writes ``cifar-10-batches-py/`` (5 training batches and ``test_batch``) under ``root``."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for b in range(5):
        with (folder / f"data_batch_{b + 1}").open("wb") as f:
            pickle.dump(cifar_batch(b * per_batch, per_batch), f, protocol=2)
    with (folder / "test_batch").open("wb") as f:
        pickle.dump(cifar_batch(200, n_test), f, protocol=2)
    return folder


def leaf_doc(users: dict[str, tuple[list, list]]) -> dict:
    """A LEAF JSON document from ``{user: (x, y)}``."""
    return {
        "users": list(users),
        "num_samples": [len(y) for _, y in users.values()],
        "user_data": {u: {"x": x, "y": y} for u, (x, y) in users.items()},
    }


def femnist_user(n: int, label0: int) -> tuple[list, list]:
    """``n`` 784-pixel images, image ``j`` filled with ``j / 10``, labels ``label0 + j``."""
    return [[j / 10.0] * 784 for j in range(n)], [label0 + j for j in range(n)]


def write_femnist(root: Path) -> dict[str, int]:
    """Writes LEAF FEMNIST train (two files, three writers) and test files; returns sizes."""
    (root / "train").mkdir(parents=True, exist_ok=True)
    (root / "test").mkdir(parents=True, exist_ok=True)
    train1 = {"f0000_01": femnist_user(3, 0), "f0001_02": femnist_user(5, 10)}
    train2 = {"f0002_03": femnist_user(2, 61 - 1), "f0003_04": ([], [])}
    (root / "train" / "all_data_0_niid_train.json").write_text(json.dumps(leaf_doc(train1)))
    (root / "train" / "all_data_1_niid_train.json").write_text(json.dumps(leaf_doc(train2)))
    test1 = {"f0000_01": femnist_user(1, 0), "f0001_02": femnist_user(2, 10)}
    test2 = {"f0002_03": femnist_user(1, 60)}
    (root / "test" / "all_data_0_niid_test.json").write_text(json.dumps(leaf_doc(test1)))
    (root / "test" / "all_data_1_niid_test.json").write_text(json.dumps(leaf_doc(test2)))
    return {"f0000_01": 3, "f0001_02": 5, "f0002_03": 2}


def shakespeare_user(text: str, n: int) -> tuple[list, list]:
    """``n`` 80-character windows of ``text`` and the character after each."""
    return [text[j : j + 80] for j in range(n)], [text[j + 80] for j in range(n)]


SPEECH_A = ("To be, or not to be, that is the question: Whether 'tis nobler in the mind " * 3)[:100]
SPEECH_B = ("Friends, Romans, countrymen, lend me your ears; I come to bury Caesar " * 3)[:100]
# "é" and "|" are outside LEAF's vocabulary.
SPEECH_C = ("é|" + "All the world's a stage, and all the men and women merely players " * 3)[:100]


def write_shakespeare(root: Path) -> dict[str, int]:
    """Writes LEAF Shakespeare train and test files for three roles; returns train sizes."""
    (root / "train").mkdir(parents=True, exist_ok=True)
    (root / "test").mkdir(parents=True, exist_ok=True)
    train = {
        "HAMLET": shakespeare_user(SPEECH_A, 4),
        "ANTONY": shakespeare_user(SPEECH_B, 6),
        "JAQUES": shakespeare_user(SPEECH_C, 2),
    }
    test = {"HAMLET": shakespeare_user(SPEECH_A[10:], 2), "ANTONY": shakespeare_user(SPEECH_B, 1)}
    (root / "train" / "train.json").write_text(json.dumps(leaf_doc(train)))
    (root / "test" / "test.json").write_text(json.dumps(leaf_doc(test)))
    return {"HAMLET": 4, "ANTONY": 6, "JAQUES": 2}
