"""Brain-lesion pipeline: train on healthy scans, score a folder; maps on the input's own grid
(also for a non-RAS real scan), a corrupt scan reported while the rest are scored, CLI wiring."""

from __future__ import annotations

import csv
import shutil

import nibabel as nib
import numpy as np
import pytest

from pipelines.brain_lesions import BrainLesionConfig, BrainModel, find_scans, score_folder, train_brain

LPS = np.array([[-2.0, 0, 0, 60], [0, -2.0, 0, 70], [0, 0, 2.0, -40], [0, 0, 0, 1]])
SHAPE = (48, 56, 40)


def _ellipsoid(shape, radii, centre) -> np.ndarray:
    g = np.indices(shape).astype(np.float32)
    return sum(((g[i] - centre[i]) / radii[i]) ** 2 for i in range(3)) <= 1.0


def _write_scan(folder, name, seed, lesion=False):
    """A non-RAS (LPS) synthetic head: brain ellipsoid, a dimmer 'scalp' ring, its brain mask."""
    rng = np.random.default_rng(seed)
    c = np.array(SHAPE) / 2.0
    brain = _ellipsoid(SHAPE, (17, 21, 14), c)
    head = _ellipsoid(SHAPE, (21, 25, 18), c)
    from scipy import ndimage as ndi

    # spatially smooth "anatomy" (std ~6) rather than white noise, as in real tissue
    tissue = ndi.gaussian_filter(rng.normal(0, 1, SHAPE), 1.5)
    tissue = 100 + 6 * tissue / tissue.std()
    data = np.where(head, 40.0, 0.0) + np.where(brain, tissue - 40.0, 0.0)
    les = _ellipsoid(SHAPE, (4, 4, 4), c + [6, 5, 2]) if lesion else np.zeros(SHAPE, bool)
    data[les] += 60.0
    nib.save(nib.Nifti1Image(data.astype(np.float32), LPS), folder / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(brain.astype(np.uint8), LPS), folder / f"{name}_brainmask.nii.gz")
    return les


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("brain")
    healthy = root / "healthy"
    healthy.mkdir()
    for i in range(4):
        _write_scan(healthy, f"h{i}", seed=i)
    cfg = BrainLesionConfig(
        detector="intensity", detector_params={"median_size": 1}, mask_pattern="{stem}_brainmask.nii.gz",
        preprocessing={"spacing": 2.0, "slice_spacing": 2.0, "size": 48, "min_brain_pixels": 50},
        val_fraction=0.25, min_lesion_voxels=5)
    model = train_brain(healthy, root / "model", cfg, progress=False)
    return root, model


def test_train_writes_a_calibrated_model(trained):
    root, path = trained
    m = BrainModel.load(path)
    assert m.voxel_threshold is not None and m.decision_ml is not None
    assert len(m.info["val_subjects"]) == 1 and len(m.info["train_subjects"]) == 3
    assert not set(m.info["val_subjects"]) & set(m.info["train_subjects"])
    assert m.config.prep.size == 48


