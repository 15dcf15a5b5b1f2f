"""Brain-lesion ensembles: members trained and calibrated on their own, the ensemble's map is the
mean of their threshold-scaled maps, calibrated again; saved and loaded without pickle; configs
that cannot work are refused with a clear error."""

from __future__ import annotations

import numpy as np
import pytest
from test_pipeline_brain import _write_scan

from medad.errors import ConfigError
from pipelines.brain_lesions import (
    BrainLesionConfig, BrainModel, find_scans, fit_brain_model, prepare_scan, read_brain_config, train_brain,
)

PREP = {"spacing": 2.0, "slice_spacing": 2.0, "size": 48, "min_brain_pixels": 50}
INTENSITY = {"detector": "intensity", "detector_params": {"median_size": 1}, "preprocessing": PREP}
AE = {"detector": "ae", "preprocessing": PREP,
      "detector_params": {"spatial_dims": 2, "channels": [8, 16], "strides": [2, 2], "latent_channels": 8,
                          "epochs": 2, "batch_size": 8, "lr": 3e-3, "device": "cpu"}}


def test_ensemble_trains_members_scores_and_reloads(tmp_path):
    healthy = tmp_path / "healthy"
    healthy.mkdir()
    for i in range(4):
        _write_scan(healthy, f"h{i}", seed=i)
    cfg = BrainLesionConfig(detector="ensemble", members=[INTENSITY, AE], mask_pattern="{stem}_brainmask.nii.gz",
                            val_fraction=0.25, min_lesion_voxels=5)
    assert cfg.prep.size == 48  # the members' preprocessing became the ensemble's
    path = train_brain(healthy, tmp_path / "model", cfg, progress=False)
    model = BrainModel.load(path)
    assert [m.config.detector for m in model.members] == ["intensity", "ae"] and model.detector is None
    assert model.voxel_threshold is not None and all(m.voxel_threshold for m in model.members)
    scans = tmp_path / "scans"
    scans.mkdir()
    les = np.flip(_write_scan(scans, "patient", seed=10, lesion=True), axis=(0, 1))  # LPS -> RAS
    vol = prepare_scan(find_scans(scans, mask_pattern=cfg.mask_pattern)[0], cfg.prep)
    amap = model.volume_map(vol)
    parts = [m.volume_map(vol) / m.voxel_threshold for m in model.members]
    np.testing.assert_allclose(amap, (parts[0] + parts[1]) / 2, rtol=1e-5, atol=1e-6)
    model.config.combine = "median"  # of 2 members the median is their mean too; of 3 the middle one
    np.testing.assert_allclose(model.volume_map(vol), amap, rtol=1e-5, atol=1e-6)
    model.members.append(model.members[0])
    np.testing.assert_allclose(model.volume_map(vol), np.median(parts + [parts[0]], axis=0), rtol=1e-5, atol=1e-6)
    inside = model.support(vol) & ~les
    assert amap[les].mean() > 2 * amap[inside].mean()
    assert model.segment(amap, model.support(vol))[les].mean() > 0.5


def test_fitted_models_are_reused(tmp_path):
    """A benchmark running members and their ensemble fits each member once."""
    healthy = tmp_path / "healthy"
    healthy.mkdir()
    for i in range(3):
        _write_scan(healthy, f"h{i}", seed=i)
    scans = find_scans(healthy, mask_pattern="{stem}_brainmask.nii.gz")
    single = BrainLesionConfig(**INTENSITY)
    vols = [prepare_scan(s, single.prep) for s in scans]
    fitted: dict = {}
    m1 = fit_brain_model(single, vols[:2], vols[2:], progress=False, fitted=fitted)
    other = BrainLesionConfig(**{**INTENSITY, "detector_params": {"median_size": 3}})
    ens = fit_brain_model(BrainLesionConfig(detector="ensemble", members=[INTENSITY, other.to_dict()]),
                          vols[:2], vols[2:], progress=False, fitted=fitted)
    assert ens.members[0] is m1 and len(fitted) == 3
    # where it was trained is recorded (the benchmark keeps GPU-trained rows out of the CPU budget)
    assert m1.info["trained_on"].startswith("CPU") and ens.info["trained_on"] == m1.info["trained_on"]
    from pipelines.brain_lesions import config_key

    # settings left at their defaults do not enter the key (a setting added later keeps old keys valid)
    assert config_key(single) == config_key(BrainLesionConfig(**INTENSITY, combine="mean"))
    assert config_key(single) != config_key(BrainLesionConfig(**INTENSITY, pixel_fpr=0.001))


