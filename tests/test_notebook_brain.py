"""The brain-lesion tutorial notebook runs top to bottom."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import notebook_images, run_notebook

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "brain_lesions.ipynb"


def test_brain_notebook_runs(data_root):
    if not (data_root / "mri" / "brats2015" / "train").is_dir():
        pytest.skip(f"BraTS cases not found under {data_root}/mri/brats2015")
    nb, outputs = run_notebook(NOTEBOOK)
    assert "Dice (healthy-calibrated threshold)" in outputs
    assert "intensity baseline: Dice" in outputs
    assert notebook_images(nb) >= 1
