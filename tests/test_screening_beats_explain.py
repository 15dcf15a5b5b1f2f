"""Explaining ECG beat-mode screening models (`medad explain` on a `medad screen train` model with
``unit: beats``): the beat score split into its two parts (beat shape, RR), the kNN model's shape
part explained by KernelSHAP over the beat's samples, its RR part over the 4 RR features.
Synthetic ECG from tests/test_pipeline_screening.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from test_pipeline_screening import ECG_FS, _ecg_folders

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def knn_beats(tmp_path_factory):
    """A kNN beat model (configs/screening_ecg_beats.yaml) trained on 3 synthetic normal ECGs and a
    test ECG with 5 ectopic (PVC-like) beats."""
    from pipelines.screening import ScreeningConfig, train_screening

    tmp = tmp_path_factory.mktemp("beats_explain")
    normals, test, peaks, odd = _ecg_folders(tmp)
    cfg = ScreeningConfig.from_yaml(CONFIGS / "screening_ecg_beats.yaml")
    model = train_screening(normals, tmp / "m", cfg, progress=False)
    return tmp, model, test / "ecto.hea", peaks, odd


@pytest.mark.filterwarnings("ignore")  # wfdb's pandas deprecation warnings
def test_beat_parts_add_up_to_the_beat_score(knn_beats):
    """The kNN model's beat score is exactly the mean of its shape and RR parts' z-scores."""
    from pipelines.screening import BeatPart, Preprocessor, ScreeningModel, recording_beat_features

    _, model, rec, _, _ = knn_beats
    m = ScreeningModel.load(model)
    f = recording_beat_features(Preprocessor(m.cfg, m.sfreq, m.channels), rec)["features"]
    parts = [BeatPart(m.detector, p) for p in (0, 1)]
    assert [p.of(f).shape[-1] for p in parts] == [f.shape[1] - 4, 4]
    z = np.stack([p.score(p.of(f)).score for p in parts])
    np.testing.assert_allclose(z.mean(0), m.detector.score(f).score, rtol=1e-5, atol=1e-5)
    from medad.errors import InputError

    with pytest.raises(InputError, match="columns"):
        parts[1].score(np.zeros((2, 1, 5), np.float32))


@pytest.mark.filterwarnings("ignore")
def test_kernel_shap_finds_a_bump_added_to_a_normal_beat(knn_beats):
    """A bump added to 4 samples of a normal beat's shape residual raises the shape z-score; the
    segment holding it gets the largest KernelSHAP attribution, and the attributions add up to
    z(beat) - z(median beat) (KernelSHAP's efficiency)."""
    from medad.explain import explain
    from pipelines.screening import BeatPart, Preprocessor, ScreeningModel, recording_beat_features

    tmp, model, _, _, _ = knn_beats
    m = ScreeningModel.load(model)
    f = recording_beat_features(Preprocessor(m.cfg, m.sfreq, m.channels), tmp / "normals" / "n0.hea")["features"]
    shape = BeatPart(m.detector, 0)
    beat = shape.of(f[5:6]).copy()
    n = beat.shape[-1]
    seg = np.arange(n) * 8 // n  # the 8 segments KernelSHAP uses below
    where = np.flatnonzero(seg == 5)[:4]
    beat[0, 0, where] += 3.0
    z = float(shape.score(beat).score[0])
    assert z > float(shape.score(shape.of(f[5:6])).score[0]) + 3
    a = explain(shape, beat, "kernel_shap", spatial_dims=1, n_segments=8, n_samples=200)
    per_seg = np.array([a[0, seg == k].mean() for k in range(8)])
    assert int(np.argmax(per_seg)) == 5
    z0 = float(shape.score(np.zeros_like(beat)).score[0])
    assert per_seg.sum() == pytest.approx(z - z0, rel=0.1)  # every sample of a segment holds its weight


@pytest.mark.filterwarnings("ignore")
def test_medad_explain_on_a_knn_beat_model(knn_beats):
    """`medad explain` on the kNN beat model: the top beats (the ectopic ones) explained by
    KernelSHAP (signal plots, case.json, report.html), parts and RR attributions in the details;
    gradient methods get a clear error."""
    from typer.testing import CliRunner

    from medad.cli import app
    from pipelines.screening import RR_FEATURE_NAMES, BeatPart, ScreeningModel, explain_rr

    tmp, model, rec, peaks, odd = knn_beats
    out = tmp / "ex"
    res = CliRunner().invoke(app, ["explain", str(model), str(rec), "--out", str(out)])
    assert res.exit_code == 0, res.output
    m = ScreeningModel.load(model)
    case = json.loads((out / "case.json").read_text())
    assert case["threshold"] == pytest.approx(m.threshold) and case["decision"] == "abnormal"
    assert case["model"] == "FeatureDetector (beat shape block)" and case["method"] == "kernel_shap"
    assert len(case["figures"]) == 3 and (out / "report.html").stat().st_size > 1000
    assert all((out / Path(fig["png"]).name).stat().st_size > 5000 for fig in case["figures"])
    beats = {float(k.split()[2]): v for k, v in case["details"].items() if k.startswith("beat at")}
    assert len(beats) == 3 and all(np.abs(peaks[odd] / ECG_FS - t).min() < 0.05 for t in beats)
    for text in beats.values():
        score, shape_z, rr_z = (float(text.split(w)[1].split()[0].rstrip(";,")) for w in ("beat score", "shape z",
                                                                                               "RR z"))
        assert score == pytest.approx((shape_z + rr_z) / 2, rel=0.01) and score > m.threshold  # 3-4 digits shown
        assert all(name in text for name in RR_FEATURE_NAMES)
    # RR attributions: each ectopic beat is premature (previous RR short), so against a regular
    # rhythm they add up to its RR z-score minus that of the regular rhythm
    rr = BeatPart(m.detector, 1)
    x = np.array([[[0.7, 1.3, 0.7, 1.9]]], np.float32)  # a premature beat and its compensatory pause
    a = explain_rr(rr, x, n_samples=64)
    gap = float(rr.score(x).score[0] - rr.score(np.ones_like(x)).score[0])
    assert a.shape == (1, 4) and a.sum() == pytest.approx(gap, rel=0.05) and gap > 1
    from medad.errors import ConfigError
    from pipelines.screening import explain_recording

    with pytest.raises(ConfigError, match="needs gradients.*kernel_shap or lime"):
        explain_recording(model, rec, tmp / "ex2", methods=["ig"])


@pytest.mark.filterwarnings("ignore")  # wfdb's pandas deprecation warnings
def test_beat_plot_titles_say_the_shape_part_is_not_the_beat_score(knn_beats, monkeypatch):
    """The plots show the beat-shape part (no threshold of its own): their titles must not read as
    the beat score without a threshold (a user took 10.4 for the beat score of 166)."""
    import medad.report.cases as cases
    from pipelines.screening import ScreeningModel, explain_recording

    tmp, model, rec, _, _ = knn_beats
    titles = []
    real = cases.save_signal_plot
    monkeypatch.setattr(cases, "save_signal_plot", lambda *a, **k: (titles.append(k["title"]), real(*a, **k))[1])
    explain_recording(model, rec, tmp / "ex3", n_samples=32)
    thr = ScreeningModel.load(model).threshold
    assert titles and all("beat-shape part" in t and f"vs threshold {thr:.4g} in the report" in t for t in titles)
