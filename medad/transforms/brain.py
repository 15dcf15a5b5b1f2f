"""Brain MRI preprocessing with a way back to the scan's own grid.

The steps, in order (:func:`preprocess_volume`)::

    read_volume (RAS voxel order)  ->  brain mask (given, or MNI152 registration)
      ->  N4 bias-field correction (optional)  ->  intensity normalisation inside the brain
      ->  one resampling onto a "model grid" (common spacing, fixed in-plane size, centred on
          the brain)  ->  2D axial slices ``(Z, 1, size, size)``

Every step keeps the way back: the model grid is described by a :class:`SliceGeometry` (a 4x4
matrix from model voxels to the record's RAS voxels plus both shapes), so a map computed on the
slices goes back with :func:`from_model_grid` to the RAS grid and then with
:func:`medad.io.volumes.write_like` onto the input file's exact grid and affine.

Maps are post-processed the same way for every detector (Baur/Behrendt protocol):
:func:`postprocess_map` (eroded brain mask, median filter) and :func:`remove_small_components`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from medad.config import dataclass_from_dict
from medad.errors import ConfigError, InputError
from medad.io.records import VolumeRecord

__all__ = [
    "BrainPrepConfig", "SliceGeometry", "PreparedVolume", "preprocess_volume", "register_brain_mask",
    "crude_head_masks", "brain_mask_for", "require_3d", "registration_error", "registration_misfit", "registration_grid",
    "n4_correct", "normalize_intensity", "robust_stats", "robust_zscore", "make_geometry", "to_model_grid",
    "from_model_grid", "volume_to_slices", "slices_to_volume", "postprocess_map",
    "remove_small_components", "mirror_asymmetry",
]


# ----------------------------------------------------------------------------------- config




@dataclass
class BrainPrepConfig:
    """Preprocessing settings (saved with a trained model so scoring repeats them exactly).

    Attributes:
        spacing: in-plane pixel size of the slices in mm (the model grid is isotropic in-plane).
        slice_spacing: distance between axial slices in mm.
        size: slices are ``size x size`` pixels (96-128 recommended), centred on the brain.
        skull_strip: ``"auto"`` (use the scan's brain mask when given; else, for a scan that is
            already skull-stripped -- a constant background and a foreground of brain size, see
            :func:`skull_stripped_foreground` -- its foreground; else register to MNI152),
            ``"mask"`` (a mask is required), ``"register"`` (always register) or
            ``"none"`` (the whole non-zero volume counts as brain).
        n4: run N4 bias-field correction (for raw scanner intensities; not for data that is
            already normalised such as BraTS).
        n4_shrink: N4 works on an image shrunk by this factor (speed).
        n4_iterations: N4 iterations per fitting level.
        normalize: ``"zscore"`` (median / IQR inside the brain), ``"percentile"`` (p1 -> 0,
            p99 -> 1 inside the brain) or ``"none"``.
        background: value given to voxels outside the brain after normalisation.
        min_brain_pixels: slices with fewer brain pixels are left out of training sets.
        registration_iterations: optimiser iterations per resolution level.
    """

    spacing: float = 1.5
    slice_spacing: float = 1.5
    size: int = 128
    skull_strip: str = "auto"
    n4: bool = False
    n4_shrink: int = 4
    n4_iterations: int = 20
    normalize: str = "zscore"
    background: float = 0.0
    min_brain_pixels: int = 200
    registration_iterations: int = 100

    def __post_init__(self) -> None:
        if self.skull_strip not in ("auto", "mask", "register", "none"):
            raise ConfigError(f"skull_strip must be auto, mask, register or none, got {self.skull_strip!r}")
        if self.normalize not in ("zscore", "percentile", "none"):
            raise ConfigError(f"normalize must be zscore, percentile or none, got {self.normalize!r}")
        if not (16 <= int(self.size) <= 512):
            raise ConfigError(f"size must be between 16 and 512 pixels, got {self.size}")
        if self.spacing <= 0 or self.slice_spacing <= 0:
            raise ConfigError("spacing and slice_spacing must be positive")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "BrainPrepConfig":
        return dataclass_from_dict(cls, d, "preprocessing")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------- geometry


@dataclass
class SliceGeometry:
    """How the model grid sits in a record's RAS voxel grid.

    Attributes:
        record_shape: shape of the record's RAS grid.
        model_shape: shape ``(size, size, n_slices)`` of the model grid.
        matrix: 4x4 map from model voxel indices to record voxel indices (homogeneous).
    """

    record_shape: tuple[int, int, int]
    model_shape: tuple[int, int, int]
    matrix: np.ndarray = field(repr=False)

    def model_affine(self, record_affine: np.ndarray) -> np.ndarray:
        """Voxel-to-world affine of the model grid."""
        return np.asarray(record_affine, dtype=np.float64) @ self.matrix

    def to_dict(self) -> dict[str, Any]:
        return {"record_shape": list(self.record_shape), "model_shape": list(self.model_shape),
                "matrix": np.asarray(self.matrix).tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SliceGeometry":
        return cls(tuple(d["record_shape"]), tuple(d["model_shape"]), np.asarray(d["matrix"], dtype=np.float64))


def _voxel_sizes(affine: np.ndarray) -> np.ndarray:
    return np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))


def make_geometry(record_shape: tuple[int, ...], record_affine: np.ndarray, brain_mask: np.ndarray,
                  *, spacing: float, slice_spacing: float, size: int, margin_mm: float = 2.0) -> SliceGeometry:
    """A model grid of ``size x size`` pixels at ``spacing`` mm, centred in-plane on the brain's
    bounding box, with axial slices every ``slice_spacing`` mm covering the brain (plus
    ``margin_mm``). Brains larger than the field of view are cropped at the edges."""
    m = np.asarray(brain_mask, dtype=bool)
    if m.shape != tuple(record_shape):
        raise InputError(f"brain mask shape {m.shape} differs from the volume's {tuple(record_shape)}")
    if not m.any():
        raise InputError("the brain mask is empty")
    vox = _voxel_sizes(record_affine)
    idx = np.argwhere(m)
    lo, hi = idx.min(0).astype(np.float64), idx.max(0).astype(np.float64)
    centre = (lo + hi) / 2.0
    step = np.array([spacing, spacing, slice_spacing], dtype=np.float64) / vox  # record voxels per model voxel
    z_extent_mm = (hi[2] - lo[2]) * vox[2] + 2 * margin_mm
    nz = int(np.floor(z_extent_mm / slice_spacing)) + 1
    shape = (int(size), int(size), max(nz, 1))
    start = centre - step * (np.array(shape, dtype=np.float64) - 1) / 2.0
    # Whole-voxel offsets when the steps are whole numbers keep resampling exact (no blur).
    start = np.where(np.isclose(step, np.round(step)), np.round(start), start)
    mat = np.eye(4)
    mat[:3, :3] = np.diag(step)
    mat[:3, 3] = start
    return SliceGeometry(tuple(int(s) for s in record_shape), shape, mat)


def _affine_resample(data: np.ndarray, matrix: np.ndarray, out_shape: tuple[int, ...], order: int,
                     cval: float = 0.0) -> np.ndarray:
    from scipy import ndimage as ndi

    src = np.asarray(data, dtype=np.float32)
    return ndi.affine_transform(src, matrix[:3, :3], offset=matrix[:3, 3], output_shape=tuple(out_shape),
                                order=order, mode="constant", cval=cval, prefilter=False)


def to_model_grid(volume: np.ndarray, geometry: SliceGeometry, *, order: int = 1, cval: float = 0.0) -> np.ndarray:
    """Resample an array on the record's RAS grid onto the model grid (linear by default)."""
    v = np.asarray(volume)
    if v.shape != tuple(geometry.record_shape):
        raise InputError(f"volume shape {v.shape} differs from the geometry's record shape {geometry.record_shape}")
    return _affine_resample(v, geometry.matrix, geometry.model_shape, order, cval)


