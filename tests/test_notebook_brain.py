"""The brain-lesion tutorial notebook runs top to bottom."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "brain_lesions.ipynb"


def test_brain_notebook_runs(data_root):
    if not (data_root / "mri" / "brats2015" / "train").is_dir():
        pytest.skip(f"BraTS cases not found under {data_root}/mri/brats2015")
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parents[1])}})
    client.execute()
    outputs = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "Dice (healthy-calibrated threshold)" in outputs
    assert "intensity baseline: Dice" in outputs
    assert any(o.get("output_type") == "display_data" for c in nb.cells if c.cell_type == "code"
               for o in c.get("outputs", []))
