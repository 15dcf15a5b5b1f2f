"""Choose a reader from a path: volumes, 2D images, videos and signals.

``read_any(path)`` returns the record of the matching reader; ``describe_any(path)`` returns a
JSON-able summary for ``medad inspect``. Signals are handled by :mod:`medad.io.signals`
(imported lazily, so image/volume reading never depends on it).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from medad.errors import ReadError
from medad.io.images import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from medad.io.volumes import DICOM_SUFFIXES, MGH_SUFFIXES, NIFTI_SUFFIXES, _looks_like_dicom, volume_suffix

VOLUME_FILE_SUFFIXES = NIFTI_SUFFIXES + MGH_SUFFIXES + DICOM_SUFFIXES
# never DICOM: skipped when looking for DICOM files in a folder
_OTHER_SUFFIXES = NIFTI_SUFFIXES + MGH_SUFFIXES + IMAGE_SUFFIXES + VIDEO_SUFFIXES + (
    ".txt", ".md", ".csv", ".tsv", ".json", ".yaml", ".yml", ".edf", ".bdf", ".fif", ".wav", ".hea",
    ".dat", ".atr", ".npy", ".py", ".zip", ".gz")


def _signals():
    """medad.io.signals, or a clear error when that part is not installed."""
    try:
        return importlib.import_module("medad.io.signals")
    except ModuleNotFoundError as e:
        if e.name != "medad.io.signals":
            raise
        return None


def _signal_suffixes() -> tuple[str, ...]:
    mod = _signals()
    return tuple(getattr(mod, "SIGNAL_EXTENSIONS", ())) if mod else ()


def _holds_dicom(folder: Path, max_checked: int = 50) -> bool:
    """Cheap test before a full GDCM scan: any of the first files is DICOM."""
    from medad.io.volumes import list_dicom_series

    checked = 0
    for f in folder.iterdir():
        if not f.is_file() or f.name.startswith("."):
            continue
        suf = volume_suffix(f)
        # DICOM files often have no extension or a UID-like name ("CT.1.3.12...")
        if suf in DICOM_SUFFIXES or (suf not in _OTHER_SUFFIXES and _looks_like_dicom(f)):
            try:
                return bool(list_dicom_series(folder))
            except ReadError:
                return False
        checked += 1
        if checked >= max_checked:
            break
    return False


def kind_of(path: str | Path) -> str:
    """``"volume"``, ``"dicom_folder"``, ``"image"``, ``"video"``, ``"signal"`` or ``"folder"``.

    Raises ReadError for a missing path or an unknown extension.
    """
    p = Path(path)
    if not p.exists():
        raise ReadError("file or folder not found", p)
    if p.is_dir():
        return "dicom_folder" if _holds_dicom(p) else "folder"
    suf = volume_suffix(p)
    if suf in VOLUME_FILE_SUFFIXES:
        return "volume"
    if suf in IMAGE_SUFFIXES:
        return "image"
    if suf in VIDEO_SUFFIXES:
        return "video"
    sig = _signal_suffixes()
    lower = p.name.lower()
    if sig and any(lower.endswith(s) for s in sig):
        return "signal"
    if _looks_like_dicom(p):
        return "volume"
    known = VOLUME_FILE_SUFFIXES + IMAGE_SUFFIXES + VIDEO_SUFFIXES + sig
    raise ReadError(f"unsupported file type {suf or '(no extension)'}; medad reads "
                    f"{', '.join(known)}, DICOM files and DICOM series folders", p)


def read_any(path: str | Path, **kwargs) -> Any:
    """Read a file with the reader its extension calls for.

    Volumes (NIfTI, MGZ, DICOM file or series folder) -> VolumeRecord; PNG/JPG/... ->
    ImageRecord; EDF/BDF/FIF/WFDB/WAV/text -> SignalRecord. Videos are streamed, not read
    whole: use :func:`medad.io.images.iter_video_frames`.
    """
    p = Path(path)
    kind = kind_of(p)
    if kind in ("volume", "dicom_folder"):
        from medad.io.volumes import read_volume

        return read_volume(p, **kwargs)
    if kind == "image":
        from medad.io.images import read_image

        return read_image(p, **kwargs)
    if kind == "signal":
        mod = _signals()
        return mod.read_signal(p, **kwargs)
    if kind == "video":
        raise ReadError("a video is read frame by frame: use medad.io.images.iter_video_frames", p)
    raise ReadError("folder holds no DICOM series; read its files one by one", p)


def iter_read(paths, *, on_error=None, **kwargs):
    """Read many files for a batch job: yield ``(path, record)`` for each readable one.

    A file that cannot be read is reported as ``on_error(path, MedadError)`` (default: a logged
    warning) and skipped; the rest are still read.
    """
    import logging

    from medad.errors import MedadError

    for p in paths:
        try:
            rec = read_any(p, **kwargs)
        except MedadError as e:
            if on_error is None:
                logging.getLogger(__name__).warning("skipped: %s", e)
            else:
                on_error(Path(p), e)
            continue
        yield Path(p), rec
