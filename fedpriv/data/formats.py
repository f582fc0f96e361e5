"""Loaders for standard published data set formats, read from ``dataset.root``.

* ``mnist``, ``fashion_mnist``: the IDX files ``train-images-idx3-ubyte``,
  ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (each
  plain or ``.gz``); partitioned over ``num_clients`` clients.
* ``cifar10``: the python batches ``cifar-10-batches-py/data_batch_1`` .. ``data_batch_5`` and
  ``test_batch``; partitioned.
* ``femnist``: LEAF JSON ``train/*.json``, ``test/*.json``; one client per writer.
* ``shakespeare``: LEAF JSON ``train/*.json``, ``test/*.json``; one client per speaking role.

Every file is checked before use: a missing file, or one that is truncated or corrupt (bad
magic number, dimensions that disagree with the byte count, wrong keys or shapes, labels out
of range), stops with a :class:`~fedpriv.errors.ConfigError` naming the file; nothing is
loaded partially. Images are scaled to float32 in ``[0, 1]``.
"""

from __future__ import annotations

import gzip
import json
import pickle
import struct
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedpriv.data.datasets import FederatedData, partition_population, register, required
from fedpriv.data.store import PopulationStore
from fedpriv.errors import ConfigError

#: IDX file stems of the MNIST-format data sets: (train images, train labels, test ...).
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
#: The CIFAR-10 python batches, relative to ``dataset.root``.
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST = "test_batch"
#: LEAF's character vocabulary (``language_utils.ALL_LETTERS``); index = position.
LEAF_LETTERS = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
#: Index of any character outside :data:`LEAF_LETTERS`.
LEAF_UNKNOWN = len(LEAF_LETTERS)
SHAKESPEARE_CLASSES = LEAF_UNKNOWN + 1
FEMNIST_CLASSES = 62

_IDX_DTYPES = {0x08: np.uint8}
_LEAF_TABLE = np.full(256, LEAF_UNKNOWN, dtype=np.int32)
_LEAF_TABLE[[ord(ch) for ch in LEAF_LETTERS]] = np.arange(len(LEAF_LETTERS), dtype=np.int32)


def dataset_root(cfg: Mapping[str, Any], expected: str) -> Path:
    """Returns ``dataset.root`` as an existing directory.

    Args:
        cfg: the ``dataset`` config node.
        expected: the files the directory should hold, for the error message.

    Raises:
        ConfigError: ``dataset.root`` is unset or not a directory.
    """
    root = cfg.get("root")
    name = cfg.get("name")
    if not isinstance(root, str) or not root.strip():
        raise ConfigError(
            "dataset.root",
            f"is required for dataset={name} (a directory holding {expected}), got {root!r}",
        )
    path = Path(root).expanduser()
    if not path.is_dir():
        raise ConfigError(
            "dataset.root", f"{path} is not a directory (dataset={name} expects {expected})"
        )
    return path


def _read_bytes(path: Path) -> bytes:
    """Reads a file, decompressing ``.gz``; unreadable or truncated gzip names the file."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise ConfigError(
            str(path), f"cannot be read, truncated or corrupt ({type(err).__name__}: {err})"
        ) from None


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """Reads an IDX file (the MNIST format) of unsigned bytes with ``ndim`` dimensions.

    Args:
        path: the file; a ``.gz`` suffix means gzip-compressed.
        ndim: the expected number of dimensions (3 for images, 1 for labels).

    Returns:
        The uint8 array of the shape the header states.

    Raises:
        ConfigError: naming the file when the magic number, the dimensions or the byte count
            are wrong (a truncated file), or the file cannot be read.
    """
    path = Path(path)
    data = _read_bytes(path)
    header = 4 + 4 * ndim
    if len(data) < 4:
        raise ConfigError(str(path), f"truncated: {len(data)} bytes, no IDX header")
    zero, code, dims = struct.unpack(">HBB", data[:4])
    if zero != 0 or code not in _IDX_DTYPES:
        raise ConfigError(
            str(path),
            f"not an IDX file of unsigned bytes (magic number 0x{data[:4].hex()}, expected "
            f"0x000008{ndim:02x})",
        )
    if dims != ndim:
        raise ConfigError(str(path), f"holds a {dims}-d array, expected {ndim}-d")
    if len(data) < header:
        raise ConfigError(str(path), f"truncated: {len(data)} bytes, header needs {header}")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(shape, dtype=np.int64))
    if len(data) - header != expected:
        raise ConfigError(
            str(path),
            f"truncated or corrupt: the header states shape {tuple(shape)} ({expected} bytes of "
            f"data) but the file holds {len(data) - header}",
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def find_idx(root: Path, stem: str) -> Path:
    """Returns ``root/stem`` or ``root/stem.gz``, whichever exists.

    Raises:
        ConfigError: neither exists; names both.
    """
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise ConfigError(
        "dataset.root",
        f"{root} has neither {stem} nor {stem}.gz (expected the IDX files {', '.join(IDX_FILES)}, "
        "each plain or .gz)",
    )


def read_idx_pair(images: Path, labels: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Reads matching IDX image and label files; images as float32 ``[N, H, W, 1]`` in [0, 1]."""
    x = read_idx(images, 3)
    y = read_idx(labels, 1)
    if len(x) != len(y):
        raise ConfigError(
            str(labels), f"holds {len(y)} labels but {images.name} holds {len(x)} images"
        )
    if len(y) and int(y.max()) >= num_classes:
        raise ConfigError(
            str(labels), f"labels must be in [0, {num_classes - 1}], found {int(y.max())}"
        )
    return (x.astype(np.float32) / 255.0)[..., None], y.astype(np.int32)


