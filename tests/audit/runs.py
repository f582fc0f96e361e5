"""Small real runs and hand-built run directories for the audit tests."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from fedpriv.settings import RunConfig
from tests.conftest import REPO

CONF_DIR = REPO / "fedpriv" / "conf"
DEBUG = ("experiment=debug", "progress=false")


def compose(*overrides: str) -> dict[str, Any]:
    """The composed ``fedpriv-train`` configuration (plain dicts) for ``overrides``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose("config", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()
    return OmegaConf.to_container(cfg, resolve=True)


def train(run_dir: Path, *overrides: str) -> Path:
    """Trains in-process with ``fedpriv.fl.loop.run`` and writes ``.hydra/config.yaml``
    as ``fedpriv-train`` would."""
    from omegaconf import OmegaConf

    from fedpriv.config import validate
    from fedpriv.fl import loop

    cfg = compose(*DEBUG, *overrides)
    validate(cfg)
    loop.run(RunConfig.from_mapping(cfg), run_dir, progress=False)
    (run_dir / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(OmegaConf.create(cfg), run_dir / ".hydra" / "config.yaml")
    return run_dir


def train_resumed(run_dir: Path, *overrides: str, rounds: int = 6, every: int = 3) -> Path:
    """A run killed after round ``rounds`` but before its last checkpoint, then resumed:
    rounds ``every + 1 .. rounds`` run twice and are replayed in the ledger."""
    # Keep every checkpoint: the run also checkpoints the round before its last.
    args = (
        *overrides,
        f"rounds={rounds}",
        f"checkpoint.every={every}",
        f"checkpoint.keep={rounds}",
    )
    train(run_dir, *args)
    for step in (run_dir / "checkpoints").iterdir():
        if step.name.isdigit() and int(step.name) > every:
            shutil.rmtree(step)
    (run_dir / "summary.json").unlink()
    return train(run_dir, *args, "resume=true")


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def metrics(path: Path) -> list[dict[str, Any]]:
    """The lines of a ``metrics.jsonl`` with their diagnostics merged into the top level."""
    from fedpriv.privacy.release import flatten

    return [flatten(rec) for rec in lines(path)]


def without_seconds(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Metrics lines without the wall-clock ``seconds`` diagnostic (the one field that may
    differ between two runs of one configuration)."""
    out = []
    for rec in records:
        rec = {k: v for k, v in rec.items() if k != "seconds"}
        if isinstance(rec.get("diagnostics"), dict):
            rec["diagnostics"] = {k: v for k, v in rec["diagnostics"].items() if k != "seconds"}
        out.append(rec)
    return out


def write_lines(path: Path, records: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def copy_run(src: Path, dst: Path) -> Path:
    """A copy of a run directory (without checkpoints) to edit."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints", "audit.*"))
    return dst


def synthetic_run(
    run_dir: Path,
    records: list[dict[str, Any]],
    *,
    delta: float,
    accountant: str = "rdp",
    population: int | None = None,
    summary_extra: dict[str, Any] | None = None,
) -> Path:
    """A run directory built from ledger records alone, as an honest run would write it:
    the metrics rows repeat the round's clip, noise and denominator, and the summary holds
    the epsilon of every accountant that supports the ledger (computed by fedpriv)."""
    from fedpriv import accounting

    run_dir.mkdir(parents=True)
    write_lines(run_dir / "ledger.jsonl", records)
    tracker = accounting.EpsilonTracker(delta, accountant)
    metrics = []
    for rec in records:
        row = {"round": rec["round"], "clients": rec.get("realised_cohort", 0)}
        if rec["unit"] == "user":
            row.update(
                clip_norm=rec["clip_norm"],
                noise_std=rec["noise_std"],
                denominator=rec["cohort_size"],
            )
        row["epsilon"] = tracker.add(rec)
        metrics.append(row)
    write_lines(run_dir / "metrics.jsonl", metrics)
    eps = {
        name: accounting.epsilon(records, delta, name)
        for name in accounting.supported_accountants(records)
    }
    first = records[0]
    summary = {
        "rounds": len(records),
        "population": population or first.get("population"),
        "sampling": {"kind": first["sampling"], "expected_cohort": first.get("cohort_size")},
        "privacy": {
            "name": "example_dp" if first["unit"] == "example" else "user_dp",
            "noise_multiplier": first["noise_multiplier"],
            "accountant": accountant,
        },
        "epsilon": {k: (v if math.isfinite(v) else None) for k, v in eps.items()},
        "delta": delta,
        "accountant": accountant,
        "epsilon_spent": tracker.epsilon,
        "ledger_events": len(records),
        "replayed_rounds": 0,
        **(summary_extra or {}),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return run_dir


def poisson_records(rounds: int, q: float = 0.01, z: float = 1.1, population: int = 1000):
    """Ledger records of ``rounds`` honest Poisson rounds (realised cohorts drawn binomially)."""
    import numpy as np

    from fedpriv import accounting

    rng = np.random.default_rng(0)
    events = accounting.plan_events(
        z, rounds, sampling_rate=q, population=population, clip_norm=1.0, first_round=1
    )
    return [{**ev.to_dict(), "realised_cohort": int(rng.binomial(population, q))} for ev in events]


def realised_count_aggregator(real):
    """DP-FedAvg whose finalize divides by the clients that reported, not the expected cohort
    (a planted bug), and reports that divisor as its ``denominator``."""
    import jax
    import jax.numpy as jnp

    def build(clip_norm, noise_multiplier, expected_cohort, *args, **kwargs):
        agg = real(clip_norm, noise_multiplier, expected_cohort, *args, **kwargs)

        def finalize(total, total_weight, stats, state, key):
            mean, new_state, metrics = agg.finalize(total, total_weight, stats, state, key)
            realised = jnp.maximum(total_weight, 1.0)
            mean = jax.tree.map(lambda m: m * expected_cohort / realised, mean)
            return mean, new_state, {**metrics, "denominator": realised}

        return agg._replace(finalize=finalize, client_scale=None)

    return build