def from_model_grid(model_volume: np.ndarray, geometry: SliceGeometry, *, order: int = 1,
                    cval: float = 0.0) -> np.ndarray:
    """Bring an array on the model grid back to the record's RAS grid (the inverse of
    :func:`to_model_grid`; exact where the model grid is a whole-voxel crop of the record)."""
    v = np.asarray(model_volume)
    if v.shape != tuple(geometry.model_shape):
        raise InputError(f"map shape {v.shape} differs from the model grid {geometry.model_shape}")
    return _affine_resample(v, np.linalg.inv(geometry.matrix), geometry.record_shape, order, cval)


def volume_to_slices(model_volume: np.ndarray) -> np.ndarray:
    """``(X, Y, Z)`` model-grid volume -> ``(Z, 1, X, Y)`` axial slices (detector input)."""
    v = np.asarray(model_volume)
    if v.ndim != 3:
        raise InputError(f"expected a 3D volume, got shape {v.shape}")
    return np.ascontiguousarray(np.moveaxis(v, 2, 0)[:, None])


def slices_to_volume(slices: np.ndarray) -> np.ndarray:
    """``(Z, X, Y)`` or ``(Z, 1, X, Y)`` slices (a detector's maps) -> ``(X, Y, Z)`` volume."""
    s = np.asarray(slices)
    if s.ndim == 4:
        if s.shape[1] != 1:
            raise InputError(f"expected one channel per slice, got shape {s.shape}")
        s = s[:, 0]
    if s.ndim != 3:
        raise InputError(f"expected (Z, X, Y) slices, got shape {s.shape}")
    return np.ascontiguousarray(np.moveaxis(s, 0, 2))


