"""Image-screening detectors (pca, svdd, cutpaste, patchcore, patchstats, classifier) on small synthetic
images: each must find an inserted defect; structural checks for Deep SVDD and PatchCore."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from medad import registry  # noqa: E402
from medad.detectors.base import Detector  # noqa: E402
from medad.evaluation import auroc  # noqa: E402

SIZE = 32


def _normal_images(n: int, channels: int, seed: int) -> np.ndarray:
    """Smooth 'tissue': a tilted shading plus low-frequency blobs and fine noise, per channel."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    out = np.empty((n, channels, SIZE, SIZE), np.float32)
    for i in range(n):
        low = rng.normal(size=(4, 4))
        blob = np.kron(low, np.ones((SIZE // 4, SIZE // 4)))
        tilt = rng.uniform(-0.1, 0.1) * xx + rng.uniform(-0.1, 0.1) * yy
        for c in range(channels):
            out[i, c] = 0.5 + 0.05 * c + tilt + 0.03 * blob + rng.normal(0, 0.02, (SIZE, SIZE))
    return out


def _with_defects(x: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Insert a bright 7x7 square at a random place in every image; returns (images, masks)."""
    rng = np.random.default_rng(seed)
    x = x.copy()
    masks = np.zeros((len(x), SIZE, SIZE), bool)
    for i in range(len(x)):
        r, c = rng.integers(4, SIZE - 11, size=2)
        x[i, :, r:r + 7, c:c + 7] += 0.35
        masks[i, r:r + 7, c:c + 7] = True
    return x, masks


# fast but trained enough to see a 7x7 defect on 32x32 images
FAST = {
    "pca": {"n_components": 0.95, "image_size": 32},
    "svdd": {"image_size": 32, "channels": (8, 16), "rep_dim": 16, "epochs": 8, "pretrain_epochs": 3,
             "batch_size": 16},
    "cutpaste": {"image_size": 32, "channels": (16, 32, 64), "epochs": 25, "batch_size": 16, "lr": 1e-3},
    "patchcore": {"image_size": 32, "channels": (16, 32), "layers": (0, 1), "epochs": 2, "batch_size": 32,
                  "coreset_ratio": 0.1, "max_patches": 4000},
    "patchstats": {"image_size": 32, "scales": (2, 4, 8), "stride": 2, "max_patches": 4000, "top_fraction": 0.1},
}


@pytest.fixture(scope="module")
def data():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small nets: one thread is faster than two on a shared machine
    train = _normal_images(64, 3, seed=0)
    normal_test = _normal_images(16, 3, seed=1)
    abnormal, masks = _with_defects(_normal_images(16, 3, seed=2), seed=3)
    yield train, normal_test, abnormal, masks
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", sorted(FAST))
def test_one_class_detector_finds_inserted_defect(name, data, tmp_path):
    train, normal_test, abnormal, masks = data
    det = registry.create(name, **FAST[name], **({"device": "cpu"} if name not in ("pca", "patchstats") else {}))
    if hasattr(det, "train_options"):
        det.train_options = {"progress": False}
    det.fit(train)
    res_n, res_a = det.score(normal_test), det.score(abnormal)
    y = np.r_[np.zeros(len(normal_test)), np.ones(len(abnormal))]
    assert auroc(y, np.r_[res_n.score, res_a.score]) >= 0.9, name
    assert res_a.map.shape == (len(abnormal), SIZE, SIZE)
    if name != "svdd":  # svdd's gradient map is a saliency, not a segmentation: image level only
        assert auroc(masks.ravel(), res_a.map.ravel()) >= 0.75, name
    # calibrated on healthy data, saved, loaded: identical scores
    det.calibrate(normal_test, fpr=0.1)
    det.save(tmp_path / name)
    again = Detector.load(tmp_path / name)
    np.testing.assert_allclose(again.score(abnormal).score, res_a.score, rtol=1e-5, atol=1e-6)


def test_grey_images_work_for_every_one_class_detector(data):
    train = data[0][:16, :1]
    for name, params in FAST.items():
        p = {**params, "epochs": 1} if "epochs" in params else params
        det = registry.create(name, **p)
        if hasattr(det, "train_options"):
            det.train_options = {"progress": False}
        res = det.fit(train).score(train[:4])
        assert res.score.shape == (4,) and np.isfinite(res.score).all()
        assert res.map.shape == (4, SIZE, SIZE)


def test_svdd_network_has_no_bias_and_fixed_centre(data):
    from torch import nn

    train = data[0][:48]
    det = registry.create("svdd", image_size=32, channels=(8, 16), rep_dim=16, epochs=2, pretrain_epochs=1,
                          device="cpu")
    det.train_options = {"progress": False}
    c_before = None

    det.fit(train)
    net = det.net_
    for name, p in net.named_parameters():
        assert not name.endswith("bias"), f"Deep SVDD has a bias parameter: {name}"
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            assert m.bias is None
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            assert not m.affine
        assert not isinstance(m, (nn.Sigmoid, nn.Tanh)), "bounded activations let Deep SVDD collapse"
    names = dict(net.named_parameters())
    assert "c" not in names and not any(n.endswith(".c") for n in names)
    assert "c" in dict(net.named_buffers())
    c_before = net.c.clone()
    assert torch.all(net.c.abs() >= 0.1 - 1e-6)  # pushed away from 0, as in Ruff et al.
    # the centre is the mean of the initial outputs: training (more epochs) leaves it unchanged
    det2 = registry.create("svdd", image_size=32, channels=(8, 16), rep_dim=16, epochs=4, pretrain_epochs=1,
                           device="cpu")
    det2.train_options = {"progress": False}
    det2.fit(train)
    torch.testing.assert_close(det2.net_.c, c_before)


@pytest.mark.parametrize("ratio", [0.05, 0.25])
def test_patchcore_bank_size_follows_coreset_ratio(data, ratio):
    train = data[0][:20]
    det = registry.create("patchcore", backbone="random", image_size=32, channels=(8, 16), layers=(0, 1),
                          coreset_ratio=ratio, max_patches=10**6, device="cpu")
    det.fit(train)
    n_patches = len(train) * (SIZE // 2) ** 2  # features on the grid of the first stage (stride 2)
    assert det.n_pooled_ == n_patches
    assert det.bank_.shape[0] == math.ceil(ratio * n_patches)


def test_greedy_coreset_covers_clusters():
    from medad.detectors.patchcore import greedy_coreset

    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    pts = torch.cat([c + 0.1 * torch.randn(50, 2, generator=g) for c in centres])
    idx = greedy_coreset(pts, 4)
    assert len(set(idx.tolist())) == 4
    assert sorted({int(i) // 50 for i in idx}) == [0, 1, 2, 3]  # one point from each cluster


def test_classifier_binary_and_multiclass(data):
    train, normal_test, abnormal, _ = data
    rng = np.random.default_rng(5)
    dark = _normal_images(48, 3, seed=7)
    for i in range(len(dark)):
        r, c = rng.integers(4, SIZE - 11, size=2)
        dark[i, :, r:r + 7, c:c + 7] -= 0.35
    bright, _ = _with_defects(_normal_images(48, 3, seed=8), seed=9)
    x = np.concatenate([train[:48], bright, dark])
    y = np.r_[np.zeros(48), np.ones(48), 2 * np.ones(48)].astype(int)
    det = registry.create("classifier", image_size=32, epochs=8, batch_size=32, lr=3e-3, device="cpu")
    det.train_options = {"progress": False}
    det.fit(x, y=y)
    assert det.n_classes_ == 3
    s = np.r_[det.score(normal_test).score, det.score(abnormal).score]
    assert auroc(np.r_[np.zeros(16), np.ones(16)], s) >= 0.9
    p = det.predict_proba(abnormal)
    assert p.shape == (16, 3) and np.allclose(p.sum(1), 1, atol=1e-5)
    assert (p.argmax(1) == 1).mean() >= 0.75  # bright defects recognised as class 1, not 2

    # imbalanced binary set: balanced class weights
    det_b = registry.create("classifier", image_size=32, epochs=8, batch_size=32, lr=3e-3, device="cpu")
    det_b.train_options = {"progress": False}
    det_b.fit(np.concatenate([train, bright[:16]]), y=np.r_[np.zeros(len(train)), np.ones(16)].astype(int))
    assert det_b._weights[1] > det_b._weights[0]
    assert det_b.score(abnormal).score.mean() > det_b.score(normal_test).score.mean()


def test_classifier_rejects_labels_without_normal_class(data):
    from medad.errors import InputError

    det = registry.create("classifier", image_size=32, epochs=1)
    with pytest.raises(InputError):
        det.fit(data[0][:8], y=np.ones(8, int))


def test_bench_tiled_scoring_maps_whole_frames(data):
    """The benchmark scores fixed-size detectors on whole frames by tiling: the map must cover
    the frame and peak at the defect."""
    from medad.bench.image_screening import _normal_patches, _tiled_score

    train = data[0]
    frames = np.concatenate([np.concatenate([train[i], train[i + 1]], axis=2) for i in range(0, 8, 2)], 0)
    frames = frames.reshape(4, 3, SIZE, 2 * SIZE)
    masks = np.zeros((4, SIZE, 2 * SIZE), bool)
    masks[:, 10:20, 40:50] = True
    frames[:, :, 10:20, 40:50] += 0.35
    patches = _normal_patches(frames, masks, 16, 8, dilate=2)
    assert len(patches) > 0
    det = registry.create("pca", n_components=0.95, image_size=16).fit(patches)
    res = _tiled_score(det, frames, 16, 8)
    assert res.map.shape == (4, SIZE, 2 * SIZE) and res.score.shape == (4,)
    assert auroc(masks.ravel(), res.map.ravel()) > 0.9
