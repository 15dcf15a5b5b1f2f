"""Shared fixtures: the data root (tests needing it skip with a reason when it is absent)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def data_root():
    """``../shared/data`` (or $MEDAD_DATA_ROOT); skips the test when it is absent."""
    from medad.config import data_root as _root

    root = _root(required=False)
    if root is None:
        pytest.skip("real data not found: set MEDAD_DATA_ROOT or place it at ../shared/data")
    return root


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # the test models are tiny: on a 2-core machine one thread avoids spin-waiting between
    # threads (measured up to 16x faster for small convolutions under load)
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_notebook(path):
    """Execute a notebook top to bottom in its own folder (``notebooks/``), as Jupyter opened
    there runs it -- not from the repository root, which would hide paths that work only there.

    Returns ``(notebook, text)``: the executed notebook and all its text/plain outputs joined.
    """
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    text = "\n".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                     for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    return nb, text


def notebook_images(nb) -> int:
    """How many image outputs an executed notebook shows."""
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
               for o in c.get("outputs", []))
