"""Figures of a report: the privacy-utility curve and accuracy over rounds."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from fedpriv.report.runs import FINISHED, Run
from fedpriv.report.tables import BUDGET_KEYS, REPEAT_KEYS, Group

# Figures are built with matplotlib's object API, not pyplot: no backend is chosen and no
# global figure is kept, so drawing a report changes nothing in the caller's matplotlib.


def _label(setting: dict, keys: Sequence[str]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={setting[k]}" for k in keys) or "all runs"


def privacy_utility(groups: Sequence[Group], keys: Sequence[str], stem: Path) -> list[Path]:
    """Test accuracy (mean ± std over seeds) vs epsilon, one line per setting of the swept
    keys other than the privacy budget. Writes ``stem.png`` and ``stem.svg``.

    Returns the written paths; nothing is written (and ``[]`` returned) when no finished run
    spent a finite epsilon.
    """
    line_keys = [k for k in keys if k not in REPEAT_KEYS and k not in BUDGET_KEYS]
    series: dict[str, list[tuple[float, float, float, float]]] = {}
    for g in groups:
        eps, eps_sd = g.stat("epsilon")
        acc, acc_sd = g.stat("accuracy")
        if eps is None or acc is None:
            continue
        series.setdefault(_label(g.setting, line_keys), []).append((eps, acc, eps_sd, acc_sd))
    if not series:
        return []
    fig = Figure(figsize=(6, 4.2))
    ax = fig.subplots()
    for label, pts in series.items():
        pts.sort()
        ax.errorbar(
            [p[0] for p in pts],
            [p[1] for p in pts],
            xerr=[p[2] for p in pts],
            yerr=[p[3] for p in pts],
            marker="o",
            capsize=3,
            label=label,
        )
    ax.set_xscale("log")
    ticks = sorted({round(p[0], 3) for pts in series.values() for p in pts})
    if len(ticks) <= 12:
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.set_xlabel("epsilon spent (log scale)")
    ax.set_ylabel("test accuracy (mean ± std over seeds)")
    deltas = {r.delta for g in groups for r in g.finished if r.delta is not None}
    ax.set_title("Privacy-utility" + (f" at delta {deltas.pop():.0e}" if len(deltas) == 1 else ""))
    ax.grid(True, which="both", alpha=0.3)
    if len(series) > 1 or line_keys:
        ax.legend(fontsize=8)
    return _save(fig, stem)


def accuracy_vs_round(
    runs: Sequence[Run], groups: Sequence[Group], keys: Sequence[str], stem: Path
) -> list[Path]:
    """Test accuracy over rounds, one line per run (colour by group, seeds share a colour);
    unfinished runs dashed. Writes ``stem.png`` and ``stem.svg``; ``[]`` without curves."""
    if not any(r.curve for r in runs):
        return []
    group_keys = [k for k in keys if k not in REPEAT_KEYS]
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.subplots()
    colours = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, g in enumerate(groups):
        colour = colours[i % len(colours)]
        labelled = False
        for run in g.runs:
            if not run.curve:
                continue
            xs, ys = zip(*run.curve)
            ax.plot(
                xs,
                ys,
                color=colour,
                alpha=0.8,
                linestyle="-" if run.status == FINISHED else "--",
                label=None if labelled else _label(g.setting, group_keys),
            )
            labelled = True
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.set_title("Accuracy per run (dashed: unfinished)")
    ax.grid(True, alpha=0.3)
    if len(groups) <= 12:
        ax.legend(fontsize=7)
    return _save(fig, stem)


def _save(fig: Figure, stem: Path) -> list[Path]:
    fig.tight_layout()
    out = []
    for ext in ("png", "svg"):
        path = stem.with_suffix(f".{ext}")
        fig.savefig(path, dpi=130)
        out.append(path)
    return out