# ----------------------------------------------------------------------------------- SimpleITK


def _to_sitk(data: np.ndarray, affine: np.ndarray):
    """NumPy ``(i, j, k)`` array + RAS affine -> SimpleITK image (ITK world space is LPS)."""
    import SimpleITK as sitk

    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=np.float64)
    vox = _voxel_sizes(lps)
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(data, dtype=np.float32).transpose(2, 1, 0)))
    img.SetSpacing(tuple(float(v) for v in vox))
    img.SetOrigin(tuple(float(v) for v in lps[:3, 3]))
    img.SetDirection(tuple(float(v) for v in (lps[:3, :3] / vox).ravel()))
    return img


def _from_sitk(img) -> np.ndarray:
    import SimpleITK as sitk

    return np.ascontiguousarray(sitk.GetArrayFromImage(img).transpose(2, 1, 0))


_TEMPLATE_CACHE: dict[int, tuple] = {}


def _mni_template(resolution: int = 2):
    """nilearn's MNI152 T1 template and brain mask (shipped with nilearn, no download)."""
    if resolution not in _TEMPLATE_CACHE:
        from nilearn import datasets

        t = datasets.load_mni152_template(resolution=resolution)
        m = datasets.load_mni152_brain_mask(resolution=resolution)
        _TEMPLATE_CACHE[resolution] = (np.asarray(t.dataobj, dtype=np.float32), np.asarray(t.affine),
                                       np.asarray(m.dataobj, dtype=np.float32), np.asarray(m.affine))
    return _TEMPLATE_CACHE[resolution]


def background_value(data: np.ndarray) -> float | None:
    """The background of a scan whose 8 corner voxels hold one and the same value (the fill of a
    skull-stripped or z-scored scan: 0, or e.g. -3.6 for BraTS), else ``None``."""
    x = np.asarray(data)
    if x.ndim != 3:
        return None
    c = x[np.ix_((0, -1), (0, -1), (0, -1))].ravel()
    return float(c[0]) if np.all(c == c[0]) else None


#: largest foreground (ml) still taken for a skull-stripped brain by ``skull_strip="auto"`` (adult
#: brains are ~1000-1700 ml; a head with scalp and skull is well above 2500 ml)
MAX_STRIPPED_BRAIN_ML = 2200.0


def skull_stripped_foreground(data: np.ndarray, affine: np.ndarray,
                              max_ml: float = MAX_STRIPPED_BRAIN_ML) -> np.ndarray | None:
    """The brain of a scan that is already skull-stripped: the voxels that differ from a constant
    background (:func:`background_value`), holes filled, when that foreground is no larger than
    ``max_ml``; ``None`` for a scan that still has its head around the brain (or no constant
    background), which needs registration instead."""
    from scipy import ndimage as ndi

    bg = background_value(data)
    if bg is None:
        return None
    fg = ndi.binary_fill_holes(np.asarray(data) != bg)
    # a whole brain has background beyond it on every side; a foreground reaching both ends of an
    # axis is a slab cut from a head (e.g. 15 slices of a raw scan, all head, of brain size)
    if any(fg.take(0, axis=a).any() and fg.take(-1, axis=a).any() for a in range(3)):
        return None
    ml = float(fg.sum()) * float(np.prod(_voxel_sizes(affine))) / 1000.0
    return fg if 0 < ml <= max_ml else None


