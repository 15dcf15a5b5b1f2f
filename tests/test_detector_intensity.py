"""The percentile-intensity baseline: finds a bright inserted lesion in 2D and 3D, calibrates on
healthy data, saves and loads to identical scores."""

from __future__ import annotations

import numpy as np
import pytest

from medad import registry
from medad.detectors.base import Detector
from medad.errors import ConfigError


def _healthy(n, shape, rng):
    x = rng.normal(1.0, 0.1, (n, 1, *shape)).astype(np.float32)
    x[(slice(None), slice(None)) + (slice(0, 3),)] = 0.0  # background rows outside the "brain"
    return x


@pytest.mark.parametrize("shape", [(48, 48), (24, 24, 16)])
def test_finds_bright_lesion(shape, tmp_path):
    rng = np.random.default_rng(0)
    det = registry.create("intensity", median_size=3)
    train, val = _healthy(16, shape, rng), _healthy(8, shape, rng)
    det.fit(train)
    fg = (val != 0)[:, 0]
    det.calibrate(val, fpr=0.05, pixel_fpr=0.005, foreground=fg)
    test = _healthy(2, shape, rng)
    lesion = np.zeros(shape, bool)
    lesion[tuple(slice(8, 14) for _ in shape)] = True
    test[1, 0][lesion] += 0.8  # +8 sigma
    res = det.predict(test, foreground=(test != 0)[:, 0])
    assert res.map.shape == (2, *shape)
    assert res.score[1] > res.score[0]
    assert list(res.label) == [False, True]
    inside = res.map[1][lesion].mean()
    outside = res.map[1][~lesion & (test[1, 0] != 0)].mean()
    assert inside > outside + 3.0
    # the mask finds the lesion and little else
    tp = (res.mask[1] & lesion).sum()
    assert tp / lesion.sum() > 0.8
    assert res.mask[1][~lesion].mean() < 0.02  # about the calibrated 0.5 % plus the lesion's rim
    # save -> load gives identical scores
    det.save(tmp_path / "m")
    det2 = Detector.load(tmp_path / "m")
    r2 = det2.predict(test)
    np.testing.assert_array_equal(r2.map, res.map)
    assert det2.pixel_threshold_ == det.pixel_threshold_


def test_item_normalisation_is_per_item():
    rng = np.random.default_rng(1)
    x = _healthy(4, (32, 32), rng)
    det = registry.create("intensity", normalize="item", median_size=1).fit(x)
    bright = x.copy()
    bright[bright != 0] *= 3.0  # a scan with another intensity scale: same z-scores per item
    np.testing.assert_allclose(det.score(bright).map, det.score(x).map, atol=1e-4)
    det_fit = registry.create("intensity", normalize="fit", median_size=1).fit(x)
    assert det_fit.score(bright).score.min() > det_fit.score(x).score.max()


def test_dark_lesions_with_negative_sign():
    rng = np.random.default_rng(2)
    x = _healthy(6, (32, 32), rng)
    det = registry.create("intensity", sign=-1, median_size=1).fit(x)
    t = x[:2].copy()
    t[1, 0, 10:16, 10:16] -= 0.6
    m = det.score(t).map
    assert m[1, 10:16, 10:16].mean() > 4.0


def test_bad_params():
    x = _healthy(2, (16, 16), np.random.default_rng(0))
    with pytest.raises(ConfigError):
        registry.create("intensity", normalize="zz").fit(x)
    with pytest.raises(ConfigError):
        registry.create("intensity", median_size=4).fit(x)
