"""What a run publishes, what stays diagnostic, and where the noise keys come from.

**Released** values are covered by the run's epsilon: each is public configuration or a
function of the noised aggregates alone (post-processing). **Diagnostics** are statistics of
the clients' data computed without noise (training loss, the fraction of updates clipped,
pre-clip norms, realised cohort sizes, per-round time, the population's size statistics);
they help debugging and are covered by no epsilon.

Every line of ``metrics.jsonl`` keeps released values at the top level and diagnostics in a
nested ``"diagnostics"`` object; ``summary.json`` likewise. With ``privacy.release=strict``
the diagnostics are not written at all, so the run directory holds only what the epsilon
covers plus public configuration. A metric not listed in :data:`RELEASED` is a diagnostic:
a new metric is never published by accident.

The noise source: with ``privacy.noise_source=seeded`` every key derives from the seed in
the configuration, so a run is reproducible, and whoever reads the seed can regenerate the
noise and subtract it from the released model: the guarantee then holds only while the seed
stays secret. With ``secure`` the keys of the privacy noise are drawn from the operating
system's CSPRNG at run start and never written anywhere: the server's noise key, and where
the noise is drawn inside the clients (example-level DP-SGD, whose example sampling is part
of the mechanism; secure aggregation's per-client noise and rounding) the clients' keys. The
seed still fixes data, initialisation and client sampling, and secure aggregation's masks and
rotation (public randomness of the simulation, kept in the server state and checkpoints).
The keys are expanded by JAX's threefry generator (simulation-grade, DESIGN rule 6).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

#: Values of a metrics line that the epsilon covers: the round counter, epsilon (a function of
#: the public ledger), evaluation of the released model on the held-out test set (data that
#: is not the clients'), and outputs of the mechanism (the norm of the noised mean update,
#: the noise std, the divisor, and the adaptive clip norm and its noised estimate).
RELEASED = frozenset(
    {
        "round",
        "epsilon",
        "replay",
        "test_loss",
        "test_accuracy",
        "update_norm",
        "clip_norm",
        "noise_std",
        "denominator",
        "unclipped_estimate",
    }
)
#: Keys of ``summary.json`` that are diagnostics (statistics of the data without noise, and
#: timings, which depend on the padded client size, the largest client's).
SUMMARY_DIAGNOSTICS = (
    "train_loss",
    "data",
    "execution",
    "wall_seconds",
    "compile_seconds",
    "rounds_per_second",
)
RELEASE_MODES = ("diagnostics", "strict")
NOISE_SOURCES = ("seeded", "secure")
DIAGNOSTICS = "diagnostics"


def mode(privacy_cfg: Mapping[str, Any] | None) -> str:
    """``privacy.release`` (``diagnostics`` when unset)."""
    return str((privacy_cfg or {}).get("release") or "diagnostics")


def noise_source(privacy_cfg: Mapping[str, Any] | None) -> str:
    """``privacy.noise_source`` (``seeded`` when unset)."""
    return str((privacy_cfg or {}).get("noise_source") or "seeded")


def metrics_line(record: Mapping[str, Any], release: str) -> dict[str, Any]:
    """The line written to ``metrics.jsonl`` for one round's ``record``: released values at the
    top level, the rest under ``"diagnostics"`` (left out with ``release='strict'``)."""
    line = {k: v for k, v in record.items() if k in RELEASED}
    diagnostics = {k: v for k, v in record.items() if k not in RELEASED}
    if release != "strict" and diagnostics:
        line[DIAGNOSTICS] = diagnostics
    return line


def released(record: Mapping[str, Any]) -> dict[str, Any]:
    """The values of ``record`` that the epsilon covers (:data:`RELEASED`)."""
    return {k: v for k, v in record.items() if k in RELEASED}


def summary(full: Mapping[str, Any], release: str) -> dict[str, Any]:
    """``summary.json`` from the full summary: diagnostics grouped under ``"diagnostics"``
    (left out with ``release='strict'``), with the release mode recorded. Of the final
    evaluation only the released values stay in ``final`` (``global_train_*``, measured on
    the clients' data, go to the diagnostics)."""
    out = {k: v for k, v in full.items() if k not in SUMMARY_DIAGNOSTICS}
    out["release"] = release
    final = dict(full.get("final") or {})
    if "final" in full:
        out["final"] = released(final)
    if release != "strict":
        diagnostics = {k: full[k] for k in SUMMARY_DIAGNOSTICS if k in full}
        rest = {k: v for k, v in final.items() if k not in RELEASED}
        if rest:
            diagnostics["final"] = rest
        out[DIAGNOSTICS] = diagnostics
    return out


def flatten(line: Mapping[str, Any]) -> dict[str, Any]:
    """A metrics line with its diagnostics merged into the top level (for plots and tables;
    the ``"diagnostics"`` object stays, so readers can tell what was released)."""
    out = dict(line)
    diagnostics = line.get(DIAGNOSTICS)
    if isinstance(diagnostics, Mapping):
        for k, v in diagnostics.items():
            out.setdefault(k, v)
    return out


def secure_root_key() -> Any:
    """A JAX key whose 64 bits come from the operating system's CSPRNG (``os.urandom``).

    It lives in memory only; nothing derived from it is written to the run directory.
    """
    words = np.frombuffer(os.urandom(8), dtype=np.uint32).copy()
    return jax.random.wrap_key_data(jnp.asarray(words))


def statement(source: str) -> str:
    """One sentence on what the noise source means for the guarantee."""
    if source == "secure":
        return (
            "noise keys from the OS CSPRNG, never written: the noise cannot be rebuilt from "
            "the run directory"
        )
    return (
        "seeded noise: the guarantee holds only while the seed stays secret (whoever has "
        ".hydra/config.yaml can rebuild the noise); use privacy.noise_source=secure for a run "
        "directory to share"
    )
