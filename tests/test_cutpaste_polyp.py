"""Polyp-like synthetic anomalies (``cutpaste`` with ``corruption="polyp"``): the bumps stay on
tissue, and a segmenter trained on them finds a raised bump inserted into synthetic 'tissue'
frames (pixel AUROC)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from medad import registry  # noqa: E402
from medad.detectors.cutpaste import synthesize_polyps  # noqa: E402
from medad.evaluation import auroc  # noqa: E402

SIZE = 48


def _frames(n: int, seed: int) -> np.ndarray:
    """Pinkish 'mucosa' with low-frequency shading and fine texture inside a dark octagon-ish border."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    inside = (np.abs(yy - 0.5) < 0.45) & (np.abs(xx - 0.5) < 0.45) & (np.abs(yy - 0.5) + np.abs(xx - 0.5) < 0.75)
    out = np.zeros((n, 3, SIZE, SIZE), np.float32)
    for i in range(n):
        shade = 0.8 + 0.2 * np.kron(rng.uniform(size=(3, 3)), np.ones((SIZE // 3, SIZE // 3)))
        for c, base in enumerate((0.75, 0.45, 0.4)):
            out[i, c] = np.where(inside, base * shade + rng.normal(0, 0.02, (SIZE, SIZE)), 0.0)
    return np.clip(out, 0, 1)


def _with_bumps(x: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A raised bump (paler dome, bright top, darker rim) of radius 6 px on each frame."""
    rng = np.random.default_rng(seed)
    x = x.copy()
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    masks = np.zeros((len(x), SIZE, SIZE), bool)
    for i in range(len(x)):
        cy, cx = rng.integers(16, SIZE - 16, size=2)
        r = np.hypot(yy - cy, xx - cx) / 6.0
        dome = np.sqrt(np.clip(1 - r ** 2, 0, None))
        x[i] = np.where(r < 1, np.clip(x[i] * (0.75 + 0.6 * dome) + 0.08, 0, 1), x[i])
        masks[i] = r < 1
    return x, masks


def test_polyp_bumps_stay_on_tissue():
    x = torch.from_numpy(_frames(8, 0))
    xa, mask = synthesize_polyps(x, p_anomaly=1.0, generator=torch.Generator().manual_seed(0))
    dark = x.mean(1, keepdim=True) <= 0.05
    assert mask.shape == (8, 1, SIZE, SIZE) and (mask.sum((1, 2, 3)) > 0).all()
    assert not mask.bool()[dark].any()  # labels only on tissue
    assert torch.equal(xa.expand_as(x)[dark.expand_as(x)], x[dark.expand_as(x)])  # border untouched
    assert (xa - x).abs().amax(1, keepdim=True)[mask.bool()].mean() > 0.02  # the bump changes its pixels
    _, none = synthesize_polyps(x, p_anomaly=0.0)
    assert none.sum() == 0


def test_polyp_trained_segmenter_finds_inserted_bump():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        det = registry.create("cutpaste", image_size=None, channels=(16, 32, 64), corruption="polyp", rotate=True,
                              area=(0.03, 0.2), mask_background=True, epochs=20, batch_size=16, lr=2e-3,
                              device="cpu")
        det.train_options = {"progress": False}
        det.fit(_frames(48, 2))
        abnormal, masks = _with_bumps(_frames(12, 3), seed=4)
        res = det.score(abnormal)
    finally:
        torch.set_num_threads(threads)
    assert res.map.shape == masks.shape
    assert res.map[abnormal.mean(1) <= 0.05].max() == 0  # mask_background: nothing off tissue
    assert auroc(masks.ravel(), res.map.ravel()) >= 0.85
