"""The tutorial notebook runs top to bottom: it trains DP-FedAvg from Python, reads epsilon
from the mechanism's own accounting, checks it against dp_accounting directly and audits the
run (its cells assert each of these)."""

from __future__ import annotations

import os
import tempfile

import nbformat
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from tests.conftest import REPO

NOTEBOOK = REPO / "notebooks" / "tutorial_dp_fedavg.ipynb"


def _outputs(nb) -> str:
    text = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            text.append(out.get("text", "") or "".join(out.get("data", {}).get("text/plain", "")))
    return "\n".join(text)


def test_tutorial_notebook_trains_accounts_and_audits(tmp_path, monkeypatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    monkeypatch.setenv("FEDPRIV_TUTORIAL_ROUNDS", "10")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the run directory lands here
    sockets = tempfile.TemporaryDirectory(prefix="fedpriv-kernel-")
    km = KernelManager(kernel_name="python3", transport="ipc", ip=f"{sockets.name}/kernel")
    try:
        NotebookClient(
            nb, km=km, timeout=600, resources={"metadata": {"path": str(tmp_path)}}
        ).execute()
    finally:
        if km.has_kernel:
            km.shutdown_kernel(now=True)
        sockets.cleanup()
    text = _outputs(nb)
    assert "PASS" in text.splitlines(), text
    assert "dp_accounting RDP: epsilon" in text, text
    assert "after 10 rounds" in text, text
    images = [
        out
        for cell in nb.cells
        for out in cell.get("outputs", [])
        if "image/png" in out.get("data", {})
    ]
    assert images, "the plot cell drew nothing"
    assert os.listdir(tmp_path), "the run directory was not written under TMPDIR"
