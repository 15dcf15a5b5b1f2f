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
    assert "left out for lesions (" in out
    assert model.info["lesions"]["without_mask"] == ["b"]


@pytest.fixture
def prepared(monkeypatch):
    """The scans ``train_brain`` preprocesses (registration takes minutes on a real scan): a lesion
    pattern's problems must stop training before the first."""
    import pipelines.brain_lesions as bl

    calls = []
    real = bl.prepare_scan

    def spy(scan, prep):
        calls.append(scan.scan_id)
        return real(scan, prep)

    monkeypatch.setattr(bl, "prepare_scan", spy)
    return calls


def test_lesion_mask_on_another_grid_is_a_named_error(tmp_path, prepared):
    folder = tmp_path / "healthy"
    folder.mkdir()
    for i in range(3):
        _write_scan(folder, f"s{i}", seed=i)
    _write_lesion(folder, "s0", np.zeros(SHAPE, bool))  # s0, read first, is fine
    bad = folder / "s1_lesion.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((40, 40, 40), np.uint8), LPS), bad)
    with pytest.raises(InputError, match=r"lesion mask is not on the grid of scan s1\.nii\.gz") as e:
        train_brain(folder, tmp_path / "m", _cfg(lesion_pattern=PATTERN), progress=False)
    assert e.value.path == bad and str(bad) in str(e.value)
    assert not (tmp_path / "m").exists()
    assert prepared == []  # found from the headers, before any scan was preprocessed
    # same shape, shifted: also refused (a mask of another scan or space)
    shifted = LPS.copy()
    shifted[:3, 3] += 10
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.uint8), shifted), bad)
    with pytest.raises(InputError, match="affine") as e:
        train_brain(folder, tmp_path / "m", _cfg(lesion_pattern=PATTERN), progress=False)
    assert e.value.path == bad and prepared == []
    # the full read, after preprocessing, gives the same refusal (for a header the check cannot tell)
    from pipelines.brain_lesions import prepare_scan, read_lesion_mask

    scan = next(s for s in find_scans(folder, lesion_pattern=PATTERN) if s.scan_id == "s1")
    with pytest.raises(InputError, match="affine") as e:
        read_lesion_mask(scan, prepare_scan(scan, _cfg().prep).record)
    assert e.value.path == bad


def test_lesion_mask_in_another_orientation_of_the_same_grid_is_accepted(tmp_path):
    from pipelines.brain_lesions import check_lesion_grids, prepare_scan, read_lesion_mask

    les = _write_scan(tmp_path, "s", seed=0, lesion=True)
    # the same voxels stored in RAS order (the scan is LPS): the same grid once both are read in RAS
    ras = nib.as_closest_canonical(nib.Nifti1Image(les.astype(np.uint8), LPS))
    assert not np.allclose(ras.affine, LPS)
    nib.save(ras, tmp_path / "s_lesion.nii.gz")
    scan = find_scans(tmp_path, mask_pattern="{stem}_brainmask.nii.gz", lesion_pattern=PATTERN)[0]
    check_lesion_grids([scan])  # the header check: no error
    mask = read_lesion_mask(scan, prepare_scan(scan, _cfg().prep).record)
    assert mask.sum() == les.sum()


def _two_folders(tmp_path, names=("pat2", "pat5", "pat6")):
    """scans/NAME.nii.gz and labels/NAME_tumour.nii.gz (the layout of the audit's BraTS copy)."""
    (tmp_path / "scans").mkdir()
    (tmp_path / "labels").mkdir()
    for i, n in enumerate(names):
        les = _write_scan(tmp_path / "scans", n, seed=i, lesion=True)
        nib.save(nib.Nifti1Image(les.astype(np.uint8), LPS), tmp_path / "labels" / f"{n}_tumour.nii.gz")
    return tmp_path / "scans"