def _partitioned(
    x: np.ndarray,
    y: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    cfg: Mapping[str, Any],
    num_classes: int,
    rng: np.random.Generator,
    name: str,
    source: str,
) -> FederatedData:
    num_clients = int(required(cfg, "num_clients"))
    if len(y) < num_clients:
        raise ConfigError(
            "dataset.num_clients",
            f"{num_clients} clients need at least {num_clients} training examples; {source} "
            f"holds {len(y)}",
        )
    store = partition_population(x, y, cfg, num_classes, rng, name)
    return FederatedData(store, x_test, y_test)


def _load_idx_dataset(cfg: Mapping[str, Any], rng: np.random.Generator, name: str) -> FederatedData:
    root = dataset_root(cfg, "the IDX files " + ", ".join(f"{s}[.gz]" for s in IDX_FILES))
    paths = [find_idx(root, stem) for stem in IDX_FILES]
    x, y = read_idx_pair(paths[0], paths[1], 10)
    x_test, y_test = read_idx_pair(paths[2], paths[3], 10)
    if x.shape[1:] != x_test.shape[1:]:
        raise ConfigError(
            str(paths[2]), f"images are {x_test.shape[1:3]}, training images are {x.shape[1:3]}"
        )
    return _partitioned(x, y, x_test, y_test, cfg, 10, rng, name, str(root))


@register("mnist")
def load_mnist(cfg: Mapping[str, Any], rng: np.random.Generator) -> FederatedData:
    """MNIST (LeCun et al.) from its IDX files: 28x28x1 images in [0, 1], 10 classes."""
    return _load_idx_dataset(cfg, rng, "mnist")


