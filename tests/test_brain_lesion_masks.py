"""`medad brain train` on partly healthy scans: with ``lesion_pattern`` each scan's lesion mask is
read on its grid, the slices holding lesion are left out of training, calibration leaves out the
lesion slices (or, ``calibration_exclude: voxels``, the lesion voxels); a scan without a mask is
wholly healthy; lesion-mask files are never scans. Synthetic scans of test_pipeline_brain."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from test_pipeline_brain import LPS, SHAPE, _write_scan

from medad.errors import ConfigError, InputError
from pipelines.brain_lesions import BrainLesionConfig, BrainModel, find_scans, train_brain

LESIONED = ("h0", "h1", "h2", "h3")  # a bright lesion and its mask; h4: healthy, no mask
PATTERN = "{stem}_lesion.nii.gz"


def _cfg(**kw) -> BrainLesionConfig:
    return BrainLesionConfig(
        detector="intensity", detector_params={"median_size": 1}, mask_pattern="{stem}_brainmask.nii.gz",
        preprocessing={"spacing": 2.0, "slice_spacing": 2.0, "size": 48, "min_brain_pixels": 50},
        min_lesion_voxels=5, **{"val_fraction": 0.4, **kw})


def _write_lesion(folder, name, les, affine=LPS):
    nib.save(nib.Nifti1Image(les.astype(np.uint8), affine), folder / f"{name}_lesion.nii.gz")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One folder, three models: lesion masks used (slices / voxels left out of calibration) and
    the same folder trained as if every scan were healthy."""
    root = tmp_path_factory.mktemp("brain_lesions")
    healthy = root / "healthy"
    healthy.mkdir()
    lesions = {}
    for i, name in enumerate(LESIONED + ("h4",)):
        les = _write_scan(healthy, name, seed=i, lesion=name in LESIONED)
        if name in LESIONED:
            _write_lesion(healthy, name, les)
            lesions[name] = les
    models = {}
    for key, cfg in {"slices": _cfg(lesion_pattern=PATTERN),
                     "voxels": _cfg(lesion_pattern=PATTERN, calibration_exclude="voxels"),
                     "none": _cfg()}.items():
        models[key] = BrainModel.load(train_brain(healthy, root / key, cfg, progress=False))
    return healthy, lesions, models


def test_lesion_slices_are_left_out_of_training(trained):
    healthy, lesions, m = trained
    with_masks, plain = m["slices"], m["none"]
    # the lesion-mask files are not scans, with or without the pattern (default exclude_patterns)
    for model in (with_masks, plain):
        assert sorted(model.info["train_subjects"] + model.info["val_subjects"]) == ["h0", "h1", "h2", "h3", "h4"]
    info = with_masks.info["lesions"]
    assert info["pattern"] == PATTERN and info["calibration_exclude"] == "slices"
    by = {r["scan"]: r for r in info["scans"]}
    train_les = [s for s in with_masks.info["train_subjects"] if s in lesions]
    assert train_les, "the split should put lesioned scans in training"
    for s in LESIONED:
        assert by[s]["lesion_mask"] == str(healthy / f"{s}_lesion.nii.gz")
        assert by[s]["lesion_ml"] == pytest.approx(lesions[s].sum() * 8 / 1000, rel=1e-6)  # 2 mm voxels
        assert by[s]["items_left_out"]["slices"] > 0
    # exactly the slices recorded as left out are missing from training
    dropped_train = sum(by[s]["items_left_out"]["slices"] for s in train_les)
    assert plain.info["n_train_slices"] - with_masks.info["n_train_slices"] == dropped_train
    assert info["items_left_out"]["slices"] == sum(by[s]["items_left_out"]["slices"] for s in LESIONED)
    assert info["lesion_ml"] == pytest.approx(sum(by[s]["lesion_ml"] for s in LESIONED), abs=1e-3)
    assert "lesions" not in plain.info


