"""Brain lesions from healthy scans only: train on a folder of healthy MRI, then score new scans.

Train (healthy scans -> preprocessed axial slices -> fit -> calibrate on held-out subjects)::

    train_brain("healthy/", "model/", BrainLesionConfig.from_yaml("configs/brain_intensity.yaml"))

Score a folder::

    score_folder("model/", "scans/", "out/")

Per scan, ``out/<scan id>/`` gets ``anomaly_map.nii.gz`` and ``mask.nii.gz`` on the input file's
own grid and affine, and ``overlay.png`` with the most abnormal axial slices; ``out/summary.csv``
has one row per scan (lesion volume in ml, max and mean score inside the brain, decision) and
reports scans that could not be read or processed instead of stopping.

The pipeline only composes medad pieces: :mod:`medad.transforms.brain` (preprocessing, way
back, map post-processing), the detector registry and :mod:`medad.io.volumes`.
Thresholds come from held-out healthy subjects only: the voxel threshold flags ``pixel_fpr``
of their brain voxels (after the same post-processing), and a scan is called abnormal when its
lesion volume exceeds the largest false-positive volume seen on those healthy scans.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from medad.config import dataclass_from_dict
from medad.errors import ConfigError, InputError, MedadError, ReadError
from medad.transforms.brain import (
    BrainPrepConfig, PreparedVolume, from_model_grid, postprocess_map, preprocess_volume,
    remove_small_components, slices_to_volume,
)

MODEL_FILE = "brain_model.json"
DETECTOR_DIR = "detector"
MEMBERS_DIR = "members"
ENSEMBLE = "ensemble"
COMBINE = {"mean": np.mean, "median": np.median}
#: what calibration leaves out of a partly healthy scan (``lesion_pattern``): the axial slices
#: holding lesion voxels (the benchmark protocol) or the lesion voxels alone
CALIBRATION_EXCLUDE = ("slices", "voxels")
MIN_CALIBRATION_SCANS = 3  # fewer held-out healthy scans than this: training warns about the thresholds
# BodyPartExamined values (substrings, upper case) of head scans; any other stated body part is refused
HEAD_PARTS = ("HEAD", "BRAIN", "SKULL", "NEURO", "CRAN", "CEREB")
# threshold: the model's voxel threshold (voxels scoring above it, in components of at least min_lesion_voxels, are
# lesion); decision_ml: the scan is called abnormal when lesion_ml is above it
SUMMARY_FIELDS = ("scan", "path", "status", "lesion_ml", "max_score", "mean_score", "threshold", "decision_ml",
                  "decision", "brain_ml", "brain_source", "error")


# ----------------------------------------------------------------------------------- config


@dataclass
class BrainLesionConfig:
    """What a brain-lesion model is made of.

    Attributes:
        detector: registry name (``"intensity"`` is the classical baseline; ``"ae"``, ``"dae"``,
            ``"vae"``, ``"memae"``, ``"ddpm"`` the pseudo-healthy reconstructions).
        detector_params: its parameters.
        preprocessing: :class:`~medad.transforms.brain.BrainPrepConfig` settings.
        image_pattern: glob (searched recursively) for the scans in a folder.
        mask_pattern: glob for a scan's own brain mask, looked up next to the scan (``{stem}``
            stands for the scan's file name without extension, e.g. ``"{stem}_brainmask.nii.gz"``
            in a flat folder, ``"brainmask*.nii*"`` in case folders); when it is absent the brain
            comes from registration to MNI152.
        lesion_pattern: glob of a scan's lesion mask, looked up as ``mask_pattern`` is (from
            the scan's folder, ``{stem}`` the scan's file name without extension; e.g.
            ``"{stem}_lesion.nii.gz"`` beside it, ``"../wmh/{stem}_DLWMLS.nii.gz"`` in a folder next
            to it): the training scans may then be only partly healthy. A found mask is read on
            the scan's grid (voxels above 0.5: any label of a label map is lesion); the axial
            slices (or crops) holding lesion voxels are left out of training, and calibration
            leaves out lesions as ``calibration_exclude`` says. A scan without one (a DICOM
            series has none) is wholly healthy. Files the pattern names are never scans. Training
            refuses, before any scan is preprocessed, a pattern that names several files for one
            scan or one file for two scans (put ``{stem}`` in it), or no file for any scan, and a
            mask whose header shows another grid than its scan's.
        calibration_exclude: what the voxel threshold and decision volume leave out of a
            held-out scan with a lesion mask: ``"slices"`` (every axial slice holding a lesion
            voxel, the benchmark protocol) or ``"voxels"`` (only the lesion voxels, so the
            healthy tissue around a lesion calibrates too). The detector's own item calibration
            always leaves out the items holding lesion, as training does.
        exclude_patterns: file-name globs of masks and label maps: a matching file is left out (and
            listed, with the reason) when it holds few distinct values; one holding a scan's
            continuous intensities (``Subj1_FL_skullstripped_masked.nii.gz``) is still a scan.
        val_fraction: share of healthy subjects held out for calibration (at least one).
        pixel_fpr: share of held-out healthy brain voxels above the voxel threshold.
        slice_fpr: share of held-out healthy slices above the slice threshold.
        erode: brain-mask erosion (model-grid voxels) before the map is read.
        median: median filter width applied to the map volume (0 = off).
        min_lesion_voxels: connected components smaller than this (input-grid voxels) are dropped.
        batch_size: slices (or crops) scored at a time.
        seed: seed of the subject split.
        crop_size: ``None`` = the detector sees 2D axial slices; an integer = it sees cubic 3D
            crops of that side (model-grid voxels; needs ``spatial_dims: 3``), and a scan's map
            is assembled from overlapping crops (MONAI sliding-window inference, Gaussian
            weighting).
        crop_stride: step between training crops and between scored crops (default half a crop).
        min_brain_fraction: training crops hold at least this share of brain voxels.
        members: for ``detector: ensemble``, the member models' configs (mappings, or in a
            YAML file paths of config files relative to it). Each member is trained and
            calibrated on its own; the ensemble's map is the mean of the members'
            post-processed maps, each divided by its own healthy-calibrated voxel threshold
            (so every member weighs the same), and is calibrated again on the same held-out
            healthy subjects. Members share the ensemble's preprocessing.
        combine: how an ensemble combines its members' scaled maps, voxel by voxel: ``"mean"`` or
            ``"median"`` (one member firing alone moves the median less).
    """

    detector: str = "intensity"
    detector_params: dict[str, Any] = field(default_factory=dict)
    preprocessing: dict[str, Any] = field(default_factory=dict)
    image_pattern: str = "*.nii*"
    mask_pattern: str | None = None
    exclude_patterns: list[str] = field(default_factory=lambda: ["*mask*", "*seg*", "*label*", "*OTMultiClass*",
                                                                 "*DLWMLS*", "*lesion*"])
    val_fraction: float = 0.2
    pixel_fpr: float = 0.005
    slice_fpr: float = 0.05
    erode: int = 2
    median: int = 5
    min_lesion_voxels: int = 20
    batch_size: int = 32
    seed: int = 0
    crop_size: int | None = None
    crop_stride: int | None = None
    min_brain_fraction: float = 0.1
    members: list[dict[str, Any]] = field(default_factory=list)
    combine: str = "mean"
    lesion_pattern: str | None = None
    calibration_exclude: str = "slices"

    def __post_init__(self) -> None:
        if self.calibration_exclude not in CALIBRATION_EXCLUDE:
            raise ConfigError(f"calibration_exclude must be one of {', '.join(CALIBRATION_EXCLUDE)}, got "
                              f"{self.calibration_exclude!r}")
        self.check_patterns()
        if self.detector == ENSEMBLE or self.members:
            self._check_members()
        if self.combine not in COMBINE:
            raise ConfigError(f"combine must be one of {', '.join(COMBINE)}, got {self.combine!r}")
        dims = int(self.detector_params.get("spatial_dims", 2))
        if self.crop_size is not None:
            if int(self.crop_size) < 8:
                raise ConfigError(f"crop_size must be at least 8 voxels, got {self.crop_size}")
            if dims != 3 and self.detector != "intensity":
                raise ConfigError(f"crop_size={self.crop_size} (3D crops) needs detector_params.spatial_dims: 3, "
                                  f"got {dims}")
            if self.crop_stride is not None and not 0 < int(self.crop_stride) <= int(self.crop_size):
                raise ConfigError(f"crop_stride must be in (0, crop_size], got {self.crop_stride}")
        elif dims == 3:
            raise ConfigError("a 3D detector (spatial_dims: 3) needs crop_size: the side of its cubic crops")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        for k in ("pixel_fpr", "slice_fpr"):
            if not 0.0 < getattr(self, k) < 1.0:
                raise ConfigError(f"{k} must be in (0, 1), got {getattr(self, k)}")
        BrainPrepConfig.from_dict(self.preprocessing)  # validates the preprocessing block early

    def check_patterns(self) -> None:
        """``mask_pattern`` and ``lesion_pattern`` are relative globs whose only placeholder is
        ``{stem}``, and not the same (a caller that sets them after construction calls this)."""
        import string

        for name in ("mask_pattern", "lesion_pattern"):
            v = getattr(self, name)
            if v is None:
                continue
            if not isinstance(v, str) or not v.strip():
                raise ConfigError(f"{name} must be a file-name glob such as '{{stem}}_lesion.nii.gz', got {v!r}")
            if Path(v).is_absolute():
                raise ConfigError(f"{name} {v!r} is an absolute path: it is looked up from each scan's folder, "
                                  "e.g. '{stem}_lesion.nii.gz' or '../lesions/{stem}.nii.gz'")
            try:
                fields_ = {f for _, f, _, _ in string.Formatter().parse(v) if f is not None}
            except ValueError as e:
                raise ConfigError(f"{name} {v!r}: {e} (the only placeholder is {{stem}})") from None
            if fields_ - {"stem"}:
                raise ConfigError(f"{name} {v!r}: the only placeholder is {{stem}} (the scan's file name "
                                  f"without extension), got {{{'}, {'.join(sorted(fields_ - {'stem'}))}}}")
        if self.lesion_pattern is not None and self.lesion_pattern == self.mask_pattern:
            raise ConfigError(f"lesion_pattern and mask_pattern are both {self.mask_pattern!r}: a scan's lesion "
                              "mask and brain mask are different files")

    def _check_members(self) -> None:
        if self.detector != ENSEMBLE:
            raise ConfigError(f"'members' is only for detector: {ENSEMBLE}, got detector {self.detector!r}")
        if len(self.members) < 2:
            raise ConfigError(f"an ensemble needs at least 2 members, got {len(self.members)}")
        cfgs = []
        for i, m in enumerate(self.members):
            if not isinstance(m, dict):
                raise ConfigError(f"ensemble member {i} must be a config mapping (or, in a YAML file, a config "
                                  f"path), got {type(m).__name__}")
            try:
                cfgs.append(BrainLesionConfig.from_dict(m))
            except ConfigError as e:
                raise ConfigError(f"ensemble member {i}: {e.problem}") from None
            if cfgs[-1].detector == ENSEMBLE:
                raise ConfigError(f"ensemble member {i} is itself an ensemble")
            if m.get("lesion_pattern") is not None:
                raise ConfigError(f"ensemble member {i} sets lesion_pattern: set it on the ensemble (its scans are "
                                  "found once for all members)")
            if m.get("calibration_exclude", self.calibration_exclude) != self.calibration_exclude:
                raise ConfigError(f"ensemble member {i} sets calibration_exclude {m['calibration_exclude']!r}, the "
                                  f"ensemble {self.calibration_exclude!r}: set it on the ensemble (members calibrate "
                                  "as the ensemble does)")
        if not self.preprocessing:  # the members' preprocessing is the ensemble's
            self.preprocessing = cfgs[0].prep.to_dict()
        for i, c in enumerate(cfgs):
            if c.prep.to_dict() != self.prep.to_dict():
                raise ConfigError(f"ensemble member {i} ({c.detector}) preprocesses differently from the ensemble; "
                                  "members must share one preprocessing")

    def member_configs(self) -> list["BrainLesionConfig"]:
        """The members' configs; each calibrates as the ensemble does (``calibration_exclude``)."""
        return [BrainLesionConfig.from_dict({**m, "calibration_exclude": self.calibration_exclude}) for m in self.members]

    @property
    def stride(self) -> int:
        """Step between crops (training and scoring): ``crop_stride``, default half a crop."""
        return int(self.crop_stride or max(int(self.crop_size or 0) // 2, 1))

    @property
    def prep(self) -> BrainPrepConfig:
        return BrainPrepConfig.from_dict(self.preprocessing)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BrainLesionConfig":
        return dataclass_from_dict(cls, d, "brain-lesion")

    @classmethod
    def from_yaml(cls, path: str | Path) -> "BrainLesionConfig":
        try:
            return cls.from_dict(read_brain_config(path))
        except ConfigError as e:
            raise ConfigError(e.problem, path) from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_brain_config(path: str | Path) -> dict[str, Any]:
    """A brain-lesion YAML as a mapping, with ensemble ``members`` given as paths (relative to
    the file) read in place."""
    from medad.config import load_config

    path = Path(path)
    raw = load_config(path)
    members = raw.get("members") or []
    if not isinstance(members, list):
        raise ConfigError("'members' must be a list of config paths or mappings", path)
    for m in members:
        if isinstance(m, str) and (path.parent / m).resolve() == path.resolve():
            raise ConfigError("an ensemble config lists itself as a member", path)
    out = []
    for m in members:
        try:
            out.append(read_brain_config(path.parent / m) if isinstance(m, str) else m)
        except ConfigError as e:
            raise ConfigError(f"ensemble member {m!r}: {e.problem}", path) from None
    raw["members"] = out
    return raw


# ----------------------------------------------------------------------------------- scans


@dataclass
class Scan:
    """A scan found in a folder: id, image file and (optionally) its brain-mask and lesion-mask files."""

    scan_id: str
    path: Path
    mask_path: Path | None = None
    series_uid: str | None = None  # a DICOM series folder holding several series: which one
    lesion_path: Path | None = None


def _scan_id(path: Path, root: Path) -> str:
    from medad.io.volumes import subject_from_path

    rel = path.relative_to(root)
    stem = subject_from_path(path)
    # case folders (BraTS) name the subject; a flat folder of files names it by file
    return stem if len(rel.parts) == 1 else "_".join(rel.parts[:-1] + (stem,))


def output_patterns() -> tuple[str, ...]:
    """Names of the NIfTI files medad writes beside scans (``brain score``, ``explain``): never
    scans, whatever the config's ``exclude_patterns`` (re-scoring a results folder must not score
    its maps)."""
    from medad.explain.methods import METHODS

    return ("anomaly_map*.nii*", "mask.nii*", *(f"{m}.nii*" for m in METHODS))


def _lookup(scan: Path, pattern: str) -> Path:
    """The path ``pattern`` names for a scan file: looked up from the scan's folder, ``{stem}``
    standing for the scan's file name without extension (still a glob)."""
    from medad.io.volumes import subject_from_path

    return scan.parent / (pattern.format(stem=subject_from_path(scan)) if "{stem}" in pattern else pattern)


def _companions(scan: Path, pattern: str | None) -> list[Path]:
    """Every file ``pattern`` names for a scan file (:func:`_lookup`), sorted: not the scan itself,
    not a folder."""
    if not pattern:
        return []
    me = scan.resolve()
    rel = _lookup(scan, pattern).relative_to(scan.parent)  # may reach into other folders ('../wmh/...')
    return sorted(q for q in scan.parent.glob(str(rel)) if not q.is_dir() and q.resolve() != me)


#: matches listed in the error of a pattern that names several files for one scan
N_MATCHES_SHOWN = 4


def _one_companion(scan: Path, matches: Sequence[Path], pattern: str, option: str, what: str) -> Path | None:
    """The one file of ``matches`` (what ``pattern`` names for ``scan``), ``None`` when there is
    none, or an :class:`InputError` listing the first matches when there are several: a scan's
    brain or lesion mask is one file, and taking the first (sorted) gave every scan the same mask."""
    from medad.io.volumes import subject_from_path

    if len(matches) <= 1:
        return matches[0] if matches else None
    shown = ", ".join(q.name for q in matches[:N_MATCHES_SHOWN])
    more = f" and {len(matches) - N_MATCHES_SHOWN} more" if len(matches) > N_MATCHES_SHOWN else ""
    stem = subject_from_path(scan)
    if "{stem}" in pattern:
        fix = f"make the pattern name one file (here {{stem}} is {stem!r})"
    else:
        fix = f"put {{stem}} in it: it stands for the scan's file name without extension, here {stem!r}"
        own = next((q.name for q in matches if stem in q.name), None)  # the match named after this scan
        if own is not None:
            folder = pattern.rpartition("/")[0]
            fix += f", e.g. {(folder + '/' if folder else '') + own.replace(stem, '{stem}', 1)!r}"
    raise InputError(f"{option} {pattern!r} matches {len(matches)} files for this scan ({shown}{more}) in "
                     f"{matches[0].parent}: a scan's {what} is one file; {fix}", scan)


def find_scans(folder: str | Path, image_pattern: str = "*.nii*", mask_pattern: str | None = None,
               exclude_patterns: Sequence[str] = (), *,
               excluded: list[tuple[Path, str]] | None = None, lesion_pattern: str | None = None,
               pair_lesions: bool = True) -> list[Scan]:
    """Every scan under ``folder`` (recursively, links to folders followed): files matching
    ``image_pattern``, with their brain mask when ``mask_pattern`` finds one (and their lesion
    mask when ``lesion_pattern`` finds one) from the same folder (:func:`_lookup`), and every
    DICOM series (a folder of slices, found by extension or by content, so slices with no
    extension count) as one scan. A single file is a folder of one scan. A file named like the
    mask or lesion patterns, or found as another file's mask, is not a scan.

    A pattern that names more than one file for a scan is an :class:`InputError` listing them (a
    pattern without ``{stem}`` in a folder of several scans' masks gave every scan the first).
    Two scans paired with one LESION mask is an error too: a model knows one contrast, so two of
    its scans sharing a lesion mask means the pattern does not tell the scans apart. Two scans may
    share one BRAIN mask: two contrasts of one subject in one case folder (BraTS's
    ``brainmask.nii.gz`` beside its FLAIR and T1c) or scans registered to one template; a brain
    mask of another scan's grid is refused when the scan is read. ``pair_lesions=False`` (scoring:
    lesion masks are only kept from being scored) leaves ``lesion_path`` unset and checks nothing
    about the lesion pattern's matches.

    A file whose name matches one of ``exclude_patterns`` is left out when it looks like a mask or
    label map (:func:`_label_reason`); one holding a scan's continuous intensities (e.g.
    ``Subj10_FL_skullstripped_masked.nii.gz``) is kept. Each file left out is appended to
    ``excluded`` as ``(path, reason)``. Scans whose ids would collide get distinct ones
    (:func:`_unique_ids`)."""
    import fnmatch

    from medad.io.volumes import is_dicom_slice
    from medad.utils import walk_files

    root = Path(folder)
    if not root.exists():
        raise ReadError("folder not found", root)

    def paired(p: Path, scan_id: str, masks: Sequence[Path], lesions: Sequence[Path]) -> Scan:
        """The scan with its one brain mask and (``pair_lesions``) its one lesion mask."""
        mask = _one_companion(p, masks, mask_pattern or "", "mask_pattern", "brain mask")
        lesion = _one_companion(p, lesions, lesion_pattern or "", "lesion_pattern", "lesion mask") if pair_lesions \
            else None
        return Scan(scan_id, p, mask, lesion_path=lesion)

    if root.is_file():  # one scan given by its path: its brain (and lesion) mask found as in a folder
        return [paired(root, _scan_id(root, root.parent), _companions(root, mask_pattern),
                       _companions(root, lesion_pattern))]
    series_dirs = _dicom_series_scans(root)
    out = [s for scans in series_dirs.values() for s in scans]
    left_out: list[tuple[Path, str]] = []
    # names of brain / lesion masks (a pattern reaching into another folder names no file here)
    name_globs = [g.replace("{stem}", "*") for g in (mask_pattern, lesion_pattern) if g and "/" not in g]
    outputs = output_patterns()
    files = []
    for p in dict.fromkeys(walk_files(root, image_pattern)):  # a pattern with '/' may list a file twice
        if any(fnmatch.fnmatch(p.name, o) for o in outputs):
            continue  # a map medad wrote (re-scoring a results folder), never a scan
        if p.parent in series_dirs and is_dicom_slice(p):
            continue  # a slice of a series already found as one scan
        if any(fnmatch.fnmatch(p.name, g) for g in name_globs):
            continue  # a brain or lesion mask named by the config's patterns, not a scan
        files.append((p, _companions(p, mask_pattern), _companions(p, lesion_pattern)))
    # a file found as another file's brain or lesion mask (e.g. in a lesion folder next to the scans)
    companions = {q.resolve() for _, m, les in files for q in (*m, *les)}
    for p, masks, lesions in files:
        if p.resolve() in companions:
            continue
        hit = next((e for e in exclude_patterns if fnmatch.fnmatch(p.name, e)), None)
        if hit is not None:
            why = _label_reason(p, hit)
            if why is not None:
                left_out.append((p, why))
                continue
        out.append(paired(p, _scan_id(p, root), masks, lesions))
    if excluded is not None:
        excluded.extend(left_out)
    if not out:
        extra = (f" ({len(left_out)} file(s) left out as masks/labels by the exclude patterns, e.g. "
                 f"{left_out[0][0].name}: {left_out[0][1]})") if left_out else ""
        raise ReadError(f"no scans matching {image_pattern!r} found{extra}", root)
    _check_shared_lesions(out, lesion_pattern)
    return _unique_ids(out)


def _check_shared_lesions(scans: Sequence[Scan], pattern: str | None) -> None:
    """An :class:`InputError` when two scans are paired with one lesion mask (see :func:`find_scans`)."""
    by_mask: dict[Path, list[Scan]] = {}
    for s in scans:
        if s.lesion_path is not None:
            by_mask.setdefault(s.lesion_path.resolve(), []).append(s)
    for mask, shared in by_mask.items():
        if len(shared) > 1:
            names = ", ".join(str(s.path) for s in shared[:N_MATCHES_SHOWN])
            more = f" and {len(shared) - N_MATCHES_SHOWN} more" if len(shared) > N_MATCHES_SHOWN else ""
            raise InputError(f"lesion_pattern {pattern!r} pairs this one lesion mask with {len(shared)} scans "
                             f"({names}{more}): each scan needs its own; put {{stem}} (the scan's file name without "
                             "extension) in the pattern", shared[0].lesion_path)


#: a file named like a mask is left out when it holds at most this many distinct values (a mask, e.g.
#: BraTS's float 0 / 0.99999997 brain mask), or integers only and at most LABEL_MAX_INTEGER_VALUES
#: (a label map such as a FreeSurfer aseg); a scan has thousands of distinct intensities
LABEL_MAX_VALUES = 16
LABEL_MAX_INTEGER_VALUES = 256


def _label_reason(path: Path, pattern: str) -> str | None:
    """Why a file whose name matches the exclude glob ``pattern`` is left out (it holds few distinct
    values, or cannot be read), or ``None`` when it holds a scan's continuous intensities."""
    from medad.io.volumes import read_volume

    try:
        data = read_volume(path).data
    except MedadError as e:  # left out by its name, as the pattern says; say why it was not checked
        return f"name matches exclude pattern {pattern!r} (content not checked: {e.problem})"
    vals = np.unique(data[::2, ::2, ::2])  # every 8th voxel: plenty to tell labels from intensities
    n = int(vals.size)
    if n <= LABEL_MAX_VALUES or (n <= LABEL_MAX_INTEGER_VALUES and bool(np.all(vals == np.round(vals)))):
        return f"name matches exclude pattern {pattern!r} and it holds {n} distinct values (a mask or label map)"
    return None


def _unique_ids(scans: list[Scan]) -> list[Scan]:
    """Give scans whose ids collide (``a.nii`` beside ``a.nii.gz``; folder ``p/s`` beside file
    ``p_s.nii.gz``) distinct ids -- their parent folder's name in front, then ``_2``, ``_3``...
    behind -- so one scan's results never overwrite another's; other ids are unchanged."""
    from collections import Counter

    for step in ("parent", "counter"):
        counts = Counter(s.scan_id for s in scans)
        if max(counts.values(), default=0) < 2:
            break
        seen: Counter = Counter()
        for s in scans:
            if counts[s.scan_id] < 2:
                continue
            if step == "parent":
                s.scan_id = f"{s.path.parent.name}_{s.scan_id}"
            else:
                seen[s.scan_id] += 1
                if seen[s.scan_id] > 1:
                    s.scan_id = f"{s.scan_id}_{seen[s.scan_id]}"
    return scans


def _dicom_series_scans(root: Path) -> dict[Path, list[Scan]]:
    """Folders under ``root`` (itself included, links followed) holding DICOM slices (by extension
    or by the 'DICM' magic) -> one scan per DICOM series in them (a series is one volume, not a
    folder of scans; a series of one file is that file). A folder SimpleITK cannot scan is left to
    the file loop."""
    from medad.io.volumes import is_dicom_slice, list_dicom_series
    from medad.utils import walk_folders

    out: dict[Path, list[Scan]] = {}
    for d in walk_folders(root):
        if not any(f.is_file() and is_dicom_slice(f) for f in sorted(d.iterdir())):
            continue
        try:
            listed = list_dicom_series(d)
        except ReadError:
            continue
        series = {uid: files for uid, files in listed.items() if len(files) > 1}
        name = d.name if d == root else "_".join(d.relative_to(root).parts)
        scans = [Scan(name if len(series) == 1 else f"{name}_{uid[-12:]}", d,
                      series_uid=None if len(series) == 1 else uid) for uid in series]
        # a series of one file (an enhanced multi-frame DICOM volume, or a lone slice that will be
        # refused by name) is a scan of its own, whatever the image pattern: never silently passed over
        scans += [Scan(_scan_id(Path(files[0]), root), Path(files[0])) for files in listed.values() if len(files) == 1]
        if scans:
            out[d] = scans
    return out


def prepare_scan(scan: Scan, prep: BrainPrepConfig) -> PreparedVolume:
    """Read a scan (and its brain mask) and preprocess it."""
    from medad.io.volumes import read_volume

    # NaN / inf voxels (masked exports often store the background so) are read as 0, the background
    record = read_volume(scan.path, series_uid=scan.series_uid, nonfinite="zero")
    part = str(record.meta.get("body_part") or "").strip()
    if part and not any(w in part.upper() for w in HEAD_PARTS):  # a DICOM header that says it is no head
        raise InputError(f"the DICOM header says BodyPartExamined {part!r}, not a head: brain scoring needs head "
                         "scans", scan.path)
    record.subject_id = scan.scan_id
    if scan.mask_path is not None:
        return preprocess_volume(record, prep, brain_mask=_read_on_scan_grid(scan.mask_path, record, "brain mask"))
    try:
        return preprocess_volume(record, prep)
    except InputError as e:  # a brain mask that could not be made (a failed registration...): say how to give one
        if "brain mask" not in e.problem:
            raise
        hint = InputError(f"{e.problem} ({MASK_PATTERN_HINT})", e.path)
        hint.detail = getattr(e, "detail", "")
        raise hint from None


#: how to give a scan's brain mask, added to a brain-mask error of a scan without one (e.g. the
#: refusal of a registration that did not fit)
MASK_PATTERN_HINT = ("--mask-pattern, or mask_pattern in the config, names each scan's brain mask: a glob looked up "
                     "from the scan's folder, e.g. '{stem}_brainmask.nii.gz' beside it or 'brainmask*' in case "
                     "folders")


def _grid_problem(what: str, scan: str, shape: tuple[int, ...], file_shape: tuple[int, ...], affine: np.ndarray,
                  scan_shape: tuple[int, ...], scan_file_shape: tuple[int, ...], scan_affine: np.ndarray) -> str | None:
    """Why a file that belongs to a scan (``what``: its brain or lesion mask) is not on the scan's
    grid, from both RAS shapes and affines (the files' own shapes for the message); ``None`` if it is."""
    if tuple(shape) != tuple(scan_shape):
        return (f"{what} is not on the grid of scan {scan}: shape {tuple(file_shape)}, the scan's "
                f"{tuple(scan_file_shape)}")
    if not np.allclose(affine, scan_affine, atol=1e-3):
        return (f"{what} is not on the grid of scan {scan}: same shape but another voxel size, position or "
                "orientation (affine)")
    return None


def _read_on_scan_grid(path: Path, record, what: str) -> np.ndarray:
    """The data of a file that belongs to a scan (its brain or lesion mask), checked to lie on the
    scan's grid (both read in RAS order): an error naming the file and the scan otherwise."""
    from medad.io.volumes import read_volume

    m = read_volume(path)
    scan = record.path.name if record.path is not None else record.subject_id
    why = _grid_problem(what, scan, m.shape, m.original_shape or m.shape, m.affine,
                        record.shape, record.original_shape or record.shape, record.affine)
    if why is not None:
        raise InputError(why, path)
    return m.data


def check_lesion_grids(scans: Sequence[Scan]) -> None:
    """Before any scan is preprocessed: each scan's lesion mask (``lesion_path``) exists, can be
    read and lies on the scan's grid, from the two files' headers (nothing is registered first).
    A problem is an error naming the mask (training cannot tell such a scan healthy where it is
    not); a scan whose own header cannot be read is left to the full read, which skips it."""
    from medad.io.volumes import read_grid

    for s in scans:
        if s.lesion_path is None:
            continue
        if not s.lesion_path.exists():
            raise ReadError(f"lesion mask of scan {s.path.name} not found (a broken link?)", s.lesion_path)
        try:
            scan_grid = read_grid(s.path)
        except Exception:  # noqa: BLE001 -- an unreadable scan is skipped (and listed) when it is read
            continue
        try:
            mask_grid = read_grid(s.lesion_path)
        except Exception as e:  # noqa: BLE001 -- nibabel raises many types for corrupt headers
            raise ReadError(f"cannot read the header of the lesion mask of scan {s.path.name}: "
                            f"{type(e).__name__}: {' '.join(str(e).split())[:200]}", s.lesion_path) from None
        if scan_grid is None or mask_grid is None:
            continue
        why = _grid_problem("lesion mask", s.path.name, mask_grid[0], mask_grid[1], mask_grid[2],
                            scan_grid[0], scan_grid[1], scan_grid[2])
        if why is not None:
            raise InputError(why, s.lesion_path)


def read_lesion_mask(scan: Scan, record) -> np.ndarray | None:
    """A scan's lesion mask (``scan.lesion_path``) on its record's RAS grid, as a bool array (voxels
    above 0.5: any label of a label map); ``None`` when the scan has none."""
    if scan.lesion_path is None:
        return None
    return _read_on_scan_grid(scan.lesion_path, record, "lesion mask") > 0.5


# ----------------------------------------------------------------------------------- slices


def training_slices(volumes: Sequence[PreparedVolume], *, min_brain_pixels: int = 200,
                    lesions: Sequence[np.ndarray | None] | None = None,
                    dropped: dict[str, int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Healthy axial slices of prepared volumes: those with at least ``min_brain_pixels`` brain
    pixels and, when a lesion mask (record grid) is given for a volume, no lesion voxel.
    ``dropped`` (subject id -> count) gets the slices with enough brain left out for a lesion.

    Returns:
        ``(slices (N, 1, S, S), brain (N, 1, S, S) bool, subject id per slice)``.
    """
    xs, bs, ids = [], [], []
    for i, v in enumerate(volumes):
        keep = v.model_brain.sum(axis=(0, 1)) >= min_brain_pixels
        les = None if lesions is None else lesions[i]
        if les is not None:
            hit = v.labels_to_model_grid(les).any(axis=(0, 1))
            if dropped is not None:
                dropped[v.record.subject_id] = dropped.get(v.record.subject_id, 0) + int((keep & hit).sum())
            keep &= ~hit
        if keep.any():
            xs.append(v.slices()[keep])
            bs.append(v.slice_brain()[keep])
            ids += [v.record.subject_id] * int(keep.sum())
    if not xs:
        raise InputError("no healthy slices with enough brain found")
    return np.concatenate(xs), np.concatenate(bs), np.asarray(ids)


def _padded(a: np.ndarray, crop: int) -> np.ndarray:
    """Zero-pad (background) every axis shorter than ``crop``."""
    pad = [(0, max(crop - n, 0)) for n in a.shape]
    return np.pad(a, pad) if any(p for _, p in pad) else a


def training_crops(volumes: Sequence[PreparedVolume], crop: int, stride: int, *, min_brain_fraction: float = 0.1,
                   lesions: Sequence[np.ndarray | None] | None = None,
                   dropped: dict[str, int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Healthy cubic crops of prepared volumes (model grid): at least ``min_brain_fraction``
    brain voxels and, when a lesion mask (record grid) is given for a volume, no lesion voxel.
    ``dropped`` (subject id -> count) gets the crops with enough brain left out for a lesion.

    Returns:
        ``(crops (N, 1, c, c, c), brain (N, 1, c, c, c) bool, subject id per crop)``.
    """
    xs, bs, ids = [], [], []
    for i, v in enumerate(volumes):
        img, brain = _padded(v.image, crop), _padded(v.model_brain, crop)
        les = None if lesions is None or lesions[i] is None else _padded(v.labels_to_model_grid(lesions[i]), crop)
        if les is not None and dropped is not None:
            dropped.setdefault(v.record.subject_id, 0)
        for sl in _crop_boxes(img.shape, crop, stride):
            if brain[sl].mean() < min_brain_fraction:
                continue
            if les is not None and les[sl].any():
                if dropped is not None:
                    dropped[v.record.subject_id] += 1
                continue
            xs.append(img[sl])
            bs.append(brain[sl])
            ids.append(v.record.subject_id)
    if not xs:
        raise InputError(f"no healthy {crop}-voxel crops with enough brain found")
    return np.stack(xs)[:, None].astype(np.float32), np.stack(bs)[:, None], np.asarray(ids)


def healthy_items(cfg: "BrainLesionConfig", volumes: Sequence[PreparedVolume],
                  lesions: Sequence[np.ndarray | None] | None = None,
                  dropped: dict[str, int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the configured detector trains and calibrates on: axial slices or 3D crops (``dropped``:
    subject id -> items left out for a lesion, for each volume with a lesion mask)."""
    if cfg.crop_size is None:
        return training_slices(volumes, min_brain_pixels=cfg.prep.min_brain_pixels, lesions=lesions, dropped=dropped)
    crop = int(cfg.crop_size)
    return training_crops(volumes, crop, cfg.stride,
                          min_brain_fraction=cfg.min_brain_fraction, lesions=lesions, dropped=dropped)


def healthy_support(support: np.ndarray, lesion: np.ndarray | None, voxels: bool = False) -> np.ndarray:
    """The healthy part of a calibration scan's support: without the axial slices that hold any
    ``lesion`` voxel (default), or with ``voxels`` without the lesion voxels alone (record grid)."""
    if lesion is None:
        return support
    lesion = np.asarray(lesion, bool)
    return support & ~(lesion if voxels else lesion.any(axis=(0, 1))[None, None, :])


# ----------------------------------------------------------------------------------- model


@dataclass
class BrainModel:
    """A trained detector plus everything that turns its slice maps into lesion masks."""

    detector: Any
    config: BrainLesionConfig
    voxel_threshold: float | None = None
    decision_ml: float | None = None
    info: dict[str, Any] = field(default_factory=dict)
    members: list["BrainModel"] = field(default_factory=list)  # an ensemble's calibrated members

    # -- scoring ------------------------------------------------------------------
    def _detector_maps(self, x: np.ndarray) -> np.ndarray:
        if self.members:
            raise ConfigError("an ensemble has no single detector: its members' maps are combined on the scan grid")
        res = self.detector.score(x).map
        if res is None:
            raise ConfigError(f"detector {self.config.detector!r} makes no anomaly maps")
        return res

    def model_map(self, vol: PreparedVolume) -> np.ndarray:
        """Raw anomaly map of a prepared scan on the model grid ``(size, size, Z)``."""
        bs = int(self.config.batch_size)
        if self.config.crop_size is None:
            x = vol.slices()
            return slices_to_volume(np.concatenate([self._detector_maps(x[i: i + bs]) for i in range(0, len(x), bs)]))
        import torch
        from monai.inferers import sliding_window_inference

        crop = int(self.config.crop_size)
        stride = self.config.stride
        with torch.no_grad():
            out = sliding_window_inference(
                torch.from_numpy(np.ascontiguousarray(vol.image, np.float32))[None, None], roi_size=(crop,) * 3,
                sw_batch_size=bs, overlap=1.0 - stride / crop, mode="gaussian",
                predictor=lambda t: torch.from_numpy(self._detector_maps(t.cpu().numpy()))[:, None])
        return out[0, 0].numpy()

    def volume_map(self, vol: PreparedVolume) -> np.ndarray:
        """Post-processed anomaly map of a prepared scan, on the record's RAS grid (for an
        ensemble: the mean or median of the members' maps in units of their own voxel thresholds)."""
        if self.members:
            return COMBINE[self.config.combine](self.member_maps(vol), axis=0).astype(np.float32)
        model_map = postprocess_map(self.model_map(vol), vol.model_brain, erode=self.config.erode,
                                    median=self.config.median)
        return from_model_grid(model_map, vol.geometry, order=1)

    def member_maps(self, vol: PreparedVolume) -> np.ndarray:
        """An ensemble's member maps ``(n_members, *record grid)``, each in units of its own
        healthy-calibrated voxel threshold (what the ensemble combines)."""
        return np.stack([m.volume_map(vol) / m.voxel_threshold for m in self.members])

    def support(self, vol: PreparedVolume) -> np.ndarray:
        """Record-grid voxels where the map is read (the eroded brain, brought back)."""
        from scipy import ndimage as ndi

        er = vol.model_brain
        if self.config.erode > 0:
            er = ndi.binary_erosion(er, iterations=int(self.config.erode), border_value=0)
        return (from_model_grid(er.astype(np.float32), vol.geometry, order=1) > 0.5) & vol.brain

    def segment(self, amap: np.ndarray, support: np.ndarray) -> np.ndarray:
        """Lesion mask: voxels above the calibrated threshold, small components dropped."""
        if self.voxel_threshold is None:
            raise ConfigError("the model has no voxel threshold: it was not calibrated")
        return remove_small_components((amap > self.voxel_threshold) & support, self.config.min_lesion_voxels)

    # -- calibration ----------------------------------------------------------------
    def calibration_maps(self, volumes: Sequence[PreparedVolume], *, progress: bool = False
                         ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Post-processed map and support (record grid) of each held-out scan: what
        :meth:`calibrate` reads, computed once where several calibrations share them."""
        from tqdm.auto import tqdm

        return [(self.volume_map(v), self.support(v))
                for v in tqdm(volumes, desc="calibrate", disable=not progress, unit="scan")]

    def calibrate(self, volumes: Sequence[PreparedVolume], *, exclude: Sequence[np.ndarray | None] | None = None,
                  exclude_voxels: bool | None = None, maps: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
                  progress: bool = False) -> "BrainModel":
        """Voxel threshold at ``pixel_fpr`` of held-out healthy brain voxels and the decision
        volume (largest lesion volume found on those healthy scans). ``exclude`` (record grid,
        per volume) marks lesion voxels of scans that are only partly healthy: the whole axial
        slices that hold them are left out, or with ``exclude_voxels`` only the lesion voxels
        themselves (default: as the config's ``calibration_exclude`` says). ``maps``: the scans'
        :meth:`calibration_maps` when already computed."""
        from medad.detectors.base import threshold_at_fpr

        if exclude_voxels is None:
            exclude_voxels = self.config.calibration_exclude == "voxels"
        if maps is None:
            maps = self.calibration_maps(volumes, progress=progress)
        sups = [healthy_support(sup, None if exclude is None else exclude[i], exclude_voxels)
                for i, (_, sup) in enumerate(maps)]
        left_out = [int(sup.sum() - s.sum()) for (_, sup), s in zip(maps, sups)]
        full = [sup for _, sup in maps]
        maps = [m for m, _ in maps]
        vals = np.concatenate([m[s] for m, s in zip(maps, sups)])
        if not vals.size:
            raise InputError(f"no brain voxel of the {len(volumes)} held-out scan(s) is left to calibrate on"
                             + (" once their lesions are left out (calibration_exclude: voxels leaves out fewer)"
                                if exclude is not None and any(n for n in left_out) else ""))
        self.voxel_threshold = threshold_at_fpr(vals, self.config.pixel_fpr)
        vols_ml = [float(self.segment(m, s).sum()) * _voxel_ml(v) for m, s, v in zip(maps, sups, volumes)]
        self.decision_ml = max(vols_ml)
        self.info["calibration"] = {"n_scans": len(volumes), "n_voxels": int(vals.size),
                                    "pixel_fpr": self.config.pixel_fpr,
                                    "healthy_lesion_ml": [round(x, 3) for x in vols_ml],
                                    "source": "held-out healthy subjects"}
        if exclude is not None:
            cal = self.info["calibration"]
            cal["lesions_left_out_as"] = "voxels" if exclude_voxels else "slices"
            # support voxels of each held-out scan left out for its lesion (the lesion's slices, or its voxels)
            cal["voxels_left_out"] = left_out
            # of how many: the share of the held-out brain voxels that calibrate, and the axial slices
            # (record grid, those with brain) left out whole
            n_brain = int(vals.size) + sum(left_out)
            cal["n_brain_voxels"] = n_brain
            cal["share_calibrating"] = round(int(vals.size) / n_brain, 4) if n_brain else 0.0
            brain_z = [sup.any(axis=(0, 1)) for sup in full]
            cal["n_brain_slices"] = [int(z.sum()) for z in brain_z]
            cal["slices_left_out"] = [int((z & ~s.any(axis=(0, 1))).sum()) for z, s in zip(brain_z, sups)]
        if len(volumes) < MIN_CALIBRATION_SCANS:
            self.info["calibration"]["warning"] = (
                f"the thresholds come from {len(volumes)} held-out healthy scan(s): the decision volume is the "
                f"largest false lesion found on them, so other healthy scans may well be called abnormal; train on "
                f"more healthy scans (with val_fraction {self.config.val_fraction:g}, about "
                f"{math.ceil(MIN_CALIBRATION_SCANS / max(self.config.val_fraction, 1e-3))} in all hold out "
                f"{MIN_CALIBRATION_SCANS})")
        return self

    # -- persistence ----------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        from medad.utils import write_json

        path = Path(path)
        if self.members:
            for i, m in enumerate(self.members):
                m.save(path / MEMBERS_DIR / str(i))
        else:
            self.detector.save(path / DETECTOR_DIR)
        write_json(path / MODEL_FILE, {"config": self.config.to_dict(), "voxel_threshold": self.voxel_threshold,
                                       "decision_ml": self.decision_ml, "info": self.info})
        return path

    @classmethod
    def load(cls, path: str | Path) -> "BrainModel":
        from medad.detectors.base import Detector

        from medad.utils import read_model_json

        path = Path(path)
        d = read_model_json(path, MODEL_FILE, "brain-lesion model folder")
        try:
            cfg = BrainLesionConfig.from_dict(d["config"])
        except (KeyError, TypeError) as e:
            raise ReadError(f"corrupt {MODEL_FILE}: {e}", path / MODEL_FILE) from None
        if cfg.detector == ENSEMBLE:
            members = [cls.load(path / MEMBERS_DIR / str(i)) for i in range(len(cfg.members))]
            return cls(None, cfg, d.get("voxel_threshold"), d.get("decision_ml"), d.get("info") or {}, members)
        return cls(Detector.load(path / DETECTOR_DIR), cfg, d.get("voxel_threshold"), d.get("decision_ml"),
                   d.get("info") or {})


def _voxel_ml(vol: PreparedVolume) -> float:
    return float(np.prod(vol.record.spacing)) / 1000.0


def fit_brain_model(cfg: BrainLesionConfig, train: Sequence[PreparedVolume], val: Sequence[PreparedVolume], *,
                    train_lesions: Sequence[np.ndarray | None] | None = None,
                    val_lesions: Sequence[np.ndarray | None] | None = None, progress: bool = True,
                    fitted: dict[str, BrainModel] | None = None) -> BrainModel:
    """Fit ``cfg.detector`` on healthy slices of ``train`` and calibrate on ``val`` (other
    subjects). Slices holding lesion voxels (record-grid masks in ``*_lesions``) are left out.

    ``fitted``: already fitted models by :func:`config_key` (same ``train``/``val``), reused
    instead of fitted again -- e.g. a benchmark that runs an ensemble beside its members.
    """
    key = config_key(cfg)
    if fitted is not None and key in fitted:
        return fitted[key]
    if cfg.detector == ENSEMBLE:
        members = [fit_brain_model(c, train, val, train_lesions=train_lesions, val_lesions=val_lesions,
                                   progress=progress, fitted=fitted) for c in cfg.member_configs()]
        info = {k: members[0].info[k] for k in ("train_subjects", "val_subjects", "n_train_slices", "n_val_slices",
                                                "item_unit")}
        info.update(members=[m.config.detector for m in members],
                    train_seconds=round(sum(m.info["train_seconds"] for m in members), 2),
                    trained_on="; ".join(dict.fromkeys(m.info["trained_on"] for m in members
                                                       if m.info.get("trained_on"))) or None)
        model = BrainModel(None, cfg, info=info, members=members).calibrate(val, exclude=val_lesions, progress=progress)
    else:
        model = _fit_single(cfg, train, val, train_lesions, val_lesions, progress)
    if fitted is not None:
        fitted[key] = model
    return model


def config_key(cfg: BrainLesionConfig) -> str:
    """What identifies a fitted model for the same data: its config, settings left at their
    defaults omitted (so a setting added later with a default does not change old keys)."""
    import json
    from dataclasses import MISSING, fields

    d = cfg.to_dict()
    for f in fields(cfg):
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else MISSING)
        if default is not MISSING and d.get(f.name) == default:
            d.pop(f.name)
    return json.dumps(d, sort_keys=True, default=str)


def _fit_single(cfg: BrainLesionConfig, train: Sequence[PreparedVolume], val: Sequence[PreparedVolume],
                train_lesions: Sequence[np.ndarray | None] | None, val_lesions: Sequence[np.ndarray | None] | None,
                progress: bool) -> BrainModel:
    from tqdm.auto import tqdm

    from medad import registry
    from medad.utils import Timer, device_description

    dropped: dict[str, int] = {}  # items (slices or crops) left out for lesions, per scan
    x, _, ids = healthy_items(cfg, train, train_lesions, dropped)
    xv, bv, _ = healthy_items(cfg, val, val_lesions, dropped)
    det = registry.create(cfg.detector, **cfg.detector_params)
    if hasattr(det, "train_options"):
        det.train_options = {"progress": progress}
    unit = "slices" if cfg.crop_size is None else f"{cfg.crop_size}-voxel crops"
    with Timer() as t, tqdm(total=1, desc=f"fit {cfg.detector} on {len(x)} {unit}", disable=not progress) as bar:
        det.fit(x, val=xv)
        bar.update(1)
    det.calibrate(xv, fpr=cfg.slice_fpr, pixel_fpr=cfg.pixel_fpr, foreground=bv[:, 0])
    # a detector without a torch device (intensity, asymmetry) is fitted on the CPU even where a GPU is present
    model = BrainModel(det, cfg, info={"train_subjects": sorted(set(ids.tolist())), "n_train_slices": int(len(x)),
                                       "val_subjects": [v.record.subject_id for v in val],
                                       "n_val_slices": int(len(xv)), "item_unit": unit,
                                       "train_seconds": round(t.seconds, 2),
                                       "trained_on": device_description(getattr(det, "device", "cpu"))})
    if dropped:
        model.info["items_left_out_for_lesions"] = dropped
    return model.calibrate(val, exclude=val_lesions, progress=progress)


def _error_text(e: Exception, path: Path) -> str:
    """One line naming the file and the problem (a medad error raised without a file -- e.g. by a
    transform that only sees arrays -- gets the scan's)."""
    if isinstance(e, MedadError):
        return str(e) if e.path is not None else f"{path}: {e.problem}"
    return f"{path}: {type(e).__name__}: {' '.join(str(e).split())[:300]}"


def _failure(s: Scan, e: Exception) -> tuple[str, str]:
    """(console line, summary error) of a scan that failed: the console gets the short reason only;
    the summary also keeps a library's own text (e.g. ITK's) when the error carries one."""
    msg = _error_text(e, s.path)
    detail = getattr(e, "detail", "")
    return msg, (f"{msg} [{detail}]" if detail else msg)


def _report_excluded(excluded: Sequence[tuple[Path, str]], n_show: int = 10) -> None:
    """Say which files the exclude patterns left out, and why (one line each, the first ``n_show``)."""
    for p, why in excluded[:n_show]:
        print(f"left out: {p}: {why}")
    if len(excluded) > n_show:
        print(f"left out: {len(excluded) - n_show} more file(s) that look like masks or labels")


def _prepare_all(scans: Sequence[Scan], prep: BrainPrepConfig, progress: bool, desc: str, *,
                 lesions: list[np.ndarray | None] | None = None) -> tuple[list[PreparedVolume], list[dict[str, Any]]]:
    """Prepared scans (one that cannot be read or preprocessed is skipped and listed); with a
    ``lesions`` list, each prepared scan's lesion mask (or ``None``) is appended to it, read right
    after the scan -- a lesion mask that cannot be used stops training, naming the file (its scan
    cannot be told healthy where it is not)."""
    from tqdm.auto import tqdm

    vols, failed = [], []
    for s in tqdm(scans, desc=desc, disable=not progress, unit="scan"):
        try:
            vol = prepare_scan(s, prep)
        except Exception as e:  # noqa: BLE001 -- one unreadable healthy scan does not stop training
            msg, err = _failure(s, e)
            failed.append({"scan": s.scan_id, "path": str(s.path), "error": err})
            print(f"skipped: {msg}")
            continue
        vols.append(vol)
        if lesions is not None:
            lesions.append(read_lesion_mask(s, vol.record))
    return vols, failed


def _info_path(path: str | Path) -> str:
    """How a path is stored in a model's info: absolute, its folder resolved (no ``..``, links to
    folders followed), the file under its own name (a linked scan keeps the name its id comes from)."""
    path = Path(path)
    return str(path.parent.resolve() / path.name)


def lesion_lookup(cfg: BrainLesionConfig, scans: Sequence[Scan]) -> None:
    """Before any scan is preprocessed (registration takes minutes): a ``lesion_pattern`` that names
    no file for any scan is an error showing the path it names for the first scan; each found mask
    is checked on its scan's grid from the headers (:func:`check_lesion_grids`); the line saying how
    many scans have a mask, and which are taken as wholly healthy, is printed. (A pattern naming
    several files for one scan, or one mask for two scans, was refused by :func:`find_scans`.)"""
    from medad.io.volumes import is_dicom_slice

    pattern = cfg.lesion_pattern
    with_mask = [s for s in scans if s.lesion_path is not None]
    if not with_mask:
        looked = [s for s in scans if s.path.is_file() and not is_dicom_slice(s.path)]
        if not looked:
            raise InputError(f"lesion_pattern {pattern!r} is given but every scan found is a DICOM series, which has "
                             "no lesion mask: give the scans as NIfTI/MGZ files with their masks beside them")
        first = _lookup(looked[0].path, pattern)
        where = "" if first.parent.is_dir() else f"; the folder {first.parent.resolve()} does not exist"
        raise InputError(f"lesion_pattern {pattern!r} names no file for any of the {len(looked)} scan file(s): this "
                         f"path is what it names for the first, {looked[0].path.name}{where}. The pattern is looked up "
                         "from each scan's folder, {stem} standing for the scan's file name without extension (e.g. "
                         "'{stem}_lesion.nii.gz', '../wmh_mask_DLWMLS/{stem}_DLWMLS.nii.gz')", first)
    check_lesion_grids(scans)
    without = [s.scan_id for s in scans if s.lesion_path is None]
    what = "axial slices" if cfg.crop_size is None else f"{cfg.crop_size}-voxel crops"
    line = (f"lesion masks ({pattern}): {len(with_mask)} of {len(scans)} scan(s) have one (the {what} holding lesion "
            f"are left out of training; calibration leaves out the held-out scans' lesion {cfg.calibration_exclude})")
    if without:
        shown = ", ".join(without[:10]) + (f" and {len(without) - 10} more" if len(without) > 10 else "")
        line += f"; {len(without)} without one, taken as wholly healthy: {shown}"
    print(line)


def _lesion_report(scans: Sequence[Scan], vols: Sequence[PreparedVolume],
                   lesions: Sequence[np.ndarray | None]) -> list[dict[str, Any]]:
    """Per prepared scan: its lesion mask (path or ``None``) and lesion volume."""
    by_id = {s.scan_id: s for s in scans}
    rows = []
    for v, les in zip(vols, lesions):
        sid = v.record.subject_id
        path = by_id[sid].lesion_path
        rows.append({"scan": sid, "lesion_mask": None if path is None else _info_path(path),
                     "lesion_ml": round(float(les.sum()) * _voxel_ml(v), 3) if les is not None else 0.0})
    return rows


def _lesion_summary(model: BrainModel) -> str:
    """The training summary's line of what was left out for lesions: the training items, and the
    share of the held-out scans' brain voxels that calibrate the voxel threshold (with the axial
    slices left out whole, in ``slices`` mode)."""
    les, cal = model.info["lesions"], model.info["calibration"]
    n_with = sum(r["lesion_mask"] is not None for r in les["scans"])
    if not n_with:
        return "left out for lesions: nothing (no scan with a lesion mask could be read: see the skipped scans above)"
    items = ", ".join(f"{n} {u}" for u, n in les["items_left_out"].items())
    line = (f"left out for lesions ({les['lesion_ml']:.1f} ml of lesion in {n_with} scan(s)): {items} of the training "
            "and held-out scans")
    if not sum(cal.get("voxels_left_out") or []):
        return line + (f"; the voxel threshold calibrates on all {cal['n_voxels']} brain voxels of the held-out "
                       "scan(s) (no lesion inside their brain masks)")
    share = cal["share_calibrating"]
    if cal["lesions_left_out_as"] == "slices":
        how = (f"{sum(cal['slices_left_out'])} of their {sum(cal['n_brain_slices'])} axial slices with brain are left "
               "out whole (the lesion slices)")
        if share < 0.5:
            how += "; calibration_exclude: voxels would leave out only the lesion voxels"
    else:
        how = f"their {sum(cal['voxels_left_out'])} lesion voxels are left out"
    return line + (f"; the voxel threshold calibrates on {cal['n_voxels']} of the {cal['n_brain_voxels']} brain voxels "
                   f"of the held-out scan(s) ({100 * share:.0f} %): {how}")


def _lesions_left_out(model: BrainModel, report: list[dict[str, Any]], tr: Sequence[int], va: Sequence[int]
                      ) -> dict[str, Any]:
    """What a model trained with ``lesion_pattern`` left out, for its info: per scan its lesion
    mask and volume, the training items (slices or crops; per item unit, an ensemble's members may
    differ) left out for it and, for a held-out scan, the calibration voxels left out; totals."""
    cfg = model.config
    fitted = model.members or [model]
    val_pos = {i: k for k, i in enumerate(va)}
    cal_left = model.info["calibration"].get("voxels_left_out") or []
    scans = []
    for i, r in enumerate(report):
        row = {**r, "role": "calibration" if i in val_pos else "training"}
        if r["lesion_mask"] is not None:
            row["items_left_out"] = {m.info["item_unit"]: int(m.info.get("items_left_out_for_lesions", {})
                                                              .get(r["scan"], 0)) for m in fitted}
            if i in val_pos and val_pos[i] < len(cal_left):
                row["calibration_voxels_left_out"] = cal_left[val_pos[i]]
        scans.append(row)
    units = dict.fromkeys(m.info["item_unit"] for m in fitted)
    return {"pattern": cfg.lesion_pattern, "calibration_exclude": cfg.calibration_exclude, "scans": scans,
            "without_mask": [r["scan"] for r in report if r["lesion_mask"] is None],
            "lesion_ml": round(sum(r["lesion_ml"] for r in report), 3),
            "items_left_out": {u: sum(s.get("items_left_out", {}).get(u, 0) for s in scans) for u in units},
            "calibration_voxels_left_out": int(sum(cal_left))}


def train_brain(healthy: str | Path, out: str | Path, cfg: BrainLesionConfig | None = None, *,
                progress: bool = True) -> Path:
    """Train and calibrate a brain-lesion model on a folder of healthy scans; writes ``out``
    (``detector/`` + ``brain_model.json`` with the preprocessing settings and thresholds). With
    ``cfg.lesion_pattern`` the scans may be partly healthy: each one's lesion mask is read on its
    grid, its lesion slices (or crops) are left out of training, and calibration leaves out its
    lesion as ``cfg.calibration_exclude`` says; ``info["lesions"]`` records what was left out."""
    from medad.evaluation import split_by_subject

    cfg = cfg or BrainLesionConfig()
    excluded: list[tuple[Path, str]] = []
    scans = find_scans(healthy, cfg.image_pattern, cfg.mask_pattern, cfg.exclude_patterns, excluded=excluded,
                       lesion_pattern=cfg.lesion_pattern)
    _report_excluded(excluded)
    if cfg.lesion_pattern:  # every lookup and grid check before the first scan is registered
        lesion_lookup(cfg, scans)
    lesions: list[np.ndarray | None] | None = [] if cfg.lesion_pattern else None
    vols, failed = _prepare_all(scans, cfg.prep, progress, "preprocess healthy", lesions=lesions)
    if len(vols) < 2:
        raise InputError(f"need at least 2 readable healthy scans (one to train, one to calibrate), "
                         f"found {len(vols)}", healthy)
    ids = [v.record.subject_id for v in vols]
    split = split_by_subject(ids, {"train": 1 - cfg.val_fraction, "val": cfg.val_fraction}, seed=cfg.seed)
    tr, va = list(split["train"]), list(split["val"])
    if not va:  # too few subjects for the fraction to round to one: hold out one anyway
        va = [tr.pop()]
    if not tr:
        tr = [va.pop()]
    report = None if lesions is None else _lesion_report(scans, vols, lesions)
    model = fit_brain_model(cfg, [vols[i] for i in tr], [vols[i] for i in va],
                            train_lesions=None if lesions is None else [lesions[i] for i in tr],
                            val_lesions=None if lesions is None else [lesions[i] for i in va], progress=progress)
    if report is not None:
        model.info["lesions"] = _lesions_left_out(model, report, tr, va)
    model.info["skipped"] = [{**f, "path": _info_path(f["path"])} for f in failed]
    model.info["excluded"] = [{"path": _info_path(p), "reason": why} for p, why in excluded]
    path = model.save(out)
    if "lesions" in model.info:
        print(_lesion_summary(model))
    print(f"brain-lesion model ({cfg.detector}) written to {path}: voxel threshold "
          f"{model.voxel_threshold:.4g}, decision above {model.decision_ml:.3g} ml")
    if model.info["calibration"].get("warning"):
        print(f"warning: {model.info['calibration']['warning']}")
    return path


# ----------------------------------------------------------------------------------- scoring


def top_slices(amap: np.ndarray, n: int = 3, min_gap: int = 8) -> list[int]:
    """Up to ``n`` axial slices (record grid) with the largest summed positive map, at least
    ``min_gap`` slices apart so the figure shows different levels of the lesion."""
    s = np.clip(amap, 0, None).sum(axis=(0, 1))
    picked: list[int] = []
    for k in np.argsort(s)[::-1]:
        if all(abs(int(k) - j) >= min_gap for j in picked):
            picked.append(int(k))
        if len(picked) == n:
            break
    return sorted(picked)


def save_scan_overlay(vol: PreparedVolume, amap: np.ndarray, mask: np.ndarray, path: Path, title: str,
                      n: int = 3, *, label: str = "anomaly score", attribution: bool = False,
                      threshold: float | None = None) -> Path:
    """One PNG: the ``n`` most abnormal axial slices side by side (scan, map, blend, mask outline),
    cropped to the brain, with R/L/A/P markers (neurological convention: the patient's right on
    the right), a labelled colour bar (``label``; ``threshold`` drawn on it) and, for
    ``attribution`` maps, a scale from 0."""
    from medad.report.overlay import axial_orientation, save_overlay

    ks = top_slices(amap, n)
    idx = np.argwhere(vol.brain.any(axis=2))
    # cropped to the brain with a margin, so the brain outline (and what lies outside it) shows
    pad = np.maximum(2, ((idx.max(0) - idx.min(0)) * 0.08).astype(int))
    (x0, y0) = np.maximum(idx.min(0) - pad, 0)
    (x1, y1) = np.minimum(idx.max(0) + 1 + pad, vol.brain.shape[:2])

    def disp(a: np.ndarray) -> np.ndarray:  # RAS (x, y) slices -> anterior up, side by side
        return np.concatenate([np.rot90(a[x0:x1, y0:y1, k]) for k in ks], axis=1)

    return save_overlay(disp(vol.record.data), disp(amap), path, mask=disp(mask),
                        title=f"{title} (axial slices {', '.join(map(str, ks))})", label=label,
                        attribution=attribution, threshold=threshold, orientation=axial_orientation("right"),
                        tiles=len(ks), mask_label="lesion mask (voxels above the voxel threshold, small clusters "
                                                  "dropped)",
                        outline=disp(vol.brain), outline_label=f"brain mask the map is computed in "
                                                               f"({_BRAIN_SOURCES.get(vol.brain_source, vol.brain_source)})")


#: how a scan's brain mask was found, in words for the overlay
_BRAIN_SOURCES = {"given": "given with the scan", "foreground": "the scan's foreground: already skull-stripped",
                  "registration": "from MNI152 registration: check that it holds the brain and no scalp",
                  "nonzero": "the scan's non-zero voxels"}


def map_units(model: BrainModel) -> str:
    """Colour-bar label of a brain model's anomaly map, with its voxel threshold."""
    what = ("mean of the members' maps, each in units of its own voxel threshold" if model.members
            else f"{model.config.detector} detector units")
    return f"anomaly score ({what}); cyan line: voxel threshold {model.voxel_threshold:.3g}"


def score_scan(model: BrainModel, vol: PreparedVolume) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Map and mask (record RAS grid) of a prepared scan, and its summary row."""
    amap = model.volume_map(vol)
    sup = model.support(vol)
    mask = model.segment(amap, sup)
    vals = amap[sup] if sup.any() else np.zeros(1, np.float32)
    ml = float(mask.sum()) * _voxel_ml(vol)
    row = {"scan": vol.record.subject_id, "path": str(vol.record.path), "status": "ok",
           "lesion_ml": round(ml, 3), "max_score": float(vals.max()), "mean_score": float(vals.mean()),
           "threshold": float(model.voxel_threshold), "decision_ml": round(float(model.decision_ml or 0.0), 3),
           "decision": "abnormal" if ml > (model.decision_ml or 0.0) else "normal",
           "brain_ml": round(float(vol.brain.sum()) * _voxel_ml(vol), 1), "brain_source": vol.brain_source,
           "error": ""}
    return amap, mask, row


def write_summary(rows: Iterable[dict[str, Any]], path: Path) -> Path:
    from medad.utils import write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return write_text(path, buf.getvalue())


#: what ``score_folder`` writes in a scan's folder (removed first, so no earlier run's file is left)
SCAN_OUTPUTS = ("anomaly_map.nii.gz", "mask.nii.gz", "overlay.png")


def _earlier_paths(out: Path) -> dict[str, str]:
    """Scan id -> scan path of the ``summary.csv`` an earlier run left in ``out`` (empty if none)."""
    try:
        with open(out / "summary.csv", newline="") as f:
            return {r["scan"]: r.get("path") or "" for r in csv.DictReader(f) if r.get("scan")}
    except (OSError, csv.Error, KeyError, UnicodeDecodeError):
        return {}


def score_folder(model_path: str | Path, scans: str | Path, out: str | Path, *, overlays: bool = True,
                 image_pattern: str | None = None, mask_pattern: str | None = None,
                 progress: bool = True) -> list[dict[str, Any]]:
    """Score every scan of a folder with a trained model (see the module docstring); the scan
    and brain-mask globs default to the model's.

    ``out`` is rewritten: ``summary.csv`` lists this run's scans only, and each scored scan's
    folder gets fresh files (an earlier run's map, mask or overlay of the same id is removed
    first, also when this run fails on the scan or writes no overlay). Files left out by the
    exclude patterns (masks, label maps) are printed with the reason, not listed in the summary."""
    from tqdm.auto import tqdm

    from medad.io.volumes import write_like

    model = BrainModel.load(model_path)
    cfg = model.config
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    excluded: list[tuple[Path, str]] = []
    # files named by the model's lesion pattern (lesion masks beside the scans) are not scored
    found = find_scans(scans, image_pattern or cfg.image_pattern, mask_pattern or cfg.mask_pattern,
                       cfg.exclude_patterns, excluded=excluded, lesion_pattern=cfg.lesion_pattern, pair_lesions=False)
    _report_excluded(excluded)
    earlier = _earlier_paths(out)
    rows = []
    for s in tqdm(found, desc="scoring", disable=not progress, unit="scan"):
        d = out / s.scan_id
        before = earlier.get(s.scan_id)
        if before and Path(before).resolve() != s.path.resolve() and any((d / f).exists() for f in SCAN_OUTPUTS):
            print(f"note: {d} held the results of {before} from an earlier run; replaced by {s.path}")
        for f in SCAN_OUTPUTS:
            (d / f).unlink(missing_ok=True)
        try:
            vol = prepare_scan(s, cfg.prep)
            if vol.record.meta.get("nonfinite_voxels"):
                print(f"note: {s.path.name}: {vol.record.meta['nonfinite_voxels']} NaN or infinite voxels read as 0 "
                      "(background)")
            amap, mask, row = score_scan(model, vol)
            write_like(amap.astype(np.float32), vol.record, d / "anomaly_map.nii.gz")
            write_like(mask.astype(np.uint8), vol.record, d / "mask.nii.gz")
            if overlays:
                save_scan_overlay(vol, amap, mask, d / "overlay.png",
                                  f"{s.scan_id}: {row['decision']}, lesion {row['lesion_ml']:.1f} ml",
                                  label=map_units(model), threshold=model.voxel_threshold)
        except Exception as e:  # noqa: BLE001 -- whatever goes wrong with one scan, the rest are still scored
            # a bad scan is reported (one line naming it), the rest of the folder is still scored
            msg, err = _failure(s, e)
            row = {k: "" for k in SUMMARY_FIELDS}
            row.update(scan=s.scan_id, path=str(s.path), status="error", error=err)
            print(f"skipped: {msg}")
        rows.append(row)
    write_summary(rows, out / "summary.csv")
    n_bad = sum(r["status"] != "ok" for r in rows)
    left = f", {len(excluded)} file(s) left out as masks/labels" if excluded else ""
    print(f"scored {len(rows) - n_bad} scan(s), {n_bad} skipped{left}; summary: {out / 'summary.csv'}")
    return rows


# ----------------------------------------------------------------------------------- explain


def explain_scan(model_path: str | Path, scan: str | Path, out: str | Path, *, methods: Sequence[str] | None = None,
                 top_k: int = 3, case_id: str | None = None, mask_pattern: str | None = None, **explain_kw: Any):
    """Explain a brain-lesion model's decision on one scan, through the model's own preprocessing
    (as ``score_folder`` does): the anomaly scores of the ``top_k`` most abnormal items -- axial
    slices for a slice model, cubic crops for a 3D crop model -- are explained; the attribution
    maps come back as NIfTI on the scan's own grid, with an overlay PNG each and a ``report.html``.
    ``methods`` default: :func:`medad.report.cases.default_methods` of the detector; ``mask_pattern``:
    glob of the scan's brain mask in its folder (default: the model's, as for ``score_folder``)."""
    from medad.explain import canonical_method, explain
    from medad.io.volumes import write_like
    from medad.report.cases import default_methods, map_label
    from medad.report.html import CaseReport, Figure, write_case, write_case_report

    model = BrainModel.load(model_path)
    if model.members:
        raise ConfigError(f"{model_path} is an ensemble: explain one of its members (folders under {MEMBERS_DIR}/)")
    p = Path(scan)
    if not p.is_file() and not p.is_dir():
        raise ReadError("scan not found", p)
    cid = case_id or p.name.split(".")[0]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    # the scan's own brain mask is found as `medad brain score` finds it (else: registration)
    found = find_scans(p.parent, p.name, mask_pattern or cfg.mask_pattern) if p.is_file() else [Scan(cid, p)]
    # the file itself, not a same-named file in a subfolder nor a DICOM series beside it
    vol = prepare_scan(next((s for s in found if s.path == p), found[0]), cfg.prep)
    amap, mask, row = score_scan(model, vol)
    write_like(amap.astype(np.float32), vol.record, out / "anomaly_map.nii.gz")
    write_like(mask.astype(np.uint8), vol.record, out / "mask.nii.gz")
    save_scan_overlay(vol, amap, mask, out / "anomaly_map.png", f"{cid}: {row['decision']}, lesion {row['lesion_ml']:.1f} ml",
                      label=map_units(model), threshold=model.voxel_threshold)
    figs = [Figure(png=str(out / "anomaly_map.png"), title="anomaly map and lesion mask (most abnormal slices)",
                   kind="anomaly_map")]
    items = _explained_items(model, vol, top_k)
    methods = [canonical_method(m) for m in (methods or default_methods(model.detector))]
    notes = {}
    for m in methods:
        maps = explain(model.detector, items.x, m, spatial_dims=items.spatial_dims, **explain_kw)
        notes[f"{m} computed on"] = items.note
        back = vol.to_record_grid(items.to_model_grid(maps))
        write_like(back.astype(np.float32), vol.record, out / f"{m}.nii.gz")
        # only slices the explained items reach (the map is 0 elsewhere)
        n = max(1, sum(np.clip(back[..., k], 0, None).sum() > 0 for k in top_slices(back, items.n_slices)))
        save_scan_overlay(vol, back, mask, out / f"{m}.png", f"{cid}: {m}", n=n, attribution=True,
                          label=map_label(m, model.detector))
        figs.append(Figure(png=str(out / f"{m}.png"), title=f"{m} on the most abnormal {items.unit}; 3D map in {m}.nii.gz",
                           kind=m))
    case = CaseReport(case_id=cid, decision=row["decision"], score=row["max_score"], threshold=model.voxel_threshold,
                      method=", ".join(methods), figures=figs,
                      details={"lesion volume (ml)": row["lesion_ml"], "decision rule":
                               f"abnormal when the lesion volume exceeds {model.decision_ml:.3g} ml",
                               "brain mask": vol.brain_source, **notes})
    case.model = f"brain-lesion model ({model.config.detector})"
    case.source = p.name
    write_case(out, case)
    write_case_report(out / "report.html", case)
    return case


@dataclass
class _ExplainedItems:
    """What ``explain_scan`` explains: the detector inputs ``x``, and how their maps go back to
    the model grid."""

    x: np.ndarray
    spatial_dims: int
    to_model_grid: Any  # (maps of x) -> model-grid volume
    note: str
    unit: str
    n_slices: int


def _explained_items(model: BrainModel, vol: PreparedVolume, top_k: int) -> _ExplainedItems:
    """The ``top_k`` highest-scoring detector items of a prepared scan: axial slices (slice
    models) or cubic crops of the crop grid the model was trained on (3D crop models; crops with
    less than ``min_brain_fraction`` brain are left out, like in training)."""
    k = max(1, int(top_k))
    if model.config.crop_size is None:
        xs = vol.slices()
        top = np.argsort(-model.detector.score(xs).score)[:k]

        def slices_back(maps: np.ndarray) -> np.ndarray:
            full = np.zeros(xs.shape, np.float32)[:, 0]
            full[top] = maps
            return slices_to_volume(full)

        return _ExplainedItems(xs[top], 2, slices_back, f"the {len(top)} highest-scoring axial slices (others left at 0)",
                               "slices", 1)
    cfg = model.config
    crop = int(cfg.crop_size)
    img, brain = _padded(vol.image, crop), _padded(vol.model_brain, crop)
    boxes = [b for b in _crop_boxes(img.shape, crop, cfg.stride)
             if brain[b].mean() >= cfg.min_brain_fraction]
    if not boxes:
        raise InputError(f"no {crop}-voxel crop of the scan holds enough brain to explain")
    crops = np.stack([img[b] for b in boxes])[:, None].astype(np.float32)
    scores = model.detector.score(crops).score
    top = np.argsort(-scores)[:k]

    def crops_back(maps: np.ndarray) -> np.ndarray:
        # Overlapping explained crops (neighbours around one lesion) are averaged where they meet;
        # voxels outside every explained crop stay 0.
        total, count = np.zeros(img.shape, np.float32), np.zeros(img.shape, np.float32)
        for i, m in zip(top, maps):
            total[boxes[i]] += m
            count[boxes[i]] += 1
        avg = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
        return avg[tuple(slice(0, n) for n in vol.image.shape)]

    return _ExplainedItems(crops[top], 3, crops_back,
                           f"the {len(top)} highest-scoring {crop}-voxel crops (scores "
                           f"{', '.join(f'{s:.3g}' for s in scores[top])}; averaged where they overlap, "
                           "0 outside them)", f"{crop}-voxel crops", 3)


def _crop_boxes(shape: tuple[int, ...], crop: int, stride: int) -> list[tuple[slice, ...]]:
    """Every cubic crop of side ``crop`` on the grid of starts every ``stride`` voxels (training and explaining)."""
    from medad.transforms.image import patch_grid

    return [tuple(slice(a, a + crop) for a in c) for c in patch_grid(shape, (crop,) * len(shape), (stride,) * len(shape))]
