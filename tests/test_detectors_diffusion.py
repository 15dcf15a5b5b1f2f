"""Diffusion pseudo-healthy reconstruction ("ddpm"): DDIM schedule, a brief training on synthetic
healthy stripes that must single out inserted lesions, reproducible noise, bad settings; patched
diffusion (pDDPM): grid coverage, noise only inside the patch, stitching, training and scoring
in 2D and 3D, settings kept by save/load, bad patch settings."""

from __future__ import annotations

import numpy as np
import pytest

from medad.detectors.base import Detector
from medad.detectors.diffusion import (DDPMDetector, ddim_timesteps, noise_in_patch, patch_grid, patch_masks,
                                     random_patch_mask, stitch_patches)
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


# ----------------------------------------------------------------------------------- patched (pDDPM)


@pytest.mark.parametrize("spatial, patch, stride", [((30, 27), (8, 8), (5, 6)), ((128, 128), (64, 64), (64, 64)),
                                                    ((9, 7, 5), (4, 4, 5), (4, 3, 2))])
def test_patch_grid_covers_every_pixel(spatial, patch, stride):
    corners = patch_grid(spatial, patch, stride)
    masks = patch_masks((1, *spatial), corners, patch)
    assert masks.shape == (len(corners), 1, *spatial)
    assert masks.sum(0).min() >= 1  # every pixel lies in a patch
    assert all(int(m.sum()) == int(np.prod(patch)) for m in masks)  # no patch is cut at the border
    if spatial == (128, 128):
        assert len(corners) == 4 and masks.sum(0).max() == 1  # stride = size: a partition


def test_stitching_averages_overlapping_patches():
    import torch

    spatial, patch = (10, 9), (4, 4)
    masks = patch_masks((1, *spatial), patch_grid(spatial, patch, (3, 2)), patch)
    k, b = masks.shape[0], 2
    # copy k of every item is the constant k + 1: a stitched pixel is the mean of the k + 1 covering it
    copies = torch.arange(1, k + 1, dtype=torch.float32).reshape(k, 1, 1, 1, 1).expand(k, b, 1, *spatial)
    copies = copies.reshape(k * b, 1, *spatial)
    out = stitch_patches(copies, masks.repeat_interleave(b, dim=0), k)
    cover = masks[:, 0].float()
    expected = (cover * torch.arange(1, k + 1).reshape(k, 1, 1)).sum(0) / cover.sum(0)
    assert out.shape == (b, 1, *spatial)
    torch.testing.assert_close(out[0, 0], expected)
    torch.testing.assert_close(out[1, 0], expected)


def test_training_noise_stays_inside_the_patch():
    import torch
    from monai.networks.schedulers import DDPMScheduler

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 2, 20, 16, generator=gen)
    noise = torch.randn(x.shape, generator=gen)
    t = torch.randint(100, 1000, (6,), generator=gen)
    # patches placed inside the first 18 x 14 pixels (the image before padding)
    mask = random_patch_mask(6, (1, 20, 16), (18, 14), (5, 7), generator=gen)
    sched = DDPMScheduler(num_train_timesteps=1000)
    out = noise_in_patch(sched, x, noise, t, mask)
    full = mask.expand_as(x)
    assert (mask.reshape(6, -1).sum(1) == 35).all() and not mask[:, :, 18:].any() and not mask[..., 14:].any()
    torch.testing.assert_close(out[~full], x[~full], rtol=0, atol=0)  # the context is the clean input
    torch.testing.assert_close(out[full], sched.add_noise(x, noise, t)[full])
    assert (out[full] != x[full]).all()
    torch.testing.assert_close(noise_in_patch(sched, x, noise, t), sched.add_noise(x, noise, t))


def test_pddpm_finds_lesions_and_keeps_its_settings(tmp_path):
    train = healthy_images(48, seed=0)
    lesioned, mask = with_lesions(healthy_images(4, seed=3), seed=1)
    det = DDPMDetector(**TINY, epochs=6, t0=300, inference_steps=2, train_t_max=400, patch_size=16, patch_stride=8,
                       noise="coarse", noise_res=4, noise_octaves=2)
    det.train_options = {"progress": False}
    res = det.fit(train).score(lesioned)
    assert res.map.shape == (4, SIZE, SIZE) and np.isfinite(res.map).all()
    inside, outside = res.map[mask].mean(), res.map[~mask].mean()
    assert inside > 2 * outside, f"lesion {inside:.3f} vs healthy tissue {outside:.3f}"
    loaded = Detector.load(det.save(tmp_path / "pddpm"))
    assert loaded.patch_size == 16 and loaded.patch_stride == 8
    np.testing.assert_array_equal(loaded.score(lesioned).map, res.map)


