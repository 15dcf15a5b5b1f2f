"""Classical image detectors without networks. ``patchstats`` (hand-crafted multi-scale patch
descriptors in a memory bank): frame-relative colour ignores a whole-frame colour cast, background
cells stay out of the bank, the position feature makes the bank position-aware, masked box
statistics find a lesion rather than a black border. ``pca`` with
``method="knn"`` and ``normalize="robust"``: nearest normal image, blind to brightness/contrast.
Also the benchmark's merge of partial runs."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("cv2")

from medad import registry  # noqa: E402
from medad.evaluation import auroc  # noqa: E402

SIZE = 32
FAST = {"image_size": SIZE, "scales": (2, 4, 8), "stride": 2, "max_patches": 3000}


def _tissue(n: int, seed: int) -> np.ndarray:
    """Pinkish RGB 'mucosa' with low-frequency blobs and fine noise."""
    rng = np.random.default_rng(seed)
    base = np.array([0.7, 0.45, 0.4], np.float32)[None, :, None, None]
    blob = np.kron(rng.normal(size=(n, 1, 4, 4)), np.ones((1, 1, SIZE // 4, SIZE // 4)))
    return (base + 0.03 * blob + rng.normal(0, 0.015, (n, 3, SIZE, SIZE))).astype(np.float32)


def _add_lesion(x: np.ndarray, seed: int, rc: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A dark red 6x6 spot (bleeding-like) per image; returns (images, masks)."""
    rng = np.random.default_rng(seed)
    x = x.copy()
    masks = np.zeros((len(x), SIZE, SIZE), bool)
    for i in range(len(x)):
        r, c = rc if rc is not None else rng.integers(4, SIZE - 10, size=2)
        x[i, :, r:r + 6, c:c + 6] = np.array([0.55, 0.12, 0.12])[:, None, None]
        masks[i, r:r + 6, c:c + 6] = True
    return x, masks


def test_frame_relative_colour_ignores_a_global_cast_but_finds_lesions():
    train, normal = _tissue(40, 0), _tissue(12, 1)
    cast = normal.copy()
    cast[:, 2] += 0.12  # another camera/light: the whole frame bluer
    lesion, masks = _add_lesion(cast, seed=2)
    y = np.r_[np.zeros(12), np.ones(12)]
    s_abs = registry.create("patchstats", relative="absolute", texture=False, **FAST).fit(train)
    s_rel = registry.create("patchstats", relative="frame", texture=False, **FAST).fit(train)
    # absolute colour flags every cast frame; frame-relative colour does not
    assert auroc(y, np.r_[s_abs.score(normal).score, s_abs.score(cast).score]) > 0.95
    assert auroc(y, np.r_[s_rel.score(normal).score, s_rel.score(cast).score]) < 0.8
    # ... and frame-relative colour still finds and localises lesions on cast frames
    r = s_rel.score(lesion)
    assert auroc(y, np.r_[s_rel.score(cast).score, r.score]) >= 0.9
    assert auroc(masks.ravel(), r.map.ravel()) >= 0.85


