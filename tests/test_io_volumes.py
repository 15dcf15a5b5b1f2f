"""Volume readers/writers on real files from ../shared/data and pydicom, and on generated bad files."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medad.config import data_root
from medad.errors import InputError, ReadError
from medad.io.volumes import list_dicom_series, read_volume, to_original_grid, write_like, write_volume

ROOT = data_root(required=False)
needs_data = pytest.mark.skipif(ROOT is None, reason="../shared/data (or $MEDAD_DATA_ROOT) not present")


def _pydicom_file(name: str) -> Path:
    from pydicom.data import get_testdata_file

    p = get_testdata_file(name)
    if p is None:
        pytest.skip(f"pydicom test file {name} not available")
    return Path(p)


def _pydicom_dir() -> Path:
    return _pydicom_file("CT_small.dcm").parent


# ------------------------------------------------------------------ real files


def test_nan_background_read_as_zero_when_asked(tmp_path):
    """Masked exports store the background as NaN: ``nonfinite="zero"`` reads it as 0 and counts it."""
    d = np.ones((8, 8, 8), np.float32)
    d[:2] = np.nan
    d[7, 7, 7] = np.inf
    rec = read_volume(_small_nifti(tmp_path, d), nonfinite="zero")
    assert np.isfinite(rec.data).all() and rec.meta["nonfinite_voxels"] == 2 * 64 + 1
    assert float(rec.data.sum()) == 8 * 8 * 8 - 2 * 64 - 1
    assert "nonfinite_voxels" not in read_volume(_small_nifti(tmp_path, np.ones((8, 8, 8), np.float32))).meta


@needs_data
@pytest.mark.parametrize("rel", [
    "mri/brats2015/train/brats_2013_pat0005_1/Flair_subtrMeanDivStd.nii.gz",
    "mri/nichart_flair/fl/Subj10_FL.nii.gz",   # LPS voxel axes
    "mri/ixi_t1_2mm/IXI015-HH-1258_T1.nii.gz",  # PSR voxel axes
    "mri/niivue_samples/norm.mgz",             # LIA (FreeSurfer)
])
def test_nibabel_formats_match_closest_canonical(rel):
    p = ROOT / rel
    rec = read_volume(p)
    ref = nib.as_closest_canonical(nib.load(str(p)))
    assert rec.orientation == "RAS"
    assert rec.data.dtype == np.float32
    assert rec.shape == ref.shape
    np.testing.assert_allclose(rec.affine, ref.affine, atol=1e-5)
    np.testing.assert_array_equal(rec.data, np.asarray(ref.dataobj, dtype=np.float32))
    assert rec.original_shape == nib.load(str(p)).shape
    np.testing.assert_array_equal(rec.original_affine, nib.load(str(p)).affine)


@needs_data
@pytest.mark.parametrize("rel", [
    "mri/nichart_flair/fl/Subj10_FL.nii.gz",
    "mri/ixi_t1_2mm/IXI015-HH-1258_T1.nii.gz",
    "mri/niivue_samples/norm.mgz",
    "mri/brats2015/train/brats_2013_pat0005_1/OTMultiClass.nii.gz",
])
def test_write_like_restores_original_grid(rel, tmp_path):
    p = ROOT / rel
    src = nib.load(str(p))
    rec = read_volume(p)
    out = write_like(rec.data, rec, tmp_path / "map.nii")  # uncompressed: fast
    img = nib.load(str(out))
    assert img.shape == src.shape
    np.testing.assert_allclose(img.affine, src.affine, atol=1e-4)
    if p.name.endswith(".nii.gz"):  # both stored as float32 sform: bit-identical
        np.testing.assert_array_equal(img.affine, src.affine)
    # the map lands voxel-for-voxel on the input's own grid
    np.testing.assert_array_equal(np.asarray(img.dataobj), np.asarray(src.dataobj, dtype=np.float32))
    assert not list(tmp_path.glob(".*tmp*")), "temporary file left behind"


@needs_data
def test_to_original_grid_of_a_marker_on_non_ras_input():
    p = ROOT / "mri/nichart_flair/fl/Subj10_FL.nii.gz"
    rec = read_volume(p)
    marker = np.zeros(rec.shape, np.float32)
    marker[10, 20, 30] = 1  # voxel in RAS order
    world = rec.affine @ [10, 20, 30, 1]
    back = to_original_grid(marker, rec)
    ijk = np.argwhere(back == 1)[0]
    np.testing.assert_allclose(rec.original_affine @ [*ijk, 1], world, atol=1e-4)
    with pytest.raises(InputError):
        to_original_grid(np.zeros((3, 3, 3)), rec)


@needs_data
def test_dicom_single_multiframe_file():
    rec = read_volume(ROOT / "mri/niivue_samples/enh.dcm")
    assert rec.shape == (64, 64, 6)
    assert rec.orientation == "RAS"
    assert rec.meta["modality"] == "MR"
    np.testing.assert_allclose(rec.spacing[:2], (3.375, 3.375), atol=1e-4)


@needs_data
def test_dicom_series_and_no_patient_identity(tmp_path):
    import pydicom

    folder = ROOT / "mri/niivue_samples/dicom_mr_series_VS-SEG-001"
    rec = read_volume(folder)
    assert rec.shape == (512, 512, 3)
    np.testing.assert_allclose(rec.spacing, (0.41015625, 0.41015625, 1.5), atol=1e-4)
    assert rec.meta["n_files"] == 3
    hdr = pydicom.dcmread(str(sorted(folder.glob("*.dcm"))[0]), stop_before_pixels=True)
    text = repr(rec.meta)
    assert not any(k.lower().startswith("patient") for k in rec.meta)
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID"):
        val = str(getattr(hdr, kw, "") or "")
        if val:
            assert val not in text, f"{kw} leaked into meta"
    out = write_like(rec.data > rec.data.mean(), rec, tmp_path / "mask.nii")
    img = nib.load(str(out))
    assert img.shape == rec.original_shape
    np.testing.assert_allclose(img.affine, rec.original_affine, atol=1e-4)


@needs_data
def test_jpeg2000_ct_series_decodes_like_pydicom():
    import pydicom

    folder = ROOT / "ct/totalsegmentator/example_ct_dicom"
    rec = read_volume(folder)
    assert rec.shape == (512, 512, 20)
    assert "JPEG 2000" in rec.meta["transfer_syntax"]
    assert rec.meta["modality"] == "CT"
    np.testing.assert_allclose(rec.spacing, (0.9765625, 0.9765625, 2.0), atol=1e-4)
    # independent decoder (pylibjpeg-openjpeg through pydicom) on the most inferior slice
    files = list_dicom_series(folder)[""] if "" in list_dicom_series(folder) else \
        next(iter(list_dicom_series(folder).values()))
    dsets = [pydicom.dcmread(f) for f in files]
    lowest = min(dsets, key=lambda d: float(d.ImagePositionPatient[2]))
    hu = lowest.pixel_array.astype(np.float32) * float(lowest.RescaleSlope) + float(lowest.RescaleIntercept)
    # pydicom rows are (row=j, col=i) in LPS; the record is RAS: flip i and j, transpose
    ras_slice = rec.data[:, :, 0]
    np.testing.assert_array_equal(ras_slice, hu.T[::-1, ::-1])


def test_pydicom_ct_small_and_five_slice_series():
    rec = read_volume(_pydicom_file("CT_small.dcm"))
    assert rec.shape == (128, 128, 1)
    assert rec.meta["modality"] == "CT"
    series = _pydicom_dir() / "dicomdirtests/98892001/CT5N"
    if not series.is_dir():
        pytest.skip("pydicom dicomdirtests not installed")
    rec5 = read_volume(series)
    assert rec5.shape == (16, 16, 5)
    np.testing.assert_allclose(rec5.spacing[2], 2.5, atol=1e-3)


def test_pydicom_fallback_agrees_with_simpleitk_and_reads_what_gdcm_cannot():
    import SimpleITK as sitk

    from medad.io.volumes import _pydicom_volume, _sitk_to_ras_arrays

    p = _pydicom_file("CT_small.dcm")
    a1, aff1 = _sitk_to_ras_arrays(sitk.ReadImage(str(p)))
    a2, aff2 = _pydicom_volume(p)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_allclose(aff1, aff2, atol=1e-6)
    # RT dose with a header GDCM rejects: decoded by pydicom instead
    rec = read_volume(_pydicom_file("rtdose_rle_1frame.dcm"))
    assert rec.meta["decoder"] == "pydicom" and rec.shape == (10, 10, 1)
    with pytest.raises(ReadError, match="MR_truncated.dcm") as e:
        read_volume(_pydicom_file("MR_truncated.dcm"))
    assert "Traceback" not in str(e.value) and "0x" not in str(e.value)


# ------------------------------------------------------------------ bad input


def test_missing_file(tmp_path):
    with pytest.raises(ReadError, match="not found") as e:
        read_volume(tmp_path / "nope.nii.gz")
    assert "nope.nii.gz" in str(e.value)


def _small_nifti(tmp_path: Path, data: np.ndarray, name: str = "x.nii.gz") -> Path:
    p = tmp_path / name
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), str(p))
    return p


def test_truncated_nifti(tmp_path):
    good = _small_nifti(tmp_path, np.random.default_rng(0).random((20, 20, 20), dtype=np.float32))
    raw = good.read_bytes()
    bad = tmp_path / "trunc.nii.gz"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ReadError) as e:
        read_volume(bad)
    assert "trunc.nii.gz" in str(e.value)
    # uncompressed and cut inside the voxel data
    unz = tmp_path / "trunc.nii"
    unz.write_bytes(gzip.decompress(raw)[:2000])
    with pytest.raises(ReadError, match="trunc.nii"):
        read_volume(unz)


@pytest.mark.parametrize("name,content", [
    ("garbage.nii", b"this is not a nifti file at all" * 20),
    ("garbage.nii.gz", b"\x00\x01garbage" * 50),
    ("garbage.mgz", b"garbage" * 50),
    ("garbage.dcm", b"garbage" * 50),
    ("empty.nii.gz", b""),
])
def test_garbage_files(tmp_path, name, content):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(ReadError) as e:
        read_volume(p)
    assert name in str(e.value)


def test_wrong_extension(tmp_path):
    p = tmp_path / "scan.txt"
    p.write_text("1 2 3\n")
    with pytest.raises(ReadError, match="unsupported volume format"):
        read_volume(p)


def test_4d_rejected_trailing_singleton_squeezed(tmp_path):
    p4 = _small_nifti(tmp_path, np.zeros((5, 6, 7, 3), np.float32), "four.nii.gz")
    with pytest.raises(ReadError, match="expected a 3D volume") as e:
        read_volume(p4)
    assert "four.nii.gz" in str(e.value)
    p1 = _small_nifti(tmp_path, np.ones((5, 6, 7, 1), np.float32), "single.nii.gz")
    assert read_volume(p1).shape == (5, 6, 7)


def test_nibabel_example4d_rejected():
    p = Path(nib.__file__).parent / "tests/data/example4d.nii.gz"
    if not p.is_file():
        pytest.skip("nibabel test data not installed")
    with pytest.raises(ReadError, match="4D"):
        read_volume(p)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_inf_rejected(tmp_path, bad):
    d = np.ones((8, 8, 8), np.float32)
    d[3, 3, 3] = bad
    with pytest.raises(ReadError, match="NaN or infinite"):
        read_volume(_small_nifti(tmp_path, d))


@needs_data
def test_folder_with_two_series(tmp_path):
    for f in (ROOT / "mri/niivue_samples/dicom_mr_series_VS-SEG-001").glob("*.dcm"):
        shutil.copy(f, tmp_path / f.name)
    shutil.copy(_pydicom_file("CT_small.dcm"), tmp_path / "ct_small.dcm")
    with pytest.raises(ReadError, match="2 DICOM series") as e:
        read_volume(tmp_path)
    uids = list_dicom_series(tmp_path)
    assert all(uid in str(e.value) for uid in uids)
    mr_uid = next(u for u, f in uids.items() if len(f) == 3)
    assert read_volume(tmp_path, series_uid=mr_uid).shape == (512, 512, 3)
    with pytest.raises(ReadError, match="not in folder"):
        read_volume(tmp_path, series_uid="1.2.3.4")


@needs_data
def test_series_with_missing_slice(tmp_path):
    src = ROOT / "ct/totalsegmentator/example_ct_dicom"
    files = next(iter(list_dicom_series(src).values()))
    for i, f in enumerate(files):
        if i != 7:  # drop one slice from the middle: a gap twice the spacing
            shutil.copy(f, tmp_path / Path(f).name)
    with pytest.raises(ReadError, match="inconsistent slice spacing"):
        read_volume(tmp_path)


def test_series_with_inconsistent_orientation():
    d = _pydicom_dir() / "dicomdirtests/98892001/CT2N"
    if not d.is_dir():
        pytest.skip("pydicom dicomdirtests not installed")
    with pytest.raises(ReadError, match="inconsistent slices"):
        read_volume(d)


def test_empty_folder(tmp_path):
    with pytest.raises(ReadError, match="no DICOM series"):
        read_volume(tmp_path)


@needs_data
def test_truncated_dicom(tmp_path):
    raw = (ROOT / "mri/niivue_samples/enh.dcm").read_bytes()
    p = tmp_path / "cut.dcm"
    p.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(ReadError, match="cut.dcm"):
        read_volume(p)


def test_write_volume_checks_suffix_and_is_atomic(tmp_path):
    a = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    aff = np.diag([1.5, 1.5, 3.0, 1.0])
    out = write_volume(a, aff, tmp_path / "sub" / "v.nii.gz")
    img = nib.load(str(out))
    assert img.get_data_dtype() == np.float32
    np.testing.assert_array_equal(np.asarray(img.dataobj), a)
    np.testing.assert_array_equal(img.affine, aff)
    with pytest.raises(InputError):
        write_volume(a, aff, tmp_path / "v.png")
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["v.nii.gz"]


def test_keep_locale_restores_the_process_locale():
    """GDCM may switch the process locale to "C" (Python then writes text as ASCII): the DICOM
    readers restore it."""
    import locale

    from medad.io.volumes import keep_locale

    before = locale.setlocale(locale.LC_ALL)
    with keep_locale():
        locale.setlocale(locale.LC_ALL, "C")
    assert locale.setlocale(locale.LC_ALL) == before