def crude_head_masks(data: np.ndarray, affine: np.ndarray, *, erode_mm: float = 10.0,
                     height_mm: float = 125.0) -> tuple[np.ndarray, np.ndarray]:
    """Rough masks used to steer registration: the head (largest bright component, holes filled)
    and an "inner head" (head eroded by ``erode_mm`` -- scalp and skull -- and cut
    ``height_mm`` below the top of the head, which drops the neck)."""
    from scipy import ndimage as ndi

    x = np.asarray(data, dtype=np.float32)
    bg = background_value(x)
    if bg is not None:  # intensities above the background (e.g. z-scored scans, background < 0)
        x = x - np.float32(bg)
    pos = x[x > 0]
    if pos.size == 0:
        what = f"every voxel is {float(x.flat[0]) + float(bg or 0):g}" if x.min() == x.max() else \
            "no intensities above the background"
        raise InputError(f"the scan is empty ({what}); there is no head to find the brain in")
    head = x > 0.1 * float(np.percentile(pos, 99))
    lab, n = ndi.label(head)
    if n > 1:
        head = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
    head = ndi.binary_fill_holes(ndi.binary_closing(head, iterations=2))
    # fill slice by slice too: the skull base leaves holes open to the neck in 3D
    head = np.stack([ndi.binary_fill_holes(head[:, :, k]) for k in range(head.shape[2])], axis=2)
    vox = _voxel_sizes(affine)
    dist = ndi.distance_transform_edt(head, sampling=vox)
    inner = dist >= erode_mm
    zs = np.flatnonzero(head.any(axis=(0, 1)))
    top = zs.max() if zs.size else head.shape[2] - 1
    inner[:, :, : max(0, int(top - height_mm / vox[2]))] = False
    if not inner.any():
        inner = head
    return head, inner


def registration_error(shape: tuple[int, ...], detail: str = "") -> InputError:
    """The error of a failed MNI152 registration: a short reason a person can act on; the library's
    own text (ITK's, long and full of source paths) is kept apart in ``.detail``."""
    dims = " x ".join(str(int(n)) for n in shape)
    e = InputError(f"registration to the MNI152 template failed (the image may not be a head scan, or is "
                   f"too small: {dims} voxels, {int(shape[2])} axial slices)")
    e.detail = detail
    return e


def require_3d(record: VolumeRecord) -> None:
    """Refuse a single 2D slice (a 2D file, or a 3D file one voxel thick): brain preprocessing
    (skull stripping, 3D resampling, lesion volumes) needs a volume."""
    shape = tuple(int(n) for n in (record.original_shape or record.shape))
    plane = [n for n in shape if n != 1]
    if len(plane) < 3:
        raise InputError(f"a single 2D slice ({' x '.join(map(str, plane or shape))}); brain scoring needs a "
                         "3D volume", record.path)


#: registration runs on a grid no finer than this (mm): the template is 2 mm, and at 1 mm the
#: all-voxel metric took ~3 minutes per scan (chris_t1, 0.9 mm) against ~15 s at 2 mm
REGISTRATION_SPACING = 2.0


def registration_grid(data: np.ndarray, affine: np.ndarray,
                      spacing: float = REGISTRATION_SPACING) -> tuple[np.ndarray, np.ndarray]:
    """The scan on a grid of about ``spacing`` mm along every axis finer than ``0.75 * spacing``
    (smoothed, then linearly resampled; the grid covers the same field of view), with its affine;
    the scan itself when no axis is that fine."""
    from scipy import ndimage as ndi

    vox = _voxel_sizes(affine)
    step = np.where(vox < 0.75 * spacing, spacing / vox, 1.0)  # old voxels per new voxel
    if np.all(step == 1.0):
        return data, affine
    x = np.asarray(data, dtype=np.float32)
    x = ndi.gaussian_filter(x, sigma=np.where(step > 1.0, 0.4 * step, 0.0))
    shape = tuple(max(1, int(round(n / st))) for n, st in zip(x.shape, step))
    offset = (step - 1.0) / 2.0  # new voxel centres at the centres of the blocks they cover
    small = ndi.affine_transform(x, step, offset=offset, output_shape=shape, order=1, mode="nearest")
    m = np.eye(4)
    m[:3, :3] = np.diag(step)
    m[:3, 3] = offset
    return small, np.asarray(affine, dtype=np.float64) @ m


