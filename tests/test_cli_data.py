"""``medad inspect`` and ``medad datasets inspect`` through typer's CliRunner and the real entry
point (``medad.cli.main``, which turns a MedadError into ``error: ...`` and exit code 2)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from medad.cli import app, main
from medad.config import data_root
from medad.errors import ReadError

ROOT = data_root(required=False)
needs_data = pytest.mark.skipif(ROOT is None, reason="../shared/data (or $MEDAD_DATA_ROOT) not present")
runner = CliRunner()


def _run_main(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@needs_data
def test_inspect_volume_non_ras():
    r = runner.invoke(app, ["inspect", str(ROOT / "mri/nichart_flair/fl/Subj10_FL.nii.gz"), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["shape"] == [110, 110, 87] and info["spacing_mm"] == [2.0, 2.0, 2.0]
    assert info["orientation"] == "RAS" and info["original_orientation"] == "LPS"
    assert info["min"] == 0 and info["max"] > 100


@needs_data
def test_inspect_dicom_series_and_image():
    r = runner.invoke(app, ["inspect", str(ROOT / "ct/totalsegmentator/example_ct_dicom")])
    assert r.exit_code == 0, r.output
    assert "shape: [512, 512, 20]" in r.output and "JPEG 2000" in r.output and "modality: CT" in r.output
    img = sorted((ROOT / "mri/brain_tumor_mri_4class/train/notumor").glob("*.png"))[0]
    r = runner.invoke(app, ["inspect", str(img)])
    assert r.exit_code == 0 and "shape: [128, 128]" in r.output


@needs_data
def test_inspect_folder_lists_labels():
    r = runner.invoke(app, ["inspect", str(ROOT / "mri/brain_tumor_mri_4class"), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["files"]["image"] == 3252
    assert info["labels_found"] == ["glioma", "meningioma", "notumor", "pituitary"]
    assert info["folders"]["train/notumor"] == {"image": 1200}


def test_inspect_video(tmp_path):
    import cv2

    p = tmp_path / "clip.avi"
    w = cv2.VideoWriter(str(p), cv2.VideoWriter_fourcc(*"MJPG"), 5, (32, 24))
    for i in range(7):
        w.write(np.full((24, 32, 3), 20 * i, np.uint8))
    w.release()
    r = runner.invoke(app, ["inspect", str(p), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["frames"] == 7 and info["fps"] == pytest.approx(5) and info["duration_s"] == pytest.approx(1.4)


def test_inspect_signal_delegates(tmp_path):
    pytest.importorskip("medad.io.signals")
    p = tmp_path / "seg.txt"
    p.write_text("\n".join(str(v) for v in np.sin(np.arange(500) / 10)))
    r = runner.invoke(app, ["inspect", str(p), "--sfreq", "100", "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["kind"] == "signal" and info["n_times"] == 500 and info["duration_s"] == pytest.approx(5.0)


@pytest.mark.parametrize("name,content", [
    ("broken.nii.gz", b"\x1f\x8b\x08 not really gzip"),
    ("broken.png", b"nope"),
    ("scan.xyz", b"what"),
    ("missing.nii.gz", None),
])
def test_bad_file_exit_2_names_file(tmp_path, capsys, name, content):
    p = tmp_path / name
    if content is not None:
        p.write_bytes(content)
    code, out, err = _run_main(["inspect", str(p)], capsys)
    assert code == 2
    assert err.startswith("error: ") and name in err
    assert "Traceback" not in err + out
    # through the typer app itself the typed error surfaces (main maps it to exit 2)
    r = runner.invoke(app, ["inspect", str(p)])
    assert r.exit_code != 0 and isinstance(r.exception, ReadError) and name in str(r.exception)


@needs_data
def test_datasets_inspect_counts(capsys):
    r = runner.invoke(app, ["datasets", "inspect", "--kind", "wce_bleedgen", "--data-root", str(ROOT), "--json"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.output)
    assert s["per_split_label"] == {"train": {"bleeding": 200, "non_bleeding": 200},
                                    "valid": {"bleeding": 50, "non_bleeding": 50}}
    r = runner.invoke(app, ["datasets", "inspect", "ct/covid_ct_256", "--kind", "covid_ct",
                            "--data-root", str(ROOT), "--seed", "1"])
    assert r.exit_code == 0, r.output
    assert "CT_COVID" in r.output and "n_items: 746" in r.output
    assert "split" in r.output.splitlines()[0] and "subjects" in r.output.splitlines()[0]


def test_datasets_inspect_errors(tmp_path, capsys):
    code, _, err = _run_main(["datasets", "inspect", str(tmp_path / "none"), "--kind", "class_folders"], capsys)
    assert code == 2 and "none" in err and "not found" in err
    code, _, err = _run_main(["datasets", "inspect", str(tmp_path), "--kind", "bogus"], capsys)
    assert code == 2 and "unknown dataset kind" in err
    code, _, err = _run_main(["datasets", "inspect", str(tmp_path), "--kind", "class_folders"], capsys)
    assert code == 2 and "no items" in err
    r = runner.invoke(app, ["datasets", "kinds"])
    assert r.exit_code == 0 and "brats" in r.output and "bonn" in r.output


def test_iter_read_reports_bad_files_and_carries_on(tmp_path):
    import nibabel as nib
    from PIL import Image

    from medad.io.dispatch import iter_read, kind_of

    nib.save(nib.Nifti1Image(np.ones((3, 4, 5), np.float32), np.eye(4)), str(tmp_path / "a.nii.gz"))
    Image.fromarray(np.zeros((6, 7), np.uint8)).save(tmp_path / "b.png")
    (tmp_path / "c.nii.gz").write_bytes(b"corrupt")
    (tmp_path / "d.unknown").write_bytes(b"?")
    errors = []
    got = list(iter_read(sorted(tmp_path.iterdir()), on_error=lambda p, e: errors.append(p.name)))
    assert [(p.name, r.shape) for p, r in got] == [("a.nii.gz", (3, 4, 5)), ("b.png", (6, 7))]
    assert errors == ["c.nii.gz", "d.unknown"]
    assert kind_of(tmp_path) == "folder" and kind_of(tmp_path / "b.png") == "image"
