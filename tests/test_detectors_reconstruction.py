"""Reconstruction detectors ("ae", "dae", "vae", "memae"): trained briefly on synthetic healthy
images (smooth oblique stripes), they must score an inserted bright or dark disc higher than
healthy tissue, pixel-wise and item-wise; plus maps/metrics helpers and input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medad.detectors.base import Detector
from medad.detectors.reconstruction import (AEDetector, DAEDetector, MemAEDetector, VAEDetector, residual_map,
                                            ssim_map)
from medad.errors import InputError

SIZE = 32


def healthy_images(n: int, seed: int) -> np.ndarray:
    """Oblique sinusoidal stripes of random frequency, phase and contrast, light noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE] / SIZE
    f = rng.uniform(1.0, 2.0, (n, 1, 1))
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1))
    amp = rng.uniform(0.4, 0.8, (n, 1, 1))
    img = amp * np.sin(2 * np.pi * f * (xx + 0.3 * yy) + phase) + 0.03 * rng.standard_normal((n, SIZE, SIZE))
    return img[:, None].astype(np.float32)


def with_lesions(x: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Insert one disc per image, bright (+2) on even items and dark (-2) on odd ones."""
    rng = np.random.default_rng(seed)
    x = x.copy()
    masks = np.zeros((len(x), SIZE, SIZE), bool)
    yy, xx = np.ogrid[:SIZE, :SIZE]
    for i in range(len(x)):
        cy, cx = rng.integers(9, SIZE - 9, 2)
        m = (yy - cy) ** 2 + (xx - cx) ** 2 <= 12
        x[i, 0][m] = 2.0 if i % 2 == 0 else -2.0
        masks[i] = m
    return x, masks


@pytest.fixture(scope="module")
def synthetic():
    train = healthy_images(64, seed=0)
    test_healthy = healthy_images(12, seed=5)
    test_lesion, masks = with_lesions(healthy_images(12, seed=6), seed=1)
    return train, test_healthy, test_lesion, masks


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny nets on a shared 2-core machine: one thread avoids oversubscription stalls
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


SMALL = dict(channels=(8, 16), strides=(2, 2), latent_channels=4, epochs=6, batch_size=16, device="cpu")
DETECTORS = {
    "ae": lambda: AEDetector(**SMALL),
    "dae": lambda: DAEDetector(**SMALL, noise_res=8),
    "vae": lambda: VAEDetector(**SMALL),
    "memae": lambda: MemAEDetector(**SMALL, memory_slots=32),
}


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_detector_finds_bright_and_dark_lesions(name, synthetic, tmp_path):
    train, test_h, test_l, masks = synthetic
    det = DETECTORS[name]()
    det.train_options = {"progress": False}
    det.fit(train)
    res_h, res_l = det.score(test_h), det.score(test_l)
    assert res_l.map.shape == (len(test_l), SIZE, SIZE)
    for sign, sel in (("bright", slice(0, None, 2)), ("dark", slice(1, None, 2))):
        inside = res_l.map[sel][masks[sel]].mean()
        outside = res_l.map[sel][~masks[sel]].mean()
        assert inside > 3 * outside, f"{name}: {sign} lesion map {inside:.3f} vs healthy tissue {outside:.3f}"
    # every lesioned image outranks the median healthy one, and on average by far
    assert (res_l.score > np.median(res_h.score)).all()
    assert res_l.score.mean() > 2 * res_h.score.mean()

    # scores are deterministic and survive save/load
    loaded = Detector.load(det.save(tmp_path / name))
    np.testing.assert_array_equal(loaded.score(test_l).score, res_l.score)


def test_vector_latent_and_input_checks(synthetic):
    train, _, test_l, _ = synthetic
    det = AEDetector(channels=(4, 8), strides=(2, 2), latent_size=8, epochs=1, batch_size=16, device="cpu")
    det.train_options = {"progress": False}
    det.fit(train[:16])
    assert det.score(test_l[:2]).map.shape == (2, SIZE, SIZE)
    with pytest.raises(InputError, match="shape"):
        det.score(test_l[:2, :, :16, :16])  # a vector latent fixes the item shape
    with pytest.raises(InputError, match="channels"):
        det.score(np.repeat(test_l[:2], 2, axis=1))
    with pytest.raises(InputError, match="spatial_dims=2"):
        det.score(test_l[:2, :, :, :, None])


def test_3d_detector_maps_on_the_input_grid():
    rng = np.random.default_rng(0)
    vols = rng.normal(size=(6, 1, 8, 12, 10)).astype(np.float32)
    det = DAEDetector(spatial_dims=3, channels=(4, 8), strides=(2, 2), latent_channels=4, noise_res=2, epochs=1,
                      batch_size=6, device="cpu")
    det.train_options = {"progress": False}
    res = det.fit(vols).score(vols[:2])
    assert res.map.shape == (2, 8, 12, 10) and res.score.shape == (2,)


def test_residual_and_ssim_maps():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(ssim_map(x, x), torch.ones_like(x))
    assert torch.equal(residual_map(x, x), torch.zeros(2, 16, 16))
    y = x.clone()
    y[:, :, 4:8, 4:8] += 2.0
    plain = residual_map(x, y)
    both = residual_map(x, y, ssim_weight=1.0)
    assert plain.shape == (2, 16, 16)
    # the residual is the channel mean of |x - y|; the SSIM term only adds, and most near the change
    assert torch.allclose(plain[:, 5, 5], torch.full((2,), 2.0))
    assert (both >= plain - 1e-6).all()
    assert (both - plain)[:, 4:8, 4:8].mean() > (both - plain)[:, 12:, 12:].mean()
    # 3D works through the same code
    v = torch.randn(1, 1, 6, 6, 6)
    assert ssim_map(v, v + 0.5).shape == v.shape


def test_residual_map_polarity():
    from medad.errors import ConfigError

    x = torch.zeros(1, 1, 4, 4)
    recon = torch.zeros(1, 1, 4, 4)
    x[0, 0, 0, 0] = 2.0   # brighter than the reconstruction (hyperintense lesion)
    x[0, 0, 3, 3] = -1.0  # darker
    assert residual_map(x, recon)[0, 0, 0] == 2.0 and residual_map(x, recon)[0, 3, 3] == 1.0
    pos = residual_map(x, recon, polarity="positive")
    assert pos[0, 0, 0] == 2.0 and pos[0, 3, 3] == 0.0
    neg = residual_map(x, recon, polarity="negative")
    assert neg[0, 0, 0] == 0.0 and neg[0, 3, 3] == 1.0
    with pytest.raises(ConfigError, match="polarity"):
        residual_map(x, recon, polarity="up")