#: largest share of a registration brain mask allowed outside the head (:func:`registration_misfit`);
#: measured on the 23 NiChart FLAIR scans: 0 % in 19, at most 0.7 % in the others, but 3.3 % in the one
#: whose mask went past the top of the head into scalp and air (Subj7)
MAX_MASK_OUTSIDE_HEAD = 0.02


def registration_misfit(mask: np.ndarray, data: np.ndarray, affine: np.ndarray,
                        max_outside: float = MAX_MASK_OUTSIDE_HEAD) -> str | None:
    """Why a registration brain mask cannot be right (``None`` when it may be): more than
    ``max_outside`` of it lies outside the head (:func:`crude_head_masks`), i.e. the template was
    stretched past the scalp -- a failed fit, a partial head or not a head scan."""
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return "the carried-back brain mask is empty"
    head, _ = crude_head_masks(data, affine)
    out = float((m & ~head).sum()) / float(m.sum())
    if out > max_outside:
        return (f"{100 * out:.1f} % of the brain mask carried back from the MNI152 template lies outside the head "
                f"(at most {100 * max_outside:g} % in a good fit): the registration did not fit this scan (a partial "
                "head, an unusual field of view, or not a head scan); give a brain mask with the scan instead")
    return None


def register_brain_mask(data: np.ndarray, affine: np.ndarray, *, iterations: int = 100,
                        sampling: float = 1.0, seed: int = 0, pitches: tuple[float, ...] = (0.0, 0.2, -0.2),
                        return_transform: bool = False):
    """Skull-strip by registration: align nilearn's MNI152 template to the scan (rigid, then
    affine; Mattes mutual information, so any contrast works) and carry the template's brain
    mask back onto the scan's grid.

    The template is brain only while the scan still has scalp, skull and neck, so the metric is
    restricted to a rough "inner head" region of the scan (:func:`crude_head_masks`) and the
    registration starts from that region's centre; otherwise the template stretches to the
    whole head.

    Args:
        data: the scan on its RAS grid.
        affine: its RAS affine.
        iterations: optimiser iterations per resolution level.
        sampling: share of the inner-head voxels the metric samples. 1.0 (the default) takes them
            all: deterministic and, measured on the 23 NiChart FLAIR scans, clearly tighter than
            the random 10 % used before (masks of median 1735 ml with scalp in them -- on average
            4.3 % of the head's outer 6 mm, over 5 % in 8 scans -- and differing by Dice 0.86-0.97
            between seeds; all voxels with the three starts below: median 1467 ml, 1.3 %, 1 scan
            over 5 %; about 3x slower: ~13 s per 2 mm scan on one core).
        seed: seed of the metric's random sampling when ``sampling < 1`` (reproducible masks).
        pitches: forward/back head tilts (radians) the rigid stage starts from; the start whose
            result fits best (Mattes mutual information at the finer level) is kept.

    Returns:
        bool brain mask on the scan's grid (and the SimpleITK transform when asked).
    """
    import SimpleITK as sitk

    shape = np.shape(data)
    out_affine = affine  # the mask comes back on the scan's own grid
    data, affine = registration_grid(data, affine)
    _, inner = crude_head_masks(data, affine)
    if not inner.any():  # e.g. a scan a few slices thick: the head's closing erodes it away
        raise registration_error(shape, "no head found to register to")
    t_data, t_aff, m_data, m_aff = _mni_template(2)
    fixed = sitk.Cast(_to_sitk(data, affine), sitk.sitkFloat32)
    fixed_mask = sitk.Cast(_to_sitk(inner.astype(np.uint8), affine), sitk.sitkUInt8)
    moving = _to_sitk(t_data, t_aff)
    # start with the template brain's centre on the inner head's centre
    c_fix = affine @ np.r_[np.argwhere(inner).mean(0), 1.0]
    c_mov = m_aff @ np.r_[np.argwhere(m_data > 0.5).mean(0), 1.0]
    lps = np.array([-1.0, -1.0, 1.0])
    init = sitk.Euler3DTransform()
    init.SetCenter(tuple(float(v) for v in c_fix[:3] * lps))
    init.SetTranslation(tuple(float(v) for v in (c_mov[:3] - c_fix[:3]) * lps))

    def method(transform, shrink=(4, 2), smooth=(4.0, 2.0)):
        reg = sitk.ImageRegistrationMethod()
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
        reg.SetMetricFixedMask(fixed_mask)
        if sampling >= 1.0:
            reg.SetMetricSamplingStrategy(reg.NONE)  # every voxel of the inner head
        else:
            reg.SetMetricSamplingStrategy(reg.RANDOM)
            # SimpleITK reads seed 0 as "seed from the wall clock" (sitkWallClock): shift by one
            reg.SetMetricSamplingPercentage(float(sampling), int(seed) + 1)
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3,
                                                     numberOfIterations=int(iterations),
                                                     gradientMagnitudeTolerance=1e-6)
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetShrinkFactorsPerLevel(list(shrink))
        reg.SetSmoothingSigmasPerLevel(list(smooth))
        reg.SetSmoothingSigmasAreSpecifiedInPhysicalUnits(True)
        reg.SetInitialTransform(transform, inPlace=True)
        return reg

    def run(transform):
        method(transform).Execute(fixed, moving)
        return transform

    def fit(pitch):
        rigid = sitk.Euler3DTransform(init)
        rigid.SetRotation(float(pitch), 0.0, 0.0)
        run(rigid)
        aff = sitk.AffineTransform(3)
        aff.SetCenter(rigid.GetCenter())
        aff.SetMatrix(rigid.GetMatrix())
        aff.SetTranslation(rigid.GetTranslation())
        run(aff)
        # how well it fits, on one common footing for every start (the finer level, all voxels)
        score = float(method(sitk.AffineTransform(aff), (2,), (2.0,)).MetricEvaluate(fixed, moving))
        return score, aff

    # ITK's multi-threaded filters sum in a varying order: with one thread the same scan gives
    # the same mask on every run (measured: up to ~270 voxels differed between runs otherwise)
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        # heads are tilted forward or back by varying amounts and a single start from level can
        # end in a wrong tilt (measured on NiChart FLAIR): start tilted too, keep the best fit
        full = min((fit(p) for p in pitches), key=lambda r: r[0])[1]
    except RuntimeError as e:  # ITK reports failures as RuntimeError with a long dump
        from medad.io.volumes import _itk_message

        raise registration_error(shape, _itk_message(e)) from None
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    ref = _to_sitk(np.zeros(shape, np.float32), out_affine)
    mask = _from_sitk(sitk.Resample(_to_sitk(m_data, m_aff), ref, full, sitk.sitkLinear, 0.0)) > 0.5
    return (mask, full) if return_transform else mask