def test_ensemble_configs_refused_and_read_from_yaml(tmp_path):
    with pytest.raises(ConfigError, match="at least 2 members"):
        BrainLesionConfig(detector="ensemble", members=[INTENSITY])
    with pytest.raises(ConfigError, match="preprocesses differently"):
        BrainLesionConfig(detector="ensemble", members=[INTENSITY, {**AE, "preprocessing": {**PREP, "size": 64}}])
    with pytest.raises(ConfigError, match="combine must be one of mean, median"):
        BrainLesionConfig(detector="ensemble", members=[INTENSITY, AE], combine="max")
    with pytest.raises(ConfigError, match="only for detector: ensemble"):
        BrainLesionConfig(detector="ae", members=[INTENSITY, AE])
    with pytest.raises(ConfigError, match="member 1"):
        BrainLesionConfig(detector="ensemble", members=[INTENSITY, {"detector": "ae", "bogus": 1}])
    import yaml

    (tmp_path / "a.yaml").write_text(yaml.safe_dump(INTENSITY))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(AE))
    (tmp_path / "ens.yaml").write_text("detector: ensemble\nmembers: [a.yaml, b.yaml]\n")
    cfg = BrainLesionConfig.from_yaml(tmp_path / "ens.yaml")
    assert [c.detector for c in cfg.member_configs()] == ["intensity", "ae"]
    (tmp_path / "loop.yaml").write_text("detector: ensemble\nmembers: [loop.yaml, a.yaml]\n")
    with pytest.raises(ConfigError, match="lists itself"):
        read_brain_config(tmp_path / "loop.yaml")
    (tmp_path / "missing.yaml").write_text("detector: ensemble\nmembers: [a.yaml, nope.yaml]\n")
    with pytest.raises(ConfigError, match="not found"):
        BrainLesionConfig.from_yaml(tmp_path / "missing.yaml")


def test_repository_ensemble_configs_resolve():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    for name in ("brain_ensemble.yaml", "brain_ensemble_t1c.yaml"):
        cfg = BrainLesionConfig.from_yaml(root / name)
        assert len(cfg.members) == 4 and cfg.prep.size == 128
    t1c = BrainLesionConfig.from_yaml(root / "brain_ensemble_t1c.yaml")
    assert {c.detector_params.get("polarity") for c in t1c.member_configs()} == {"abs"}


def test_bench_model_store_reuses_models_from_disk(tmp_path):
    """`medad bench brain-lesions --models-dir`: a fitted model is kept on disk and a rerun with
    the same config loads it instead of fitting again; another config is fitted."""
    from medad.bench.brain_lesions import ModelStore
    from pipelines.brain_lesions import config_key

    healthy = tmp_path / "healthy"
    healthy.mkdir()
    for i in range(3):
        _write_scan(healthy, f"h{i}", seed=i)
    cfg = BrainLesionConfig(**INTENSITY)
    vols = [prepare_scan(s, cfg.prep) for s in find_scans(healthy, mask_pattern="{stem}_brainmask.nii.gz")]
    first = fit_brain_model(cfg, vols[:2], vols[2:], progress=False, fitted=ModelStore(tmp_path / "m", "flair", False))
    again = ModelStore(tmp_path / "m", "flair", False)
    assert config_key(cfg) in again and config_key(cfg) not in ModelStore(tmp_path / "m", "t1c", False)
    loaded = fit_brain_model(cfg, vols[:2], vols[2:], progress=False, fitted=again)
    assert loaded.info["loaded_from"].startswith(str(tmp_path / "m" / "flair"))
    assert loaded.voxel_threshold == pytest.approx(first.voxel_threshold)
    assert not list((tmp_path / "m" / "flair").glob("*.tmp"))
