"""MONAI image pipeline builders (2D and 3D, array and dict) on small synthetic data and one
real volume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medad.config import data_root
from medad.errors import ConfigError, InputError
from medad.transforms.image import image_transforms, percentile_normalize, record_to_tensor

ROOT = data_root(required=False)


def _blob(shape, centre, radius, value=1.0):
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    d = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre)))
    return (d <= radius).astype(np.float32) * value


def test_percentile_normalize_uses_foreground_only():
    rng = np.random.default_rng(0)
    x = np.zeros((1, 20, 20), np.float32)
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    x[0][mask] = rng.uniform(100, 200, mask.sum())
    out = percentile_normalize(x, mask, lower=0, upper=100)
    assert out[0][mask].min() == pytest.approx(0, abs=1e-5)
    assert out[0][mask].max() == pytest.approx(1, abs=1e-5)
    # without the mask the zero background would set the lower percentile
    plain = percentile_normalize(x, lower=0, upper=100)
    assert plain[0][mask].min() > 0.4
    nz = percentile_normalize(x, lower=0, upper=100, nonzero=True)
    np.testing.assert_allclose(nz, out, atol=1e-5)
    t = percentile_normalize(torch.from_numpy(x), torch.from_numpy(mask), lower=0, upper=100, clip=True)
    assert isinstance(t, torch.Tensor)
    np.testing.assert_allclose(t.numpy(), np.clip(out, 0, 1), atol=1e-5)
    with pytest.raises(InputError, match="empty"):
        percentile_normalize(x, np.zeros((20, 20), bool))


def test_per_channel():
    x = np.stack([np.linspace(0, 1, 100), np.linspace(0, 1000, 100)]).reshape(2, 10, 10).astype(np.float32)
    out = percentile_normalize(x, lower=0, upper=100)
    np.testing.assert_allclose(out[0], out[1], atol=1e-5)


def test_array_pipeline_2d_crop_normalize_resize():
    img = _blob((64, 48), (30, 20), 10, 50.0)[None] + 10.0  # background 10, blob 60
    img[0, 0, 0] = 0.0  # one darker voxel: the minimum
    t = image_transforms(2, crop_foreground=False, spatial_size=(32, 32), resize_mode="resize", clip=True)
    out = t(img)
    assert isinstance(out, torch.Tensor) and out.shape == (1, 32, 32) and out.dtype == torch.float32
    assert 0 <= float(out.min()) and float(out.max()) <= 1
    padded = image_transforms(2, normalize=False, spatial_size=80)(img)
    assert padded.shape == (1, 80, 80)


def test_dict_pipeline_3d_orientation_spacing_crop_masks():
    from monai.data import MetaTensor

    shape = (40, 30, 20)
    vol = _blob(shape, (20, 15, 10), 8, 100.0) + _blob(shape, (20, 15, 10), 3, 100.0)
    brain = _blob(shape, (20, 15, 10), 8) > 0
    lesion = _blob(shape, (20, 15, 10), 3)
    affine = np.diag([-1.0, -1.0, 2.0, 1.0])  # LPS voxel axes, 2 mm slices
    data = {k: MetaTensor(torch.from_numpy(v[None].astype(np.float32)), affine=torch.as_tensor(affine))
            for k, v in (("image", vol), ("brain", brain.astype(np.float32)), ("lesion", lesion))}
    t = image_transforms(3, keys=["image"], mask_keys=["lesion"], foreground_key="brain",
                         orientation="RAS", pixdim=(1.0, 1.0, 1.0), crop_foreground=True,
                         lower=0, upper=100, spatial_size=(24, 24, 40))
    out = t(data)
    assert out["image"].shape == out["lesion"].shape == out["brain"].shape == (1, 24, 24, 40)
    assert set(np.unique(out["lesion"].numpy())) <= {0.0, 1.0}  # nearest: still binary
    inside = out["brain"].numpy() > 0.5
    img = out["image"].numpy()
    assert img[inside].min() == pytest.approx(0, abs=1e-4) and img[inside].max() == pytest.approx(1, abs=1e-4)
    assert out["lesion"].sum() > 0
    # masks went through the same spatial steps: the lesion is still inside the brain
    assert out["lesion"].numpy()[inside].sum() == out["lesion"].sum()


def test_augmentations_seeded_and_masks_follow():
    img = np.random.default_rng(0).random((1, 32, 32)).astype(np.float32)
    mask = np.zeros((1, 32, 32), np.float32)
    mask[:, 4:12, 4:12] = 1
    mk = lambda seed: image_transforms(2, keys=["image"], mask_keys=["mask"], normalize=False,
                                       augment=True, prob=1.0, noise_std=0.0, seed=seed)
    a = mk(1)({"image": img, "mask": mask})
    b = mk(1)({"image": img, "mask": mask})
    c = mk(2)({"image": img, "mask": mask})
    torch.testing.assert_close(a["image"], b["image"])
    assert not torch.allclose(a["image"], c["image"])
    assert set(np.unique(a["mask"].numpy())) <= {0.0, 1.0}
    assert not torch.equal(a["mask"], torch.from_numpy(mask))  # the mask moved with the image
    arr = image_transforms(3, augment=True, prob=1.0, seed=0, spatial_size=16)(np.ones((1, 16, 16, 16), np.float32))
    assert arr.shape == (1, 16, 16, 16)


def test_config_errors():
    with pytest.raises(ConfigError):
        image_transforms(4)
    with pytest.raises(ConfigError):
        image_transforms(2, mask_keys=["m"])
    with pytest.raises(ConfigError):
        image_transforms(3, orientation="RA")
    with pytest.raises(ConfigError):
        image_transforms(2, spatial_size=(1, 2, 3))


@pytest.mark.skipif(ROOT is None, reason="../shared/data not present")
def test_real_non_ras_volume_through_pipeline():
    """MONAI's Orientation on the file grid agrees with medad.io's RAS reorientation."""
    import nibabel as nib
    from monai.data import MetaTensor

    from medad.io.volumes import read_volume

    p = ROOT / "mri/ixi_t1_2mm/IXI015-HH-1258_T1.nii.gz"  # PSR voxel axes
    rec = read_volume(p)
    src = nib.load(str(p))
    raw = MetaTensor(torch.from_numpy(np.asarray(src.dataobj, np.float32)[None]),
                     affine=torch.as_tensor(src.affine))
    out = image_transforms(3, orientation="RAS", normalize=False)(raw)
    np.testing.assert_array_equal(out[0].numpy(), rec.data)
    mt = record_to_tensor(rec)
    assert mt.shape == (1, *rec.shape)
    small = image_transforms(3, orientation="RAS", pixdim=4.0, crop_foreground=True, nonzero=True,
                             clip=True, spatial_size=(48, 48, 48))(mt)
    assert small.shape == (1, 48, 48, 48)
    assert float(small.max()) == pytest.approx(1.0) and float(small.min()) >= 0.0
