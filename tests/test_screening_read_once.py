"""Supervised screening training reads each held-out recording once: a held-out normal recording
gives both its calibration windows and its validation scores in one pass (it used to be read a
second time to be screened for the validation figures), and the results are what reading it
twice gave: the same calibration windows (threshold, reference scores) and the scores and
validation figures that `screen run` gives on it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.test_screening_supervised import CONFIG, _recordings


def test_held_out_recordings_are_read_once_with_the_same_results(tmp_path, monkeypatch):
    import medad.io.signals as sig
    import pipelines.screening as scr
    from medad.detectors.base import threshold_at_fpr

    normal = _recordings(tmp_path / "normal", 6, 0)
    abnormal = _recordings(tmp_path / "abnormal", 4, 1, spikes=True)
    # a small cap, so the held-out normal windows kept for calibration are a subsample of those scored
    (tmp_path / "cfg.yaml").write_text(CONFIG + "  max_train_windows: 15\n")
    cfg = scr.ScreeningConfig.from_yaml(tmp_path / "cfg.yaml")

    reads: Counter[str] = Counter()  # calls of the sample reader, by file
    real_reader = sig.iter_signal_chunks

    def counting_reader(path, *args, **kw):
        reads[Path(path).name] += 1
        return real_reader(path, *args, **kw)

    monkeypatch.setattr(sig, "iter_signal_chunks", counting_reader)
    handed: list = []  # what training hands validate_supervised
    real_validate = scr.validate_supervised

    def capturing_validate(model, normal_val, abnormal_val, bad):
        handed.append((list(normal_val), list(abnormal_val)))
        return real_validate(model, normal_val, abnormal_val, bad)

    monkeypatch.setattr(scr, "validate_supervised", capturing_validate)
    out = scr.train_screening(normal, tmp_path / "model", cfg, abnormal_folder=abnormal, progress=False)
    info = json.loads((out / "screening.json").read_text())
    assert not info["skipped"] and len(handed) == 1
    in_training = dict(reads)

    def path_of(folder: Path, rid: str) -> Path:
        return next(f for f in scr.list_recordings(folder) if sig.record_id_from_path(f) == rid)

    val = [path_of(normal, r) for r in info["val_recordings"]]
    a_val = [path_of(abnormal, r) for r in info["abnormal_val_recordings"]]
    used = ([path_of(normal, r) for r in info["train_recordings"]] + val
            + [path_of(abnormal, r) for r in info["abnormal_train_recordings"]] + a_val)
    assert len(val) == 2 and len(a_val) == 1 and len(used) == 10

    # one read each: as many reader calls as screening the recording once (`screen run`)
    model = scr.ScreeningModel.load(out)
    screened = {}
    for f in used:
        reads.clear()
        screened[f] = scr.screen_recording(model, f)
        assert reads[f.name] >= 1
        assert in_training.get(f.name, 0) == reads[f.name], (f.name, in_training.get(f.name), reads[f.name])

    # the held-out normal scores handed over are those `screen run` gives
    normal_val, abnormal_val = handed[0]
    assert [Path(f) for f in abnormal_val] == a_val and len(normal_val) == len(val)
    for (starts, scores), f in zip(normal_val, val):
        np.testing.assert_array_equal(starts, screened[f]["starts"])
        np.testing.assert_allclose(scores, screened[f]["scores"], rtol=1e-6, atol=1e-9)
    # ... and the validation figures are those of screening the held-out recordings again
    again = real_validate(model, [(screened[f]["starts"], screened[f]["scores"]) for f in val], a_val, [])
    assert again == info["validation"]

    # the calibration windows are the subsample a separate read collects
    pre = scr.Preprocessor(model.cfg, model.sfreq, model.channels)
    xv = scr._collect(pre, val, cfg.max_train_windows, cfg.max_window_bytes, [])
    n_scored = sum(len(s) for _, s in normal_val)
    assert len(xv) == info["calibration"]["n_windows"] < n_scored  # subsampled: not every scored window
    sv = model.detector.score(xv).score.astype(np.float64)
    assert info["threshold"] == pytest.approx(threshold_at_fpr(sv, cfg.window_fpr), rel=1e-6)
    np.testing.assert_allclose(info["val_scores"], np.sort(sv), rtol=1e-6, atol=1e-9)


def test_collect_needs_the_detector_and_the_list_together(tmp_path):
    import pipelines.screening as scr

    pre = scr.Preprocessor(scr.ScreeningConfig(text_sfreq=100), 100.0, None)
    with pytest.raises(TypeError, match="det and scored go together"):
        scr._collect(pre, [tmp_path / "x.txt"], 10, 2**20, [], scored=[])
