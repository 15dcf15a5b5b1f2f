"""3D volume reading and writing: NIfTI, MGZ, DICOM files and DICOM series.

Every reader returns a :class:`~medad.io.records.VolumeRecord` whose ``data`` is in RAS voxel
order (closest canonical orientation; no resampling) with its affine, plus the file's own
``original_affine`` / ``original_shape`` so that maps computed on the RAS grid can be written
back on the input's exact grid (:func:`write_like`). Every failure raises
:class:`~medad.errors.ReadError` naming the file; no library traceback reaches the user.

Patient identity (name, id, birth date) is never copied into ``meta``.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medad.errors import InputError, ReadError
from medad.io.records import VolumeRecord
from medad.utils import atomic_path

NIFTI_SUFFIXES = (".nii", ".nii.gz")
MGH_SUFFIXES = (".mgz", ".mgh")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
VOLUME_SUFFIXES = NIFTI_SUFFIXES + MGH_SUFFIXES + DICOM_SUFFIXES

# DICOM header fields kept in meta: no patient identity (name, id, birth date) and no study
# UID; the series UID stays because it is how a user picks a series in a folder.
_DICOM_META_TAGS = {
    "modality": "Modality",
    "body_part": "BodyPartExamined",
    "series_uid": "SeriesInstanceUID",
    "series_description": "SeriesDescription",
    "manufacturer": "Manufacturer",
}

# Relative / absolute tolerance on slice spacing within one series.
_SLICE_REL_TOL = 0.02
_SLICE_ABS_TOL = 0.01


def volume_suffix(path: str | Path) -> str:
    """Lower-case suffix used for format dispatch (``.nii.gz`` counts as one)."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


def is_volume_path(path: str | Path) -> bool:
    """True for a file with a volume extension, an extension-less DICOM file, or a folder."""
    p = Path(path)
    if p.is_dir():
        return True
    suf = volume_suffix(p)
    return suf in VOLUME_SUFFIXES or (p.is_file() and _looks_like_dicom(p))


