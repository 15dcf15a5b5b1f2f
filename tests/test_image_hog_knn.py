"""``hog_knn`` (nearest normal image by histograms of oriented gradients): finds and localises an
inserted defect, is blind to brightness/contrast, banks mirror images, refuses bad options; its
brain-MRI use on real slices; the image-screening bench helpers it relies on."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("cv2")
pytest.importorskip("skimage")

from medad import registry  # noqa: E402
from medad.errors import ConfigError, InputError  # noqa: E402
from medad.evaluation import auroc  # noqa: E402

SIZE = 64


def _heads(n: int, seed: int) -> np.ndarray:
    """Grey 'head slices': a bright ring (skull) around a textured ellipse (brain) of random
    size, position and contrast, on a dark background: ``(n, 1, SIZE, SIZE)``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    out = np.zeros((n, 1, SIZE, SIZE), np.float32)
    for i in range(n):
        cy, cx = SIZE / 2 + rng.uniform(-3, 3, 2)
        ry, rx = rng.uniform(22, 27), rng.uniform(18, 23)
        r = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
        folds = 0.08 * np.sin(xx / 2.5 + rng.uniform(0, 6)) * np.cos(yy / 3.0)
        im = np.where(r < 0.85, 0.45 + folds, 0.0) + np.where((r >= 0.85) & (r < 1.0), 0.9, 0.0)
        out[i, 0] = np.clip(im * rng.uniform(0.8, 1.1) + rng.normal(0, 0.01, im.shape), 0, 1)
    return out


