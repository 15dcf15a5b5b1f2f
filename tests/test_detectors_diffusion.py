"""Diffusion pseudo-healthy reconstruction ("ddpm"): DDIM schedule, a brief training on synthetic
healthy stripes that must single out inserted lesions, reproducible noise, bad settings."""

from __future__ import annotations

import numpy as np
import pytest

from medad.detectors.base import Detector
from medad.detectors.diffusion import DDPMDetector, ddim_timesteps
from medad.errors import ConfigError

# the synthetic healthy stripes and lesions of the reconstruction tests (pytest puts tests/ on the path)
from test_detectors_reconstruction import SIZE, _one_thread, healthy_images, with_lesions  # noqa: E402,F401


TINY = dict(channels=(8, 16), attention_levels=(False, False), norm_num_groups=4, num_head_channels=8,
            batch_size=8, lr=5e-3, device="cpu")


@pytest.mark.parametrize("t0, steps", [(300, 10), (500, 20), (250, 3), (999, 7), (10, 20)])
def test_ddim_timesteps(t0, steps):
    n_inf, ts = ddim_timesteps(t0, steps)
    stride = 1000 // n_inf
    assert ts[0] == t0 and len(ts) <= steps and min(ts) >= 0
    assert all(a - b == stride for a, b in zip(ts, ts[1:]))
    assert len(ts) == steps or ts[-1] - stride < 0  # only cut short when it reaches 0


def test_ddim_timesteps_rejects_bad_settings():
    with pytest.raises(ConfigError):
        ddim_timesteps(0, 5)
    with pytest.raises(ConfigError):
        ddim_timesteps(300, 0)


def test_ddpm_finds_lesions_and_is_reproducible(tmp_path):
    train = healthy_images(64, seed=0)
    test = healthy_images(8, seed=3)
    lesioned, mask = with_lesions(test, seed=1)  # bright and dark discs
    det = DDPMDetector(**TINY, epochs=8, t0=200, inference_steps=3, train_t_max=300)
    det.train_options = {"progress": False}
    det.fit(train)
    res_h, res_l = det.score(test), det.score(lesioned)
    assert res_l.map.shape == (8, SIZE, SIZE)
    inside, outside = res_l.map[mask].mean(), res_l.map[~mask].mean()
    assert inside > 3 * outside, f"lesion {inside:.3f} vs healthy tissue {outside:.3f}"
    assert (res_l.score > res_h.score).all()
    # inference noise is seeded: same scores twice and after save/load
    np.testing.assert_array_equal(det.score(lesioned).score, res_l.score)
    loaded = Detector.load(det.save(tmp_path / "ddpm"))
    np.testing.assert_array_equal(loaded.score(lesioned).map, res_l.map)


def test_coarse_noise_averaging_and_odd_sizes():
    x = healthy_images(8, seed=0)[:, :, :30, :27]  # sides not multiples of the U-Net's factor
    det = DDPMDetector(**TINY, epochs=1, noise="coarse", noise_res=4, noise_octaves=2, t0=100,
                       inference_steps=2, n_reconstructions=2)
    det.train_options = {"progress": False}
    res = det.fit(x).score(x[:2])
    assert res.map.shape == (2, 30, 27) and np.isfinite(res.map).all()


def test_3d_ddpm_shapes():
    vols = np.random.default_rng(0).normal(size=(4, 1, 8, 8, 8)).astype(np.float32)
    det = DDPMDetector(**dict(TINY, channels=(4, 4), num_head_channels=4), spatial_dims=3, epochs=1, t0=50,
                       inference_steps=1)
    det.train_options = {"progress": False}
    assert det.fit(vols).score(vols[:1]).map.shape == (1, 8, 8, 8)


def test_unknown_noise_is_a_config_error():
    det = DDPMDetector(**TINY, epochs=1, noise="pink")
    det.train_options = {"progress": False}
    with pytest.raises(ConfigError, match="noise"):
        det.fit(healthy_images(4, seed=0))
