"""The built-in demo data and the EEG part of ``medad demo`` (the brain part runs the same
pipeline that tests/test_pipeline_brain.py covers, and takes about a minute)."""

import json

import nibabel as nib
import numpy as np
import pytest

from medad.demo import make_brain_demo_data, run_demo


def test_brain_demo_data_has_lesions_inside_the_brain(tmp_path):
    d = make_brain_demo_data(tmp_path, n_healthy=2, n_test=2, seed=1)
    healthy = sorted(d["healthy"].glob("*/t1.nii.gz"))
    assert len(healthy) == 2 and all((h.parent / "brainmask.nii.gz").is_file() for h in healthy)
    first = nib.load(d["test"] / "case-00.nii.gz")
    assert "".join(nib.aff2axcodes(first.affine)) == "LAS"  # the non-RAS case
    for case in ("case-00", "case-01"):
        img = nib.load(d["test"] / f"{case}.nii.gz").get_fdata()
        les = nib.load(d["truth"] / f"{case}_lesion.nii.gz").get_fdata() > 0
        assert les.sum() > 50
        assert img[les].mean() > np.percentile(img[img > 0.1], 90)  # lesions are hyperintense


def test_eeg_demo_finds_the_inserted_bursts(tmp_path):
    summary = run_demo(tmp_path, parts=["eeg"])
    rows = summary["eeg"]["recordings"]
    assert [r["decision"] for r in rows if r["truly_abnormal"]] == ["abnormal", "abnormal"]
    assert all(r["decision"] == "normal" for r in rows if not r["truly_abnormal"])
    assert sum(r["bursts_found"] for r in rows) == sum(r["bursts"] for r in rows)
    assert json.loads((tmp_path / "summary.json").read_text())["eeg"]["recordings"] == rows
    assert list((tmp_path / "eeg").glob("*_screening.png"))


def test_demo_rejects_unknown_parts(tmp_path):
    from medad.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown demo part"):
        run_demo(tmp_path, parts=["ecg"])
