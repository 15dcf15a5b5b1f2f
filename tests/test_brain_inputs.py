"""Inputs `medad brain score` / `medad brain train` used to get wrong (user audit): single 2D
slices scored as normal, DICOM slices without an extension never found, mask-named scans dropped
silently, linked case folders not searched, registration failures in raw ITK text without the
file's name, colliding scan ids. Small synthetic files (and pydicom's own test files); no model."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medad.errors import InputError
from medad.io.volumes import has_dicom_magic, is_dicom_slice, read_volume
from medad.transforms.brain import BrainPrepConfig, preprocess_volume, register_brain_mask
from pipelines.brain_lesions import Scan, _error_text, _failure, _unique_ids, find_scans

PYDICOM_FILES = Path(__import__("pydicom.data", fromlist=["x"]).__file__).parent / "test_files"
EXCLUDE = ["*mask*", "*seg*", "*label*"]


def _nifti(path: Path, data: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), np.diag([2.0, 2.0, 2.0, 1.0])), path)
    return path


def _head(seed: int = 0, shape=(24, 28, 20)) -> np.ndarray:
    """Continuous intensities (a scan, not a mask)."""
    return np.random.default_rng(seed).normal(100, 15, shape)


def _dicom_series(folder: Path, n: int = 4, name=lambda k: f"slice{k:03d}.dcm") -> Path:
    """``n`` 2D slices of one series, positions 3 mm apart, file names from ``name``."""
    import SimpleITK as sitk

    from medad.io.volumes import keep_locale

    folder.mkdir(parents=True, exist_ok=True)
    uid = "1.2.826.0.1.3680043.2.1125.1.77"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(n):
        sl = sitk.GetImageFromArray((np.arange(20 * 16).reshape(1, 20, 16) + 10 * k).astype(np.int16))
        for tag, value in (("0008|0060", "MR"), ("0020|000e", uid), ("0020|0013", str(k + 1)),
                           ("0020|0032", f"0\\0\\{3.0 * k}"), ("0020|0037", "1\\0\\0\\0\\1\\0"),
                           ("0008|0018", f"{uid}.{k + 1}")):
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"tmp{k}.dcm"))  # ITK picks its writer by the extension
        with keep_locale():
            writer.Execute(sl)
        (folder / f"tmp{k}.dcm").rename(folder / name(k))
    return folder


# ------------------------------------------------------------------ 1. a single 2D slice


@pytest.mark.parametrize("shape", [(110, 110), (110, 110, 1), (1, 110, 110)])
def test_a_single_2d_slice_is_refused_naming_the_file(tmp_path, shape):
    p = _nifti(tmp_path / "slice.nii.gz", np.random.default_rng(0).random(shape) * 100)
    with pytest.raises(InputError, match=r"slice\.nii\.gz: a single 2D slice \(110 x 110\); brain scoring needs a 3D volume"):
        preprocess_volume(read_volume(p), BrainPrepConfig(skull_strip="none"))


def test_a_single_slice_dicom_is_refused_with_the_same_message():
    p = PYDICOM_FILES / "MR_small.dcm"
    if not p.is_file():
        pytest.skip("pydicom's test file MR_small.dcm is not installed")
    with pytest.raises(InputError, match=r"MR_small\.dcm: a single 2D slice \(64 x 64\)"):
        preprocess_volume(read_volume(p))


# ------------------------------------------------------------------ 2. DICOM slices without an extension


def test_dicom_files_are_recognised_by_content(tmp_path):
    series = _dicom_series(tmp_path / "s", n=2, name=lambda k: f"IM{k}")
    assert has_dicom_magic(series / "IM0") and is_dicom_slice(series / "IM0")
    (tmp_path / "notes").write_text("x" * 200)
    assert not has_dicom_magic(tmp_path / "notes") and not is_dicom_slice(tmp_path / "notes")
    assert is_dicom_slice(tmp_path / "missing.dcm")  # by name: never opened
    assert not has_dicom_magic(tmp_path / "missing")


def test_a_folder_of_extensionless_dicom_slices_is_one_scan(tmp_path):
    _dicom_series(tmp_path / "study" / "patient3", n=5, name=lambda k: f"1.2.3.{k}")
    _nifti(tmp_path / "study" / "a.nii.gz", _head())
    scans = find_scans(tmp_path / "study", "*.nii*", None, EXCLUDE)
    assert sorted(s.scan_id for s in scans) == ["a", "patient3"]
    series = next(s for s in scans if s.scan_id == "patient3")
    assert read_volume(series.path).shape == (16, 20, 5)
    # the folder itself given: one scan, as for .dcm slices
    assert [s.scan_id for s in find_scans(tmp_path / "study" / "patient3")] == ["patient3"]


def test_a_lone_dicom_file_in_a_folder_is_a_scan_whatever_the_pattern(tmp_path):
    """A single DICOM file beside NIfTI scans (an enhanced multi-frame volume, or a lone slice) is
    listed as a scan -- to be scored or refused by name -- not passed over because it does not match
    '*.nii*' (the audit's enh.dcm and MR_small.dcm vanished from summary.csv)."""
    import shutil

    src = PYDICOM_FILES / "MR_small.dcm"
    if not src.is_file():
        pytest.skip("pydicom's test file MR_small.dcm is not installed")
    (tmp_path / "study").mkdir()
    _nifti(tmp_path / "study" / "a.nii.gz", _head())
    shutil.copy(src, tmp_path / "study" / "MR_small.dcm")
    scans = find_scans(tmp_path / "study", "*.nii*", None, EXCLUDE)
    assert sorted(s.scan_id for s in scans) == ["MR_small", "a"]
    only = tmp_path / "only"
    only.mkdir()
    shutil.copy(src, only / "MR_small.dcm")
    assert [s.path.name for s in find_scans(only)] == ["MR_small.dcm"]


def test_pydicom_extensionless_ct_series_is_found():
    folder = PYDICOM_FILES / "dicomdirtests" / "77654033" / "CT2"
    if not folder.is_dir():
        pytest.skip("pydicom's test folder dicomdirtests/77654033/CT2 is not installed")
    scans = find_scans(folder)
    assert len(scans) == 1 and scans[0].path == folder


# ------------------------------------------------------------------ 3. mask-named files


def test_mask_named_files_are_left_out_only_when_they_hold_labels_and_said_so(tmp_path):
    _nifti(tmp_path / "Subj10_FL_skullstripped_masked.nii.gz", _head(1))  # a scan, despite its name
    _nifti(tmp_path / "Subj11_FL.nii.gz", _head(2))
    _nifti(tmp_path / "Subj11_seg.nii.gz", np.random.default_rng(3).integers(0, 4, (24, 28, 20)))
    _nifti(tmp_path / "Subj11_brainmask.nii.gz", (_head(4) > 100) * 0.99999997)  # BraTS's float mask
    excluded: list = []
    scans = find_scans(tmp_path, "*.nii*", None, EXCLUDE, excluded=excluded)
    assert sorted(s.scan_id for s in scans) == ["Subj10_FL_skullstripped_masked", "Subj11_FL"]
    why = {p.name: r for p, r in excluded}
    assert set(why) == {"Subj11_seg.nii.gz", "Subj11_brainmask.nii.gz"}
    assert "'*seg*'" in why["Subj11_seg.nii.gz"] and "4 distinct values" in why["Subj11_seg.nii.gz"]
    assert "'*mask*'" in why["Subj11_brainmask.nii.gz"] and "2 distinct values" in why["Subj11_brainmask.nii.gz"]


def test_a_folder_of_only_masks_says_they_were_left_out(tmp_path):
    from medad.errors import ReadError

    _nifti(tmp_path / "lesion_label.nii.gz", np.zeros((8, 8, 8)))
    with pytest.raises(ReadError, match="1 file.s. left out as masks/labels .* lesion_label.nii.gz"):
        find_scans(tmp_path, "*.nii*", None, EXCLUDE)


# ------------------------------------------------------------------ 4. linked folders


def test_linked_case_folders_and_series_are_searched(tmp_path):
    data = tmp_path / "data"
    _nifti((data / "case1").mkdir(parents=True) or data / "case1" / "flair.nii.gz", _head())
    _dicom_series(data / "series", n=3, name=lambda k: f"IM{k}")
    study = tmp_path / "study"
    study.mkdir()
    os.symlink(data / "case1", study / "case1")
    os.symlink(data / "series", study / "dcm")
    os.symlink(study, study / "loop")  # a link back up: not followed twice
    assert sorted(s.scan_id for s in find_scans(study)) == ["case1_flair", "dcm"]


# ------------------------------------------------------------------ 5. registration failures


def test_a_failed_registration_names_the_file_in_short_words(tmp_path):
    thin = np.random.default_rng(0).random((40, 40, 3)).astype(np.float32) * 100
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Mean of empty slice" no longer leaks
        with pytest.raises(InputError) as ei:
            register_brain_mask(thin, np.eye(4))
    e = ei.value
    assert "registration to the MNI152 template failed (the image may not be a head scan, or is too small" in str(e)
    assert "3 axial slices" in str(e) and "SimpleITK" not in str(e) and e.detail
    scan = Scan("thin", tmp_path / "thin.nii.gz")
    line, summary = _failure(scan, e)
    assert line.startswith(f"{scan.path}: registration to the MNI152") and e.detail not in line
    assert summary.startswith(line) and e.detail in summary
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError, match=r"the scan is empty \(every voxel is 0\)") as ei:
            register_brain_mask(np.zeros((30, 30, 20), np.float32), np.eye(4))
    assert _failure(scan, ei.value)[0].startswith(f"{scan.path}: the scan is empty")
    # errors that name another file keep it; non-medad errors get the scan's
    other = InputError("brain mask is not on the scan's grid", tmp_path / "m.nii.gz")
    assert _error_text(other, scan.path) == str(other)
    assert _error_text(KeyError("x"), scan.path).startswith(f"{scan.path}: KeyError")