def has_dicom_magic(path: str | Path) -> bool:
    """True for a DICOM Part 10 file: 'DICM' at byte 128 (reads 132 bytes; cheap enough to run on
    every file of a folder, whatever its name -- DICOM slices often have no extension)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def is_dicom_slice(path: str | Path) -> bool:
    """A file that is a DICOM slice by name (.dcm, .dicom, .ima) or by content (the Part 10
    magic, :func:`has_dicom_magic`); NIfTI/MGZ files are never opened."""
    suf = volume_suffix(path)
    if suf in DICOM_SUFFIXES:
        return True
    return suf not in NIFTI_SUFFIXES + MGH_SUFFIXES and has_dicom_magic(path)


def _looks_like_dicom(path: Path) -> bool:
    """DICOM Part 10 files carry 'DICM' at byte 128; older files may not, so try a header read."""
    try:
        if has_dicom_magic(path):
            return True
        import pydicom

        pydicom.dcmread(path, stop_before_pixels=True, force=False)
        return True
    except Exception:
        return False


def subject_from_path(path: str | Path) -> str:
    """File name without its volume extension (``Subj1_FL.nii.gz`` -> ``Subj1_FL``)."""
    path = Path(path)
    name = path.name
    for suf in VOLUME_SUFFIXES:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name




def _short(e: BaseException) -> str:
    """One line from a library exception (no traceback, no multi-line ITK dumps)."""
    msg = " ".join(str(e).split())
    if len(msg) > 300:
        msg = msg[:300] + "..."
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


# ----------------------------------------------------------------------------------- reading


def read_volume(path: str | Path, *, series_uid: str | None = None,
                dtype: Any = np.float32, nonfinite: str = "error") -> VolumeRecord:
    """Read a 3D volume and reorient it to RAS.

    Args:
        path: a NIfTI (.nii/.nii.gz), MGZ/MGH, DICOM file (multi-frame included) or a folder
            holding one DICOM series.
        series_uid: which series to read when the folder holds several.
        dtype: dtype of ``data`` (float32 by default; intensity scaling is applied).
        nonfinite: NaN / infinite voxels are an ``"error"`` (default), or ``"zero"``: set to 0 and
            counted in ``meta["nonfinite_voxels"]`` (masked exports often store the background as NaN).

    Raises:
        ReadError: missing, truncated, corrupt or unsupported file; 4D data; NaN/inf values (by default);
            a folder with several series and no ``series_uid``; inconsistent slices.
    """
    p = Path(path)
    if not p.exists():
        raise ReadError("file or folder not found", p)
    if p.is_dir():
        data, affine, meta = _read_dicom_series(p, series_uid)
    else:
        suf = volume_suffix(p)
        if p.stat().st_size == 0:
            raise ReadError("file is empty", p)
        if suf in NIFTI_SUFFIXES or suf in MGH_SUFFIXES:
            data, affine, meta = _read_nibabel(p, dtype)
        elif suf in DICOM_SUFFIXES or _looks_like_dicom(p):  # DICOM names often lack .dcm
            data, affine, meta = _read_dicom_file(p)
        else:
            raise ReadError(
                f"unsupported volume format {suf or '(no extension, not DICOM)'}; expected one of "
                f"{', '.join(VOLUME_SUFFIXES)} or a DICOM series folder", p)
    return _finish(p, data, affine, meta, dtype, nonfinite)


def _finish(p: Path, data: np.ndarray, affine: np.ndarray, meta: dict, dtype: Any,
            nonfinite: str = "error") -> VolumeRecord:
    """Shape checks, finiteness check, RAS reorientation."""
    import nibabel as nib

    data = data.reshape(volume_shape(data.shape))
    if data.ndim != 3:
        raise ReadError(f"expected a 3D volume, got {data.ndim}D data of shape {tuple(data.shape)}", p)
    if np.issubdtype(data.dtype, np.complexfloating):
        raise ReadError("complex-valued data is not supported", p)
    try:
        data = np.asarray(data, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise ReadError(f"cannot convert data to {np.dtype(dtype)}: {_short(e)}", p) from None
    if nonfinite not in ("error", "zero"):
        raise ValueError(f"nonfinite must be 'error' or 'zero', not {nonfinite!r}")
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        bad = ~np.isfinite(data)
        n_bad = int(bad.sum())
        if nonfinite == "error":
            raise ReadError(f"{n_bad} voxels are NaN or infinite", p)
        data = np.where(bad, data.dtype.type(0), data)
        meta = {**meta, "nonfinite_voxels": n_bad}
    affine = np.asarray(affine, dtype=np.float64)
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ReadError("the voxel-to-world affine is invalid (singular or not finite)", p)
    original_shape = tuple(int(s) for s in data.shape)
    ornt = nib.orientations.io_orientation(affine)
    ras = nib.orientations.apply_orientation(data, ornt)
    _, ras_affine = _ras_grid(original_shape, affine, ornt)
    meta = dict(meta)
    meta["original_orientation"] = "".join(nib.aff2axcodes(affine))
    return VolumeRecord(
        data=np.ascontiguousarray(ras), affine=ras_affine, path=p, original_affine=affine.copy(),
        original_shape=original_shape, meta=meta, subject_id=subject_from_path(p),
    )


def volume_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """A file's array shape as medad reads it: a single slice as a one-slice volume, trailing
    unit axes dropped (any other shape than 3D is refused by the reader)."""
    shape = tuple(int(n) for n in shape)
    if len(shape) == 2:
        shape += (1,)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _ras_grid(shape: tuple[int, ...], affine: np.ndarray, ornt: np.ndarray | None = None
              ) -> tuple[tuple[int, ...], np.ndarray]:
    """The RAS shape and affine of a file grid (what :func:`read_volume` reorients it to)."""
    import nibabel as nib

    if ornt is None:
        ornt = nib.orientations.io_orientation(affine)
    ras_shape = tuple(shape[i] for i in np.argsort(ornt[:, 0]))
    return ras_shape, affine @ nib.orientations.inv_ornt_aff(ornt, shape)


def read_grid(path: str | Path) -> tuple[tuple[int, ...], tuple[int, ...], np.ndarray] | None:
    """``(RAS shape, file shape, RAS affine)`` of a NIfTI/MGH file from its header alone (as
    :func:`read_volume` would reorient it, without reading the voxels); ``None`` for another
    format or a header this cannot tell (the full read decides). nibabel's own errors pass
    through."""
    import nibabel as nib

    path = Path(path)
    if path.is_dir() or volume_suffix(path) not in NIFTI_SUFFIXES + MGH_SUFFIXES:
        return None
    img = nib.load(str(path))
    shape = volume_shape(img.shape)
    affine = None if img.affine is None else np.asarray(img.affine, dtype=np.float64)
    if len(shape) != 3 or affine is None or not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        return None
    ras_shape, ras_affine = _ras_grid(shape, affine)
    return ras_shape, shape, ras_affine


def _read_nibabel(p: Path, dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray, dict]:
    import nibabel as nib

    try:
        img = nib.load(str(p))
        shape = tuple(img.shape)
        # reject 4D from the header, before loading a possibly huge series into memory
        if len(shape) > 3 and any(s != 1 for s in shape[3:]):
            raise ReadError(f"expected a 3D volume, got {len(shape)}D data of shape {shape}", p)
        if np.dtype(dtype) in (np.float32, np.float64):
            data = img.get_fdata(dtype=dtype)  # scaled straight into the target precision
        else:
            data = np.asanyarray(img.dataobj)
        affine = img.affine
    except ReadError:
        raise
    except Exception as e:  # nibabel raises many types for truncated/corrupt files
        raise ReadError(f"cannot read as {volume_suffix(p)}: {_short(e)}", p) from None
    if affine is None:
        raise ReadError("file has no voxel-to-world affine", p)
    meta: dict[str, Any] = {"format": "nifti" if volume_suffix(p) in NIFTI_SUFFIXES else "mgh",
                            "file_dtype": str(img.get_data_dtype())}
    return np.asarray(data), np.asarray(affine), meta


def _sitk_to_ras_arrays(img) -> tuple[np.ndarray, np.ndarray]:
    """SimpleITK image -> (array in (i, j, k) index order, RAS affine)."""
    import SimpleITK as sitk

    arr = sitk.GetArrayFromImage(img)  # (k, j, i) or (k, j, i, components)
    if img.GetNumberOfComponentsPerPixel() > 1:
        # (k, j, i, c) -> (i, j, k, c); a colour volume is >3D and rejected later
        arr = np.transpose(arr, (2, 1, 0, 3))
    else:
        arr = np.transpose(arr, tuple(range(arr.ndim))[::-1])
    dim = img.GetDimension()
    if dim not in (2, 3):
        raise ValueError(f"{dim}D image")
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(dim, dim)
    spacing = np.asarray(img.GetSpacing(), dtype=np.float64)
    lps = np.eye(4)
    lps[:dim, :dim] = direction @ np.diag(spacing)
    lps[:dim, 3] = np.asarray(img.GetOrigin(), dtype=np.float64)
    # ITK world space is LPS; NIfTI/nibabel world space is RAS
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    return arr, affine


def _dicom_meta(header) -> dict[str, Any]:
    meta: dict[str, Any] = {"format": "dicom"}
    for key, kw in _DICOM_META_TAGS.items():
        val = getattr(header, kw, None)
        if val not in (None, ""):
            meta[key] = str(val)
    ts = getattr(getattr(header, "file_meta", None), "TransferSyntaxUID", None)
    if ts is not None:
        meta["transfer_syntax"] = getattr(ts, "name", str(ts))
    return meta


def _dicom_header(p: Path):
    import pydicom

    try:
        return pydicom.dcmread(str(p), stop_before_pixels=True, force=True)
    except Exception as e:
        raise ReadError(f"cannot read DICOM header: {_short(e)}", p) from None


def _read_dicom_file(p: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    import SimpleITK as sitk

    header = _dicom_header(p)
    if "PixelData" not in header and not hasattr(header, "Rows"):
        raise ReadError("DICOM file holds no image (no pixel data)", p)
    sitk.ProcessObject_SetGlobalWarningDisplay(False)
    try:
        with keep_locale():
            img = sitk.ReadImage(str(p))
        arr, affine = _sitk_to_ras_arrays(img)
        decoder = "gdcm"
    except Exception as e:
        # GDCM lacks some codecs/IODs that pydicom (+pylibjpeg) handles, and vice versa
        try:
            arr, affine = _pydicom_volume(p)
            decoder = "pydicom"
        except Exception as e2:
            raise ReadError(f"cannot decode DICOM image: {_itk_message(e)}; pydicom: {_short(e2)}",
                            p) from None
    meta = _dicom_meta(header)
    meta["n_files"] = 1
    meta["decoder"] = decoder
    return arr, affine, meta


def _first(ds, keyword: str, groups: tuple[str, ...]):
    """A geometry attribute from the dataset or its first (shared, then per-frame) functional group."""
    if keyword in ds:
        return ds[keyword].value
    for seq_kw in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for item in getattr(ds, seq_kw, None) or []:
            for g in groups:
                for sub in getattr(item, g, None) or []:
                    if keyword in sub:
                        return sub[keyword].value
    return None


def _pydicom_volume(p: Path) -> tuple[np.ndarray, np.ndarray]:
    """Decode one DICOM file with pydicom and build its RAS affine from the header."""
    import pydicom
    from pydicom.pixels import apply_rescale

    ds = pydicom.dcmread(str(p))
    arr = np.asarray(apply_rescale(ds.pixel_array, ds))
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if int(getattr(ds, "SamplesPerPixel", 1) or 1) > 1:
        raise ValueError("colour DICOM images are not volumes")
    arr = arr.reshape((frames,) + arr.shape[-2:])  # (k, rows=j, cols=i)
    iop = _first(ds, "ImageOrientationPatient", ("PlaneOrientationSequence",))
    ipp = _first(ds, "ImagePositionPatient", ("PlanePositionSequence",))
    ps = _first(ds, "PixelSpacing", ("PixelMeasuresSequence",))
    iop = np.array([float(v) for v in iop]) if iop is not None else np.array([1.0, 0, 0, 0, 1.0, 0])
    ipp = np.array([float(v) for v in ipp]) if ipp is not None else np.zeros(3)
    row_sp, col_sp = (float(ps[0]), float(ps[1])) if ps is not None else (1.0, 1.0)
    offsets = getattr(ds, "GridFrameOffsetVector", None)
    if offsets is not None and len(offsets) == frames and frames > 1:
        dz = float(offsets[1]) - float(offsets[0])
    else:
        dz = float(_first(ds, "SpacingBetweenSlices", ("PixelMeasuresSequence",))
                   or _first(ds, "SliceThickness", ("PixelMeasuresSequence",)) or 1.0)
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * col_sp  # i runs along a row (direction cosines of the row)
    lps[:3, 1] = iop[3:] * row_sp
    lps[:3, 2] = np.cross(iop[:3], iop[3:]) * dz
    lps[:3, 3] = ipp
    return np.transpose(arr, (2, 1, 0)), np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _itk_message(e: BaseException) -> str:
    """The useful part of an ITK exception (without source paths and object addresses)."""
    import re

    msg = " ".join(str(e).split())
    msg = msg.split("ERROR:")[-1]
    msg = re.sub(r"\S+\.(?:cxx|hxx|h|cpp):\d+:?\s*(?:\(\))?:?", "", msg)
    msg = re.sub(r"\w+\(0x[0-9a-fA-F]+\):\s*", "", msg)
    msg = msg.replace("Exception thrown in SimpleITK", "").strip(" :")
    return (msg[:300] + "...") if len(msg) > 300 else (msg or type(e).__name__)


@contextmanager
def keep_locale():
    """Restore the process locale after ITK/GDCM DICOM calls: GDCM may switch it to "C" (seen with
    its DICOM writer), after which Python's default text encoding is ASCII and any later report
    with non-ASCII text fails to write."""
    import locale

    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        try:
            locale.setlocale(locale.LC_ALL, saved)
        except locale.Error:
            pass


def list_dicom_series(folder: str | Path) -> dict[str, list[str]]:
    """Series UID -> file names (sorted by slice position) of the DICOM series in ``folder``."""
    import SimpleITK as sitk

    folder = Path(folder)
    sitk.ProcessObject_SetGlobalWarningDisplay(False)
    try:
        with keep_locale():
            ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
            return {uid: list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
                    for uid in ids}
    except Exception as e:
        raise ReadError(f"cannot scan folder for DICOM series: {_short(e)}", folder) from None


def _check_slices(folder: Path, files: list[str]) -> None:
    """Same size and orientation for every slice; evenly spaced positions along the normal."""
    headers = [_dicom_header(Path(f)) for f in files]
    sizes = {(int(getattr(h, "Rows", -1)), int(getattr(h, "Columns", -1))) for h in headers}
    if len(sizes) > 1:
        raise ReadError(f"inconsistent slices: sizes {sorted(sizes)} in one series", folder)
    if len(files) < 2:
        return
    try:
        iop = np.array([[float(v) for v in h.ImageOrientationPatient] for h in headers])
        ipp = np.array([[float(v) for v in h.ImagePositionPatient] for h in headers])
    except (AttributeError, TypeError, ValueError):
        raise ReadError("slices lack ImagePositionPatient/ImageOrientationPatient; "
                        "cannot order them", folder) from None
    if np.abs(iop - iop[0]).max() > 1e-3:
        raise ReadError("inconsistent slices: orientations differ within one series", folder)
    normal = np.cross(iop[0, :3], iop[0, 3:])
    pos = np.sort(ipp @ normal)
    gaps = np.diff(pos)
    if (gaps < _SLICE_ABS_TOL).any():
        raise ReadError("inconsistent slices: two slices at the same position", folder)
    med = float(np.median(gaps))
    worst = float(np.abs(gaps - med).max())
    if worst > _SLICE_REL_TOL * med + _SLICE_ABS_TOL:
        raise ReadError(
            f"inconsistent slice spacing (gaps from {gaps.min():.3g} to {gaps.max():.3g} mm; "
            "missing or extra slices?)", folder)


def _read_dicom_series(folder: Path, series_uid: str | None) -> tuple[np.ndarray, np.ndarray, dict]:
    import SimpleITK as sitk

    series = list_dicom_series(folder)
    if not series:
        raise ReadError("folder holds no DICOM series (nor a file medad reads)", folder)
    if series_uid is None:
        if len(series) > 1:
            listing = "; ".join(f"{uid or '(no UID)'} ({len(f)} files)" for uid, f in series.items())
            raise ReadError(f"folder holds {len(series)} DICOM series, choose one with series_uid: "
                            f"{listing}", folder)
        series_uid = next(iter(series))
    elif series_uid not in series:
        raise ReadError(f"series {series_uid} not in folder (found: {', '.join(series)})", folder)
    files = series[series_uid]
    if len(files) == 1:  # one (e.g. enhanced multi-frame) file: the series reader would make it 4D
        return _read_dicom_file(Path(files[0]))
    _check_slices(folder, files)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        with keep_locale():
            img = reader.Execute()
        arr, affine = _sitk_to_ras_arrays(img)
    except Exception as e:
        raise ReadError(f"cannot decode DICOM series {series_uid}: {_itk_message(e)}", folder) from None
    meta = _dicom_meta(_dicom_header(Path(files[0])))
    meta["n_files"] = len(files)
    if series_uid:
        meta["series_uid"] = series_uid
    return arr, affine, meta


# ----------------------------------------------------------------------------------- writing


def to_original_grid(array_ras: np.ndarray, record: VolumeRecord) -> np.ndarray:
    """Put an array computed on ``record``'s RAS grid back into the file's own voxel order.

    Pure axis permutation/flip (no resampling), so it is exact.
    """
    import nibabel as nib

    a = np.asarray(array_ras)
    if a.shape[:3] != tuple(record.data.shape):
        raise InputError(f"array shape {a.shape} does not match the volume's RAS grid "
                         f"{tuple(record.data.shape)}", record.path)
    if record.original_affine is None or record.original_shape is None:
        return a
    ornt = nib.orientations.io_orientation(record.original_affine)
    ras = nib.orientations.axcodes2ornt(("R", "A", "S"))
    back = nib.orientations.ornt_transform(ras, ornt)
    out = nib.orientations.apply_orientation(a, back)
    if out.shape[:3] != tuple(record.original_shape):  # cannot happen unless the record was edited
        raise InputError(f"cannot map array back to original shape {record.original_shape}",
                         record.path)
    return np.ascontiguousarray(out)


def _nifti_ready(array: np.ndarray, dtype: Any) -> np.ndarray:
    a = np.asarray(array)
    if dtype is not None:
        return a.astype(dtype)
    if a.dtype == bool:
        return a.astype(np.uint8)
    if a.dtype == np.float64 or a.dtype == np.float16:
        return a.astype(np.float32)
    if a.dtype == np.int64:
        return a.astype(np.int32)
    return a


def write_volume(array: np.ndarray, affine: np.ndarray, path: str | Path, *,
                 dtype: Any = None) -> Path:
    """Write ``array`` with ``affine`` as NIfTI (.nii or .nii.gz), atomically."""
    import nibabel as nib

    p = Path(path)
    if volume_suffix(p) not in NIFTI_SUFFIXES:
        raise InputError("output must be a .nii or .nii.gz file", p)
    a = _nifti_ready(array, dtype)
    if a.ndim < 3:
        raise InputError(f"expected at least 3 dimensions, got shape {a.shape}", p)
    img = nib.Nifti1Image(a, np.asarray(affine, dtype=np.float64))
    # both codes "scanner" so every viewer uses the same affine
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    with atomic_path(p) as tmp:
        nib.save(img, str(tmp))
    return p


def write_like(array: np.ndarray, record: VolumeRecord, path: str | Path, *,
               dtype: Any = None) -> Path:
    """Write a map computed on ``record``'s RAS grid as NIfTI on the input's original grid.

    The file has exactly the input file's shape and affine, so it opens over the scan in
    3D Slicer / ITK-SNAP.
    """
    out = to_original_grid(array, record)
    affine = record.original_affine if record.original_affine is not None else record.affine
    return write_volume(out, affine, path, dtype=dtype)


def describe_volume(record: VolumeRecord) -> dict[str, Any]:
    """Facts for ``medad inspect``: shape, spacing, orientation, value range."""
    d = record.data
    info = {
        "kind": "volume",
        "path": str(record.path),
        "shape": list(record.shape),
        "spacing_mm": [round(s, 4) for s in record.spacing],
        "orientation": record.orientation,
        "original_orientation": record.meta.get("original_orientation"),
        "original_shape": list(record.original_shape or record.shape),
        "dtype": str(d.dtype),
        "file_dtype": record.meta.get("file_dtype"),
        "min": float(d.min()),
        "max": float(d.max()),
        "mean": float(d.mean()),
        **{k: v for k, v in record.meta.items()
           if k in ("format", "modality", "series_uid", "series_description", "n_files",
                    "transfer_syntax")},
    }
    return {k: v for k, v in info.items() if v is not None}
