"""Fetches the standard files of the public data sets into a directory.

MNIST and Fashion-MNIST come as four gzipped IDX files from a base URL; CIFAR-10 as one
tarball that is unpacked to ``cifar-10-batches-py/``. LEAF's FEMNIST and Shakespeare are built
by LEAF's own preprocessing scripts and are not a direct download. Every file is written to a
temporary name and renamed when complete, and the result is read back with the loader's
checks before :func:`download` returns.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from fedpriv.data import formats
from fedpriv.errors import ConfigError

#: Base URL (the IDX files are appended) or tarball URL of each data set.
SOURCES = {
    "mnist": "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "fashion_mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
}
LEAF = ("femnist", "shakespeare")


def _fetch(url: str, dest: Path) -> None:
    """Copies ``url`` (``http(s)://`` or ``file://``) to ``dest`` through a temporary file."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            shutil.copyfileobj(resp, out)
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError, ValueError) as err:
        Path(tmp).unlink(missing_ok=True)
        raise ConfigError("--source", f"cannot fetch {url} ({type(err).__name__}: {err})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _unpack(tarball: Path, root: Path) -> None:
    try:
        with tarfile.open(tarball, "r:*") as tar:
            tar.extractall(root, filter="data")
    except (tarfile.TarError, OSError, EOFError) as err:
        raise ConfigError(
            str(tarball), f"cannot be unpacked, truncated or corrupt ({type(err).__name__}: {err})"
        ) from None


def download(name: str, root: str | Path, source: str | None = None) -> list[Path]:
    """Downloads data set ``name`` into ``root`` and checks the files.

    Args:
        name: ``mnist``, ``fashion_mnist`` or ``cifar10``.
        root: the directory to fill (created if missing); give it as ``dataset.root``.
        source: the base URL (MNIST formats) or tarball URL (CIFAR-10); defaults to
            :data:`SOURCES`.

    Returns:
        The data files now under ``root``.

    Raises:
        ConfigError: an unknown or LEAF data set, a fetch that fails, or files that fail the
            loader's checks.
    """
    if name in LEAF:
        raise ConfigError(
            "download",
            f"{name} (LEAF) is not a direct download: build train/ and test/ with LEAF's "
            "preprocess.sh (github.com/TalwalkarLab/leaf) and set dataset.root to the folder "
            "holding them",
        )
    if name not in SOURCES:
        raise ConfigError("download", f"no download for {name!r}; choose from {sorted(SOURCES)}")
    root = Path(root).expanduser()
    url = source or SOURCES[name]
    if name == "cifar10":
        tarball = root / "cifar-10-python.tar.gz"
        _fetch(url, tarball)
        _unpack(tarball, root)
        tarball.unlink()
        folder = formats.cifar10_dir(root)
        paths = [folder / n for n in (*formats.CIFAR10_TRAIN, formats.CIFAR10_TEST)]
        for path in paths:
            formats.read_cifar_batch(path)
        return paths
    base = url if url.endswith("/") else url + "/"
    paths = []
    for stem in formats.IDX_FILES:
        dest = root / f"{stem}.gz"
        _fetch(base + dest.name, dest)
        paths.append(dest)
    formats.read_idx_pair(paths[0], paths[1], 10)
    formats.read_idx_pair(paths[2], paths[3], 10)
    return paths
