"""What the reproduced figures compute from run directories and result files.

Notebooks under ``notebooks/`` only read and draw; the numbers they show come from here:

* :func:`rounds_to_target` and :func:`fedavg_table`: rounds until the test accuracy first
  reaches a target, and the speed-up of each FedAvg setting over FedSGD (McMahan et al.
  2017, Table 2), from run directories read with :func:`fedpriv.report.read_runs`.
* :func:`read_records`, :func:`series` and :func:`linear_fit`: JSON-lines result files of
  scripts that do not train (accounting curves, secure-aggregation costs), grouped into
  plottable series and checked for linear growth.

>>> rounds_to_target([(1, 0.5), (2, 0.91), (3, 0.89), (4, 0.95)], 0.9)
2
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fedpriv.errors import ConfigError
from fedpriv.privacy.release import flatten
from fedpriv.report.runs import FINISHED, Run

#: Partition names as the paper calls them.
PARTITION_LABELS = {"iid": "IID", "shards": "non-IID", "dirichlet": "Dirichlet"}
#: Models in the paper's order (its 2NN, then its CNN); others follow by name.
MODEL_ORDER = ("mlp", "cnn")


def rounds_to_target(curve: Sequence[tuple[int, float]], target: float) -> int | None:
    """The first evaluated round whose test accuracy is at least ``target`` (None if none).

    Args:
        curve: ``(round, test_accuracy)`` pairs in round order (``Run.curve``).
        target: accuracy in [0, 1].

    References:
        McMahan et al., "Communication-Efficient Learning of Deep Networks from
        Decentralized Data", AISTATS 2017, Table 2 (rounds to reach a target accuracy).
    """
    for rnd, acc in curve:
        if acc >= target:
            return int(rnd)
    return None


@dataclasses.dataclass(frozen=True)
class FedAvgSetting:
    """A run's place in the FedAvg/FedSGD grid of McMahan et al. 2017.

    Attributes:
        model: the model option (``mlp`` is the paper's 2NN, ``cnn`` its CNN).
        partition: ``dataset.partition.kind`` (``iid``; ``shards`` is the pathological
            non-IID split).
        epochs: local epochs E.
        batch_size: local batch size B as configured.
        full_batch: B is at least the largest client's example count (the paper's B = inf).
        updates_per_round: ``u = E n / B``, with n the mean examples per client and B
            capped at n (the paper's expected local updates per round).
        lr: the client learning rate.
    """

    model: str
    partition: str
    epochs: int
    batch_size: int
    full_batch: bool
    updates_per_round: float
    lr: float

    @property
    def is_fedsgd(self) -> bool:
        """E = 1 and B = inf: one full-batch gradient step per client and round (FedSGD)."""
        return self.epochs == 1 and self.full_batch

    @property
    def label(self) -> str:
        """``FedSGD`` or ``E=5, B=10`` (``B=∞`` for full batch)."""
        if self.is_fedsgd:
            return "FedSGD"
        return f"E={self.epochs}, B={'∞' if self.full_batch else self.batch_size}"


def fedavg_setting(run: Run) -> FedAvgSetting:
    """Reads a run's FedAvg setting from its configuration and ``summary.json``.

    Raises:
        ConfigError: the run lacks the client configuration or the population statistics
            (``summary.json`` of a finished run).
    """
    try:
        epochs = int(run.value("client.epochs"))
        batch = int(run.value("client.batch_size"))
        lr = float(run.value("client.lr"))
    except (TypeError, ValueError):
        raise ConfigError(str(run.path), "has no client.epochs/batch_size/lr") from None
    data = run.summary.get("data") or {}
    sizes = data.get("examples_per_client") or {}
    if "max" not in sizes or not data.get("clients"):
        raise ConfigError(str(run.path), "summary.json has no population statistics")
    mean_n = float(data["train_examples"]) / float(data["clients"])
    full = batch >= int(sizes["max"])
    return FedAvgSetting(
        model=str(run.value("model")),
        partition=str(run.value("dataset.partition.kind")),
        epochs=epochs,
        batch_size=batch,
        full_batch=full,
        updates_per_round=epochs * mean_n / min(batch, mean_n),
        lr=lr,
    )


def fedavg_table(runs: Iterable[Run], targets: Mapping[str, float]) -> list[dict[str, Any]]:
    """Rounds to reach each model's target accuracy and the speed-up over FedSGD.

    Runs are grouped by model, partition, E and B; within a group the learning rate that
    reaches the target in the fewest rounds is kept (the paper reports the best learning
    rate of its grid), or, when none reaches it, the one with the best accuracy. The
    speed-up is FedSGD's rounds over the setting's rounds, in the same model and partition.
    When FedSGD does not reach the target within its rounds the speed-up is a lower bound
    (its planned rounds over the setting's rounds; ``speedup_is_lower_bound``).

    Args:
        runs: run directories (only finished runs are used).
        targets: target accuracy per model option, e.g. ``{"mlp": 0.95, "cnn": 0.97}``.

    Returns:
        One dict per setting, sorted by model (2NN first), partition and ``u``: ``model``,
        ``partition`` (``IID``/``non-IID``), ``setting`` (label), ``E``, ``B`` (``"∞"`` for
        full batch), ``u``, ``lr``, ``target``, ``rounds`` (None: not reached),
        ``max_rounds``, ``speedup`` (None where undefined), ``speedup_is_lower_bound``,
        ``best_accuracy``, ``final_accuracy``, ``run`` (the kept run's path), ``curve``.

    References:
        McMahan et al. 2017, Table 2.
    """
    best: dict[tuple, tuple[tuple, Run, FedAvgSetting, int | None]] = {}
    for run in runs:
        if run.status != FINISHED or not run.curve:
            continue
        s = fedavg_setting(run)
        if s.model not in targets:
            continue
        reached = rounds_to_target(run.curve, targets[s.model])
        peak = max(a for _, a in run.curve)
        # Reaching first wins; then higher peak accuracy.
        rank = (0, reached, -peak) if reached is not None else (1, 0, -peak)
        key = (s.model, s.partition, s.epochs, "inf" if s.full_batch else s.batch_size)
        if key not in best or rank < best[key][0]:
            best[key] = (rank, run, s, reached)
    baseline: dict[tuple[str, str], tuple[int | None, int]] = {}
    for _, run, s, reached in best.values():
        if s.is_fedsgd:
            baseline[(s.model, s.partition)] = (reached, _last_round(run))
    rows = []
    for _, run, s, reached in best.values():
        base = baseline.get((s.model, s.partition))
        speedup, lower = None, False
        if base is not None and reached:
            if base[0] is not None:
                speedup = base[0] / reached
            else:
                speedup, lower = base[1] / reached, True
        rows.append(
            {
                "model": s.model,
                "partition": PARTITION_LABELS.get(s.partition, s.partition),
                "setting": s.label,
                "E": s.epochs,
                "B": "∞" if s.full_batch else s.batch_size,
                "u": round(s.updates_per_round, 1),
                "lr": s.lr,
                "target": targets[s.model],
                "rounds": reached,
                "max_rounds": _last_round(run),
                "speedup": speedup,
                "speedup_is_lower_bound": lower,
                "best_accuracy": max(a for _, a in run.curve),
                "final_accuracy": run.curve[-1][1],
                "run": str(run.path),
                "curve": list(run.curve),
            }
        )
    order = {m: i for i, m in enumerate(MODEL_ORDER)}
    rows.sort(
        key=lambda r: (
            order.get(r["model"], len(order)),
            r["model"],
            r["partition"],
            r["u"],
            r["setting"] != "FedSGD",
        )
    )
    return rows


def _last_round(run: Run) -> int:
    return int(run.curve[-1][0]) if run.curve else int(run.rounds)


def format_rounds(row: Mapping[str, Any]) -> str:
    """A table cell for a :func:`fedavg_table` row: ``"38 (2.0×)"``, ``"120"`` for FedSGD,
    ``"> 150"`` when not reached, ``"38 (≥ 3.9×)"`` for a lower-bound speed-up."""
    if row["rounds"] is None:
        return f"> {row['max_rounds']}"
    if row["setting"] == "FedSGD" or row["speedup"] is None:
        return str(row["rounds"])
    bound = "≥ " if row["speedup_is_lower_bound"] else ""
    return f"{row['rounds']} ({bound}{row['speedup']:.1f}×)"


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a JSON-lines result file (one JSON object per line); a metrics line's
    ``diagnostics`` are merged into its top level (:func:`fedpriv.privacy.release.flatten`).

    Raises:
        ConfigError: the file does not exist or a line is not a JSON object.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(str(p), "does not exist; run the figure's command first")
    out = []
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                raise ConfigError(f"{p}:{n}", "is not valid JSON") from None
            if not isinstance(rec, dict):
                raise ConfigError(f"{p}:{n}", "is not a JSON object")
            out.append(flatten(rec))
    return out


def series(
    records: Iterable[Mapping[str, Any]],
    x: str,
    y: str,
    by: Sequence[str] = (),
    where: Mapping[str, Any] | None = None,
) -> dict[tuple, tuple[list[float], list[float]]]:
    """Records grouped into ``(xs, ys)`` lines, sorted by x.

    Args:
        records: dicts (e.g. from :func:`read_records`).
        x, y: the fields to plot.
        by: fields whose values name a line (the key is the tuple of their values).
        where: only records whose fields equal these values.

    Returns:
        ``{key: (xs, ys)}`` in order of the keys' first appearance.
    """
    lines: dict[tuple, list[tuple[float, float]]] = {}
    for rec in records:
        if where and any(rec.get(k) != v for k, v in where.items()):
            continue
        if rec.get(x) is None or rec.get(y) is None:
            continue
        key = tuple(rec.get(k) for k in by)
        lines.setdefault(key, []).append((float(rec[x]), float(rec[y])))
    out = {}
    for key, pts in lines.items():
        pts.sort()
        out[key] = ([p[0] for p in pts], [p[1] for p in pts])
    return out


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares line through ``(xs, ys)``: ``(slope, intercept, r_squared)``.

    Raises:
        ConfigError: fewer than two distinct x values.
    """
    n = len(xs)
    if n != len(ys) or len(set(xs)) < 2:
        raise ConfigError("linear_fit", "needs at least two distinct x values")
    mx, my = math.fsum(xs) / n, math.fsum(ys) / n
    sxx = math.fsum((x - mx) ** 2 for x in xs)
    sxy = math.fsum((x - mx) * (y - my) for x, y in zip(xs, ys))
    slope = sxy / sxx
    intercept = my - slope * mx
    ss_tot = math.fsum((y - my) ** 2 for y in ys)
    ss_res = math.fsum((y - (intercept + slope * x)) ** 2 for x, y in zip(xs, ys))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return slope, intercept, r2


def epsilon_at(records: Iterable[Mapping[str, Any]], accountant: str, steps: int) -> float:
    """Epsilon of ``accountant`` at ``steps`` in the accounting figure's records.

    Raises:
        ConfigError: no record for that accountant and step count.
    """
    for rec in records:
        if rec.get("accountant") == accountant and int(rec.get("steps", -1)) == steps:
            return float(rec["epsilon"])
    raise ConfigError("records", f"no epsilon for accountant {accountant!r} at {steps} steps")
