"""The signal screening notebook runs top to bottom."""

from __future__ import annotations

from pathlib import Path

from conftest import notebook_images, run_notebook

NB = Path(__file__).resolve().parents[1] / "notebooks" / "signal_screening.ipynb"


def test_signal_screening_notebook_runs(data_root):
    # the notebook screens Bonn EEG from the shared data root (the fixture skips without it)
    nb, outputs = run_notebook(NB)
    assert "broken" in outputs and "error" in outputs  # the corrupt file is reported
    assert "abnormal" in outputs
    assert notebook_images(nb) >= 1