def test_3d_pddpm_shapes():
    vols = np.random.default_rng(0).normal(size=(4, 1, 8, 8, 8)).astype(np.float32)
    det = DDPMDetector(**dict(TINY, channels=(4, 4), num_head_channels=4), spatial_dims=3, epochs=1, t0=50,
                       inference_steps=1, patch_size=(4, 8, 4), patch_stride=(2, 8, 4))
    det.train_options = {"progress": False}
    res = det.fit(vols).score(vols[:2])
    assert res.map.shape == (2, 8, 8, 8) and np.isfinite(res.map).all()


@pytest.mark.parametrize("patch, stride", [(40, None), (0, None), ((8, 8, 8), None), (8, 0), (8, 9), ("8", None),
                                           (8.5, None)])
def test_bad_patch_setting_is_a_config_error(patch, stride):
    det = DDPMDetector(**TINY, epochs=1, patch_size=patch, patch_stride=stride)
    det.train_options = {"progress": False}
    with pytest.raises(ConfigError, match="patch"):
        det.fit(healthy_images(4, seed=0))


# ----------------------------------------------------------------------------------- inference speed-ups


def _reference_reconstruction(det: DDPMDetector, x, generator):
    """The straightforward inference (every copy at once, nothing skipped) the chunked one must equal."""
    import torch
    from monai.networks.schedulers import DDIMScheduler

    sched = DDIMScheduler(num_train_timesteps=1000, clip_sample=False)
    n_inf, ts = ddim_timesteps(int(det.t0), int(det.inference_steps))
    sched.set_timesteps(n_inf)
    xn = det._normalise(x)
    mask, k = None, 1
    if det.patch_size is not None:
        patch, stride = det._patch_setting(x.shape[2:])
        masks = patch_masks((1, *xn.shape[2:]), patch_grid(x.shape[2:], patch, stride), patch)
        k = masks.shape[0]
        mask = masks.repeat_interleave(xn.shape[0], dim=0)
        xn = xn.repeat(k, 1, 1, 1)
    recon = torch.zeros_like(xn)
    for _ in range(int(det.n_reconstructions)):
        sample = noise_in_patch(sched, xn, det._noise(xn, generator), torch.full((len(xn),), ts[0]), mask)
        for t in ts:
            sample, x0 = sched.step(det.net_(sample, timesteps=torch.full((len(xn),), t)), t, sample)
            if mask is not None:
                sample = torch.where(mask, sample, xn)
        recon += x0
    recon = recon / int(det.n_reconstructions)
    if mask is not None:
        recon = stitch_patches(recon, mask, k)
    return recon[:, :, :x.shape[2], :x.shape[3]] * det.half_range_ + det.offset_


@pytest.mark.parametrize("patched", [True, False])
def test_chunked_inference_equals_the_reference_and_skips_constant_patches(patched):
    import torch

    x = healthy_images(16, seed=0)[:, :, :30, :28]
    det = DDPMDetector(**TINY, epochs=1, t0=300, inference_steps=2, n_reconstructions=2, noise="coarse",
                       noise_res=4, noise_octaves=2, **(dict(patch_size=(16, 14), patch_stride=(7, 14)) if patched else {}))
    det.train_options = {"progress": False}
    det.fit(x)
    for p in det.net_.parameters():  # MONAI zero-initialises the output layer: give it something to say
        if not p.abs().sum():
            torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(1))
    xt = torch.from_numpy(x[:5].copy())
    xt[1] = 0.0  # an empty item: every patch constant
    xt[2, :, :16, :14] = 0.0  # one constant patch (corner (0, 0)) in an item that has tissue
    with torch.no_grad():
        ref = _reference_reconstruction(det, xt, torch.Generator().manual_seed(7))
        got = {}
        for eb in (1, 3, None):
            det.eval_batch = eb
            got[eb] = det._reconstruct(det.net_, xt, torch.Generator().manual_seed(7))
    same = torch.ones_like(xt, dtype=torch.bool)  # where the reconstruction must equal the reference
    kept = torch.zeros_like(same)  # where it must be the input itself (skipped: residual 0)
    same[1], kept[1] = False, True
    if patched:  # the constant patch rows 0-15, cols 0-13: alone on rows 0-6, averaged with others below
        same[2, :, :16, :14] = False
        kept[2, :, :7, :14] = True
    for eb, r in got.items():
        torch.testing.assert_close(r[same], ref[same], rtol=1e-4, atol=1e-4, msg=f"eval_batch {eb}")
        torch.testing.assert_close(r[kept], xt[kept], rtol=0, atol=1e-6)
    assert (ref[same] - xt[same]).abs().mean() > 1e-2  # the reference really reconstructs something


def test_bad_eval_batch_is_a_config_error():
    det = DDPMDetector(**TINY, epochs=1, t0=100, inference_steps=1, eval_batch=0)
    det.train_options = {"progress": False}
    det.fit(healthy_images(4, seed=0))
    with pytest.raises(ConfigError, match="eval_batch"):
        det.score(healthy_images(2, seed=1))