def n4_correct(data: np.ndarray, affine: np.ndarray, mask: np.ndarray | None = None, *,
               shrink: int = 4, iterations: int = 20) -> np.ndarray:
    """N4 bias-field correction (SimpleITK), fitted on a shrunk image for speed and applied at
    full resolution. Intensities must be positive; they are shifted when they are not."""
    import SimpleITK as sitk

    x = np.asarray(data, dtype=np.float32)
    shift = 0.0
    if x.min() <= 0:
        shift = 1.0 - float(x.min())
    img = _to_sitk(x + shift, affine)
    msk = _to_sitk((np.ones(x.shape) if mask is None else np.asarray(mask)).astype(np.uint8), affine)
    msk = sitk.Cast(msk, sitk.sitkUInt8)
    small_img = sitk.Shrink(img, [int(shrink)] * 3) if shrink > 1 else img
    small_msk = sitk.Shrink(msk, [int(shrink)] * 3) if shrink > 1 else msk
    f = sitk.N4BiasFieldCorrectionImageFilter()
    f.SetMaximumNumberOfIterations([int(iterations)] * 3)
    f.Execute(small_img, small_msk)
    log_field = f.GetLogBiasFieldAsImage(img)
    out = _from_sitk(img) / np.exp(_from_sitk(log_field))
    return (out - shift).astype(np.float32)


# ----------------------------------------------------------------------------------- intensity


def robust_stats(values: np.ndarray) -> tuple[float, float]:
    """``(median, sigma)`` with ``sigma = IQR / 1.349`` (the standard deviation for Gaussian
    data; the std, or 1, when the IQR is zero)."""
    vals = np.asarray(values).ravel()
    if vals.size == 0:
        raise InputError("cannot normalise: the foreground is empty")
    q25, med, q75 = np.percentile(vals, [25, 50, 75])
    sigma = (q75 - q25) / 1.349
    if not sigma > 0:
        sigma = float(vals.std()) or 1.0
    return float(med), float(sigma)