def test_calibration_leaves_out_the_lesion(trained):
    _, lesions, m = trained
    cal_les = [s for s in m["slices"].info["val_subjects"] if s in lesions]
    assert cal_les, "the split should hold out a lesioned scan for calibration"
    assert m["slices"].info["val_subjects"] == m["none"].info["val_subjects"]
    # trained as if healthy, the held-out lesion raises the voxel threshold and the decision volume
    assert m["none"].voxel_threshold > 1.5 * m["slices"].voxel_threshold
    assert m["none"].decision_ml > m["slices"].decision_ml
    cal, plain = m["slices"].info["calibration"], m["none"].info["calibration"]
    assert cal["lesions_left_out_as"] == "slices" and "lesions_left_out_as" not in plain
    # the voxels left out are exactly what the plain calibration has in addition
    assert cal["n_voxels"] + sum(cal["voxels_left_out"]) == plain["n_voxels"]
    by = {r["scan"]: r for r in m["slices"].info["lesions"]["scans"]}
    for s in cal_les:
        assert by[s]["role"] == "calibration" and by[s]["calibration_voxels_left_out"] > lesions[s].sum()


def test_calibration_exclude_voxels_leaves_out_only_the_lesion_voxels(trained):
    _, lesions, m = trained
    sl, vx, plain = m["slices"], m["voxels"], m["none"]
    # same training, calibrated on other voxels
    assert vx.info["n_train_slices"] == sl.info["n_train_slices"]
    cal_v, cal_s = vx.info["calibration"], sl.info["calibration"]
    assert cal_v["lesions_left_out_as"] == "voxels" and vx.info["lesions"]["calibration_exclude"] == "voxels"
    assert cal_v["n_voxels"] + sum(cal_v["voxels_left_out"]) == plain.info["calibration"]["n_voxels"]
    assert cal_v["n_voxels"] > cal_s["n_voxels"]
    # only lesion voxels (those inside the support) are left out: at most the lesion's voxels
    cal_les = [s for s in vx.info["val_subjects"] if s in lesions]
    for s, n in zip(vx.info["val_subjects"], cal_v["voxels_left_out"]):
        assert 0 < n <= lesions[s].sum() if s in cal_les else n == 0
    assert sum(cal_v["voxels_left_out"]) < sum(cal_s["voxels_left_out"])
    assert vx.voxel_threshold < 0.7 * plain.voxel_threshold
    assert vx.voxel_threshold != sl.voxel_threshold  # other voxels, another threshold


def test_scan_without_mask_is_wholly_healthy(trained, tmp_path, capsys):
    _, _, m = trained
    info = m["slices"].info["lesions"]
    assert info["without_mask"] == ["h4"]
    h4 = next(r for r in info["scans"] if r["scan"] == "h4")
    assert h4["lesion_mask"] is None and h4["lesion_ml"] == 0.0 and "items_left_out" not in h4
    # said so in a summary line
    folder = tmp_path / "two"
    folder.mkdir()
    les = _write_scan(folder, "a", seed=5, lesion=True)
    _write_lesion(folder, "a", les)
    _write_scan(folder, "b", seed=6)
    model = BrainModel.load(train_brain(folder, tmp_path / "m", _cfg(lesion_pattern=PATTERN, val_fraction=0.5),
                                        progress=False))
    out = capsys.readouterr().out
    assert "lesion masks ({stem}_lesion.nii.gz): 1 of 2 scan(s) have one" in out
    assert "1 without one, taken as wholly healthy: b" in out
    assert "left out for lesions:" in out
    assert model.info["lesions"]["without_mask"] == ["b"]


def test_lesion_mask_on_another_grid_is_a_named_error(tmp_path):
    folder = tmp_path / "healthy"
    folder.mkdir()
    for i in range(3):
        _write_scan(folder, f"s{i}", seed=i)
    bad = folder / "s1_lesion.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((40, 40, 40), np.uint8), LPS), bad)
    with pytest.raises(InputError, match=r"lesion mask is not on the grid of scan s1\.nii\.gz") as e:
        train_brain(folder, tmp_path / "m", _cfg(lesion_pattern=PATTERN), progress=False)
    assert e.value.path == bad and str(bad) in str(e.value)
    assert not (tmp_path / "m").exists()
    # same shape, shifted: also refused (a mask of another scan or space)
    shifted = LPS.copy()
    shifted[:3, 3] += 10
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.uint8), shifted), bad)
    with pytest.raises(InputError, match="affine") as e:
        train_brain(folder, tmp_path / "m", _cfg(lesion_pattern=PATTERN), progress=False)
    assert e.value.path == bad


