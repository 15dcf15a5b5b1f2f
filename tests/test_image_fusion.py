"""Map fusion of image detectors (``map_fusion``): each member's map standardised on healthy
pixels only, then a weighted mean; seed ensembles; save/load without pickle; the Kvasir
fusion config through the frames pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medad.detectors.base import Detector
from medad.detectors.fusion import MapFusion, member_specs, reference_stats, standardise
from medad.errors import ConfigError, NotFittedError, ReadError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MEMBERS = [{"detector": "intensity", "params": {"median_size": 3}},
           {"detector": "pca", "params": {"n_components": 4}}]


def _images(n: int, seed: int, defect: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Grey 32 px images: smooth pattern + noise; with ``defect`` a bright 8 px square each."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32]
    x = (0.5 + 0.2 * np.sin(xx / 3.0) * np.cos(yy / 4.0))[None, None] + rng.normal(0, 0.05, (n, 1, 32, 32))
    masks = np.zeros((n, 32, 32), bool)
    if defect:
        for i in range(n):
            r, c = rng.integers(4, 20, size=2)
            x[i, 0, r:r + 8, c:c + 8] += 0.6
            masks[i, r:r + 8, c:c + 8] = True
    return x.astype(np.float32), masks


def _fitted(standardise_: str = "robust", weights=(0.3, 0.7)) -> tuple[MapFusion, np.ndarray, np.ndarray]:
    healthy, _ = _images(40, 0)
    ref, _ = _images(12, 1)
    fg = np.ones((12, 32, 32), bool)
    fg[:, :4] = False  # a 'non-healthy' band left out of the reference
    det = MapFusion(MEMBERS, weights=list(weights), standardise=standardise_, reference_fraction=0)
    det.fit(healthy)
    with pytest.raises(NotFittedError):  # no reference yet: no scores
        det.score(ref)
    det.set_reference(ref, fg)
    return det, ref, fg


def test_rank_standardisation_is_the_healthy_cdf():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=20000)
    q = reference_stats(ref, "rank", 2049)
    t = np.sort(rng.normal(size=300))
    f = standardise(t, q, "rank")
    np.testing.assert_allclose(f, (ref[:, None] < t).mean(0), atol=3e-3)
    assert np.all(np.diff(f) >= 0)
    # values beyond every healthy one stay ordered (not all 1)
    far = standardise(np.array([ref.max() + 1, ref.max() + 2]), q, "rank")
    assert 1 < far[0] < far[1]
    # ties (a mass of zeros, e.g. the background) get the middle of their share
    q0 = reference_stats(np.r_[np.zeros(500), rng.uniform(1, 2, 500)], "rank", 1001)
    assert standardise(np.array([0.0]), q0, "rank")[0] == pytest.approx(0.25, abs=2e-3)
    with pytest.raises(ConfigError):
        reference_stats(ref, "zscore")


def test_fused_map_is_the_weighted_mean_of_healthy_standardised_maps():
    det, ref, fg = _fitted("robust")
    test, _ = _images(6, 2, defect=True)
    res = det.score(test)
    expected = np.zeros(test.shape[:1] + test.shape[2:])
    for m, w in zip(det.members_, (0.3, 0.7)):
        healthy = m.score(ref).map[fg]  # only the healthy pixels set the statistics
        q75, med, q25 = np.percentile(healthy, [75, 50, 25])
        expected += w * (m.score(test).map - med) / ((q75 - q25) / 1.349)
    np.testing.assert_allclose(res.map, expected, rtol=1e-4, atol=1e-4)
    flat = np.sort(expected.reshape(len(test), -1), axis=1)[:, ::-1]
    k = int(round(0.01 * flat.shape[1]))
    np.testing.assert_allclose(res.score, flat[:, :k].mean(1), rtol=1e-4)  # image score: top 1 % of the map

    rank, ref, fg = _fitted("rank", weights=(1, 1))
    got = rank.score(test).map
    cdf = np.zeros_like(expected)
    for m in rank.members_:
        healthy = np.sort(m.score(ref).map[fg])
        v = m.score(test).map
        lo, hi, span = healthy[0], healthy[-1], healthy[-1] - healthy[0]
        # share of healthy pixels below; past the healthy range continued linearly (slope 1 / range)
        cdf += 0.5 * np.where(v > hi, 1 + (v - hi) / span, np.where(v < lo, (v - lo) / span,
                                                                      np.searchsorted(healthy, v) / len(healthy)))
    np.testing.assert_allclose(got, cdf, atol=2e-3)  # the table is exact up to its quantile spacing


def test_map_fusion_finds_a_defect_and_round_trips(tmp_path):
    from medad.evaluation import auroc

    det, ref, fg = _fitted("rank")
    test, masks = _images(8, 3, defect=True)
    res = det.calibrate(ref, fpr=0.1, foreground=fg).predict(test)
    assert auroc(masks.ravel(), res.map.ravel()) > 0.9
    assert res.score.min() > det.threshold_  # every defect image flagged
    path = det.save(tmp_path / "fusion")
    assert not list(path.glob("*.pkl"))
    loaded = Detector.load(path)
    assert isinstance(loaded, MapFusion) and loaded.threshold_ == det.threshold_
    np.testing.assert_allclose(loaded.score(test).map, res.map, rtol=1e-6)
    for a, b in zip(loaded.stats_, det.stats_):
        np.testing.assert_array_equal(a, b)
    # a config naming other members than the saved state is refused
    cfg = json.loads((path / "config.json").read_text())
    cfg["params"]["members"] = cfg["params"]["members"][:1]
    cfg["params"]["weights"] = [1.0]
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ReadError):
        Detector.load(path)


def test_member_specs_seed_ensemble_and_bad_configs():
    specs = member_specs([{"detector": "cutpaste", "params": {"epochs": 1}, "seeds": [0, 1, 2]},
                          {"detector": "patchstats"}], [0.6, 0.4])
    assert [s[1].get("seed") for s in specs] == [0, 1, 2, None]
    np.testing.assert_allclose([s[2] for s in specs], [0.2, 0.2, 0.2, 0.4])
    with pytest.raises(ConfigError):
        member_specs([{"detector": "pca"}], [1.0, 2.0])
    with pytest.raises(ConfigError):
        member_specs([{"detector": "pca", "param": {}}], None)
    with pytest.raises(ConfigError):
        MapFusion([{"detector": "pca"}], standardise="minmax").fit(_images(8, 0)[0])


def test_fit_holds_out_a_reference_share():
    x, _ = _images(20, 0)
    det = MapFusion(MEMBERS, reference_fraction=0.25).fit(x)
    assert det.stats_ is not None and len(det.stats_) == 2
    assert det.members_[1].get_params()["n_components"] == 4  # members built from the specs


def test_polyp_fusion_config_trains_and_screens_through_the_frames_pipeline(tmp_path):
    """configs/images_fusion_polyp.yaml, with tiny training settings, through `medad images train`'s
    pipeline and back through screening (the saved model loads)."""
    import cv2

    from pipelines.frames import FramesConfig, screen_frames, train_frames

    cfg = FramesConfig.from_yaml(CONFIGS / "images_fusion_polyp.yaml")
    assert cfg.detector == "map_fusion"
    specs = member_specs(cfg.detector_params["members"], cfg.detector_params["weights"])
    assert [s[0] for s in specs].count("cutpaste") >= 2 and specs[-1][0] == "patchstats"
    small = {"cutpaste": {"epochs": 1, "channels": [4, 8], "image_size": 16, "batch_size": 4},
             "patchstats": {"max_patches": 500}}
    cfg.detector_params = {**cfg.detector_params, "members": [
        {**m, "params": {**m.get("params", {}), **small[m["detector"]]}} for m in cfg.detector_params["members"]]}
    cfg.image_size = 32
    rng = np.random.default_rng(0)
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(10):
        img = np.full((40, 40, 3), (200, 110, 100), np.uint8) + rng.integers(0, 20, (40, 40, 3), dtype=np.uint8)
        cv2.imwrite(str(frames / f"f{i:02d}.png"), img)
    det = train_frames(frames, tmp_path / "model", cfg, progress=False)
    assert isinstance(det, MapFusion) and len(det.members_) == len(specs)
    summary = screen_frames(tmp_path / "model", frames, tmp_path / "out", overlays=False)
    assert summary["n_frames_screened"] == 10


def test_cutpaste_tta_map_turns_with_the_image():
    """With ``tta`` the map of a turned / mirrored frame is the turned map (8 views averaged);
    without it, it is not."""
    torch = pytest.importorskip("torch")
    from medad import registry

    x, _ = _images(12, 0)
    x = np.repeat(x, 3, axis=1)
    torch.manual_seed(0)
    det = registry.create("cutpaste", image_size=16, channels=(4, 8), epochs=1, batch_size=4, rotate=True,
                          smooth_sigma=0.0).fit(x)
    turned = np.ascontiguousarray(np.rot90(x[:3], 1, (2, 3))[..., ::-1])
    assert not np.allclose(det.score(turned).map, np.rot90(det.score(x[:3]).map, 1, (1, 2))[..., ::-1], atol=1e-4)
    det.tta = True
    np.testing.assert_allclose(det.score(turned).map, np.rot90(det.score(x[:3]).map, 1, (1, 2))[..., ::-1],
                               atol=1e-5)


def test_epochs_override_reaches_the_members_that_train_in_epochs():
    """`medad images train --epochs N` with a map-fusion config: the members that train in epochs
    get N (the fusion itself has no epochs parameter), the others are left as they are."""
    from pathlib import Path

    from medad.detectors.fusion import with_epochs
    from medad.errors import ConfigError
    from pipelines.frames import FramesConfig

    cfg = FramesConfig.from_yaml(Path(__file__).resolve().parents[1] / "configs" / "images_fusion_polyp.yaml")
    out = with_epochs(cfg.detector, cfg.detector_params, 2)
    got = {m["detector"]: (m.get("params") or {}).get("epochs") for m in out["members"]}
    assert got == {"cutpaste": 2, "patchstats": None}
    assert with_epochs("ae", {"lr": 1e-3}, 3) == {"lr": 1e-3, "epochs": 3}
    with pytest.raises(ConfigError, match="no member"):
        with_epochs("map_fusion", {"members": [{"detector": "pca"}]}, 2)
