"""Rendering an audit: the terminal table, ``audit.json``, ``audit.md``, ``audit.html``, a PNG.

The files are written together into one directory (the run directory by default). They never
share a name with a file a run writes, and each is written to a temporary name first and then
renamed, so a reader never sees half a report.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from fedpriv.audit.empirical import power_sentence
from fedpriv.audit.verdict import AuditReport
from fedpriv.errors import ConfigError

#: The files an audit writes; none of them is a file a run writes.
OUTPUT_FILES = ("audit.json", "audit.md", "audit.html", "audit.png")
_STATUS = {"pass": "PASS", "fail": "FAIL", "n/a": "N/A"}


def _num(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if isinstance(x, bool):
        return "yes" if x else "NO"
    if isinstance(x, float):
        if math.isinf(x):
            return "inf"
        return f"{x:.6g}"
    return str(x)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    for r in rows:
        out.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return out


def accountant_rows(report: AuditReport) -> list[list[str]]:
    """Rows of the accountant table: name, library, status, reported, recomputed, diff, tol."""
    acc = report.accounting
    rows = []
    if acc is None:
        return rows
    for r in acc.rows:
        agrees = "" if r.agrees is None else ("agrees" if r.agrees else "DISAGREES")
        status = r.status if not r.note or r.status == "recomputed" else f"{r.status}"
        rows.append(
            [
                r.accountant,
                r.library,
                status,
                _num(r.reported),
                _num(r.recomputed),
                _num(r.difference),
                _num(r.tolerance),
                agrees,
            ]
        )
    if acc.exact is not None:
        rows.append(
            [
                "exact",
                "analytic Gaussian",
                "closed form",
                "-",
                _num(acc.exact),
                "-",
                "-",
                f"z={acc.exact_noise_multiplier:.6g}",
            ]
        )
    emp = report.empirical
    if emp is not None:
        conf = emp.get("confidence")
        rows.append(
            [
                "empirical",
                f"canaries ({emp.get('num_inserted')} inserted, {emp.get('num_unseen')} unseen)",
                f"lower bound at {conf:g}" if isinstance(conf, (int, float)) else "lower bound",
                "-",
                _num(float(emp["epsilon_lower_bound"])),
                "-",
                "-",
                f"estimate {_num(_float(emp.get('epsilon_estimate')))}; refutes up to "
                f"{_num(_float(emp.get('refutable_epsilon')))}",
            ]
        )
    return rows


def _float(x: Any) -> float | None:
    return None if x is None else float(x)


def power_line(report: AuditReport) -> str | None:
    """What the canaries can refute, in one sentence (None without an empirical result)."""
    emp = report.empirical
    if emp is None or emp.get("refutable_epsilon") is None:
        return None
    return power_sentence(emp)


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


_ACC_HEADERS = (
    "accountant",
    "library",
    "status",
    "reported",
    "recomputed",
    "difference",
    "tolerance",
    "",
)


def text_report(report: AuditReport) -> str:
    """The terminal report: accountants side by side, the checks, the verdict."""
    lines = [f"fedpriv-audit {report.run_dir}", f"  {report.description}", ""]
    if not report.dp_claimed:
        lines.append(report.verdict_line)
        return "\n".join(lines) + "\n"
    acc = report.accounting
    if acc is not None and acc.rows:
        lines += _table(_ACC_HEADERS, accountant_rows(report))
        notes = _row_notes(report) + list(acc.notes)
        if report.empirical is not None:
            notes.append(f"empirical: {report.empirical.get('method')}")
            power = power_line(report)
            if power and report.empirical.get("can_refute") is not False:  # else a warning
                notes.append(f"empirical: {power}")
        elif report.empirical_note:
            notes.append(f"empirical: {report.empirical_note}")
        for note in notes:
            lines.append(f"  note: {note}")
        lines.append("")
    rows = [[c.name, _STATUS[c.status], c.detail] for c in report.checks]
    lines += _table(("check", "result", "evidence"), rows)
    lines.append("")
    lines.append(report.verdict_line)
    lines += [f"warning: {w}" for w in report.warnings]
    if acc is not None:
        lines.append(
            f"recomputed {acc.records} ledger records ({acc.groups} groups) in {acc.seconds:.2f} s"
        )
    return "\n".join(lines) + "\n"


def _row_notes(report: AuditReport) -> list[str]:
    """``"pld, prv: why"`` for the accountants without a value, one line per reason."""
    by_note: dict[str, list[str]] = {}
    for r in report.accounting.rows if report.accounting else ():
        if r.note and r.status != "recomputed":
            by_note.setdefault(r.note, []).append(r.accountant)
    return [f"{', '.join(names)}: {note}" for note, names in by_note.items()]


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_report(report: AuditReport, png_name: str | None) -> str:
    """``audit.md``: the same content as the terminal report, as Markdown tables."""
    out = [
        f"# Privacy audit: {report.verdict}",
        "",
        f"Run directory: `{report.run_dir}`",
        "",
        report.description,
        "",
        f"**{_md_escape(report.verdict_line)}**",
        "",
    ]
    if report.warnings:
        out += ["## Warnings", ""]
        out += [f"- {_md_escape(w)}" for w in report.warnings]
        out.append("")
    if report.accounting is not None and report.accounting.rows:
        out += ["## Accounting", ""]
        headers = [h or "agreement" for h in _ACC_HEADERS]
        out.append("| " + " | ".join(headers) + " |")
        out.append("|" + "---|" * len(headers))
        for row in accountant_rows(report):
            out.append("| " + " | ".join(_md_escape(c) for c in row) + " |")
        out.append("")
        for note in _row_notes(report):
            out.append(f"- {_md_escape(note)}")
        for note in report.accounting.notes:
            out.append(f"- {_md_escape(note)}")
        out.append("")
    if report.checks:
        out += ["## Consistency checks", "", "| check | result | evidence |", "|---|---|---|"]
        for c in report.checks:
            out.append(f"| {c.name} | {_STATUS[c.status]} | {_md_escape(c.detail)} |")
        out.append("")
    if report.empirical is not None:
        out += ["## Empirical audit", ""]
        emp = report.empirical
        out.append(
            f"Method: {emp.get('method')}; {emp.get('num_inserted')} inserted and "
            f"{emp.get('num_unseen')} unseen canaries; epsilon estimate "
            f"{_num(_float(emp.get('epsilon_estimate')))}, lower bound "
            f"{_num(float(emp['epsilon_lower_bound']))} at confidence {emp.get('confidence')}."
        )
        out.append("")
        power = power_line(report)
        if power:
            out += [_md_escape(_sentence(power)), ""]
        if png_name:
            out += [f"![canary cosines]({png_name})", ""]
    elif report.empirical_note and report.dp_claimed:
        out += ["## Empirical audit", "", report.empirical_note, ""]
    return "\n".join(out)


def html_report(report: AuditReport, png: bytes | None) -> str:
    """``audit.html``: one self-contained page (the histogram embedded as base64)."""
    e = html.escape
    colour = {"PASS": "#1a7f37", "FAIL": "#cf222e", "NO DP": "#57606a"}[report.verdict]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Privacy audit: {e(report.verdict)}</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:75em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #d0d7de;"
        "padding:.3em .6em;text-align:left;vertical-align:top}th{background:#f6f8fa}"
        ".pass{color:#1a7f37;font-weight:bold}.fail{color:#cf222e;font-weight:bold}"
        ".na{color:#57606a}code{background:#f6f8fa}</style></head><body>",
        f'<h1>Privacy audit: <span style="color:{colour}">{e(report.verdict)}</span></h1>',
        f"<p>Run directory: <code>{e(str(report.run_dir))}</code></p>",
        f"<p>{e(report.description)}</p>",
        f'<p style="color:{colour}"><strong>{e(report.verdict_line)}</strong></p>',
    ]
    if report.warnings:
        parts.append('<h2>Warnings</h2><ul class="warnings">')
        parts += [f"<li>{e(w)}</li>" for w in report.warnings]
        parts.append("</ul>")
    if report.accounting is not None and report.accounting.rows:
        parts.append("<h2>Accounting</h2><table><tr>")
        parts += [f"<th>{e(h or 'agreement')}</th>" for h in _ACC_HEADERS]
        parts.append("</tr>")
        for row in accountant_rows(report):
            parts.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>")
        parts.append("</table><ul>")
        for note in _row_notes(report):
            parts.append(f"<li>{e(note)}</li>")
        for note in report.accounting.notes:
            parts.append(f"<li>{e(note)}</li>")
        parts.append("</ul>")
    if report.checks:
        parts.append("<h2>Consistency checks</h2><table>")
        parts.append("<tr><th>check</th><th>title</th><th>result</th><th>evidence</th></tr>")
        for c in report.checks:
            css = {"pass": "pass", "fail": "fail", "n/a": "na"}[c.status]
            parts.append(
                f"<tr><td>{e(c.name)}</td><td>{e(c.title)}</td>"
                f'<td class="{css}">{_STATUS[c.status]}</td><td>{e(c.detail)}</td></tr>'
            )
        parts.append("</table>")
    if report.empirical is not None:
        emp = report.empirical
        parts.append("<h2>Empirical audit</h2>")
        parts.append(
            f"<p>Method: {e(str(emp.get('method')))}; {e(str(emp.get('num_inserted')))} "
            f"inserted and {e(str(emp.get('num_unseen')))} unseen canaries; epsilon estimate "
            f"{e(_num(_float(emp.get('epsilon_estimate'))))}, lower bound "
            f"{e(_num(float(emp['epsilon_lower_bound'])))} at confidence "
            f"{e(str(emp.get('confidence')))}.</p>"
        )
        power = power_line(report)
        if power:
            parts.append(f"<p>{e(_sentence(power))}</p>")
        if png:
            data = base64.b64encode(png).decode("ascii")
            parts.append(f'<img alt="canary cosine histograms" src="data:image/png;base64,{data}">')
    elif report.empirical_note and report.dp_claimed:
        parts.append(f"<h2>Empirical audit</h2><p>{e(report.empirical_note)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def histogram_png(empirical: dict[str, Any], analytical: float | None = None) -> bytes:
    """Histograms of the canary cosines, inserted against unseen, as PNG bytes.

    Under the null hypothesis of no memorisation both sets of cosines have the same
    distribution; the separation of the inserted ones is what the empirical epsilon measures
    (Andrew et al., "One-shot Empirical Privacy Estimation for Federated Learning", ICLR 2024).
    """
    # matplotlib's object API, not pyplot: no backend is chosen and no global figure is kept.
    inserted = np.asarray(empirical.get("inserted_cosines") or [], dtype=float)
    unseen = np.asarray(empirical.get("unseen_cosines") or [], dtype=float)
    both = np.concatenate([inserted, unseen])
    fig = Figure(figsize=(7, 3.6), dpi=100)
    ax = fig.subplots()
    if both.size:
        lo, hi = float(both.min()), float(both.max())
        if lo == hi:
            lo, hi = lo - 0.5, hi + 0.5
        bins = np.linspace(lo, hi, 31)
        if unseen.size:
            ax.hist(unseen, bins=bins, alpha=0.6, label=f"unseen ({unseen.size})")
        if inserted.size:
            ax.hist(inserted, bins=bins, alpha=0.6, label=f"inserted ({inserted.size})")
        ax.legend()
    title = (
        f"canary cosines: epsilon estimate {_num(_float(empirical.get('epsilon_estimate')))}, "
        f"lower bound {_num(float(empirical['epsilon_lower_bound']))}"
    )
    if analytical is not None:
        title += f" (analytical {_num(analytical)})"
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("cosine between canary and final model delta")
    ax.set_ylabel("canaries")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def json_report(report: AuditReport) -> str:
    """``audit.json``: everything, machine-readable (no NaN or infinity)."""
    return json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n"


def check_out_dir(out_dir: Path) -> None:
    """Raises :class:`ConfigError` naming ``--out`` if reports cannot go to ``out_dir``."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError("--out", f"{str(out_dir)!r} exists and is not a directory")


def write_reports(report: AuditReport, out_dir: Path) -> list[Path]:
    """Writes ``audit.json``, ``audit.md``, ``audit.html`` (and ``audit.png`` with canaries).

    Returns:
        The paths written.

    Raises:
        ConfigError: naming ``--out`` when the directory cannot be written.
    """
    check_out_dir(out_dir)
    png = None
    if report.empirical is not None:
        acc = report.accounting
        png = histogram_png(report.empirical, acc.claimed_epsilon if acc else None)
    contents: dict[str, bytes] = {
        "audit.json": json_report(report).encode("utf-8"),
        "audit.md": markdown_report(report, "audit.png" if png else None).encode("utf-8"),
        "audit.html": html_report(report, png).encode("utf-8"),
    }
    if png is not None:
        contents["audit.png"] = png
    written = []
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, data in contents.items():
            path = out_dir / name
            tmp = out_dir / f".{name}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, path)
            written.append(path)
    except OSError as err:
        raise ConfigError("--out", f"cannot write the report to {str(out_dir)!r} ({err})") from None
    return written
