"""The signal screening notebook runs top to bottom."""

from __future__ import annotations

from pathlib import Path

import pytest

from medad.config import data_root

NB = Path(__file__).resolve().parents[1] / "notebooks" / "signal_screening.ipynb"


@pytest.mark.skipif(data_root(required=False) is None,
                    reason="shared data root (../shared/data or $MEDAD_DATA_ROOT) absent: the notebook screens Bonn EEG")
def test_signal_screening_notebook_runs():
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NB, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(NB.parents[1])}})
    client.execute()
    outputs = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                      for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "broken" in outputs and "error" in outputs  # the corrupt file is reported
    assert "abnormal" in outputs
    assert any("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
               for o in c.get("outputs", []))
