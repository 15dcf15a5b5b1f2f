"""Readability of the figures and pages a clinician reads (second user audit): labelled colour
bars, attribution scales from 0, patient orientation markers that match how slices are drawn,
signal plots with all channels, amplitude notes, legends and recording time, and `medad report`
pages that state the rule actually used (brain lesion volume, frame files, no maps)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from medad.report import overlay


@pytest.fixture
def figures(monkeypatch):
    """Capture the matplotlib figures the plot functions save (and still write them)."""
    saved = []
    real = overlay._save
    monkeypatch.setattr(overlay, "_save", lambda fig, path: (saved.append(fig), real(fig, path))[1])
    return saved


def _texts(fig) -> str:
    return "\n".join(t.get_text() for ax in fig.axes for t in ax.texts) + "\n" + \
        "\n".join(t.get_text() for t in fig.texts) + "\n" + (fig._suptitle.get_text() if fig._suptitle else "")


def test_attribution_overlay_labelled_from_zero_and_transparent_below(tmp_path, figures):
    yy, xx = np.mgrid[:40, :40]
    m = 0.27 + 0.25 * np.exp(-((yy - 20) ** 2 + (xx - 20) ** 2) / 50)  # a Grad-CAM that never reaches 0
    m[:3] = 0.0
    overlay.save_overlay(np.random.default_rng(0).random((40, 40)), m, tmp_path / "a.png",
                         label="attribution (Grad-CAM, relative)", attribution=True)
    fig = figures[-1]
    cbar_ax = fig.axes[-1]
    assert cbar_ax.get_ylabel().replace("\n", " ") == "attribution (Grad-CAM, relative)"
    lo, hi = fig.axes[1].images[0].get_clim()
    assert lo == 0.0 and hi == pytest.approx(m.max())
    blend = fig.axes[2].images[1].get_array()
    assert np.ma.getmaskarray(blend)[:3].all() and not np.ma.getmaskarray(blend)[3:].any()
    assert "not drawn" in _texts(fig)

    signed = m - 0.4  # negative and positive evidence: symmetric diverging scale
    overlay.save_overlay(np.zeros((40, 40)), signed, tmp_path / "b.png", label="attribution (IG)", attribution=True)
    im = figures[-1].axes[1].images[0]
    lo, hi = im.get_clim()
    assert lo == pytest.approx(-hi) and hi == pytest.approx(np.abs(signed).max())
    assert im.get_cmap().name == "RdBu_r"


def test_anomaly_overlay_keeps_its_range_and_marks_the_threshold(tmp_path, figures):
    m = np.linspace(-4, 10, 400, dtype=np.float32).reshape(20, 20)
    overlay.save_overlay(np.zeros((20, 20)), m, tmp_path / "m.png", label="anomaly score", threshold=1.58)
    fig = figures[-1]
    assert fig.axes[1].images[0].get_clim() == pytest.approx((-4, 10))
    assert fig.axes[-1].get_ylabel() == "anomaly score"
    assert any(np.allclose(line.get_ydata(), 1.58) for line in fig.axes[-1].lines)


def test_orientation_markers_on_each_tile_and_convention_stated(tmp_path, figures):
    o = overlay.axial_orientation("right")
    assert (o.left, o.right) == ("L", "R") and "neurological" in o.note
    assert overlay.axial_orientation("left").left == "R"
    with pytest.raises(Exception, match="patient_right_on"):
        overlay.axial_orientation("up")
    overlay.save_overlay(np.zeros((30, 90)), np.zeros((30, 90)), tmp_path / "o.png", orientation=o, tiles=3)
    fig = figures[-1]
    img_letters = [t.get_text() for t in fig.axes[0].texts]
    assert img_letters.count("R") == 3 and img_letters.count("L") == 3 and img_letters.count("A") == 3
    # R sits at the right edge of each tile: x beyond its tile's middle
    rs = sorted(t.get_position()[0] for t in fig.axes[0].texts if t.get_text() == "R")
    assert all(k * 30 + 15 < x <= (k + 1) * 30 for k, x in enumerate(rs))
    assert "neurological convention" in _texts(fig)


def test_volume_slices_are_drawn_patient_right_on_screen_right(tmp_path):
    """The markers say R on screen right: check that is where the patient's right side lands,
    for a scan stored left-to-right (LAS voxel order) as well as RAS."""
    from medad.io.volumes import read_volume, write_volume
    from medad.report.cases import _axial_view

    for flip in (1.0, -1.0):
        vol = np.zeros((20, 24, 6), np.float32)
        affine = np.diag([flip, 1.0, 1.0, 1.0])
        affine[0, 3] = -flip * 9.5  # world x from -9.5 to 9.5
        right = np.flatnonzero(affine[0, 0] * np.arange(20) + affine[0, 3] > 5)  # patient's right: world x > 0
        vol[right, 15:20, 3] = 1.0  # ... and anterior (large y)
        write_volume(vol, affine, tmp_path / "v.nii.gz")
        rec = read_volume(tmp_path / "v.nii.gz")
        shown = _axial_view(rec.data[..., 3])
        rows, cols = np.nonzero(shown)
        assert cols.min() >= shown.shape[1] // 2, "patient's right is not on screen right"
        assert rows.max() < shown.shape[0] // 2, "anterior is not up"


def test_signal_plot_all_channels_units_legend_and_recording_time(tmp_path, figures):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(18, 500)).astype(np.float32) * 50e-6  # volts, as MNE reads EEG
    names = [f"EEG {i}" for i in range(18)]
    overlay.save_signal_plot(x, 250.0, tmp_path / "s.png", ch_names=names, attribution=np.abs(x[0]),
                             spans=[(201.0, 201.5, 0.8)], t0=200.0, units="V (MNE SI units)", title="t")
    fig = figures[-1]
    rows = [ax for ax in fig.axes if ax.get_ylabel()]
    assert [ax.get_ylabel() for ax in rows] == names  # all 18 shown
    assert rows[0].get_xlim() == pytest.approx((200.0, 202.0))
    assert rows[-1].get_xlabel() == "time in recording (s)"
    notes = [t.get_text() for t in rows[0].texts]
    ptp = (x[0].max() - x[0].min()) * 1e6
    assert notes == [f"{ptp:.3g} µV\nrow height"]
    legend = [t.get_text() for t in rows[0].get_legend().get_texts()]
    assert legend[0].startswith("flagged span") and "all channels together" in legend[1]

    many = rng.normal(size=(40, 100)).astype(np.float32)
    overlay.save_signal_plot(many, 100.0, tmp_path / "m.png", ch_names=[f"c{i}" for i in range(40)],
                             units=["mV"] * 40)
    fig = figures[-1]
    assert sum(1 for ax in fig.axes if ax.get_ylabel()) == 32
    head = fig._suptitle.get_text()
    assert "first 32 of 40 channels" in head and "not shown: c32, c33" in head and "c39" in head
    assert fig.axes[0].get_legend() is None  # no spans, no attribution: nothing to explain
    assert "mV" in fig.axes[0].texts[0].get_text()
    overlay.save_signal_plot(many[:1], 100.0, tmp_path / "u.png")
    assert "a.u." in figures[-1].axes[0].texts[0].get_text()


def test_explained_windows_in_time_order_on_recording_time(tmp_path, monkeypatch):
    from medad.report import cases
    from medad.report.html import MAP_NOTES

    calls = []
    real = cases.save_signal_plot
    monkeypatch.setattr(cases, "save_signal_plot", lambda *a, **k: (calls.append(k), real(*a, **k))[1])
    monkeypatch.setattr(cases, "_explain", lambda det, x, m, kw, sd: np.ones((len(x), x.shape[-1]), np.float32))
    det = SimpleNamespace(score=lambda w: SimpleNamespace(score=w.mean(axis=(1, 2))))
    windows = np.random.default_rng(0).normal(size=(3, 1, 64)).astype(np.float32)
    case = cases.explain_windows(det, windows, [13.0, 15.0, 12.0], 32.0, tmp_path, methods=["ig"], cid="S083",
                                 score=1.0, threshold=0.5, decision="abnormal", ch_names=["S083"],
                                 source="S083.txt")
    assert [Path(f.png).name for f in case.figures] == ["ig_12.0s.png", "ig_13.0s.png", "ig_15.0s.png"]
    assert [k["t0"] for k in calls] == [12.0, 13.0, 15.0]
    assert all(k["ch_names"] == ["signal"] for k in calls)  # not the file name
    assert "time from its start" not in calls[0]["title"]
    assert all(f.note is None for f in case.figures) and "red" not in MAP_NOTES["signal"]


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_report_on_brain_scores_states_the_volume_rule(tmp_path):
    from medad.report.folder import build_reports

    case = tmp_path / "IXI015"
    case.mkdir()
    overlay.save_overlay(np.zeros((8, 8)), np.zeros((8, 8)), case / "overlay.png")
    _write_csv(tmp_path / "summary.csv", [
        {"scan": "IXI015", "path": "/x/IXI015.nii.gz", "status": "ok", "lesion_ml": "7.024", "max_score": "1.748",
         "mean_score": "0.0032141592", "threshold": "1.5798", "decision_ml": "7.024", "decision": "normal"}])
    build_reports(tmp_path)
    page = (case / "report.html").read_text()
    assert "lesion volume exceeds 7.024 ml; this scan: 7.024 ml, not above it" in page
    assert "voxel threshold (1.58)" in page and "see brain_model.json" in page
    assert "called abnormal when its score is above the threshold" not in page
    assert "0.003214" in page and "0.0032141592" not in page  # CSV precision rounded for reading

    _write_csv(tmp_path / "summary.csv", [  # a summary written before decision_ml existed
        {"scan": "IXI015", "path": "/x/IXI015.nii.gz", "status": "ok", "lesion_ml": "2.5", "max_score": "1.748",
         "threshold": "1.5798", "decision": "normal"}])
    build_reports(tmp_path)
    page = (case / "report.html").read_text()
    assert "decision volume (decision_ml in brain_model.json" in page and "this scan: 2.5 ml" in page


def test_report_on_frame_folder_lists_files_and_says_no_maps(tmp_path):
    from medad.report.folder import build_reports

    _write_csv(tmp_path / "frames.csv", [
        {"index": i, "time_s": f"{i:.4f}", "file": f"bleeding/img-{i}.jpg", "score": s, "flagged": int(s > 0.5),
         "status": "ok", "error": ""} for i, s in enumerate([0.9, 0.2, 0.8])])
    (tmp_path / "summary.json").write_text(json.dumps({
        "source": "/data/valid", "detector": "classifier", "stride": 1, "n_frames_screened": 3, "n_flagged": 2,
        "threshold": 0.5, "maps": False, "spans": [{"start_s": 0.0, "end_s": 1.0}, {"start_s": 2.0, "end_s": 3.0}],
        "unreadable_frames": [], "overlays": []}))
    build_reports(tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert "no maps" in page and "medad explain" in page and "own anomaly map" not in page
    assert "bleeding/img-0.jpg, bleeding/img-2.jpg" in page and "img-1.jpg" not in page
    assert "flagged spans (s)" not in page and "0.9" in page


def test_overlay_draws_the_brain_outline_and_stacks_several_slices(figures, tmp_path):
    """The brain overlay shows the brain mask the map was computed in (a failed skull-stripping was
    invisible: only the lesion outline was drawn), and three slices side by side are stacked as
    image / map / blend rows (a row of nine slices was 2200 x 388 px)."""
    from medad.errors import InputError

    img = np.random.default_rng(0).random((40, 120)).astype(np.float32)
    brain = np.zeros((40, 120), bool)
    brain[5:35, 5:35] = brain[5:35, 45:75] = brain[5:35, 85:115] = True
    overlay.save_overlay(img, img, tmp_path / "o.png", mask=img > 0.9, tiles=3, outline=brain,
                         outline_label="brain mask the map is computed in")
    fig = figures[-1]
    w, h = fig.get_size_inches()
    top, mid = fig.axes[0].get_position(), fig.axes[1].get_position()
    assert top.y0 > mid.y1 and abs(top.x0 - mid.x0) < 1e-6 and w < 2 * h  # stacked rows, not one wide strip
    assert "Lime dashed outline (image panel): brain mask the map is computed in" in _texts(fig)
    assert len(fig.axes[0].collections) >= 1  # the outline's contour on the image panel
    with pytest.raises(InputError, match="outline shape"):
        overlay.save_overlay(img, img, tmp_path / "p.png", outline=brain[:, :60])