def test_an_itk_failure_is_reported_without_its_source_paths(monkeypatch):
    import SimpleITK as sitk

    def boom(self, fixed, moving):
        raise RuntimeError("Exception thrown in SimpleITK ImageRegistrationMethod_Execute: /tmp/SimpleITK-build/"
                           "ITK-prefix/include/ITK-5.4/itkSmoothingRecursiveGaussianImageFilter.hxx:214:\n"
                           "ITK ERROR: SmoothingRecursiveGaussianImageFilter(0x55d0): The number of pixels "
                           "along dimension 2 is less than 4.")

    monkeypatch.setattr(sitk.ImageRegistrationMethod, "Execute", boom)
    head = np.zeros((40, 40, 30), np.float32)
    head[8:32, 8:32, 4:28] = 100 + np.random.default_rng(0).random((24, 24, 24)) * 10
    with pytest.raises(InputError) as ei:
        register_brain_mask(head, np.diag([4.0, 4.0, 4.0, 1.0]), iterations=2)
    assert "SimpleITK-build" not in str(ei.value) and "40 x 40 x 30 voxels" in str(ei.value)
    assert "number of pixels along dimension 2 is less than 4" in ei.value.detail
    assert ".hxx" not in ei.value.detail


# ------------------------------------------------------------------ 6. colliding ids


def test_colliding_scan_ids_are_made_distinct_and_others_kept(tmp_path):
    _nifti(tmp_path / "a.nii", _head(0))
    _nifti(tmp_path / "a.nii.gz", _head(1))
    _nifti(tmp_path / "b.nii.gz", _head(2))
    ids = [s.scan_id for s in find_scans(tmp_path)]
    assert len(set(ids)) == 3 and "b" in ids
    scans = _unique_ids([Scan("Flair", Path("p1/Flair.nii.gz")), Scan("Flair", Path("p2/Flair.nii.gz")),
                         Scan("T1", Path("p1/T1.nii.gz"))])
    assert [s.scan_id for s in scans] == ["p1_Flair", "p2_Flair", "T1"]
