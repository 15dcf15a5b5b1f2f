"""``medad bench brain-lesions --merge``: rows of an earlier run are kept where this run has
none, replaced where it redid them, in the earlier run's order; a bad file is a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medad.bench.brain_lesions import _merge_check, _merge_rows
from medad.bench.common import earlier_run
from medad.errors import ReadError


def _earlier(*folders):
    return [earlier_run(f, "brain-lesions", check=_merge_check) for f in folders]


def test_merge_keeps_order_and_replaces_redone_rows(tmp_path):
    old = {"environment": {"date": "2026-01-01"},
           "results": [{"modality": "flair", "detector": d, "v": 1} for d in ("intensity", "ae", "dae")]
           + [{"modality": "t1c", "detector": "ae", "v": 1}]}
    (tmp_path / "brain-lesions.json").write_text(json.dumps(old))
    new = [{"modality": "t1c", "detector": "ae", "v": 2}, {"modality": "flair", "detector": "ae", "v": 2},
           {"modality": "flair", "detector": "vae", "v": 2}]
    rows = _merge_rows(new, _earlier(tmp_path), order=["flair", "t1c"])
    assert [(r["modality"], r["detector"], r["v"]) for r in rows] == [
        ("flair", "intensity", 1), ("flair", "ae", 2), ("flair", "dae", 1), ("flair", "vae", 2), ("t1c", "ae", 2)]
    assert rows[0]["run_date"] == "2026-01-01" and "merged_from" not in rows[1]
    # two earlier runs: the later one replaces rows in place
    later = tmp_path / "later"
    later.mkdir()
    (later / "brain-lesions.json").write_text(json.dumps({"results": [{"modality": "flair", "detector": "ae", "v": 3}]}))
    rows = _merge_rows([], _earlier(tmp_path, later), order=["flair", "t1c"])
    assert [(r["detector"], r["v"]) for r in rows] == [("intensity", 1), ("ae", 3), ("dae", 1), ("ae", 1)]


def test_merge_rejects_a_file_that_is_not_a_benchmark(tmp_path):
    (tmp_path / "brain-lesions.json").write_text("{\"something\": 1}")
    with pytest.raises(ReadError, match="not a brain-lesions benchmark"):
        _earlier(tmp_path)
    (tmp_path / "brain-lesions.json").write_text(json.dumps({"results": [{"modality": "flair"}]}))
    with pytest.raises(ReadError, match="not a brain-lesions benchmark"):
        _earlier(tmp_path)
    with pytest.raises(ReadError, match="no such file"):
        _earlier(tmp_path / "missing")


def _case_row(det, cases):
    """A benchmark row from per-case (true positive, lesion, predicted) ml."""
    per = {f"c{i}": {"dice": 2 * tp / (les + pred), "lesion_ml": les, "predicted_ml": pred}
           for i, (tp, les, pred) in enumerate(cases)}
    tp, les, pred = np.sum(cases, axis=0)
    return {"modality": "flair", "detector": det, "per_case": per, "pooled": {"dice": 2 * tp / (les + pred)}}


def test_dice_interval_over_cases_and_paired_difference():
    from medad.bench.brain_lesions import dice_interval

    a = _case_row("a", [(8, 10, 10), (40, 50, 45), (5, 10, 20), (30, 40, 30)])
    est, lo, hi = dice_interval(a)
    assert est == pytest.approx(a["pooled"]["dice"]) and lo < est < hi
    # cases all alike: no spread
    same = _case_row("s", [(8, 10, 10)] * 4)
    assert dice_interval(same)[1:] == pytest.approx((0.8, 0.8))
    # paired with itself: exactly 0; a row better on every case: the whole interval above 0
    assert dice_interval(a, a) == pytest.approx((0.0, 0.0, 0.0))
    better = _case_row("b", [(9, 10, 10), (45, 50, 45), (8, 10, 20), (35, 40, 30)])
    d, lo, hi = dice_interval(better, a)
    assert d == pytest.approx(better["pooled"]["dice"] - a["pooled"]["dice"]) and 0 < lo <= d <= hi
    # rows without predicted volumes, or on other cases, give no interval
    old = {**a, "per_case": {k: {"dice": v["dice"], "lesion_ml": v["lesion_ml"]} for k, v in a["per_case"].items()}}
    assert dice_interval(old) is None
    other = {**a, "per_case": {f"x{k}": v for k, v in a["per_case"].items()}}
    assert dice_interval(a, other) is None


def test_goal_lines_name_the_best_deep_detector():
    from medad.bench.brain_lesions import _goal_lines

    def row(mod, det, dice, auprc, train=10.0, infer=5.0):
        return {"modality": mod, "detector": det, "pooled": {"dice": dice, "auprc": auprc},
                "train_seconds": train, "inference_seconds_per_volume": infer}

    lines = _goal_lines([row("flair", "intensity", 0.95, 0.99), row("flair", "dae", 0.9, 0.94),
                         row("flair", "vae", 0.8, 0.96, train=2000.0), row("t1c", "dae", 0.2, 0.3, infer=30.0)])
    assert lines[0].endswith("(dae) vs goal 0.89 -> reached")  # the intensity row is not deep
    assert "0.960 (vae)" in lines[1] and lines[1].endswith("-> reached")
    assert lines[2].endswith("NOT reached")
    assert "NOT for flair/vae" in lines[3] and "NOT for t1c/dae" in lines[4]
    # a model trained on a GPU never counts as trained within the CPU budget, however short its train s
    gpu = {**row("flair", "ddpm", 0.5, 0.5, train=100.0), "trained_on": "NVIDIA H100 80GB HBM3 (cuda)"}
    cpu = {**row("flair", "ae", 0.5, 0.5, train=100.0), "trained_on": "CPU, 2 torch threads"}
    assert _goal_lines([gpu, cpu])[2] == "training under 30 min on 2 CPU cores: NOT for flair/ddpm trained on a GPU"


def test_t1c_adds_the_healthy_t1_scans_and_does_not_reuse_models_fitted_without_them(tmp_path):
    from medad.bench.brain_lesions import ModelStore, healthy_t1_files

    assert healthy_t1_files(tmp_path) == []
    for rel in ("mri/ixi_t1_2mm/IXI2_T1.nii.gz", "mri/ixi_t1_2mm/IXI1_T1.nii.gz", "mri/ixi_t1_2mm/IXI1_T2.nii.gz",
                "mri/niivue_samples/chris_t1.nii.gz", "mri/niivue_samples/FLAIR.nii.gz"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    assert [f.name for f in healthy_t1_files(tmp_path)] == ["IXI1_T1.nii.gz", "IXI2_T1.nii.gz", "chris_t1.nii.gz"]
    plain, with_t1 = ModelStore(tmp_path, "t1c", False), ModelStore(tmp_path, "t1c", False, ["IXI1_T1.nii.gz"])
    assert plain._dir("k") != with_t1._dir("k")  # a model fitted on other training scans is another model
    assert ModelStore(tmp_path, "flair", False)._dir("k") == ModelStore(tmp_path, "flair", False, [])._dir("k")


def test_region_recall_and_the_core_only_ceiling():
    """A mask that covers the tumour core exactly: core recall 1, oedema recall 0, and its Dice
    against the whole lesion is the core-only ceiling; the Markdown shows the recalls (and '–' for
    a row made without regions)."""
    from medad.bench.brain_lesions import _markdown, evaluate_maps

    shape = (12, 12, 6)
    brain = np.zeros(shape, bool)
    brain[1:11, 1:11, :] = True
    core = np.zeros(shape, bool)
    core[4:6, 4:6, 2:4] = True  # 8 voxels
    oedema = np.zeros(shape, bool)
    oedema[3:7, 3:7, 2:4] = True
    oedema &= ~core  # 24 voxels
    lesion = core | oedema
    amap = core.astype(np.float32) + 0.5 * oedema
    cases = [("a", amap, core.copy(), lesion, brain), ("b", amap, lesion.copy(), lesion, brain)]
    res = evaluate_maps(cases, [{"core": core, "oedema": oedema}] * 2)
    a, b, p = res["per_case"]["a"], res["per_case"]["b"], res["pooled"]
    assert a["recall_core"] == 1.0 and a["recall_oedema"] == 0.0 and b["recall_oedema"] == 1.0
    assert a["core_only_dice"] == pytest.approx(2 * 8 / (8 + 32)) and a["dice"] == pytest.approx(a["core_only_dice"])
    assert p["recall_oedema"] == pytest.approx(0.5) and p["oedema_ml"] == pytest.approx(48 / 1000)
    assert "recall_core" not in evaluate_maps(cases)["pooled"]  # no regions given: none reported
    row = {**res, "modality": "t1c", "detector": "x", "train_seconds": 1.0, "inference_seconds_per_volume": 1.0,
           "peak_memory_mb": 1.0}
    old = {**evaluate_maps(cases), "modality": "t1c", "detector": "old", "train_seconds": 1.0,
           "inference_seconds_per_volume": 1.0, "peak_memory_mb": 1.0}
    md = _markdown([row, old], {"date": "d", "cpu_note": "n", "protocol": "p"})
    assert "| 1.000 | 0.500 |" in md and "| – | – |" in md
    assert "pooled Dice 0.400" in md  # the core-only ceiling, said in words
    assert "Row notes" not in md
    md = _markdown([row, {**old, "note": "made with stale masks"}], {"date": "d", "cpu_note": "n", "protocol": "p"})
    assert "Row notes: t1c / old: made with stale masks" in md  # a row's caveat is printed with the table


def test_unknown_row_fails_before_any_data_is_read(tmp_path):
    """A wrong --detectors name was found only after the reference rows (minutes) were computed."""
    from typer.testing import CliRunner

    from medad.cli import app

    r = CliRunner().invoke(app, ["bench", "brain-lesions", "--detectors", "nonexist", "--modalities", "flair",
                                 "--data-root", str(tmp_path / "no_data"), "--out", str(tmp_path / "o")])
    said = r.output + str(r.exception or "")  # the CLI's own handler prints it; CliRunner keeps the exception
    assert r.exit_code != 0 and "unknown detector 'nonexist'" in said and not (tmp_path / "o").exists()


def test_bench_configs_come_from_medad_outside_the_repository(tmp_path, monkeypatch):
    """Run outside the repository, the bench used the detectors' bare defaults (Dice 0.850 instead
    of 0.864 for intensity) without a word: it reads the configs that come with medad."""
    from medad.bench.brain_lesions import _detector_config
    from medad.config import CONFIG_DIR

    monkeypatch.chdir(tmp_path)
    cfg, src = _detector_config("intensity", Path("configs"), False, "flair")
    assert Path(src) == CONFIG_DIR / "brain_intensity.yaml"


def _calibration_case():
    """A real BrainModel whose held-out maps are given: a NiChart subject (high healthy level) and the
    held-out BraTS train case (its lesion slice and lesion voxels hotter than the rest)."""
    from types import SimpleNamespace

    import numpy as np

    from pipelines.brain_lesions import BrainLesionConfig, BrainModel

    def vol(sid, brain):
        return SimpleNamespace(record=SimpleNamespace(subject_id=sid, spacing=(1.0, 1.0, 1.0)), brain=brain)

    brain = np.ones((4, 4, 2), bool)
    nichart = np.full((4, 4, 2), 9.0)
    brats = np.zeros((4, 4, 2))
    brats[:, :, 1] = 2.0  # healthy voxels of the lesion slice: warmer than the lesion-free slice
    lesion = np.zeros((4, 4, 2), bool)
    lesion[0, 0, 1] = True
    brats[0, 0, 1] = 20.0
    val = [vol("Subj3", brain), vol("pat0002", brain)]
    model = BrainModel(None, BrainLesionConfig(pixel_fpr=0.01, min_lesion_voxels=0, erode=0), voxel_threshold=0.5)
    maps = {"Subj3": (nichart, brain), "pat0002": (brats, brain)}
    model.calibration_maps = lambda volumes, progress=False: [maps[v.record.subject_id] for v in volumes]
    amap = np.zeros((4, 4, 2))
    amap[0, :2] = 3.0  # above the BraTS levels (0 and 2), below the NiChart one (9)
    amap[1, :2] = 1.0  # above the lesion-free slice's level only
    truth = np.zeros((4, 4, 2), bool)
    truth[0, :] = True
    return model, val, [None, lesion], [("pat0010", amap, None, truth, brain)], [brain]


def test_calibration_checks_set_thresholds_only_on_held_out_healthy_data():
    """Site-calibrated: the test site's held-out subject alone, lesion slices left out; voxel-calibrated:
    all held-out subjects, lesion voxels left out; val patient: calibrated on the other site each way,
    judged on the held-out BraTS case's lesion. The protocol's own threshold is left as it was."""
    from medad.bench.brain_lesions import calibration_checks

    model, val, lesions, rows, supports = _calibration_case()
    out = calibration_checks(model, val, lesions, {"pat0002", "pat0006"}, rows, supports)
    site = out["site_calibrated"]
    assert site["subjects"] == ["pat0002"] and site["voxel_threshold"] == 0.0  # the lesion slice was left out
    assert site["dice"] == pytest.approx(2 * 4 / (8 + 8))  # 4 of 8 lesion voxels found, 4 false ones (level 1)
    vox = out["voxel_calibrated"]
    assert vox["voxel_threshold"] == 9.0  # NiChart's level sets it: nothing of the test map is above
    assert vox["dice"] == 0.0
    vp = out["val_patient"]
    assert vp["subjects"] == ["pat0002"]
    assert vp["slices"]["voxel_threshold"] == vp["voxels"]["voxel_threshold"] == 9.0  # NiChart only
    assert vp["slices"]["dice"] == pytest.approx(1.0)  # the lesion voxel (20) alone is above 9
    assert model.voxel_threshold == 0.5
    # without the other site there is nothing to judge the two ways on; without the test site no site figure
    out = calibration_checks(model, val[1:], lesions[1:], {"pat0002"}, rows, supports)
    assert "val_patient" not in out and out["voxel_calibrated"]["voxel_threshold"] == 2.0
    out = calibration_checks(model, val[:1], lesions[:1], {"pat0002"}, rows, supports)
    assert set(out) == {"voxel_calibrated"}


def test_healthy_support_leaves_out_lesion_slices_or_voxels():
    import numpy as np

    from pipelines.brain_lesions import healthy_support

    sup = np.ones((3, 3, 4), bool)
    lesion = np.zeros_like(sup)
    lesion[1, 1, 2] = True
    assert healthy_support(sup, None) is sup
    by_slice = healthy_support(sup, lesion)
    assert not by_slice[:, :, 2].any() and by_slice[:, :, [0, 1, 3]].all()
    by_voxel = healthy_support(sup, lesion, voxels=True)
    assert by_voxel.sum() == sup.sum() - 1 and not by_voxel[1, 1, 2]


def test_merge_is_checked_before_anything_runs(tmp_path, monkeypatch):
    """A --merge that is missing, not a brain-lesions file or a quick run into a full one fails
    before any data is read (it failed only after every row had run)."""
    import medad.bench.brain_lesions as bl
    from medad.errors import InputError

    def never(*a, **k):
        raise AssertionError("data read before the merge file was checked")

    monkeypatch.setattr(bl, "BenchData", never)
    with pytest.raises(ReadError, match="no brain-lesions.json here"):
        bl.run_brain_lesions(data_root=tmp_path, out=tmp_path / "o", detectors=["intensity"], merge=[tmp_path])
    (tmp_path / "brain-lesions.json").write_text(json.dumps({"benchmark": "bonn", "results": {}}))
    with pytest.raises(InputError, match="bonn benchmark's file"):
        bl.run_brain_lesions(data_root=tmp_path, out=tmp_path / "o", detectors=["intensity"], merge=[tmp_path])
    (tmp_path / "brain-lesions.json").write_text(json.dumps({"benchmark": "brain-lesions", "quick": True,
                                                               "results": []}))
    with pytest.raises(InputError, match="cannot merge a full run"):
        bl.run_brain_lesions(data_root=tmp_path, out=tmp_path / "o", detectors=["intensity"], merge=[tmp_path])


def test_detectors_option_takes_repeated_and_comma_separated_names(tmp_path, monkeypatch):
    """`bench brain-lesions --detectors` takes names repeated (as bench image-screening does) or
    comma-separated (as before), or both."""
    from typer.testing import CliRunner

    import medad.bench.brain_lesions as bl
    from medad.cli import app

    seen = []
    monkeypatch.setattr(bl, "run_brain_lesions", lambda **kw: seen.append(kw["detectors"]))
    for args in (["--detectors", "intensity,dae"], ["--detectors", "intensity", "--detectors", "dae"],
                 ["--detectors", "intensity, dae", "--detectors", "none"]):
        r = CliRunner().invoke(app, ["bench", "brain-lesions", *args, "--out", str(tmp_path)])
        assert r.exit_code == 0, r.output
    assert seen == [["intensity", "dae"]] * 3
