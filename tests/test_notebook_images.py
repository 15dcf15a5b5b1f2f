"""The image-screening notebook runs top to bottom on WCEBleedGen frames."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import notebook_images, run_notebook

NB = Path(__file__).resolve().parents[1] / "notebooks" / "image_screening.ipynb"


def test_image_screening_notebook_runs(data_root):
    if not (data_root / "endoscopy" / "wce_bleedgen" / "valid" / "bleeding").is_dir():
        pytest.skip(f"WCEBleedGen frames not found under {data_root}/endoscopy/wce_bleedgen")
    nb, outputs = run_notebook(NB)
    # the corrupt file is reported with its reason and the other 60 frames are screened
    assert re.search(r"unreadable: .*broken\.jpg", outputs)
    assert "screened 60 frames" in outputs
    m = re.search(r"frame AUROC (\d\.\d+) on 60 validation frames \(30 bleeding\)", outputs)
    assert m, "frame AUROC not printed"
    assert float(m.group(1)) > 0.8
    assert "sensitivity" in outputs and "specificity" in outputs
    assert "share of the positive KernelSHAP mass inside the bleeding boxes" in outputs
    # pipeline overlay, map with boxes, KernelSHAP figure
    assert notebook_images(nb) >= 3
