"""Left-right asymmetry (T1c baseline): a one-sided blob is found, a symmetric structure is not,
in 2D and 3D, through the detector contract and through the brain pipeline (map on the input
file's own grid)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from medad import registry
from medad.errors import ConfigError, InputError
from medad.transforms.brain import mirror_asymmetry

LPS = np.array([[-2.0, 0, 0, 60], [0, -2.0, 0, 70], [0, 0, 2.0, -40], [0, 0, 0, 1]])
SHAPE = (48, 56, 40)


def _ball(shape, radius, centre) -> np.ndarray:
    g = np.indices(shape).astype(np.float32)
    r = np.broadcast_to(np.asarray(radius, np.float32), (len(shape),))
    return sum(((g[i] - centre[i]) / r[i]) ** 2 for i in range(len(shape))) <= 1.0


def _symmetric_scene(shape, blob: bool):
    """A foreground ellipse/ellipsoid mirror-symmetric about the centre of axis 0, with a
    symmetric pair of bright discs; optionally one extra bright blob on one side only."""
    n = len(shape)
    c = (np.array(shape) - 1) / 2.0
    fg = _ball(shape, np.array(shape) * 0.42, c)
    x = np.where(fg, 1.0, 0.0).astype(np.float32)
    off = np.zeros(n)
    off[0], off[1] = shape[0] * 0.2, -shape[1] * 0.15
    pair = _ball(shape, 3, c + off) | _ball(shape, 3, c + off * np.r_[-1, np.ones(n - 1)])
    x[pair] += 2.0
    les = _ball(shape, 3, c + np.r_[shape[0] * 0.18, shape[1] * 0.2, np.zeros(n - 2)]) if blob else np.zeros(shape, bool)
    x[les] += 2.0
    return x, fg, pair, les


@pytest.mark.parametrize("shape", [(40, 48), (32, 36, 24)])
def test_mirror_asymmetry_finds_one_sided_blob_not_symmetric_pair(shape):
    x, fg, pair, les = _symmetric_scene(shape, blob=True)
    a = mirror_asymmetry(x, fg, sigma=1.0, axis=0)
    assert a.shape == x.shape and a.dtype == np.float32
    assert a[les].mean() > 1.0  # most of the +2 contrast survives the smoothing
    assert a[pair].max() < 0.05  # a symmetric structure has no asymmetry
    assert np.flip(a, 0)[les].mean() == pytest.approx(a[les].mean(), rel=1e-5)  # the ghost: map is symmetric
    assert (a[~fg] == 0).all()
    with pytest.raises(InputError):
        mirror_asymmetry(x, fg[:-1])


def test_asymmetry_detector_contract_2d_and_3d():
    rng = np.random.default_rng(0)
    for shape in [(40, 48), (24, 28, 20)]:
        healthy = np.stack([_symmetric_scene(shape, False)[0] for _ in range(4)])[:, None]
        healthy = healthy + np.where(healthy != 0, rng.normal(0, 0.05, healthy.shape), 0).astype(np.float32)
        x, fg, pair, les = _symmetric_scene(shape, blob=True)
        det = registry.create("asymmetry", sigma=1.0).fit(healthy)
        res = det.score(np.concatenate([healthy[:1], x[None, None]]))
        assert res.map.shape == (2, *shape)
        assert res.score[1] > 5 * res.score[0]
        assert res.map[1][les].mean() > 10 * res.map[1][pair].mean()
    with pytest.raises(ConfigError, match="axis"):
        registry.create("asymmetry", axis=2).fit(np.ones((2, 1, 8, 8), np.float32))


def _write_scan(folder, name, seed, lesion=False):
    """A non-RAS (LPS) synthetic head whose brain is left-right symmetric (smooth random
    'anatomy' averaged with its mirror, plus a little one-sided noise), its brain mask and, optionally, a one-sided lesion."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    c = (np.array(SHAPE) - 1) / 2.0
    brain = _ball(SHAPE, (17, 21, 14), c)
    tissue = ndi.gaussian_filter(rng.normal(0, 1, SHAPE), 2.0)
    tissue = (tissue + tissue[::-1]) / 2
    noise = ndi.gaussian_filter(rng.normal(0, 1, SHAPE), 1.0)  # healthy brains are not exactly symmetric
    data = np.where(brain, 100 + 6 * tissue / tissue.std() + 1.5 * noise / noise.std(), 0.0)
    les = _ball(SHAPE, 4, c + [7, 5, 2]) if lesion else np.zeros(SHAPE, bool)
    data[les] -= 30.0  # darker, as oedema and necrosis are on T1c
    nib.save(nib.Nifti1Image(data.astype(np.float32), LPS), folder / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(brain.astype(np.uint8), LPS), folder / f"{name}_brainmask.nii.gz")
    return les


def test_asymmetry_through_the_brain_pipeline_on_input_grid(tmp_path):
    from pipelines.brain_lesions import BrainLesionConfig, BrainModel, score_folder, train_brain

    healthy, scans = tmp_path / "healthy", tmp_path / "scans"
    healthy.mkdir()
    scans.mkdir()
    for i in range(3):
        _write_scan(healthy, f"h{i}", seed=i)
    les = _write_scan(scans, "patient", seed=10, lesion=True)
    cfg = BrainLesionConfig(
        detector="asymmetry", detector_params={"sigma": 1.0}, mask_pattern="{stem}_brainmask.nii.gz",
        preprocessing={"spacing": 2.0, "slice_spacing": 2.0, "size": 48, "min_brain_pixels": 50},
        val_fraction=0.34, min_lesion_voxels=5, median=3, erode=1)
    model = train_brain(healthy, tmp_path / "model", cfg, progress=False)
    assert BrainModel.load(model).config.detector == "asymmetry"
    score_folder(model, scans, tmp_path / "out", overlays=False, progress=False)
    inp = nib.load(scans / "patient.nii.gz")
    amap_img = nib.load(tmp_path / "out" / "patient" / "anomaly_map.nii.gz")
    assert amap_img.shape == inp.shape
    np.testing.assert_allclose(amap_img.affine, inp.affine, atol=1e-5)
    amap = np.asarray(amap_img.dataobj)
    mask = np.asarray(nib.load(tmp_path / "out" / "patient" / "mask.nii.gz").dataobj).astype(bool)
    from scipy import ndimage as ndi

    ghost = np.flip(les, 0)  # the healthy tissue opposite the lesion, in the file's own voxel order
    near = ndi.binary_dilation(les | ghost, iterations=3)  # smoothing spreads the map a few voxels
    assert (mask & les).sum() / les.sum() > 0.5
    brain = _ball(SHAPE, (17, 21, 14), (np.array(SHAPE) - 1) / 2.0)
    assert (mask & ~near).sum() < 0.02 * brain.sum()  # elsewhere about the calibrated 0.5 % false positives
    assert amap[les].mean() > 3 * amap[brain & ~near].mean()