def _with_defect(x: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A bright round 'lesion' (radius 6 px) inside the brain of every image; returns images and masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    x = x.copy()
    masks = np.zeros((len(x), SIZE, SIZE), bool)
    for i in range(len(x)):
        cy, cx = SIZE / 2 + rng.uniform(-8, 8, 2)
        m = (yy - cy) ** 2 + (xx - cx) ** 2 < 36
        x[i, 0][m] = 0.95
        masks[i] = m
    return x, masks


def test_hog_knn_finds_and_localises_an_inserted_defect():
    train, normal = _heads(60, 0), _heads(16, 1)
    abnormal, masks = _with_defect(_heads(16, 2), seed=3)
    det = registry.create("hog_knn", cell=8).fit(train)
    rn, ra = det.score(normal), det.score(abnormal)
    assert auroc(np.r_[np.zeros(16), np.ones(16)], np.r_[rn.score, ra.score]) >= 0.9
    assert ra.map.shape == (16, SIZE, SIZE)
    assert auroc(masks.ravel(), ra.map.ravel()) >= 0.75  # the map points at the lesion


def test_hog_knn_ignores_brightness_and_contrast():
    train, normal = _heads(60, 0), _heads(16, 1)
    det = registry.create("hog_knn").fit(train)
    dimmer = 0.6 * normal + 0.02  # another scanner's intensity scale
    s0, s1 = det.score(normal).score, det.score(dimmer).score
    # gradient histograms are normalised per block: a global rescale barely moves the score
    assert np.abs(s1 - s0).max() < 0.1 * s0.mean()
    assert auroc(np.r_[np.zeros(16), np.ones(16)], np.r_[s0, s1]) < 0.75


def test_hog_knn_banks_mirror_images(tmp_path):
    train = _heads(20, 0)
    train[:, :, :, : SIZE // 3] *= 0.3  # a one-sided feature, so mirror images differ
    flip = registry.create("hog_knn").fit(train)
    plain = registry.create("hog_knn", flip=False).fit(train)
    assert len(flip.bank_) == 2 * len(train) and len(plain.bank_) == len(train)
    mirrored = np.ascontiguousarray(train[..., ::-1])
    assert flip.score(mirrored).score.max() < 0.1  # a mirrored training image is in the bank (cdist rounding)
    assert plain.score(mirrored).score.min() > 1.0
    # saved and loaded without pickle: the same scores
    flip.save(tmp_path / "m")
    again = type(flip).load(tmp_path / "m")
    np.testing.assert_allclose(again.score(train[:4]).score, flip.score(train[:4]).score, rtol=1e-6)


def test_hog_knn_bad_input_and_options():
    x = _heads(8, 0)
    with pytest.raises(ConfigError, match="median"):
        registry.create("hog_knn", median=4).fit(x)
    with pytest.raises(ConfigError, match="cell"):
        registry.create("hog_knn", image_size=8, cell=8).fit(x)
    with pytest.raises(InputError, match="2D images"):
        registry.create("hog_knn").fit(x[:, 0])
    det = registry.create("hog_knn").fit(x)
    with pytest.raises(InputError, match="fitted on items with 1 channels; got 3"):
        det.score(np.repeat(x, 3, axis=1))


def test_hog_knn_on_real_brain_slices():
    """Real slices: a small bank of `train/notumor` ranks glioma slices above held-out notumor ones."""
    from medad.config import data_root

    root = data_root(required=False)
    folder = None if root is None else root / "mri" / "brain_tumor_mri_4class"
    if folder is None or not (folder / "train" / "notumor").is_dir():
        pytest.skip("brain_tumor_mri_4class not found under the data root")
    from medad.bench.image_screening import _load_images

    def load(part: str, n: int) -> np.ndarray:
        return _load_images(sorted((folder / part).glob("*.png"))[:n], 128, grey=True)

    det = registry.create("hog_knn").fit(load("train/notumor", 300))
    s_n, s_g = det.score(load("validation/notumor", 60)).score, det.score(load("validation/glioma", 60)).score
    assert auroc(np.r_[np.zeros(60), np.ones(60)], np.r_[s_n, s_g]) >= 0.8


def test_bench_feeds_each_detector_its_own_input_size():
    from medad.bench import image_screening as bench

    specs = {"pca": ("pca", {"n_components": 2, "image_size": 8}), "hog_knn": ("hog_knn", {"image_size": 16, "cell": 4})}
    seen = {}

    def load(side):
        return tuple(np.random.default_rng(i).random((n, 1, side, side), dtype=np.float32)
                     for i, n in enumerate((12, 4, 6)))

    def evaluate(test, name, det, score):
        seen[name] = test.shape[-1]
        return {"n": len(score(test).score)}

    out = bench._runs_by_size("t", specs, 32, {32: load(32)}, load, evaluate, None)
    assert list(out) == ["pca", "hog_knn"]  # the order of specs
    assert seen == {"pca": 32, "hog_knn": bench.INPUT_SIZE["hog_knn"]}
    assert "pca" not in bench._runs_by_size("t", specs, 32, {}, load, evaluate, ["hog_knn"])
    blanked = bench._blank_centre(np.ones((1, 1, 8, 8)))
    assert blanked[0, 0, 2:6, 2:6].sum() == 0 and blanked.sum() == 48


def test_kvasir_frame_settings_extend_the_common_patchstats_settings():
    from medad.bench import image_screening as bench

    common = bench._specs("wce", False, 100)["patchstats"][1]
    kvasir = bench._kvasir_frame_specs(False)["patchstats"][1]
    assert {k: v for k, v in kvasir.items() if k in common} == common
    assert kvasir["masked"] and not kvasir["texture"]
    # hog_knn runs where its input size is honoured (the grey MRI / CT slice tasks)
    assert {t for t in bench.ALL_TASKS if "hog_knn" in bench._specs(t, False, 100)} == {"brain", "covid"}


def test_near_copies_are_found_and_other_slices_are_not():
    from medad.bench.image_screening import _near_copies

    ref = _heads(10, 0)
    rng = np.random.default_rng(5)
    copies = np.clip(ref[:3] + rng.normal(0, 0.005, ref[:3].shape), 0, 1).astype(np.float32)  # re-saved copies
    others = _heads(5, 1)
    found = _near_copies(np.concatenate([copies, others]), ref)
    assert found.tolist() == [True] * 3 + [False] * 5