def test_background_cells_stay_out_of_the_bank():
    train = _tissue(10, 3)
    train[:, :, :, : SIZE // 2] = 0.0  # left half blacked out (e.g. a known lesion removed)
    det = registry.create("patchstats", **{**FAST, "max_patches": 10**6}).fit(train)
    cells_per_image = (SIZE // 2) ** 2
    assert det.patches_per_image_ == cells_per_image
    assert det.n_pooled_ == len(train) * cells_per_image // 2
    assert len(det.bank_) == det.n_pooled_  # coreset_ratio 1: every pooled cell kept


def _black_corner(x: np.ndarray, seed: int) -> np.ndarray:
    """A 10x10 black box (an endoscope's inset/border) in a random corner of every frame."""
    rng = np.random.default_rng(seed)
    x = x.copy()
    for i in range(len(x)):
        r, c = rng.choice([0, SIZE - 10], size=2)
        x[i, :, r:r + 10, c:c + 10] = 0.0
    return x


def test_masked_statistics_find_the_lesion_not_the_black_border():
    train = _black_corner(_tissue(30, 7), seed=0)
    test = _black_corner(_tissue(10, 8), seed=1)
    masks = np.zeros((len(test), SIZE, SIZE), bool)
    rng = np.random.default_rng(3)
    for i in range(len(test)):  # a paler, yellower 6x6 bump (polyp-like), clear of the black boxes
        r, c = rng.integers(10, SIZE - 16, size=2)
        test[i, :, r:r + 6, c:c + 6] += np.array([0.06, 0.05, 0.0], np.float32)[:, None, None]
        masks[i, r:r + 6, c:c + 6] = True
    params = {**FAST, "texture": False}
    plain = registry.create("patchstats", **params).fit(train)
    masked = registry.create("patchstats", masked=True, **params).fit(train)
    rm = masked.score(test)
    # black cells were never in either bank; plainly described they look anomalous at test
    assert auroc(masks.ravel(), plain.score(test).map.ravel()) < 0.9
    assert auroc(masks.ravel(), rm.map.ravel()) >= 0.97
    assert (rm.map[test.mean(1) <= 0.05] == 0).all()  # background scores the lowest


def test_position_feature_makes_the_bank_position_aware():
    # normal: a lesion-like spot always top-left; test: the same spot bottom-right
    train, _ = _add_lesion(_tissue(30, 4), seed=0, rc=(2, 2))
    normal, _ = _add_lesion(_tissue(10, 5), seed=0, rc=(2, 2))
    moved, _ = _add_lesion(_tissue(10, 6), seed=0, rc=(SIZE - 8, SIZE - 8))
    y = np.r_[np.zeros(10), np.ones(10)]
    params = {**FAST, "top_fraction": 0.1}
    plain = registry.create("patchstats", **params).fit(train)
    posed = registry.create("patchstats", position_weight=3.0, **params).fit(train)
    assert auroc(y, np.r_[posed.score(normal).score, posed.score(moved).score]) >= 0.95
    assert auroc(y, np.r_[plain.score(normal).score, plain.score(moved).score]) < 0.8


def test_bad_options_are_config_errors():
    from medad.errors import ConfigError

    with pytest.raises(ConfigError):
        registry.create("patchstats", relative="sideways", **FAST).fit(_tissue(4, 0))
    with pytest.raises(ConfigError):
        registry.create("patchstats", top_fraction=0.0, **FAST).fit(_tissue(4, 0))


def test_bench_merge_keeps_other_methods_of_a_task():
    """A benchmark run of one detector merged with an earlier full run keeps the earlier run's
    other detectors (and whole tasks it did not run); its own figures win."""
    from medad.bench.image_screening import merge_tasks

    old = {"environment": {"date": "D0"},
           "tasks": {"wce": {"results": {"pca": {"auroc": 0.8}, "ae": {"auroc": 0.85}}},
                     "covid": {"results": {"pca": {"auroc": 0.6}}}}}
    tasks = {"wce": {"results": {"pca": {"auroc": 0.81}, "patchstats": {"auroc": 0.97}}}}
    merge_tasks(tasks, old, "old.json")
    assert list(tasks["wce"]["results"]) == ["pca", "ae", "patchstats"]
    assert tasks["wce"]["results"]["pca"] == {"auroc": 0.81}
    assert tasks["wce"]["merged_from"]["old.json"] == {"methods": ["ae"], "run_date": "D0"}
    assert tasks["covid"]["results"] == {"pca": {"auroc": 0.6}} and tasks["covid"]["merged_from"] == "old.json"
    # merged once more: every method keeps the run that made it, not the file it was read from
    again = {"wce": {"results": {"patchstats": {"auroc": 0.98}}}}
    merge_tasks(again, {"environment": {"date": "D1"}, "tasks": tasks}, "new.json")
    assert again["wce"]["merged_from"] == {"new.json": {"methods": ["pca"], "run_date": "D1"},
                                           "old.json": {"methods": ["ae"], "run_date": "D0"}}
    assert again["covid"]["merged_from"] == "old.json" and again["covid"]["run_date"] == "D0"


def test_border_distance_grows_inwards_from_the_tissue_edge():
    """The Kvasir geometry reference: 0 on the black border, largest in the tissue's middle,
    and a thin overlay line on the border is not tissue."""
    from medad.bench.image_screening import _border_distance

    x = np.zeros((1, 3, 40, 40), np.float32)
    x[:, :, 8:32, 8:32] = 0.6  # tissue square
    x[:, :, 2, 0:40] = 1.0  # one-pixel overlay line on the black border
    tissue, dist = _border_distance(x)
    assert not tissue[0, 2].any() and (dist[0][~tissue[0]] == 0).all()
    assert dist[0, 20, 20] == dist[0].max() > dist[0, 12, 20] > dist[0, 10, 20] > 0


def _views(n: int, seed: int) -> np.ndarray:
    """Grey 'scans' of two kinds of view (a disc or a bar on a dark background) plus pixel noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    out = np.zeros((n, 1, SIZE, SIZE), np.float32)
    for i in range(n):
        cy, cx = SIZE / 2, SIZE / 2
        if i % 2:
            shape = (yy - cy) ** 2 + (xx - cx) ** 2 < (SIZE * 0.35) ** 2
        else:
            shape = (np.abs(yy - cy) < SIZE * 0.15) & (np.abs(xx - cx) < SIZE * 0.4)
        tissue = 0.3 + 0.4 * (0.5 + 0.5 * np.sin(xx / 3.0))  # grey/white-matter-like bands
        out[i, 0] = shape * (tissue + rng.normal(0, 0.02, (SIZE, SIZE)))
    return out


def test_pca_knn_finds_defects_and_ignores_brightness_with_robust_normalisation(tmp_path):
    from medad.detectors.base import Detector

    train, normal = _views(40, 0), _views(12, 1)
    lesion = normal.copy()
    masks = np.zeros((12, SIZE, SIZE), bool)
    masks[:, 14:18, 14:18] = True
    lesion[:, 0][masks] = 0.95  # a bright spot inside either view
    brighter = normal * 1.6  # another scanner: same anatomy, other gain
    y = np.r_[np.zeros(12), np.ones(12)]
    det = registry.create("pca", image_size=SIZE, normalize="robust", method="knn").fit(train)
    r = det.score(lesion)
    assert auroc(y, np.r_[det.score(normal).score, r.score]) >= 0.95
    assert auroc(masks.ravel(), r.map.ravel()) >= 0.9
    assert auroc(y, np.r_[det.score(normal).score, det.score(brighter).score]) < 0.75
    plain = registry.create("pca", image_size=SIZE, method="knn").fit(train)
    assert auroc(y, np.r_[plain.score(normal).score, plain.score(brighter).score]) > 0.95
    det.save(tmp_path / "m")
    np.testing.assert_allclose(Detector.load(tmp_path / "m").score(lesion).score, r.score, rtol=1e-5)
    from medad.errors import ConfigError

    with pytest.raises(ConfigError, match="pca method must be one of"):
        registry.create("pca", method="nearest").fit(train)