def test_lesion_mask_files_are_not_scans(tmp_path):
    # typical names, left out by the default exclude patterns (they hold a mask's few values)
    _write_scan(tmp_path, "p1", seed=0)
    zeros = np.zeros(SHAPE, np.uint8)
    zeros[10:14, 10:14, 10:14] = 1
    for name in ("p1_lesion", "p1_seg", "Subj1_FL_DLWMLS"):
        nib.save(nib.Nifti1Image(zeros, LPS), tmp_path / f"{name}.nii.gz")
    excluded = []
    scans = find_scans(tmp_path, "*.nii*", "{stem}_brainmask.nii.gz", BrainLesionConfig().exclude_patterns,
                       excluded=excluded)
    assert [s.scan_id for s in scans] == ["p1"]
    assert sorted(p.name for p, _ in excluded) == ["Subj1_FL_DLWMLS.nii.gz", "p1_lesion.nii.gz", "p1_seg.nii.gz"]
    # named by the lesion pattern: paired with the scan, not a scan (whatever the exclude patterns)
    scans = find_scans(tmp_path, "*.nii*", "{stem}_brainmask.nii.gz", (), lesion_pattern="{stem}_seg.nii.gz")
    assert sorted(s.scan_id for s in scans) == ["Subj1_FL_DLWMLS", "p1", "p1_lesion"]
    assert next(s for s in scans if s.scan_id == "p1").lesion_path == tmp_path / "p1_seg.nii.gz"
    # masks in a folder next to the scans' (NiChart: fl/ and wmh_mask_DLWMLS/), the parent searched
    root = tmp_path / "nichart"
    (root / "fl").mkdir(parents=True)
    (root / "wmh").mkdir()
    _write_scan(root / "fl", "Subj1_FL", seed=1)
    _write_scan(root / "fl", "Subj2_FL", seed=2)
    nib.save(nib.Nifti1Image(zeros, LPS), root / "wmh" / "Subj1_FL_DLWMLS.nii.gz")
    scans = find_scans(root, "*.nii*", "{stem}_brainmask.nii.gz", (), lesion_pattern="../wmh/{stem}_DLWMLS.nii.gz")
    assert sorted(s.scan_id for s in scans) == ["fl_Subj1_FL", "fl_Subj2_FL"]
    by = {s.scan_id: s for s in scans}
    assert by["fl_Subj1_FL"].lesion_path.resolve() == (root / "wmh" / "Subj1_FL_DLWMLS.nii.gz").resolve()
    assert by["fl_Subj2_FL"].lesion_path is None


def test_crop_items_left_out_are_counted(tmp_path):
    from pipelines.brain_lesions import prepare_scan, training_crops

    les = _write_scan(tmp_path, "c", seed=3, lesion=True)
    _write_lesion(tmp_path, "c", les)
    cfg = _cfg(lesion_pattern=PATTERN)
    scan = find_scans(tmp_path, mask_pattern=cfg.mask_pattern, lesion_pattern=PATTERN)[0]
    vol = prepare_scan(scan, cfg.prep)
    from pipelines.brain_lesions import read_lesion_mask

    mask = read_lesion_mask(scan, vol.record)
    assert mask.sum() == les.sum() and mask.shape == vol.record.shape
    dropped = {}
    kept = training_crops([vol], 16, 8, lesions=[mask], dropped=dropped)[0]
    every = training_crops([vol], 16, 8)[0]
    assert dropped["c"] > 0 and len(every) - len(kept) == dropped["c"]


