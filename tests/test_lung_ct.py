"""Lung segmentation and the lung-aware ``lung_knn`` detector on synthetic chest-like phantoms
(body ellipse, two dark lungs with vessels, arbitrary window), plus one real COVID-CT check."""

from __future__ import annotations

import numpy as np
import pytest

from medad.config import data_root
from medad.detectors.base import Detector
from medad.errors import ConfigError, InputError, ReadError
from medad.transforms.lung import segment_lungs

S = 96


def _ellipse(cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[0:S, 0:S]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def phantom(rng: np.random.Generator, patch: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One slice in [0, 1]: (image, true lung mask, inserted patch mask). Air 0, lung 0.12,
    soft tissue 1 (density units), then an arbitrary linear window."""
    j = rng.uniform(-3, 3, size=6)
    body = _ellipse(S / 2 + j[0], S / 2, 40 + j[1], 44 + j[2])
    left = _ellipse(S / 2 + j[3], S / 2 - 19, 27, 13 + j[4] / 2)
    right = _ellipse(S / 2 + j[3], S / 2 + 19, 27, 13 + j[5] / 2)
    lungs = left | right
    d = np.where(body, 1.0, 0.0)
    d[lungs] = 0.12
    for _ in range(25):  # vessels: small bright dots inside the lungs
        ys, xs = np.nonzero(lungs)
        i = rng.integers(len(ys))
        d[max(ys[i] - 1, 0):ys[i] + 1, max(xs[i] - 1, 0):xs[i] + 1] = 0.8
    pmask = np.zeros((S, S), bool)
    if patch:  # ground-glass-like patch: mid-grey, posterior part of one lung
        side = left if rng.random() < 0.5 else right
        ys, xs = np.nonzero(side)
        cy, cx = np.percentile(ys, 75), xs.mean()
        pmask = _ellipse(cy, cx, 8, 7) & side
        d[pmask] = 0.5
    d = d + rng.normal(0, 0.02, d.shape)
    lo, hi = rng.uniform(0.0, 0.15), rng.uniform(0.75, 1.0)  # the picture's window
    img = np.clip(lo + (hi - lo) * d, 0, 1).astype(np.float32)
    return img, lungs, pmask


def _batch(n: int, seed: int, patch: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([phantom(rng, patch)[0][None] for _ in range(n)])


def test_lung_mask_covers_the_lungs_not_outside_air():
    rng = np.random.default_rng(0)
    for _ in range(3):
        img, lungs, _ = phantom(rng)
        seg = segment_lungs(img)
        assert seg.found and seg.lungs.max() == 2
        iou = (seg.mask & lungs).sum() / (seg.mask | lungs).sum()
        assert iou > 0.85
        outside = ~_ellipse(S / 2, S / 2, 44, 48)  # well outside every body ellipse
        assert seg.mask[outside].mean() < 0.01
        # reference levels follow the picture's own window: lung about 0.12 in density units
        u = seg.density(img)
        assert abs(np.median(u[lungs]) - 0.12) < 0.08
        assert abs(np.median(u[~_ellipse(S / 2, S / 2, 48, 52)]) - 0.0) < 0.08


def test_patch_inside_the_mask_and_scores_higher():
    from medad import registry

    clean_train = _batch(30, 1)
    clean, patched = _batch(8, 2), _batch(8, 3, patch=True)
    rng = np.random.default_rng(3)
    _, _, pm = phantom(rng, patch=True)
    assert segment_lungs(patched[0, 0]).mask[pm].mean() > 0.9  # holes filled: the patch stays lung
    for method in ("knn", "density", "mahalanobis"):
        det = registry.create("lung_knn", image_size=S, method=method).fit(clean_train)
        s0, s1 = det.score(clean).score, det.score(patched).score
        assert s1.mean() > s0.mean() and np.median(s1) > np.max(np.median(s0)), method
    # map: higher on the patch than on the rest of the lung
    res = det.score(patched[:1])
    seg = segment_lungs(patched[0, 0])
    assert res.map.shape == (1, S, S)
    assert res.map[0][pm].mean() > 2 * res.map[0][seg.mask & ~pm].mean()


def test_window_does_not_change_features():
    from medad.detectors.lung_ct import LungCTDetector

    x = _batch(4, 4)
    det = LungCTDetector(image_size=S)
    f1, f2 = det.describe(x), det.describe(0.1 + 0.6 * x)  # same slices, another window
    np.testing.assert_allclose(f1, f2, atol=0.03)


def test_save_load_round_trip(tmp_path):
    from medad.detectors.lung_ct import LungCTDetector

    det = LungCTDetector(image_size=S, method="density").fit(_batch(20, 5))
    det.calibrate(_batch(6, 6), fpr=0.2)
    x = np.concatenate([_batch(3, 7), _batch(3, 8, patch=True)])
    det.save(tmp_path / "m")
    back = Detector.load(tmp_path / "m")
    assert isinstance(back, LungCTDetector) and back.get_params() == det.get_params()
    np.testing.assert_allclose(back.score(x).score, det.score(x).score, rtol=1e-6)
    np.testing.assert_array_equal(back.predict(x).label, det.predict(x).label)
    # a model saved by a version with other features is refused with the file named
    import json

    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["state"]["features"] = ["q50"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ReadError, match="features"):
        Detector.load(tmp_path / "m")


def test_bad_input_gives_medad_errors():
    from medad.detectors.lung_ct import LungCTDetector

    with pytest.raises(InputError, match="2D slices"):
        LungCTDetector().fit(np.zeros((4, 1, 8, 8, 8), np.float32))
    with pytest.raises(InputError, match="NaN"):
        LungCTDetector().fit(np.full((4, 1, S, S), np.nan, np.float32))
    with pytest.raises(ConfigError, match="method"):
        LungCTDetector(method="cosine").fit(_batch(4, 9))
    with pytest.raises(InputError, match="2D slice"):
        segment_lungs(np.zeros(50, np.float32))
    # a flat picture is not an error: nothing found, features still finite
    seg = segment_lungs(np.full((S, S), 0.3, np.float32))
    assert not seg.found
    det = LungCTDetector(image_size=S).fit(_batch(10, 10))
    assert np.isfinite(det.score(np.full((1, 1, S, S), 0.3, np.float32)).score).all()


def test_real_covid_ct_slices_are_segmented():
    root = data_root(required=False)
    folder = None if root is None else root / "ct" / "covid_ct_256" / "CT_NonCOVID"
    if folder is None or not folder.is_dir():
        pytest.skip("COVID-CT data not found under the data root (set MEDAD_DATA_ROOT)")
    import cv2

    from medad.io.images import read_image

    files = sorted(folder.glob("*.png"))[:12]
    found = []
    for f in files:
        im = cv2.resize(read_image(f, grey=True).data.astype(np.float32) / 255.0, (128, 128), interpolation=cv2.INTER_AREA)
        seg = segment_lungs(im)
        found.append(seg.found and 0.1 < seg.mask.mean() < 0.8 and seg.tissue > seg.air)
    assert np.mean(found) >= 0.75