@register("fashion_mnist")
def load_fashion_mnist(cfg: Mapping[str, Any], rng: np.random.Generator) -> FederatedData:
    """Fashion-MNIST (Xiao et al. 2017) from its IDX files: 28x28x1 images, 10 classes."""
    return _load_idx_dataset(cfg, rng, "fashion_mnist")


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds dicts, lists, strings and numpy arrays."""

    _ALLOWED = {
        ("_codecs", "encode"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_cifar_batch(path: str | Path, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Reads one CIFAR python batch: images float32 ``[N, 32, 32, 3]`` in [0, 1], int32 labels.

    Only numpy arrays and plain containers are unpickled; anything else is refused.

    Raises:
        ConfigError: naming the file when it is missing, truncated, not a CIFAR batch, or has
            the wrong shapes or labels.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), "is missing")
    try:
        with path.open("rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as err:
        raise ConfigError(
            str(path), f"cannot be read, truncated or corrupt ({type(err).__name__}: {err})"
        ) from None
    if not isinstance(batch, dict):
        raise ConfigError(str(path), f"is not a CIFAR batch (a {type(batch).__name__})")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise ConfigError(str(path), f"has no 'data' and 'labels' (keys {sorted(batch)})")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ConfigError(
            str(path), f"data must be uint8 [N, 3072], got {data.dtype} {list(data.shape)}"
        )
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
        raise ConfigError(
            str(path), f"labels must be {len(data)} integers, got {labels.dtype} {labels.shape}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ConfigError(str(path), f"labels must be in [0, {num_classes - 1}]")
    x = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).astype(np.float32) / 255.0
    return x, labels.astype(np.int32)


def cifar10_dir(root: Path) -> Path:
    """The directory holding the CIFAR-10 batches: ``root/cifar-10-batches-py`` or ``root``."""
    sub = root / CIFAR10_DIR
    return sub if sub.is_dir() else root


@register("cifar10")
def load_cifar10(cfg: Mapping[str, Any], rng: np.random.Generator) -> FederatedData:
    """CIFAR-10 (Krizhevsky 2009) from its python batches: 32x32x3 images, 10 classes."""
    expected = f"{CIFAR10_DIR}/{{{','.join(CIFAR10_TRAIN)},{CIFAR10_TEST}}}"
    root = dataset_root(cfg, expected)
    folder = cifar10_dir(root)
    names = (*CIFAR10_TRAIN, CIFAR10_TEST)
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise ConfigError(
            "dataset.root", f"{folder} lacks {', '.join(missing)} (expected {expected})"
        )
    parts = [read_cifar_batch(folder / n) for n in CIFAR10_TRAIN]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    x_test, y_test = read_cifar_batch(folder / CIFAR10_TEST)
    return _partitioned(x, y, x_test, y_test, cfg, 10, rng, "cifar10", str(folder))


def _leaf_files(root: Path, split: str) -> list[Path]:
    files = sorted((root / split).glob("*.json"))
    if not files:
        raise ConfigError(
            "dataset.root",
            f"{root / split} holds no .json files (expected LEAF's train/*.json and test/*.json)",
        )
    return files


def read_leaf_json(path: str | Path) -> list[tuple[str, list[Any], list[Any]]]:
    """Reads one LEAF JSON file as ``[(user, x, y)]`` in the file's user order.

    Raises:
        ConfigError: naming the file when it is not valid JSON (e.g. truncated) or its
            ``users``, ``num_samples`` and ``user_data`` disagree.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            doc = json.load(f)
    except (OSError, ValueError) as err:
        raise ConfigError(
            str(path), f"cannot be read, truncated or corrupt ({type(err).__name__}: {err})"
        ) from None
    if not isinstance(doc, dict) or not {"users", "user_data"} <= set(doc):
        raise ConfigError(str(path), "is not a LEAF file (needs 'users' and 'user_data')")
    users, data = doc["users"], doc["user_data"]
    counts = doc.get("num_samples")
    if not isinstance(users, list) or not isinstance(data, dict):
        raise ConfigError(str(path), "'users' must be a list and 'user_data' an object")
    if counts is not None and (not isinstance(counts, list) or len(counts) != len(users)):
        raise ConfigError(str(path), "'num_samples' must list one count per user")
    out = []
    for i, user in enumerate(users):
        entry = data.get(user)
        if not isinstance(entry, dict) or "x" not in entry or "y" not in entry:
            raise ConfigError(str(path), f"user_data[{user!r}] must hold 'x' and 'y'")
        xs, ys = entry["x"], entry["y"]
        if not isinstance(xs, list) or not isinstance(ys, list) or len(xs) != len(ys):
            raise ConfigError(str(path), f"user {user!r}: x and y must be lists of equal length")
        if counts is not None and counts[i] != len(ys):
            raise ConfigError(
                str(path), f"user {user!r}: num_samples says {counts[i]}, user_data has {len(ys)}"
            )
        out.append((str(user), xs, ys))
    return out


def encode_leaf_text(texts: Sequence[str], seq_len: int, where: str) -> np.ndarray:
    """Maps strings to int32 ``[N, seq_len]`` indices in :data:`LEAF_LETTERS`.

    Characters outside the vocabulary map to :data:`LEAF_UNKNOWN`.

    Raises:
        ConfigError: naming ``where`` when an entry is not a string of length ``seq_len``.
    """
    table = _LEAF_TABLE
    out = np.empty((len(texts), seq_len), dtype=np.int32)
    for i, text in enumerate(texts):
        if not isinstance(text, str) or len(text) != seq_len:
            got = len(text) if isinstance(text, str) else type(text).__name__
            raise ConfigError(
                where, f"entry {i} must be a string of {seq_len} characters, got {got}"
            )
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        out[i] = np.where(codes < 256, table[np.minimum(codes, 255)], LEAF_UNKNOWN)
    return out


