"""Regressions found by a user-acceptance run of the README's commands on the real data:
each test fails on the code before its fix."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from medad.config import data_root
from medad.errors import InputError, ReadError

FS = 128


# ------------------------------------------------------------------ screening (pipelines/screening.py)
def test_single_channel_model_reads_its_own_channel():
    """A model of one named channel took channel 0 of any recording (an EEG model of C3 read Fp1)."""
    from pipelines.screening import Preprocessor, ScreeningConfig

    hdr = SimpleNamespace(ch_names=["Fp1", "C3", "O1"], path=Path("x.edf"))
    assert Preprocessor(ScreeningConfig(), FS, ["C3"]).picks(hdr) == [1]
    # no channel of that name: not channel 0 silently, a clear refusal (tests/test_screening_audit11.py)
    with pytest.raises(ReadError, match="lacks"):
        Preprocessor(ScreeningConfig(), FS, ["Z001"]).picks(hdr)


def _write_edf(path: Path, seconds: float, seed: int) -> None:
    import mne

    rng = np.random.default_rng(seed)
    x = rng.normal(0, 20e-6, (1, int(seconds * FS)))
    raw = mne.io.RawArray(x, mne.create_info(["EEG0"], FS, "eeg"), verbose="error")
    mne.export.export_raw(str(path), raw, fmt="edf", overwrite=True, verbose="error")


def test_screen_run_names_each_unreadable_recording(tmp_path, capsys):
    """`medad screen run` only printed a count ('1 could not be read'), never which file."""
    from pipelines.screening import ScreeningConfig, screen_folder, train_screening

    normals, test = tmp_path / "n", tmp_path / "t"
    normals.mkdir()
    test.mkdir()
    for i in range(3):
        _write_edf(normals / f"n{i}.edf", 20, i)
    _write_edf(test / "good.edf", 20, 7)
    (test / "broken.edf").write_bytes(b"0       " + b"x" * 300)
    cfg = ScreeningConfig(bandpass=None, notch=None, window_seconds=2.0, step_seconds=2.0, val_fraction=0.34)
    model = train_screening(normals, tmp_path / "m", cfg, progress=False)
    # an earlier run's outputs: the now-unreadable recording's, and a copy this run does not ask for
    (tmp_path / "o").mkdir()
    for name in ("broken_events.tsv", "broken_screening.png", "good_screened.edf"):
        (tmp_path / "o" / name).write_text("old")
    capsys.readouterr()
    summary = screen_folder(model, test, tmp_path / "o", plots=False, progress=True)
    assert summary["n_errors"] == 1
    good = next(r for r in json.loads((tmp_path / "o" / "results.json").read_text())["recordings"]
                if r["status"] == "ok")
    assert good["n_beats"] is None and good["error"] is None and good["n_windows"] == 10  # JSON null, not ""
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "broken.edf" in ln]
    assert len(lines) == 1 and lines[0].startswith("skipped:"), lines
    # stale files would contradict results.csv (the recording failed / no copy was written)
    left = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert not [n for n in left if n.startswith("broken") or n == "good_screened.edf"], left
    assert "good_events.tsv" in left


# ------------------------------------------------------------------ volumes / inspect (medad/io, commands/data.py)
def _niivue() -> Path:
    root = data_root(required=False)
    d = None if root is None else Path(root) / "mri" / "niivue_samples"
    if d is None or not (d / "enh.dcm").is_file():
        pytest.skip("real data (mri/niivue_samples/enh.dcm) not found: set MEDAD_DATA_ROOT")
    return d


def test_folder_with_one_multiframe_dicom_reads_as_3d(tmp_path):
    """A folder whose DICOM series is one enhanced multi-frame file crashed with a bare
    'ValueError: 4D image' traceback (`medad inspect mri/niivue_samples/`)."""
    from medad.commands.data import describe_path
    from medad.io.volumes import read_volume

    d = _niivue()
    (tmp_path / "enh.dcm").symlink_to(d / "enh.dcm")
    vol = read_volume(tmp_path)
    assert vol.data.shape == read_volume(d / "enh.dcm").data.shape == (64, 64, 6)
    info = describe_path(d)  # DICOM beside NIfTI/MGZ files: described as a folder, series listed
    assert info["kind"] == "folder" and len(info["dicom_series"]) == 1


# ------------------------------------------------------------------ frames (pipelines/frames.py)
def test_frames_csv_names_the_frame_files(tmp_path):
    """frames.csv of a folder of frames held only an index, so a flagged row could not be traced
    back to its image; overlays of an earlier run into the same folder stayed beside this run's."""
    cv2 = pytest.importorskip("cv2")
    from pipelines.frames import FramesConfig, screen_frames, train_frames

    rng = np.random.default_rng(0)
    normal, test = tmp_path / "normal", tmp_path / "test"
    normal.mkdir()
    test.mkdir()
    for i in range(8):
        cv2.imwrite(str(normal / f"n{i}.png"), rng.integers(100, 140, (24, 24, 3), dtype=np.uint8))
    names = ["case_b.png", "case_a10.png", "case_a2.png"]
    for n in names:
        cv2.imwrite(str(test / n), rng.integers(100, 140, (24, 24, 3), dtype=np.uint8))
    (test / "zz_bad.png").write_bytes(b"not a png")
    train_frames(normal, tmp_path / "m", FramesConfig(detector="pca", image_size=16, val_fraction=0.25),
                 progress=False)
    (tmp_path / "o" / "overlays").mkdir(parents=True)
    (tmp_path / "o" / "overlays" / "frame_000099.png").write_bytes(b"an earlier run's")
    screen_frames(tmp_path / "m", test, tmp_path / "o", overlays=False)
    assert not list((tmp_path / "o" / "overlays").glob("*.png"))  # stale overlays removed
    rows = list(csv.DictReader(open(tmp_path / "o" / "frames.csv")))
    assert [r["file"] for r in rows] == ["case_a2.png", "case_a10.png", "case_b.png", "zz_bad.png"]  # natural order
    assert [int(r["index"]) for r in rows] == [0, 1, 2, 3] and rows[3]["status"] == "error"  # reported, not dropped


