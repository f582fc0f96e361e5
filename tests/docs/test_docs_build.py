"""The documentation site builds with ``mkdocs build --strict``: no warning, no broken link."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO


def _nav_pages(nav) -> list[str]:
    """Every page file the ``nav`` of mkdocs.yml names."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [p for item in nav for p in _nav_pages(item)]
    if isinstance(nav, dict):
        return [p for value in nav.values() for p in _nav_pages(value)]
    return []


def _config() -> dict:
    # mkdocs.yml holds no Python tags, so the safe loader reads it.
    return yaml.safe_load((REPO / "mkdocs.yml").read_text())


def test_mkdocs_yml_is_strict_and_names_every_page():
    cfg = _config()
    assert cfg["strict"] is True
    named = set(_nav_pages(cfg["nav"]))
    docs = REPO / cfg.get("docs_dir", "docs")
    pages = {p.relative_to(docs).as_posix() for p in docs.rglob("*.md")}
    assert not pages - named, f"pages missing from the nav of mkdocs.yml: {sorted(pages - named)}"


def test_site_builds_strict(tmp_path):
    """``mkdocs build --strict`` (what ``mkdocs build`` and ``mkdocs serve`` render)."""
    site = tmp_path / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", "mkdocs.yml", "-d", str(site)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = proc.stdout + proc.stderr
    warnings = [ln for ln in log.splitlines() if ln.startswith(("WARNING", "ERROR"))]
    assert proc.returncode == 0 and not warnings, log[-4000:]
    # Every page of the nav was rendered, the API pages with their members.
    for page in _nav_pages(_config()["nav"]):
        path = Path(page)
        folder = path.parent if path.name == "index.md" else path.with_suffix("")
        out = site / folder / "index.html"
        assert out.is_file(), page
    api = (site / "api" / "accounting" / "index.html").read_text()
    assert 'id="fedpriv.accounting.epsilon"' in api
    figures = (site / "guides" / "figures" / "index.html").read_text()
    assert "DP-SGD accounting" in figures  # experiments/README.md, included
    assert (site / "guides" / "figures" / "dpsgd_accounting.png").is_file()
