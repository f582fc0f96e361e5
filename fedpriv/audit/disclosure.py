"""What a run directory discloses beyond what its epsilon covers.

An epsilon covers the released outputs of a run (the noised model, and whatever is a function
of public configuration and noised data), computed under the assumption that the noise is
unknown to whoever sees them. Two things in a run directory can break that assumption or fall
outside the release, and the audit warns about both (warnings never change its exit status):

* **seeded noise** (``privacy.noise_source=seeded``, the default; ``summary.json``
  ``"noise_source"``): every noise key is derived from the root seed written to
  ``.hydra/config.yaml`` (and to the checkpoints), so whoever holds the directory can rebuild
  the noise and subtract it. Only ``privacy.noise_source=secure`` (keys from the operating
  system's CSPRNG, never written) makes a directory shareable. Runs that do not record the
  field are seeded.
* **diagnostics** (``privacy.release=diagnostics``, the default): ``metrics.jsonl`` lines carry
  a ``"diagnostics"`` object and ``summary.json`` a ``"diagnostics"`` object with statistics of
  the private data without noise (training loss, clipped fraction, pre-clip norms, realised
  cohort sizes). ``privacy.release=strict`` writes none. Runs from before the field existed
  hold the same statistics at the top level of each metrics line; they are recognised by the
  names in :data:`LEGACY_DIAGNOSTICS`.

The fields are read defensively: a missing or unknown value is treated as the less private
one, never as an error (the rest of the audit has already checked the files).
"""

from __future__ import annotations

import json
from typing import Any

from fedpriv.audit._files import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, RunFiles

NOISE_SOURCES = ("seeded", "secure")
RELEASES = ("diagnostics", "strict")
#: Statistics of private data without noise that runs written before ``privacy.release``
#: existed keep at the top level of every metrics line (and ``train_loss`` in the summary).
LEGACY_DIAGNOSTICS = (
    "train_loss",
    "clients",
    "nonfinite_clients",
    "local_steps",
    "clipped_fraction",
    "mean_update_norm_preclip",
)

SEEDED_WARNING = (
    "the guarantee holds only while the seed stays secret: anyone with {config} (or a "
    "checkpoint) can rebuild the noise{why}; use privacy.noise_source=secure for a run "
    "directory to share"
)
DIAGNOSTICS_WARNING = (
    "{lead}this run directory holds diagnostics the epsilon does not cover ({where}); do not "
    "share it as a release, or rerun with privacy.release=strict"
)


def _recorded(run: RunFiles, field: str) -> dict[str, Any]:
    """Where a run records ``privacy.<field>``: the configuration and the summary."""
    found = {
        f"{CONFIG_FILE}": run.config_get(f"privacy.{field}"),
        f"{SUMMARY_FILE}": run.summary_get(field),
        f"{SUMMARY_FILE} (privacy)": run.summary_get(f"privacy.{field}"),
    }
    return {where: value for where, value in found.items() if value is not None}


def noise_source_warning(run: RunFiles) -> str | None:
    """The seeded-noise warning, or None when every record says ``secure``.

    Privacy:
        Seeded JAX keys are simulation-grade (DESIGN.md section 4, rule 6); the epsilon of a
        seeded run holds against someone who has the outputs but not the seed.
    """
    recorded = _recorded(run, "noise_source")
    values = set(map(str, recorded.values()))
    if values == {"secure"}:
        return None
    if not values:
        why = " (the run does not record privacy.noise_source, so it is seeded)"
    elif values == {"seeded"}:
        why = " (privacy.noise_source=seeded)"
    else:
        listed = ", ".join(f"{where}: {value!r}" for where, value in recorded.items())
        why = (
            f" (privacy.noise_source is recorded as {listed}; anything but {NOISE_SOURCES[1]!r} "
            "everywhere counts as seeded)"
        )
    return SEEDED_WARNING.format(config=CONFIG_FILE, why=why)


def _metrics_records(run: RunFiles) -> list[dict[str, Any]]:
    """The lines of ``metrics.jsonl`` as written (every key kept), skipping unreadable ones."""
    path = run.path / METRICS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return list(run.metrics or [])
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def diagnostic_keys(run: RunFiles) -> dict[str, list[str]]:
    """The diagnostics a run directory holds: ``{file: sorted keys}`` (empty when none).

    Nested ``"diagnostics"`` objects of ``metrics.jsonl`` and ``summary.json``; for a run that
    records no ``privacy.release`` also the :data:`LEGACY_DIAGNOSTICS` found at the top level.
    A ``"diagnostics"`` value that is not an object is listed as ``diagnostics``.
    """
    legacy = not _recorded(run, "release")
    metric_keys: set[str] = set()
    for row in _metrics_records(run):
        metric_keys |= _record_diagnostics(row, legacy)
    summary = run.summary if isinstance(run.summary, dict) else {}
    found = {
        METRICS_FILE: sorted(metric_keys),
        SUMMARY_FILE: sorted(_record_diagnostics(summary, legacy)),
    }
    return {where: keys for where, keys in found.items() if keys}


def _record_diagnostics(record: dict[str, Any], legacy: bool) -> set[str]:
    """The diagnostic keys of one metrics line or summary (see :func:`diagnostic_keys`)."""
    keys: set[str] = set()
    nested = record.get("diagnostics")
    if isinstance(nested, dict):
        keys.update(map(str, nested))
    elif nested is not None:
        keys.add("diagnostics")
    if legacy:
        keys.update(k for k in LEGACY_DIAGNOSTICS if record.get(k) is not None)
    return keys


def diagnostics_warning(run: RunFiles) -> str | None:
    """The diagnostics warning, or None when the run directory holds none.

    Privacy:
        Diagnostics are statistics of the private data without noise; the epsilon of the run
        covers only its release.
    """
    found = diagnostic_keys(run)
    if not found:
        return None
    where = "; ".join(f"{name}: {', '.join(keys)}" for name, keys in found.items())
    strict = "strict" in set(map(str, _recorded(run, "release").values()))
    lead = "although the run records privacy.release=strict, " if strict else ""
    return DIAGNOSTICS_WARNING.format(lead=lead, where=where)


def disclosure_warnings(run: RunFiles) -> list[str]:
    """Every disclosure warning of a run directory (see the module docstring), in order."""
    return [w for w in (noise_source_warning(run), diagnostics_warning(run)) if w is not None]