def test_a_pattern_naming_several_files_for_a_scan_is_an_error(tmp_path, prepared):
    scans = _two_folders(tmp_path)
    # without {stem}, every scan got pat2's mask (the first sorted match)
    with pytest.raises(InputError, match=r"lesion_pattern '\.\./labels/\*_tumour\.nii\.gz' matches 3 files for this "
                                         r"scan \(pat2_tumour\.nii\.gz, pat5_tumour\.nii\.gz, pat6_tumour\.nii\.gz\)") as e:
        train_brain(scans, tmp_path / "m", _cfg(lesion_pattern="../labels/*_tumour.nii.gz"), progress=False)
    assert e.value.path == scans / "pat2.nii.gz"
    assert "put {stem} in it" in str(e.value) and "e.g. '../labels/{stem}_tumour.nii.gz'" in str(e.value)
    assert prepared == [] and not (tmp_path / "m").exists()
    # with {stem}, one file each: paired with its own scan
    found = find_scans(scans, mask_pattern="{stem}_brainmask.nii.gz", lesion_pattern="../labels/{stem}_tumour.nii.gz")
    assert {s.scan_id: s.lesion_path.name for s in found} == {n: f"{n}_tumour.nii.gz" for n in ("pat2", "pat5", "pat6")}


def test_many_matches_are_listed_first_few_and_scoring_does_not_pair(tmp_path):
    scans = _two_folders(tmp_path, names=tuple(f"p{i}" for i in range(6)))
    with pytest.raises(InputError, match=r"matches 6 files for this scan \(p0_tumour\.nii\.gz, p1_tumour\.nii\.gz, "
                                         r"p2_tumour\.nii\.gz, p3_tumour\.nii\.gz and 2 more\)"):
        find_scans(scans, lesion_pattern="../labels/p*.nii.gz")
    # scoring only keeps lesion masks from being scored: no pairing, no error
    found = find_scans(scans, mask_pattern="{stem}_brainmask.nii.gz", lesion_pattern="../labels/p*.nii.gz",
                       pair_lesions=False)
    assert len(found) == 6 and all(s.lesion_path is None for s in found)


def test_two_scans_with_one_lesion_mask_is_an_error(tmp_path, prepared):
    scans = _two_folders(tmp_path)
    with pytest.raises(InputError, match=r"pairs this one lesion mask with 3 scans \(.*pat2\.nii\.gz, .*pat5\.nii\.gz, "
                                         r".*pat6\.nii\.gz\): each scan needs its own") as e:
        train_brain(scans, tmp_path / "m", _cfg(lesion_pattern="../labels/pat2_tumour.nii.gz"), progress=False)
    assert e.value.path.name == "pat2_tumour.nii.gz" and prepared == []


