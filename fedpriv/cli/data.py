"""``fedpriv-data``: describe a federated data set, or download the public ones.

Examples::

    fedpriv-data describe mnist dataset.root=data/mnist dataset.partition.kind=shards
    fedpriv-data describe femnist dataset.root=leaf/femnist/data --json
    fedpriv-data download cifar10 --root data/cifar10

``describe`` loads the data set as ``fedpriv-train`` would (the ``dataset`` config group plus
overrides, the same data seed) and prints the number of clients, examples per client
(min/median/p90/max) and label skew: the mean number of classes per client and the mean total
variation distance between each client's label distribution and the global one. ``download``
fetches the standard files from their public source (or ``--source``) into ``--root``. Bad
input exits with status 2 and one line.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from fedpriv import data as data_lib
from fedpriv import expose_cpu_devices
from fedpriv.data.download import download
from fedpriv.data.stats import population_stats
from fedpriv.errors import ConfigError, exit_on_config_error
from fedpriv.fl.experiment import data_rng

CONF_DIR = Path(__file__).resolve().parent.parent / "conf" / "dataset"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fedpriv-data", description="Describe or download federated data sets."
    )
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("describe", help="clients, examples per client and label skew")
    d.add_argument("name", help="data set (the dataset config group option)")
    d.add_argument("overrides", nargs="*", help="dataset.KEY=VALUE overrides")
    d.add_argument("--seed", type=int, default=0, help="run seed for the partition (default 0)")
    d.add_argument("--json", action="store_true", help="print one JSON object")
    g = sub.add_parser("download", help="fetch the standard files into a directory")
    g.add_argument("name")
    g.add_argument("--root", required=True, help="directory to fill (then dataset.root=DIR)")
    g.add_argument("--source", help="base URL (MNIST formats) or tarball URL (CIFAR-10)")
    return p


def dataset_config(name: str, overrides: Sequence[str]) -> dict[str, Any]:
    """The ``dataset`` node for ``name`` (its config group file, if any) plus overrides.

    Raises:
        ConfigError: an override that is not ``KEY=VALUE``.
    """
    path = CONF_DIR / f"{name}.yaml"
    base = OmegaConf.load(path) if path.is_file() else OmegaConf.create({})
    dotlist = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError("overrides", f"must be dataset.KEY=VALUE, got {item!r}")
        dotlist.append(f"{key.removeprefix('dataset.')}={value}")
    try:
        merged = OmegaConf.merge(base, OmegaConf.from_dotlist(dotlist))
    except Exception as err:  # noqa: BLE001 - omegaconf raises many error types
        raise ConfigError("overrides", str(err).splitlines()[0]) from None
    cfg = OmegaConf.to_container(merged, resolve=True)
    cfg["name"] = name
    return cfg


def _format(d: dict[str, Any]) -> str:
    e = d["examples_per_client"]
    return "\n".join(
        [
            f"data set            {d['name']}",
            f"clients             {d['clients']}",
            f"train examples      {d['train_examples']}",
            f"test examples       {d['test_examples']}",
            f"example shape       {tuple(d['example_shape'])}",
            f"classes             {d['num_classes']}",
            f"examples per client min {e['min']}, median {e['median']:g}, p90 {e['p90']:g}, "
            f"max {e['max']}",
            f"classes per client  {d['mean_classes_per_client']:.2f} (mean)",
            f"label skew (TV)     {d['mean_tv_distance']:.3f} (mean total variation distance to "
            "the global label distribution)",
        ]
    )


@exit_on_config_error
def main(argv: Sequence[str] | None = None) -> None:
    expose_cpu_devices()
    args = _parser().parse_args(argv)
    if args.command == "download":
        paths = download(args.name, args.root, args.source)
        root = Path(args.root)
        print(f"{args.name}: {len(paths)} files in {root}; use dataset.root={root}")
        return
    if args.name not in data_lib.available():
        raise ConfigError(
            "dataset.name", f"unknown data set {args.name!r}; choose from {data_lib.available()}"
        )
    if args.seed < 0:
        raise ConfigError("--seed", f"must be >= 0, got {args.seed}")
    cfg = dataset_config(args.name, args.overrides)
    summary = population_stats(data_lib.load(cfg, data_rng(args.seed)))
    print(json.dumps(summary) if args.json else _format(summary))


if __name__ == "__main__":
    main()