def test_config_checks():
    assert BrainLesionConfig().calibration_exclude == "slices" and BrainLesionConfig().lesion_pattern is None
    with pytest.raises(ConfigError, match="calibration_exclude must be one of slices, voxels, got 'voxel'"):
        BrainLesionConfig(calibration_exclude="voxel")
    with pytest.raises(ConfigError, match="only placeholder is {stem}"):
        BrainLesionConfig(lesion_pattern="{subject}_lesion.nii.gz")
    with pytest.raises(ConfigError, match="absolute path"):
        BrainLesionConfig(lesion_pattern="/data/lesions/{stem}.nii.gz")
    with pytest.raises(ConfigError, match="file-name glob"):
        BrainLesionConfig(lesion_pattern="  ")
    with pytest.raises(ConfigError, match="different files"):
        BrainLesionConfig(mask_pattern="{stem}_m.nii.gz", lesion_pattern="{stem}_m.nii.gz")
    member = {"detector": "intensity"}
    with pytest.raises(ConfigError, match="member 1 sets lesion_pattern"):
        BrainLesionConfig(detector="ensemble", members=[member, {**member, "lesion_pattern": PATTERN}])
    with pytest.raises(ConfigError, match="member 0 sets calibration_exclude 'slices', the ensemble 'voxels'"):
        BrainLesionConfig(detector="ensemble", calibration_exclude="voxels",
                          members=[{**member, "calibration_exclude": "slices"}, member])
    ens = BrainLesionConfig(detector="ensemble", calibration_exclude="voxels", members=[member, member])
    assert [c.calibration_exclude for c in ens.member_configs()] == ["voxels", "voxels"]


def test_config_file_error_names_the_file(tmp_path):
    bad = tmp_path / "brain.yaml"
    bad.write_text("detector: intensity\ncalibration_exclude: everything\n")
    with pytest.raises(ConfigError, match="calibration_exclude") as e:
        BrainLesionConfig.from_yaml(bad)
    assert e.value.path == bad


def test_cli_lesion_pattern_reaches_the_config(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import pipelines.brain_lesions as bl
    from medad.cli import app

    seen = {}
    monkeypatch.setattr(bl, "train_brain", lambda healthy, out, cfg: seen.update(cfg=cfg))
    conf = tmp_path / "brain.yaml"
    conf.write_text("detector: intensity\nlesion_pattern: '{stem}_seg.nii.gz'\ncalibration_exclude: voxels\n")
    runner = CliRunner()
    res = runner.invoke(app, ["brain", "train", str(tmp_path), "--out", str(tmp_path / "m"), "--config", str(conf),
                              "--lesion-pattern", "../wmh/{stem}_DLWMLS.nii.gz"])
    assert res.exit_code == 0, res.output
    assert seen["cfg"].lesion_pattern == "../wmh/{stem}_DLWMLS.nii.gz"  # the option overrides the config
    assert seen["cfg"].calibration_exclude == "voxels"
    res = runner.invoke(app, ["brain", "train", str(tmp_path), "--out", str(tmp_path / "m"), "--config", str(conf)])
    assert res.exit_code == 0 and seen["cfg"].lesion_pattern == "{stem}_seg.nii.gz"
    seen.clear()
    res = runner.invoke(app, ["brain", "train", str(tmp_path), "--out", str(tmp_path / "m"),
                              "--lesion-pattern", "{id}.nii.gz"])
    assert res.exit_code != 0 and isinstance(res.exception, ConfigError) and not seen
    assert "lesion_pattern '{id}.nii.gz': the only placeholder is {stem}" in str(res.exception)


def test_a_brain_models_detector_folder_names_the_model(trained, tmp_path):
    from typer.testing import CliRunner

    from medad.cli import app
    from medad.errors import ReadError

    healthy, _, _ = trained
    model = healthy.parent / "slices"
    with pytest.raises(ReadError, match=r"it is the detector/ subfolder of .*slices, which holds brain_model\.json: "
                                        r"give that folder"):
        BrainModel.load(model / "detector")
    res = CliRunner().invoke(app, ["brain", "score", str(model / "detector"), str(healthy), "--out",
                                   str(tmp_path / "out")])
    assert res.exit_code != 0 and "give that folder" in str(res.exception) and str(model) in str(res.exception)
    assert "Detector.load" not in str(res.exception)