# ------------------------------------------------------------------ report (medad/report/folder.py)
@pytest.mark.parametrize("nested", [False, True])
def test_report_of_brain_score_folder_shows_score_and_skipped_scans(tmp_path, nested):
    """`medad report` on a `medad brain score` folder showed '–' for the score (summary.csv has
    max_score, not score), no lesion volume, did not list the scans that could not be read, and
    reported an earlier run's figures of a scan that now failed as a case. Nested (the brain
    folder beside other results under the reported root), its summary.csv was not read at all."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medad.report.folder import build_reports

    res = tmp_path / "brain" if nested else tmp_path
    for case in ("Subj5", "bad"):  # bad/: figures of an earlier run, before the scan went bad
        (res / case).mkdir(parents=True)
        plt.imsave(res / case / "overlay.png", np.zeros((8, 8)))
    fields = ["scan", "path", "status", "lesion_ml", "max_score", "mean_score", "decision", "error"]
    with open(res / "summary.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerow({"scan": "Subj5", "path": "/data/site/Subj5.nii.gz", "status": "ok", "lesion_ml": "12.5",
                    "max_score": "4.25", "mean_score": "0.1", "decision": "abnormal", "error": ""})
        w.writerow({"scan": "bad", "path": "/data/site/bad.nii.gz", "status": "error",
                    "error": "/data/site/bad.nii.gz: cannot read as .nii.gz: not a gzip file"})
    _, done, failed = build_reports(tmp_path)
    (case, _page), = done
    assert case.score == pytest.approx(4.25) and case.details["lesion_ml"] == "12.5"
    assert case.source == "Subj5.nii.gz" and case.decision == "abnormal"
    assert failed == [("brain/bad" if nested else "bad", "bad.nii.gz: cannot read as .nii.gz: not a gzip file")]


# ------------------------------------------------------------------ evaluate (medad/commands/evaluate.py)
def _csv(path: Path, rows: list[tuple]) -> Path:
    path.write_text("score,label,subject\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def test_evaluate_reads_float_labels_and_refuses_unknown_ones(tmp_path):
    """Labels '1.0' (pandas) were read as normal, and so was any other label ('2', '-1'): all
    rows normal gave AUROC NaN with exit code 0."""
    from medad.commands.evaluate import read_scores_csv

    d = read_scores_csv(_csv(tmp_path / "a.csv", [(0.1, "0.0", "a"), (0.9, "1.0", "b")]))
    assert d["label"] == [False, True]
    with pytest.raises(ReadError, match="line 3: label '2'"):
        read_scores_csv(_csv(tmp_path / "b.csv", [(0.1, 0, "a"), (0.9, 2, "b")]))
    with pytest.raises(ReadError, match="line 2: score 'nan' is not finite"):
        read_scores_csv(_csv(tmp_path / "c.csv", [("nan", 0, "a"), (0.9, 1, "b")]))


def test_evaluate_json_is_strict_json(tmp_path):
    """An undefined per-subject AUROC (every subject abnormal) was written as the NaN token,
    which strict JSON readers reject; one-class input is refused."""
    from medad.commands.evaluate import evaluate_scores, read_scores_csv

    rows = [(0.1, 0, "a"), (0.9, 1, "a"), (0.2, 0, "b"), (0.8, 1, "b")]
    res = evaluate_scores(read_scores_csv(_csv(tmp_path / "a.csv", rows)), n_boot=20)
    json.dumps(res, allow_nan=False)
    assert res["metrics"]["per_subject"]["auroc"] is None and res["metrics"]["auroc"] == 1.0
    with pytest.raises(InputError, match="only normal"):
        evaluate_scores(read_scores_csv(_csv(tmp_path / "b.csv", [(0.1, 0, "a"), (0.2, 0, "b")])), n_boot=20)


def test_datasets_inspect_one_recording_layout():
    """`medad datasets inspect --kind wang_chung` crashed with a bare TypeError traceback (its
    loader returns one recording, the summary expected a list)."""
    from typer.testing import CliRunner

    from medad.cli import app

    root = data_root(required=False)
    if root is None or not (Path(root) / "eeg" / "wang_chung").is_dir():
        pytest.skip("real data (eeg/wang_chung) not found: set MEDAD_DATA_ROOT")
    r = CliRunner().invoke(app, ["datasets", "inspect", "--kind", "wang_chung", "--data-root", str(root), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["n_items"] == 1 and info["sfreq"] == [100.0]


def test_brain_score_with_no_readable_scan_fails(tmp_path, monkeypatch):
    """`medad brain score` exited 0 when every scan was unreadable (screen run and images screen
    exit 2 then); the command now fails naming the folder and the first problem."""
    import pipelines.brain_lesions as bl
    from typer.testing import CliRunner

    from medad.cli import app

    rows = [{"scan": "a", "path": "s/a.nii.gz", "status": "error", "error": "s/a.nii.gz: not a gzip file"}]
    monkeypatch.setattr(bl, "score_folder", lambda *a, **k: rows)
    r = CliRunner().invoke(app, ["brain", "score", str(tmp_path), str(tmp_path), "--out", str(tmp_path / "o")])
    assert isinstance(r.exception, ReadError) and "none of the 1 scan(s)" in str(r.exception)
    rows[0]["status"] = "ok"  # one scored scan: success
    r = CliRunner().invoke(app, ["brain", "score", str(tmp_path), str(tmp_path), "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output


def test_brain_train_checks_the_detector_before_preprocessing(tmp_path):
    """`medad brain train --detector nosuch` preprocessed (registered) every healthy scan before
    saying the detector does not exist."""
    from typer.testing import CliRunner

    from medad.cli import app
    from medad.errors import ConfigError

    (tmp_path / "a.nii.gz").write_bytes(b"not read: the name is checked first")
    r = CliRunner().invoke(app, ["brain", "train", str(tmp_path), "--detector", "nosuch", "--out", str(tmp_path / "m")])
    assert isinstance(r.exception, ConfigError) and "unknown detector 'nosuch'" in str(r.exception)


def test_annotation_files_are_not_recordings(tmp_path):
    """A folder holding screening outputs (``*-annot.fif``) listed them as recordings that 'could
    not be read'; `medad inspect` now describes such a file as annotations."""
    import mne

    from medad.commands.data import describe_path
    from pipelines.screening import list_recordings

    _write_edf(tmp_path / "rec.edf", 4, 0)
    mne.Annotations([1.0], [2.0], ["medad_abnormal"]).save(str(tmp_path / "rec-annot.fif"), verbose="error")
    assert [p.name for p in list_recordings(tmp_path)] == ["rec.edf"]
    info = describe_path(tmp_path / "rec-annot.fif")
    assert info["kind"] == "annotations" and info["annotations"] == {"medad_abnormal": 1}