def test_brain_mask_pattern_with_several_matches_is_an_error_a_shared_mask_is_not(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(2):
        _write_scan(flat, f"s{i}", seed=i)
    # '*brainmask*' names both scans' masks for each scan
    with pytest.raises(InputError, match=r"mask_pattern '\*brainmask\*' matches 2 files for this scan "
                                         r"\(s0_brainmask\.nii\.gz, s1_brainmask\.nii\.gz\).*brain mask is one file") as e:
        find_scans(flat, mask_pattern="*brainmask*")
    assert e.value.path == flat / "s0.nii.gz" and "e.g. '{stem}_brainmask.nii.gz'" in str(e.value)
    # two contrasts of one subject in a case folder share its brain mask (BraTS): allowed
    case = tmp_path / "study" / "case1"
    case.mkdir(parents=True)
    _write_scan(case, "flair", seed=0)
    _write_scan(case, "t1c", seed=1)
    (case / "t1c_brainmask.nii.gz").unlink()
    (case / "flair_brainmask.nii.gz").rename(case / "brainmask.nii.gz")
    found = find_scans(tmp_path / "study", mask_pattern="brainmask*")
    assert [s.scan_id for s in found] == ["case1_flair", "case1_t1c"]
    assert [s.mask_path for s in found] == [case / "brainmask.nii.gz"] * 2


def test_a_pattern_that_finds_no_mask_is_an_error_showing_the_path(tmp_path, prepared):
    folder = tmp_path / "fl"
    folder.mkdir()
    for i in range(3):
        _write_scan(folder, f"s{i}", seed=i)
    with pytest.raises(InputError, match=r"names no file for any of the 3 scan file\(s\): this path is what it names "
                                         r"for the first, s0\.nii\.gz; the folder .*wmh does not exist") as e:
        train_brain(folder, tmp_path / "m", _cfg(lesion_pattern="../wmh/{stem}_DLWMLS.nii.gz"), progress=False)
    assert e.value.path == folder / "../wmh/s0_DLWMLS.nii.gz" and str(e.value).startswith(str(e.value.path))
    assert prepared == []
    # the folder exists, no name matches
    (tmp_path / "wmh").mkdir()
    with pytest.raises(InputError, match="names no file for any of the 3") as e:
        train_brain(folder, tmp_path / "m", _cfg(lesion_pattern="../wmh/{stem}_DLWMLS.nii.gz"), progress=False)
    assert "does not exist" not in str(e.value) and prepared == []


def test_lesion_summary_line_in_every_case():
    from pipelines.brain_lesions import _lesion_summary

    def model(cal, scans=({"scan": "a", "lesion_mask": "/x/a_lesion.nii.gz"},)):
        return BrainModel(None, _cfg(), info={"lesions": {"scans": list(scans), "lesion_ml": 2.5,
                                                          "items_left_out": {"slices": 7}},
                                              "calibration": cal})

    sl = {"n_voxels": 300, "n_brain_voxels": 1000, "share_calibrating": 0.3, "voxels_left_out": [700, 0],
          "lesions_left_out_as": "slices", "slices_left_out": [9, 0], "n_brain_slices": [20, 20]}
    assert _lesion_summary(model(sl)) == (
        "left out for lesions (2.5 ml of lesion in 1 scan(s)): 7 slices of the training and held-out scans; the voxel "
        "threshold calibrates on 300 of the 1000 brain voxels of the held-out scan(s) (30 %): 9 of their 40 axial "
        "slices with brain are left out whole (the lesion slices); calibration_exclude: voxels would leave out only "
        "the lesion voxels")
    assert _lesion_summary(model({**sl, "share_calibrating": 0.7})).endswith(
        "(70 %): 9 of their 40 axial slices with brain are left out whole (the lesion slices)")
    vx = {**sl, "n_voxels": 990, "share_calibrating": 0.99, "voxels_left_out": [10, 0], "lesions_left_out_as": "voxels",
          "slices_left_out": [0, 0]}
    assert _lesion_summary(model(vx)).endswith("calibrates on 990 of the 1000 brain voxels of the held-out scan(s) "
                                               "(99 %): their 10 lesion voxels are left out")
    none_held_out = {**sl, "n_voxels": 1000, "share_calibrating": 1.0, "voxels_left_out": [0, 0]}
    assert _lesion_summary(model(none_held_out)).endswith("; the voxel threshold calibrates on all 1000 brain voxels "
                                                          "of the held-out scan(s) (no lesion inside their brain masks)")
    # the scans with a mask were all skipped (unreadable): nothing is said to be left out
    assert _lesion_summary(model(none_held_out, scans=({"scan": "b", "lesion_mask": None},))).startswith(
        "left out for lesions: nothing (no scan with a lesion mask could be read")


def test_calibration_share_and_slices_left_out(trained):
    from pipelines.brain_lesions import prepare_scan

    healthy, lesions, m = trained
    sl, vx, plain = m["slices"], m["voxels"], m["none"]
    cal = sl.info["calibration"]
    assert cal["n_brain_voxels"] == plain.info["calibration"]["n_voxels"] == vx.info["calibration"]["n_brain_voxels"]
    assert cal["share_calibrating"] == pytest.approx(cal["n_voxels"] / cal["n_brain_voxels"], abs=1e-4)
    assert cal["share_calibrating"] < vx.info["calibration"]["share_calibrating"] < 1
    assert "n_brain_voxels" not in plain.info["calibration"]  # no lesion masks, nothing left out
    # the axial slices left out: the held-out scan's slices with brain (the map's support) holding lesion
    scans = {s.scan_id: s for s in find_scans(healthy, mask_pattern="{stem}_brainmask.nii.gz", lesion_pattern=PATTERN)}
    for sid, n_left, n_brain in zip(sl.info["val_subjects"], cal["slices_left_out"], cal["n_brain_slices"]):
        brain_z = sl.support(prepare_scan(scans[sid], sl.config.prep)).any(axis=(0, 1))
        les_z = lesions[sid].any(axis=(0, 1)) if sid in lesions else np.zeros_like(brain_z)
        assert (n_left, n_brain) == (int((brain_z & les_z).sum()), int(brain_z.sum()))
    assert sum(cal["slices_left_out"]) > 0
    assert vx.info["calibration"]["slices_left_out"] == [0] * len(cal["slices_left_out"])


def test_info_paths_are_absolute_and_tidy(tmp_path, monkeypatch):
    root = tmp_path / "study"
    (root / "fl").mkdir(parents=True)
    (root / "wmh").mkdir()
    for i in range(3):
        les = _write_scan(root / "fl", f"s{i}", seed=i, lesion=i < 2)
        if i < 2:
            nib.save(nib.Nifti1Image(les.astype(np.uint8), LPS), root / "wmh" / f"s{i}_DLWMLS.nii.gz")
    (root / "fl" / "broken.nii.gz").write_bytes(b"not a nifti")
    monkeypatch.chdir(tmp_path)  # the folder given relative to the working folder, as on the command line
    path = train_brain("study/fl", tmp_path / "m", _cfg(lesion_pattern="../wmh/{stem}_DLWMLS.nii.gz"), progress=False)
    info = BrainModel.load(path).info
    real = root.resolve()
    assert {r["scan"]: r["lesion_mask"] for r in info["lesions"]["scans"]} == {
        "s0": str(real / "wmh" / "s0_DLWMLS.nii.gz"), "s1": str(real / "wmh" / "s1_DLWMLS.nii.gz"), "s2": None}
    assert [f["path"] for f in info["skipped"]] == [str(real / "fl" / "broken.nii.gz")]


def test_registration_refusal_says_how_to_give_a_brain_mask(tmp_path, monkeypatch):
    import medad.transforms.brain as tb
    from medad.io.volumes import read_volume
    from pipelines.brain_lesions import MASK_PATTERN_HINT, Scan, prepare_scan

    _write_scan(tmp_path, "s", seed=0)
    # a registration that "fits" the whole volume: most of its mask lies outside the head
    monkeypatch.setattr(tb, "register_brain_mask", lambda data, affine, **kw: np.ones(data.shape, bool))
    prep = tb.BrainPrepConfig.from_dict({**_cfg().preprocessing, "skull_strip": "register"})
    with pytest.raises(InputError) as e:
        prepare_scan(Scan("s", tmp_path / "s.nii.gz"), prep)
    rec = read_volume(tmp_path / "s.nii.gz")
    why = tb.registration_misfit(np.ones(rec.shape, bool), rec.data, rec.affine)
    assert why and "give a brain mask" in why  # the refusal medad.transforms.brain makes, unchanged ...
    assert e.value.problem == f"{why} ({MASK_PATTERN_HINT})"  # ... with how to give one
    assert "--mask-pattern" in e.value.problem and e.value.path == tmp_path / "s.nii.gz"
    # with its brain mask (skull_strip: auto, the default) the scan is not registered
    vol = prepare_scan(Scan("s", tmp_path / "s.nii.gz", tmp_path / "s_brainmask.nii.gz"), _cfg().prep)
    assert vol.brain_source == "given"


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


def test_a_single_scan_given_by_its_path_gets_its_brain_mask(tmp_path):
    """``medad brain score MODEL scan.nii.gz --mask-pattern ...``: the one file's mask is looked up as
    in a folder (it was scored without it, so registration ran on an already stripped scan)."""
    folder = tmp_path / "one"
    folder.mkdir()
    _write_scan(folder, "s0", seed=0)
    (scan,) = find_scans(folder / "s0.nii.gz", mask_pattern="{stem}_brainmask.nii.gz")
    assert scan.path == folder / "s0.nii.gz" and scan.mask_path == folder / "s0_brainmask.nii.gz"
    (scan,) = find_scans(folder / "s0.nii.gz")
    assert scan.mask_path is None