def test_score_folder_maps_on_input_grid_and_bad_scan_reported(trained, data_root):
    root, model = trained
    scans = root / "scans"
    scans.mkdir()
    les = _write_scan(scans, "patient", seed=10, lesion=True)
    _write_scan(scans, "control", seed=11)
    (scans / "broken.nii.gz").write_bytes(b"\x1f\x8b\x08 this is not a NIfTI file")
    # a real non-RAS scan (NiChart FLAIR, stored LPS), with a crude brain mask on its own grid
    src = data_root / "mri" / "nichart_flair" / "fl" / "Subj1_FL.nii.gz"
    if src.is_file():
        shutil.copy(src, scans / "Subj1_FL.nii.gz")
        img = nib.load(src)
        a = np.asarray(img.dataobj, dtype=np.float32)
        nib.save(nib.Nifti1Image((a > np.percentile(a, 60)).astype(np.uint8), img.affine),
                 scans / "Subj1_FL_brainmask.nii.gz")
    out = root / "out"
    rows = score_folder(model, scans, out, progress=False)
    by = {r["scan"]: r for r in rows}
    assert by["broken"]["status"] == "error" and "broken.nii.gz" in by["broken"]["error"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == len(rows) - 1
    with open(out / "summary.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert [r["scan"] for r in csv_rows] == [r["scan"] for r in rows]
    for r in ok:
        name = r["scan"]
        inp = nib.load(scans / f"{name}.nii.gz")
        for fname in ("anomaly_map.nii.gz", "mask.nii.gz"):
            outimg = nib.load(out / name / fname)
            assert outimg.shape == inp.shape, (name, fname)
            np.testing.assert_allclose(outimg.affine, inp.affine, atol=1e-5)
            assert nib.aff2axcodes(outimg.affine) == nib.aff2axcodes(inp.affine)
        assert (out / name / "overlay.png").stat().st_size > 1000
    # the inserted lesion is found, on the file's own voxel grid (no flips)
    pmask = np.asarray(nib.load(out / "patient" / "mask.nii.gz").dataobj).astype(bool)
    assert (pmask & les).sum() / les.sum() > 0.5
    assert (pmask & ~les).sum() < les.sum()
    assert by["patient"]["decision"] == "abnormal" and by["control"]["decision"] == "normal"
    assert by["patient"]["lesion_ml"] > by["control"]["lesion_ml"]
    if src.is_file():
        assert by["Subj1_FL"]["brain_source"] == "given"


def test_find_scans_pairs_masks_and_skips_them(tmp_path):
    _write_scan(tmp_path, "a", seed=0)
    scans = find_scans(tmp_path, mask_pattern="{stem}_brainmask.nii.gz")
    assert [s.scan_id for s in scans] == ["a"] and scans[0].mask_path.name == "a_brainmask.nii.gz"


def test_cli_train_and_score(trained, tmp_path):
    from typer.testing import CliRunner

    from medad.cli import app

    root, model = trained
    runner = CliRunner()
    res = runner.invoke(app, ["brain", "score", str(model), str(root / "healthy" / "h0.nii.gz"),
                              "--out", str(tmp_path / "o"), "--no-overlays"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "o" / "h0" / "anomaly_map.nii.gz").is_file()
    bad = runner.invoke(app, ["brain", "train", str(tmp_path / "missing"), "--out", str(tmp_path / "m")])
    assert bad.exit_code != 0


def test_explain_scan_uses_the_model_preprocessing(trained, tmp_path):
    from pipelines.brain_lesions import explain_scan

    root, path = trained
    scans = tmp_path / "scans"
    scans.mkdir()
    les = _write_scan(scans, "p0", seed=30, lesion=True)
    out = tmp_path / "explain"
    case = explain_scan(path, scans / "p0.nii.gz", out, methods=["kernel_shap"], top_k=1,
                        n_samples=60, n_segments=20)
    assert case.decision == "abnormal"
    src = nib.load(scans / "p0.nii.gz")
    shap_img = nib.load(out / "kernel_shap.nii.gz")
    assert shap_img.shape == src.shape and np.allclose(shap_img.affine, src.affine)
    shap = shap_img.get_fdata()
    assert np.abs(shap).sum() > 0
    # the attribution of the most abnormal slice sits on the lesion more than elsewhere
    assert shap[les].mean() > shap[~les & (shap != 0)].mean()
    assert (out / "report.html").is_file() and (out / "mask.nii.gz").is_file()


def test_3d_crops_model_maps_on_input_grid(tmp_path):
    """A 3D detector (spatial_dims 3) trained on healthy cubic crops; the scan's map is put
    together from overlapping crops, comes back on the input grid and finds the lesion."""
    from pipelines.brain_lesions import prepare_scan, training_crops

    from medad.errors import ConfigError

    model_dir, cfg = _train_crop_model(tmp_path, "ae", n_healthy=4)
    model = BrainModel.load(model_dir)
    assert model.info["item_unit"] == "16-voxel crops" and model.info["n_train_slices"] > 20
    scans = tmp_path / "scans"
    scans.mkdir()
    les = _write_scan(scans, "patient", seed=10, lesion=True)
    vol = prepare_scan(find_scans(scans, mask_pattern=cfg.mask_pattern)[0], cfg.prep)
    crops, brain, ids = training_crops([vol], 16, 8, min_brain_fraction=0.1)
    assert crops.shape[1:] == (1, 16, 16, 16) and brain.dtype == bool and len(ids) == len(crops)
    amap = model.volume_map(vol)
    assert amap.shape == vol.record.shape
    ras_les = np.flip(les, axis=(0, 1))  # LPS voxel order -> RAS
    inside = model.support(vol) & ~ras_les
    assert amap[ras_les].mean() > 2 * amap[inside].mean()
    with pytest.raises(ConfigError, match="spatial_dims: 3"):
        BrainLesionConfig(detector="ae", detector_params={"spatial_dims": 2}, crop_size=16)
    with pytest.raises(ConfigError, match="crop_size"):
        BrainLesionConfig(detector="ae", detector_params={"spatial_dims": 3})


def test_explain_scan_3d_crop_model(tmp_path):
    """A 3D crop model (a DAE on 16-voxel crops) is explained crop by crop: Grad-CAM and IG maps of
    the most abnormal crops come back as NIfTI on the scan's own (non-RAS) grid and affine, with
    an overlay PNG each and the HTML report; IG sits on the lesion more than elsewhere."""
    from pipelines.brain_lesions import explain_scan

    model_dir, _ = _train_crop_model(tmp_path, "dae", n_healthy=3, noise_res=4, polarity="positive")
    scans = tmp_path / "scans"
    scans.mkdir()
    les = _write_scan(scans, "p0", seed=30, lesion=True)
    out = tmp_path / "explain"
    case = explain_scan(model_dir, scans / "p0.nii.gz", out, methods=["gradcam", "ig"], top_k=2, n_steps=8)
    src = nib.load(scans / "p0.nii.gz")
    for m in ("gradcam", "ig"):
        img = nib.load(out / f"{m}.nii.gz")
        assert img.shape == src.shape and np.allclose(img.affine, src.affine)
        assert np.abs(img.get_fdata()).sum() > 0 and (out / f"{m}.png").stat().st_size > 0
    ig = nib.load(out / "ig.nii.gz").get_fdata()
    assert ig[les].mean() > ig[~les & (ig != 0)].mean()
    assert "16-voxel crops" in case.details["ig computed on"]
    page = (out / "report.html").read_text()
    assert "gradcam" in page and "Decision rule: abnormal when the lesion volume exceeds" in page


def _train_crop_model(tmp_path, detector: str, n_healthy: int, **params):
    """A small 3D ``detector`` (spatial_dims 3) trained briefly on 16-voxel crops of ``n_healthy``
    synthetic healthy scans (one of them held out for calibration)."""
    healthy = tmp_path / "healthy"
    healthy.mkdir()
    for i in range(n_healthy):
        _write_scan(healthy, f"h{i}", seed=i)
    cfg = BrainLesionConfig(
        detector=detector, detector_params={"spatial_dims": 3, "channels": [8, 16], "strides": [2, 2],
                                            "latent_channels": 8, "epochs": 2, "batch_size": 8, "lr": 3e-3,
                                            "device": "cpu", **params},
        mask_pattern="{stem}_brainmask.nii.gz", crop_size=16, crop_stride=8,
        preprocessing={"spacing": 2.0, "slice_spacing": 2.0, "size": 48, "min_brain_pixels": 50},
        val_fraction=1.0 / n_healthy, min_lesion_voxels=5)
    return train_brain(healthy, tmp_path / "model", cfg, progress=False), cfg


def _write_dicom_series(folder, vol: np.ndarray, spacing=(2.0, 2.0, 3.0)) -> None:
    """``vol`` (z, y, x) as a DICOM series: one file per slice, one series UID, slice positions."""
    import SimpleITK as sitk

    from medad.io.volumes import keep_locale

    folder.mkdir(parents=True, exist_ok=True)
    uid = "1.2.826.0.1.3680043.2.1125.1.42"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(vol.shape[0]):
        sl = sitk.GetImageFromArray(vol[k:k + 1].astype(np.int16))
        sl.SetSpacing(spacing)
        for tag, value in (("0008|0060", "MR"), ("0020|000e", uid), ("0020|0013", str(k + 1)),
                           ("0020|0032", f"0\\0\\{k * spacing[2]}"), ("0020|0037", "1\\0\\0\\0\\1\\0"),
                           ("0008|0018", f"{uid}.{k + 1}"), ("0018|0050", str(spacing[2]))):
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        with keep_locale():  # GDCM's writer switches the process locale to "C"
            writer.Execute(sl)


def test_find_scans_reads_a_dicom_series_as_one_scan_and_never_medad_outputs(tmp_path):
    """A folder of DICOM slices is one scan (not one per slice), found with any image pattern;
    the maps medad writes (anomaly_map, mask, explanation NIfTIs) are never taken for scans, so a
    results folder can be scored again without its maps becoming cases."""
    from pipelines.brain_lesions import prepare_scan
    from medad.transforms.brain import BrainPrepConfig

    _write_scan(tmp_path, "a", seed=0)
    vol = np.zeros((12, 40, 36))
    vol[2:10, 8:32, 6:30] = 100 + np.arange(24)[None, None, :]
    _write_dicom_series(tmp_path / "patient7" / "series", vol)
    res = tmp_path / "results" / "a"
    res.mkdir(parents=True)
    for name in ("anomaly_map.nii.gz", "mask.nii.gz", "ig.nii.gz", "kernel_shap.nii.gz"):
        shutil.copy(tmp_path / "a.nii.gz", res / name)
    for pattern in ("*.nii*", "*"):
        scans = find_scans(tmp_path, pattern, mask_pattern="{stem}_brainmask.nii.gz")
        ids = sorted(s.scan_id for s in scans)
        assert ids == ["a", "patient7_series"], (pattern, ids)
    series = next(s for s in scans if s.scan_id == "patient7_series")
    prepared = prepare_scan(series, BrainPrepConfig(skull_strip="none", spacing=2.0, slice_spacing=3.0, size=48))
    assert prepared.record.shape == (36, 40, 12)  # x, y, slices: the whole series in one volume


def test_score_folder_reports_an_unexpected_failure_and_scores_the_rest(trained, tmp_path, monkeypatch):
    import pipelines.brain_lesions as bl

    root, path = trained
    scans = tmp_path / "scans"
    scans.mkdir()
    for name in ("p1", "p2"):
        _write_scan(scans, name, seed=40)
    real = bl.prepare_scan

    def flaky(scan, prep):
        if scan.scan_id == "p1":
            raise KeyError("an error no reader anticipated")
        return real(scan, prep)

    monkeypatch.setattr(bl, "prepare_scan", flaky)
    rows = score_folder(path, scans, tmp_path / "out", overlays=False, progress=False)
    by = {r["scan"]: r for r in rows}
    assert by["p1"]["status"] == "error" and "p1.nii.gz" in by["p1"]["error"] and "KeyError" in by["p1"]["error"]
    assert by["p2"]["status"] == "ok" and (tmp_path / "out" / "p2" / "anomaly_map.nii.gz").is_file()


def test_explain_scan_takes_a_mask_pattern(trained, tmp_path):
    from pipelines.brain_lesions import explain_scan

    root, path = trained
    scans = tmp_path / "scans"
    scans.mkdir()
    _write_scan(scans, "p0", seed=31, lesion=True)
    (scans / "p0_brainmask.nii.gz").rename(scans / "p0_bm.nii.gz")  # not the model's mask name
    case = explain_scan(path, scans / "p0.nii.gz", tmp_path / "e", methods=["kernel_shap"], top_k=1,
                        n_samples=30, n_segments=10, mask_pattern="{stem}_bm.nii.gz")
    assert case.details["brain mask"] == "given"


def test_score_folder_reports_odd_inputs_by_name(trained, tmp_path, capsys):
    """Audit: a 2D slice was scored 'normal'; a too-thin scan gave a raw ITK message (and numpy
    warnings) without the file's name; a mask-named scan and a label map were dropped silently;
    a linked case folder was not searched. Now every skipped scan is named with a short reason,
    files left out by the exclude patterns are listed, a scan named like a mask but holding
    intensities is scored, and linked folders are searched."""
    import os
    import warnings

    root, model = trained
    scans, elsewhere = tmp_path / "scans", tmp_path / "elsewhere" / "case9"
    scans.mkdir()
    elsewhere.mkdir(parents=True)
    _write_scan(scans, "q_skullstripped_masked", seed=50)
    _write_scan(elsewhere, "linked", seed=51)
    os.symlink(elsewhere, scans / "case9")
    rng = np.random.default_rng(0)
    nib.save(nib.Nifti1Image((rng.random((40, 40)) * 100).astype(np.float32), LPS), scans / "flat.nii.gz")
    nib.save(nib.Nifti1Image((rng.random((40, 40, 3)) * 100).astype(np.float32), LPS), scans / "thin.nii.gz")
    nib.save(nib.Nifti1Image(rng.integers(0, 3, SHAPE).astype(np.uint8), LPS), scans / "q_seg.nii.gz")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        rows = score_folder(model, scans, tmp_path / "out", overlays=False, progress=False)
    printed = capsys.readouterr().out
    by = {r["scan"]: r for r in rows}
    assert set(by) == {"case9_linked", "flat", "q_skullstripped_masked", "thin"}
    assert by["case9_linked"]["status"] == by["q_skullstripped_masked"]["status"] == "ok"
    assert f"skipped: {scans / 'flat.nii.gz'}: a single 2D slice (40 x 40); brain scoring needs a 3D volume" in printed
    assert f"skipped: {scans / 'thin.nii.gz'}: registration to the MNI152 template failed (the image may not" in printed
    assert "SimpleITK" not in printed and "Warning" not in printed
    assert by["thin"]["status"] == "error" and str(scans / "thin.nii.gz") in by["thin"]["error"]
    assert f"left out: {scans / 'q_seg.nii.gz'}: name matches exclude pattern '*seg*'" in printed


def test_scoring_into_the_same_out_leaves_no_stale_results(trained, tmp_path, capsys):
    """Audit: two single files with the same name scored into one --out: the second silently took
    the first's folder, and --no-overlays left the first run's overlay.png beside the new map."""
    root, model = trained
    other = tmp_path / "other"
    other.mkdir()
    _write_scan(other, "h0", seed=60, lesion=True)  # same file name as healthy/h0, another scan
    out = tmp_path / "out"
    score_folder(model, root / "healthy" / "h0.nii.gz", out, progress=False)
    assert (out / "h0" / "overlay.png").is_file()
    capsys.readouterr()
    rows = score_folder(model, other / "h0.nii.gz", out, overlays=False, progress=False)
    assert rows[0]["status"] == "ok" and not (out / "h0" / "overlay.png").exists()
    assert f"held the results of {root / 'healthy' / 'h0.nii.gz'} from an earlier run" in capsys.readouterr().out


def test_nan_background_is_scored_and_the_row_shows_the_threshold(trained, tmp_path, capsys):
    """A scan whose background is stored as NaN is scored (background read as 0, a note printed),
    and every summary row carries the model's voxel threshold beside max_score."""
    root, model = trained
    scans = tmp_path / "scans"
    scans.mkdir()
    _write_scan(scans, "nanbg", seed=11, lesion=True)
    img = nib.load(scans / "nanbg.nii.gz")
    data = img.get_fdata().astype(np.float32)
    data[data == 0] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), scans / "nanbg.nii.gz")
    rows = score_folder(model, scans, tmp_path / "out", progress=False)
    assert [r["status"] for r in rows] == ["ok"]
    out = capsys.readouterr().out
    assert "note: nanbg.nii.gz:" in out and "NaN or infinite voxels read as 0" in out
    assert rows[0]["threshold"] == pytest.approx(BrainModel.load(model).voxel_threshold)


def test_few_calibration_scans_warn_and_rows_state_the_decision_volume(trained, tmp_path, capsys):
    """The module's model holds out 1 healthy scan: training says the thresholds rest on it; every
    summary row states the decision volume (the rule: abnormal when lesion_ml is above it)."""
    root, model = trained
    m = BrainModel.load(model)
    assert m.info["calibration"]["n_scans"] == 1 and "1 held-out healthy scan(s)" in m.info["calibration"]["warning"]
    scans = tmp_path / "s"
    scans.mkdir()
    _write_scan(scans, "x", seed=21, lesion=True)
    row = score_folder(model, scans, tmp_path / "o", progress=False)[0]
    assert row["decision_ml"] == pytest.approx(round(m.decision_ml, 3))
    assert row["decision"] == ("abnormal" if row["lesion_ml"] > m.decision_ml else "normal")


def test_a_dicom_that_says_it_is_no_head_is_refused(trained, tmp_path, data_root):
    """The TotalSegmentator example (BodyPartExamined PARTIALBODY) was scored as a brain and called
    abnormal (a vertebra as a 39 ml lesion): a DICOM header naming another body part is refused."""
    series = data_root / "ct" / "totalsegmentator" / "example_ct_dicom"
    if not series.is_dir():
        pytest.skip(f"{series} not found")
    root, model = trained
    scans = tmp_path / "s"
    scans.mkdir()
    (scans / "ct").symlink_to(series, target_is_directory=True)
    rows = score_folder(model, scans, tmp_path / "o", progress=False)
    assert [r["status"] for r in rows] == ["error"] and "BodyPartExamined 'PARTIALBODY', not a head" in rows[0]["error"]