def _femnist_arrays(
    xs: list[Any], ys: list[Any], path: Path, user: str
) -> tuple[np.ndarray, np.ndarray]:
    where = f"{path} (user {user!r})"
    try:
        x = np.asarray(xs, dtype=np.float32)
        y = np.asarray(ys)
    except (TypeError, ValueError) as err:
        raise ConfigError(str(path), f"user {user!r}: x is not numeric ({err})") from None
    if x.ndim != 2 or x.shape[1] != 28 * 28:
        raise ConfigError(where, f"x must be [n, 784] pixels, got shape {list(x.shape)}")
    if not np.all(np.isfinite(x)):
        raise ConfigError(where, "x holds non-finite values")
    if len(y) and (
        not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= FEMNIST_CLASSES
    ):
        raise ConfigError(where, f"y must be integers in [0, {FEMNIST_CLASSES - 1}]")
    return x.reshape(-1, 28, 28, 1), y.astype(np.int32)


def _shakespeare_arrays(
    xs: list[Any], ys: list[Any], path: Path, user: str, seq_len: int
) -> tuple[np.ndarray, np.ndarray]:
    where = f"{path} (user {user!r})"
    x = encode_leaf_text(xs, seq_len, where)
    for i, ch in enumerate(ys):
        if not isinstance(ch, str) or len(ch) != 1:
            raise ConfigError(where, f"y entry {i} must be one character, got {ch!r}")
    y = encode_leaf_text(ys, 1, where)[:, 0] if ys else np.zeros(0, np.int32)
    return x, y


def _load_leaf(cfg: Mapping[str, Any], name: str, num_classes: int, convert: Any) -> FederatedData:
    root = dataset_root(cfg, "LEAF's train/*.json and test/*.json")
    user_index: dict[str, int] = {}
    xs, ys, owners = [], [], []
    for path in _leaf_files(root, "train"):
        for user, ux, uy in read_leaf_json(path):
            if not uy:
                continue
            x, y = convert(ux, uy, path, user)
            xs.append(x)
            ys.append(y)
            owners.append(np.full(len(y), user_index.setdefault(user, len(user_index))))
    if not xs:
        raise ConfigError("dataset.root", f"{root / 'train'} holds no examples")
    test_x, test_y = [], []
    for path in _leaf_files(root, "test"):
        for user, ux, uy in read_leaf_json(path):
            if uy:
                x, y = convert(ux, uy, path, user)
                test_x.append(x)
                test_y.append(y)
    if not test_x:
        raise ConfigError("dataset.root", f"{root / 'test'} holds no examples")
    store = PopulationStore.from_assignment(
        np.concatenate(xs), np.concatenate(ys), np.concatenate(owners), num_classes, name
    )
    return FederatedData(store, np.concatenate(test_x), np.concatenate(test_y))


@register("femnist")
def load_femnist(cfg: Mapping[str, Any], rng: np.random.Generator) -> FederatedData:
    """FEMNIST from LEAF's JSON files: one client per writer, 28x28x1 images, 62 classes.

    Clients are the writers of ``train/*.json`` in file and user order (writers without
    training examples are dropped); the test set is the union of ``test/*.json``. Pixel values
    are kept as LEAF stores them.
    """
    del rng
    return _load_leaf(cfg, "femnist", FEMNIST_CLASSES, _femnist_arrays)


@register("shakespeare")
def load_shakespeare(cfg: Mapping[str, Any], rng: np.random.Generator) -> FederatedData:
    """Shakespeare from LEAF's JSON files: one client per speaking role, next-character task.

    ``x`` holds int32 ``[seq_len]`` (default 80) character indices in LEAF's vocabulary
    (:data:`LEAF_LETTERS`), ``y`` the index of the next character; characters outside the
    vocabulary map to :data:`LEAF_UNKNOWN`, so there are 81 classes.
    """
    del rng
    seq_len = int(cfg.get("seq_len", 80))

    def convert(ux: list[Any], uy: list[Any], path: Path, user: str) -> Any:
        return _shakespeare_arrays(ux, uy, path, user, seq_len)

    return _load_leaf(cfg, "shakespeare", SHAKESPEARE_CLASSES, convert)