def robust_zscore(x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """``(x - median) / sigma`` computed inside ``mask`` (:func:`robust_stats`; robust to
    lesions: a tumour of 10 % of the brain barely moves median and IQR)."""
    x = np.asarray(x, dtype=np.float32)
    med, sigma = robust_stats(x[np.asarray(mask, dtype=bool)] if mask is not None else x)
    return ((x - med) / sigma).astype(np.float32)


def normalize_intensity(data: np.ndarray, mask: np.ndarray, method: str = "zscore",
                        background: float = 0.0) -> np.ndarray:
    """Normalise intensities using brain voxels only; voxels outside the brain get ``background``."""
    m = np.asarray(mask, dtype=bool)
    x = np.asarray(data, dtype=np.float32)
    if method == "zscore":
        out = robust_zscore(x, m)
    elif method == "percentile":
        lo, hi = np.percentile(x[m], [1, 99])
        out = (x - lo) / (hi - lo if hi > lo else 1.0)
    elif method == "none":
        out = x.copy()
    else:
        raise ConfigError(f"unknown normalisation {method!r}")
    out[~m] = background
    return out.astype(np.float32)


# ----------------------------------------------------------------------------------- pipeline


@dataclass
class PreparedVolume:
    """A scan ready for a slice detector, with everything needed to go back.

    Attributes:
        record: the scan as read (RAS grid, original geometry kept).
        brain: bool brain mask on the record's RAS grid.
        image: normalised intensities on the model grid ``(size, size, Z)``.
        model_brain: bool brain mask on the model grid.
        geometry: model grid <-> record grid.
        brain_source: ``"given"``, ``"foreground"`` (already skull-stripped), ``"registration"``
            or ``"nonzero"``.
    """

    record: VolumeRecord
    brain: np.ndarray
    image: np.ndarray
    model_brain: np.ndarray
    geometry: SliceGeometry
    brain_source: str

    def slices(self) -> np.ndarray:
        """``(Z, 1, size, size)`` detector input."""
        return volume_to_slices(self.image)

    def slice_brain(self) -> np.ndarray:
        """``(Z, 1, size, size)`` brain mask of the slices."""
        return volume_to_slices(self.model_brain)

    def to_record_grid(self, model_volume: np.ndarray, *, order: int = 1) -> np.ndarray:
        """A model-grid array (e.g. a map) back on the record's RAS grid."""
        return from_model_grid(model_volume, self.geometry, order=order)

    def labels_to_model_grid(self, labels: np.ndarray) -> np.ndarray:
        """A bool mask on the record grid (e.g. a lesion mask) onto the model grid."""
        return to_model_grid(np.asarray(labels, dtype=np.float32), self.geometry, order=1) > 0.5


def brain_mask_for(record: VolumeRecord, cfg: BrainPrepConfig, given: np.ndarray | None) -> tuple[np.ndarray, str]:
    """The brain mask of a scan following ``cfg.skull_strip``; returns (mask, source)."""
    if given is not None and cfg.skull_strip in ("auto", "mask"):
        g = np.asarray(given)
        if g.shape != record.shape:
            raise InputError(f"brain mask shape {g.shape} differs from the scan's {record.shape}", record.path)
        m = g > 0.5  # BraTS stores its mask as float 0 / 0.99999997
        if not m.any():
            raise InputError("the given brain mask is empty", record.path)
        return m, "given"
    if cfg.skull_strip == "mask":
        raise InputError("skull_strip='mask' but no brain mask was given for this scan", record.path)
    if cfg.skull_strip == "none":
        m = record.data != 0
        return (m if m.any() else np.ones(record.shape, bool)), "nonzero"
    if cfg.skull_strip == "auto":
        fg = skull_stripped_foreground(record.data, record.affine)
        if fg is not None:
            return fg, "foreground"
    m = register_brain_mask(record.data, record.affine, iterations=cfg.registration_iterations)
    why = registration_misfit(m, record.data, record.affine)
    if why is not None:
        raise InputError(why, record.path)
    return m, "registration"


def preprocess_volume(record: VolumeRecord, cfg: BrainPrepConfig | None = None, *,
                      brain_mask: np.ndarray | None = None) -> PreparedVolume:
    """Run the whole preprocessing chain on one scan (see the module docstring).

    Args:
        record: a scan from :func:`medad.io.volumes.read_volume` (RAS voxel order).
        cfg: settings (defaults when ``None``).
        brain_mask: the scan's own brain mask on the same RAS grid, when it comes with one.
    """
    cfg = cfg or BrainPrepConfig()
    require_3d(record)
    brain, source = brain_mask_for(record, cfg, brain_mask)
    data = record.data
    if cfg.n4:
        data = n4_correct(data, record.affine, brain, shrink=cfg.n4_shrink, iterations=cfg.n4_iterations)
    norm = normalize_intensity(data, brain, cfg.normalize, cfg.background)
    geom = make_geometry(record.shape, record.affine, brain, spacing=cfg.spacing,
                         slice_spacing=cfg.slice_spacing, size=cfg.size)
    model_brain = to_model_grid(brain.astype(np.float32), geom, order=1) > 0.5
    image = to_model_grid(norm, geom, order=1, cval=cfg.background)
    image[~model_brain] = cfg.background
    return PreparedVolume(record, brain, image.astype(np.float32), model_brain, geom, source)


# ----------------------------------------------------------------------------------- maps


def postprocess_map(anomaly_map: np.ndarray, brain_mask: np.ndarray | None = None, *, erode: int = 3,
                    median: int = 5) -> np.ndarray:
    """Brain-masked, median-filtered map (2D or 3D).

    The brain mask is eroded by ``erode`` voxels first, because residuals are large on the brain
    outline; ``median`` (odd, 0 = off) removes isolated hot pixels.
    """
    from scipy import ndimage as ndi

    m = np.asarray(anomaly_map, dtype=np.float32)
    if median and median > 1:
        m = ndi.median_filter(m, size=int(median))
    if brain_mask is not None:
        b = np.asarray(brain_mask, dtype=bool)
        if b.shape != m.shape:
            raise InputError(f"brain mask shape {b.shape} differs from the map's {m.shape}")
        if erode and erode > 0:
            b = ndi.binary_erosion(b, iterations=int(erode), border_value=0)
        m = np.where(b, m, 0.0).astype(np.float32)
    return m


def remove_small_components(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Drop connected components (full connectivity) smaller than ``min_size`` voxels."""
    from scipy import ndimage as ndi

    mk = np.asarray(mask, dtype=bool)
    if min_size <= 1 or not mk.any():
        return mk.copy()
    lab, n = ndi.label(mk, structure=np.ones((3,) * mk.ndim, bool))
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    keep = sizes >= int(min_size)
    keep[0] = False
    return keep[lab]


def mirror_asymmetry(image: np.ndarray, foreground: np.ndarray | None = None, *, sigma: float = 2.0,
                     axis: int = 0) -> np.ndarray:
    """Left-right asymmetry map of one image (2D or 3D): ``|s(x) - mirror(s(x))|``, where ``s``
    is a Gaussian smoothing (``sigma`` pixels) computed inside the foreground only (normalised
    convolution, so the background does not leak in at the brain outline) and ``mirror`` flips
    ``axis`` about the grid centre. Brain preprocessing centres the model grid on the brain's
    bounding box, so the centre of the left-right axis is close to the mid-sagittal plane.

    Tumours are one-sided, so a lesion differs from its contralateral tissue even where its
    intensity alone looks normal. The map is mirror-symmetric by construction: the healthy
    tissue opposite a lesion scores as high as the lesion (a "ghost"). Pixels whose mirror lies
    outside the foreground are 0.
    """
    from scipy import ndimage as ndi

    x = np.asarray(image, dtype=np.float32)
    fg = np.ones(x.shape, bool) if foreground is None else np.asarray(foreground, dtype=bool)
    if fg.shape != x.shape:
        raise InputError(f"foreground shape {fg.shape} differs from the image's {x.shape}")
    if not -x.ndim <= axis < x.ndim:
        raise InputError(f"axis {axis} is out of range for a {x.ndim}D image")
    if sigma > 0:
        num = ndi.gaussian_filter(np.where(fg, x, 0.0).astype(np.float32), float(sigma))
        den = ndi.gaussian_filter(fg.astype(np.float32), float(sigma))
        x = np.where(den > 1e-2, num / np.maximum(den, 1e-2), 0.0).astype(np.float32)
    both = fg & np.flip(fg, axis)
    return np.where(both, np.abs(x - np.flip(x, axis)), 0.0).astype(np.float32)
