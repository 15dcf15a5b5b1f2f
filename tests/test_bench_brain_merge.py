"""``medad bench brain-lesions --merge``: rows of an earlier run are kept where this run has
none, replaced where it redid them, in the earlier run's order; a bad file is a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medad.bench.brain_lesions import _merge_rows
from medad.errors import ReadError


def test_merge_keeps_order_and_replaces_redone_rows(tmp_path):
    old = {"environment": {"date": "2026-01-01"},
           "results": [{"modality": "flair", "detector": d, "v": 1} for d in ("intensity", "ae", "dae")]
           + [{"modality": "t1c", "detector": "ae", "v": 1}]}
    (tmp_path / "brain-lesions.json").write_text(json.dumps(old))
    new = [{"modality": "t1c", "detector": "ae", "v": 2}, {"modality": "flair", "detector": "ae", "v": 2},
           {"modality": "flair", "detector": "vae", "v": 2}]
    rows = _merge_rows(new, [tmp_path], order=["flair", "t1c"])
    assert [(r["modality"], r["detector"], r["v"]) for r in rows] == [
        ("flair", "intensity", 1), ("flair", "ae", 2), ("flair", "dae", 1), ("flair", "vae", 2), ("t1c", "ae", 2)]
    assert rows[0]["run_date"] == "2026-01-01" and "merged_from" not in rows[1]
    # two earlier runs: the later one replaces rows in place
    later = tmp_path / "later"
    later.mkdir()
    (later / "brain-lesions.json").write_text(json.dumps({"results": [{"modality": "flair", "detector": "ae", "v": 3}]}))
    rows = _merge_rows([], [tmp_path, later], order=["flair", "t1c"])
    assert [(r["detector"], r["v"]) for r in rows] == [("intensity", 1), ("ae", 3), ("dae", 1), ("ae", 1)]


def test_merge_rejects_a_file_that_is_not_a_benchmark(tmp_path):
    (tmp_path / "brain-lesions.json").write_text("{\"something\": 1}")
    with pytest.raises(ReadError, match="not a brain-lesions benchmark"):
        _merge_rows([], [tmp_path], order=["flair"])
    with pytest.raises(ReadError, match="no brain-lesions.json"):
        _merge_rows([], [tmp_path / "missing"], order=["flair"])


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


def test_site_calibrated_threshold_uses_only_the_test_sites_held_out_subjects():
    """The site-calibrated figure thresholds the test maps at a level set on the held-out healthy
    subjects of the test site alone (NiChart held-out subjects left out), lesion slices excluded."""
    from types import SimpleNamespace

    import numpy as np

    from medad.bench.brain_lesions import site_calibrated

    class Model:
        voxel_threshold, info = 0.5, {}

        def calibrate(self, vols, exclude):
            self.seen = [v.record.subject_id for v in vols]
            self.excluded = exclude
            self.voxel_threshold = max(float(v.level) for v in vols)
            return self

        def segment(self, amap, support):
            return (amap > self.voxel_threshold) & support

    def vol(sid, level):
        return SimpleNamespace(record=SimpleNamespace(subject_id=sid), level=level)

    val = [vol("Subj3", 9.0), vol("pat0002", 2.0)]  # a NiChart subject would set a much higher level
    lesion = np.zeros((4, 4, 2), bool)
    amap = np.zeros((4, 4, 2))
    amap[0, :2] = 3.0  # above the site level (2), below the NiChart one (9)
    truth = np.zeros((4, 4, 2), bool)
    truth[0, :] = True
    brain = np.ones((4, 4, 2), bool)
    model = Model()
    out = site_calibrated(model, val, [None, lesion], {"pat0002", "pat0006"},
                          [("pat0010", amap, None, truth, brain)], [brain])["site_calibrated"]
    assert out["subjects"] == ["pat0002"] and out["voxel_threshold"] == 2.0
    assert out["dice"] == pytest.approx(2 * 4 / (4 + 8))  # 4 of the 8 lesion voxels found, no false one
    assert model.voxel_threshold == 0.5  # the protocol's threshold is left as it was
    assert site_calibrated(model, [vol("Subj3", 9.0)], [None], {"pat0002"}, [], []) == {}


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
